#pragma once
/// Model and GPU presets as JSON files, loaded by name or by path.
///
///   auto catalog = moesched::io::PresetCatalog::from_environment();
///   moesched::ModelDesc m = catalog.model("mixtral-8x7b");          // or "Mixtral", or a path
///   moesched::HardwareDesc g = catalog.gpu("rtx4090");
///   auto int4 = m.with_dtype(moesched::DType::int4);
///
///   auto direct = moesched::io::load_model_preset("my-model.json"); // any file, same schema
///
/// Search order for names: the directories given to the catalog, then each entry of the
/// MOESCHED_PRESET_PATH environment variable (':'-separated) for from_environment(), then the
/// directory the build or install put the shipped presets in (MOESCHED_PRESET_DIR, set by the
/// moesched::io CMake target). Each directory holds `models/*.json` and `gpus/*.json`.
/// A name matches a file's `name`, one of its `aliases`, or its file stem, ignoring case and
/// the characters '-', '_', '.' and ' '. The schema is documented in presets/README.md.
///
/// Every error is a ConfigError naming the file, the field and the value.

#include "moesched/core/dtype.hpp"
#include "moesched/core/error.hpp"
#include "moesched/core/hardware.hpp"
#include "moesched/core/model.hpp"
#include "moesched/core/units.hpp"
#include "moesched/io/json_reader.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace moesched::io {

/// Read and parse a JSON file; ConfigError naming the file on I/O or syntax errors.
[[nodiscard]] inline nlohmann::json read_json_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::error_code ec;
    const bool exists = std::filesystem::exists(path, ec);
    throw ConfigError(path.string(), "", "",
                      exists ? "cannot open file for reading" : "no such file");
  }
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {  // parse_error, or out_of_range for huge numbers
    const std::string msg = json_error_text(e);
    throw ConfigError(path.string(), "", "", "not valid JSON: " + msg);
  }
}

namespace detail {

inline void check_kind(JsonObjectReader& r, const char* expected) {
  auto kind = r.optional_string("kind");
  if (kind && *kind != expected) {
    throw r.error("kind", std::string("this is not a ") + expected + " preset (expected \"" +
                              expected + "\")");
  }
}

inline DType read_dtype(JsonObjectReader& r, const std::string& key, DType fallback) {
  auto s = r.optional_string(key);
  if (!s) return fallback;
  if (auto d = parse_dtype(*s)) return *d;
  std::string list;
  for (const auto& info : kDTypes) list += (list.empty() ? "" : ", ") + std::string(info.name);
  throw r.error(key, "unknown dtype; known: " + list);
}

/// Run `fn`, attributing any ConfigError it throws (without a source) to `source`.
template <class Fn>
decltype(auto) attributed(const std::string& source, Fn&& fn) {
  try {
    return std::forward<Fn>(fn)();
  } catch (const ConfigError& e) {
    throw e.in_source(source);
  }
}

inline AttentionShape read_attention(JsonObjectReader r) {
  AttentionShape a;
  a.kind = static_cast<AttentionKind>(r.optional_choice("kind", {"gqa", "mla"}).value_or(0));
  a.heads = r.required_u32("heads", 1);
  a.qk_norm = static_cast<QkNorm>(
      r.optional_choice("qk_norm", {"none", "per_head", "full"}).value_or(0));
  a.sinks = r.optional_bool("sinks").value_or(false);
  if (a.kind == AttentionKind::gqa) {
    a.kv_heads = r.optional_u32("kv_heads", a.heads, 1);
    a.head_dim = r.required_u32("head_dim", 1);
    a.qkv_bias = r.optional_bool("qkv_bias").value_or(false);
    a.o_bias = r.optional_bool("o_bias").value_or(false);
  } else {
    a.q_lora_rank = r.optional_u32("q_lora_rank", 0);
    a.kv_lora_rank = r.required_u32("kv_lora_rank", 1);
    a.qk_nope_head_dim = r.required_u32("qk_nope_head_dim", 1);
    a.qk_rope_head_dim = r.optional_u32("qk_rope_head_dim", 0);
    a.v_head_dim = r.required_u32("v_head_dim", 1);
  }
  r.finish();
  return a;
}

inline TransferCurve read_link(JsonObjectReader r) {
  TransferCurve c;
  if (r.has("points")) {
    const auto& pts = r.required_raw("points");
    if (!pts.is_array() || pts.empty()) {
      throw r.error("points", "expected a non-empty list of {\"bytes\": N, \"gbps\": X}");
    }
    // Each point gives its copy time either as achieved bandwidth ("gbps") or directly ("us").
    std::vector<TransferCurve::Knot> knots;
    bool all_gbps = true;
    std::vector<std::pair<Bytes, BytesPerSecond>> rates;
    for (std::size_t i = 0; i < pts.size(); ++i) {
      JsonObjectReader p(pts[i], r.source(), r.field("points") + "[" + std::to_string(i) + "]");
      const auto bytes = p.required_uint("bytes", 1, std::numeric_limits<std::uint64_t>::max());
      const auto gbps = p.optional_number("gbps", true);
      const auto us = p.optional_number("us", true);
      if (gbps.has_value() == us.has_value()) {
        throw p.error(gbps ? "us" : "gbps", "give exactly one of \"gbps\" and \"us\" per point");
      }
      p.finish();
      all_gbps = all_gbps && gbps.has_value();
      if (gbps) rates.emplace_back(Bytes{bytes}, gb_per_s(*gbps));
      knots.push_back({Bytes{bytes}, gbps ? transfer_time(Bytes{bytes}, gb_per_s(*gbps)) : from_us(*us)});
    }
    for (const char* k : {"bandwidth_gbps", "per_copy_overhead_us"}) {
      if (r.has(k)) throw r.error(k, "give either \"points\" or bandwidth_gbps + per_copy_overhead_us, not both");
    }
    try {
      c = all_gbps ? TransferCurve::measured(rates) : TransferCurve::from_knots(std::move(knots));
    } catch (const ConfigError& e) {
      throw ConfigError(r.source(), r.field(e.field()), e.value(), e.reason());
    }
  } else {
    const double gbps = r.required_number("bandwidth_gbps", true);
    const double overhead_us = r.optional_number("per_copy_overhead_us", false).value_or(0.0);
    c = TransferCurve::affine(gb_per_s(gbps), from_us(overhead_us));
  }
  r.finish();
  return c;
}

inline ComputeSpec read_compute(JsonObjectReader r) {
  ComputeSpec c;
  c.bf16_tflops = r.required_number("bf16_tflops", true);
  c.fp8_tflops = r.optional_number("fp8_tflops", false).value_or(0.0);
  c.int8_tops = r.optional_number("int8_tops", false).value_or(0.0);
  c.f32_tflops = r.optional_number("f32_tflops", false).value_or(0.0);
  c.memory_bandwidth = gb_per_s(r.required_number("memory_bandwidth_gbps", true));
  c.kernel_overhead = from_us(r.optional_number("kernel_overhead_us", false).value_or(0.0));
  r.finish();
  return c;
}

}  // namespace detail

/// Parse a model preset from JSON already in memory; `source` names it in errors.
[[nodiscard]] inline ModelDesc parse_model_preset(const nlohmann::json& j, const std::string& source) {
  JsonObjectReader r(j, source);
  detail::check_kind(r, "model");
  ModelDesc m;
  m.name = r.required_string("name");
  if (m.name.empty()) throw r.error("name", "must not be empty");
  m.display_name = r.optional_string("display_name").value_or(m.name);
  m.source = r.required_string("source");
  m.notes = r.optional_string("notes").value_or("");
  m.aliases = r.optional_string_list("aliases");
  m.dtype = detail::read_dtype(r, "dtype", DType::bf16);
  m.published_total_params = r.optional_number("published_total_params", true);

  ModelShape& s = m.shape;
  s.decoder_layers = r.required_u32("decoder_layers", 1);
  s.first_dense_layers = r.optional_u32("first_dense_layers", 0);
  s.moe_layer_interval = r.optional_u32("moe_layer_interval", 1, 1);
  s.experts_per_layer = r.required_u32("num_experts", 1);
  s.top_k = r.required_u32("top_k", 1);
  s.shared_experts = r.optional_u32("shared_experts", 0);
  s.shared_expert_ffn = r.optional_u32("shared_expert_intermediate_size", 0);
  s.shared_expert_gate = r.optional_bool("shared_expert_gate").value_or(false);
  s.hidden = r.required_u32("hidden_size", 1);
  s.moe_ffn = r.required_u32("moe_intermediate_size", 1);
  s.dense_ffn = r.optional_u32("dense_intermediate_size", 0);
  s.vocab = r.required_u32("vocab_size", 1);
  s.tie_embeddings = r.optional_bool("tie_embeddings").value_or(false);
  s.expert_bias = r.optional_bool("expert_bias").value_or(false);
  s.router_bias = r.optional_bool("router_bias").value_or(false);
  s.norm = static_cast<NormKind>(r.optional_choice("norm", {"rmsnorm", "layernorm"}).value_or(0));
  s.attention = detail::read_attention(r.object("attention"));
  r.finish();
  detail::attributed(source, [&] { s.validate(); });
  return m;
}

/// Parse a GPU preset from JSON already in memory; `source` names it in errors.
[[nodiscard]] inline HardwareDesc parse_gpu_preset(const nlohmann::json& j, const std::string& source) {
  JsonObjectReader r(j, source);
  detail::check_kind(r, "gpu");
  HardwareDesc h;
  h.name = r.required_string("name");
  if (h.name.empty()) throw r.error("name", "must not be empty");
  h.display_name = r.optional_string("display_name").value_or(h.name);
  h.source = r.required_string("source");
  h.notes = r.optional_string("notes").value_or("");
  h.aliases = r.optional_string_list("aliases");
  h.interconnect = r.optional_string("interconnect").value_or("");
  h.memory = Bytes{static_cast<std::uint64_t>(
      std::llround(r.required_number("memory_gib", true) * static_cast<double>(1ULL << 30U)))};
  h.reserved = Bytes{static_cast<std::uint64_t>(
      std::llround(r.optional_number("reserved_mib", false).value_or(0.0) * (1ULL << 20U)))};
  h.copy_engines = r.optional_u32("copy_engines", 1, 1);
  h.h2d = detail::read_link(r.object("h2d"));
  h.d2h = r.has("d2h") ? detail::read_link(r.object("d2h")) : h.h2d;
  if (auto bidir = r.optional_number("bidirectional_total_gbps", true)) {
    h.bidirectional_total = gb_per_s(*bidir);
  }
  h.compute = detail::read_compute(r.object("compute"));
  r.finish();
  detail::attributed(source, [&] { h.validate(); });
  return h;
}

/// Load a model preset file.
[[nodiscard]] inline ModelDesc load_model_preset(const std::filesystem::path& path) {
  return parse_model_preset(read_json_file(path), path.string());
}
/// Load a GPU preset file.
[[nodiscard]] inline HardwareDesc load_gpu_preset(const std::filesystem::path& path) {
  return parse_gpu_preset(read_json_file(path), path.string());
}

/// Lower-case `s` and drop '-', '_', '.', ' ' so "Mixtral-8x7B" matches "mixtral_8x7b".
[[nodiscard]] inline std::string normalize_preset_name(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '-' || c == '_' || c == '.' || c == ' ') continue;
    out.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  }
  return out;
}

/// Finds presets by name in a list of directories. A value type; no global state.
class PresetCatalog {
 public:
  /// One preset file found in the catalog.
  struct Entry {
    std::string name;
    std::string display_name;
    std::vector<std::string> aliases;
    std::filesystem::path path;
  };

  PresetCatalog() = default;
  explicit PresetCatalog(std::vector<std::filesystem::path> dirs) : dirs_(std::move(dirs)) {}

  /// `extra` first, then MOESCHED_PRESET_PATH, then the shipped presets.
  [[nodiscard]] static PresetCatalog from_environment(std::vector<std::filesystem::path> extra = {}) {
    std::vector<std::filesystem::path> dirs = std::move(extra);
    if (const char* env = std::getenv("MOESCHED_PRESET_PATH")) {
      std::stringstream ss(env);
      std::string item;
      while (std::getline(ss, item, ':')) {
        if (!item.empty()) dirs.emplace_back(item);
      }
    }
#ifdef MOESCHED_PRESET_DIR
    dirs.emplace_back(MOESCHED_PRESET_DIR);
#endif
    return PresetCatalog(std::move(dirs));
  }

  [[nodiscard]] const std::vector<std::filesystem::path>& directories() const noexcept {
    return dirs_;
  }

  /// Load a model by name, alias, file stem, or path to a .json file.
  [[nodiscard]] ModelDesc model(std::string_view name_or_path) const {
    return load_model_preset(resolve("models", "model", name_or_path));
  }
  /// Load a GPU by name, alias, file stem, or path to a .json file.
  [[nodiscard]] HardwareDesc gpu(std::string_view name_or_path) const {
    return load_gpu_preset(resolve("gpus", "gpu", name_or_path));
  }

  /// Every model preset in the catalog (first directory wins for duplicate names).
  [[nodiscard]] std::vector<Entry> list_models() const { return list("models"); }
  /// Every GPU preset in the catalog.
  [[nodiscard]] std::vector<Entry> list_gpus() const { return list("gpus"); }

  /// Path of the preset file `name_or_path` refers to; ConfigError listing what exists if none.
  [[nodiscard]] std::filesystem::path resolve(std::string_view sub, std::string_view what,
                                              std::string_view name_or_path) const {
    namespace fs = std::filesystem;
    const fs::path as_path(name_or_path);
    std::error_code ec;
    if (name_or_path.find('/') != std::string_view::npos || as_path.extension() == ".json") {
      if (!fs::exists(as_path, ec)) {
        throw ConfigError(std::string(name_or_path), "", "", "no such " + std::string(what) + " preset file");
      }
      return as_path;
    }
    const std::string key = normalize_preset_name(name_or_path);
    // Fast path: a file whose stem is the name.
    for (const auto& dir : dirs_) {
      for (const auto& entry : files(dir / sub)) {
        if (normalize_preset_name(entry.stem().string()) == key) return entry;
      }
    }
    // Slow path: names and aliases inside the files.
    std::vector<Entry> all = list(sub);
    for (const auto& e : all) {
      if (normalize_preset_name(e.name) == key) return e.path;
      for (const auto& a : e.aliases) {
        if (normalize_preset_name(a) == key) return e.path;
      }
    }
    std::vector<std::string> names;
    std::vector<std::string> spellings;  // normalised names and aliases, for the suggestion
    std::vector<const Entry*> owner;
    for (const auto& e : all) {
      names.push_back(e.name);
      spellings.push_back(normalize_preset_name(e.name));
      owner.push_back(&e);
      for (const auto& a : e.aliases) {
        spellings.push_back(normalize_preset_name(a));
        owner.push_back(&e);
      }
    }
    std::string reason = "unknown " + std::string(what) + " preset";
    if (auto near = closest_match(key, spellings)) {
      const auto at = static_cast<std::size_t>(
          std::find(spellings.begin(), spellings.end(), *near) - spellings.begin());
      reason += " (did you mean '" + owner[at]->name + "'?)";
    }
    reason += "; available: ";
    for (std::size_t i = 0; i < names.size(); ++i) reason += (i ? ", " : "") + names[i];
    if (names.empty()) reason += "none";
    reason += "; searched: ";
    for (std::size_t i = 0; i < dirs_.size(); ++i) reason += (i ? ", " : "") + (dirs_[i] / sub).string();
    if (dirs_.empty()) reason += "no directories (set MOESCHED_PRESET_PATH)";
    throw ConfigError("", what == "gpu" ? "--gpu" : "--model", std::string(name_or_path), reason);
  }

 private:
  static std::vector<std::filesystem::path> files(const std::filesystem::path& dir) {
    namespace fs = std::filesystem;
    std::vector<fs::path> out;
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) return out;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
      if (it->path().extension() == ".json") out.push_back(it->path());
    }
    std::sort(out.begin(), out.end());
    return out;
  }

  /// Reads only the identifying fields, so one malformed preset does not hide the others;
  /// a file that is not JSON at all is an error (it would otherwise be silently unusable).
  [[nodiscard]] std::vector<Entry> list(std::string_view sub) const {
    std::vector<Entry> out;
    for (const auto& dir : dirs_) {
      for (const auto& path : files(dir / sub)) {
        const nlohmann::json j = read_json_file(path);
        if (!j.is_object() || !j.contains("name") || !j["name"].is_string()) {
          throw ConfigError(path.string(), "name", j.is_object() && j.contains("name") ? render_json_value(j["name"]) : "",
                            "every preset needs a string \"name\"");
        }
        Entry e;
        e.name = j["name"].get<std::string>();
        e.display_name = j.contains("display_name") && j["display_name"].is_string()
                             ? j["display_name"].get<std::string>()
                             : e.name;
        if (j.contains("aliases") && j["aliases"].is_array()) {
          for (const auto& a : j["aliases"]) {
            if (a.is_string()) e.aliases.push_back(a.get<std::string>());
          }
        }
        e.path = path;
        const bool dup = std::any_of(out.begin(), out.end(), [&](const Entry& o) {
          return normalize_preset_name(o.name) == normalize_preset_name(e.name);
        });
        if (!dup) out.push_back(std::move(e));
      }
    }
    return out;
  }

  std::vector<std::filesystem::path> dirs_;
};

}  // namespace moesched::io
