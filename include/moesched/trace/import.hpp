#pragma once
/// Import routing dumps people already produce (vLLM / Hugging Face / MLX forward hooks,
/// llama.cpp tracing scripts) as traces, with the damage real dumps carry reported, not refused.
///
///   moesched::trace::ImportOptions opt;
///   opt.shape = catalog.model("mixtral-8x7b").shape;     // optional: maps decoder layer ids
///   auto [writer, report] = moesched::trace::import_routing_dump("dump.jsonl.gz", opt);
///   writer.write("run.trace.safetensors");
///   for (auto& n : report.notes) std::puts(n.c_str());    // what was inferred, what was ignored
///   for (auto& d : report.dropped) std::puts(moesched::trace::describe(d).c_str());  // left out
///
/// Input: a JSON array, a JSON object holding the records, JSON Lines (a record, a list of
/// records or an object holding records a line), or CSV (trace/import_csv.hpp); any of them
/// gzip-compressed (by magic bytes, whatever the name; needs zlib: link ZLIB::ZLIB). Records in
/// any order, two layouts:
///  A. one record per (token, layer):
///       {"request_id": "q1", "token_idx": 5, "layer": 3, "experts": [1, 7], "gating_probs": [0.6, 0.4]}
///  B. one record per token with its layers, plus an optional meta object:
///       {"meta": {"model": "mixtral-8x7b", "num_experts": 8, "top_k": 2}}
///       {"request_id": "q1", "token_idx": 5, "phase": "decode",
///        "layers": {"0": {"experts": [1, 7], "weights": [0.6, 0.4]}, "1": {...}}}
///     The layers may be an object keyed by layer ("0", "3", or a module name holding one number:
///     "model.layers.3.mlp"), a list of per-layer entries (an entry's own layer field, else its
///     position in the list; null entries are skipped), or `experts` holding one list per layer.
/// Where the records are: a JSON object's single list of record objects under any key (other
/// lists, such as prompt or generated token ids, are ignored and reported; two lists of objects
/// are an error naming them), or the key ImportOptions::records_key names. Scalars beside the
/// list that are record fields (request, phase, step, ...) apply to every record in it that lacks
/// them; the others join the dump's meta.
/// Every field name is looked up in a list of accepted spellings (ImportFieldNames), which the
/// caller can replace; the request can be a composite of several fields. Optional per-record
/// fields: phase (prefill/prompt, decode/generate, verify, draft; any case), step (records of one
/// step share it), draft_len and accepted (verify steps), token_id, position (token_pos: stored
/// as the trace's token positions; without a token index it also orders the tokens). Without
/// phases, the first `prefill_tokens` tokens of each request form its prefill step and the rest
/// are decode steps. A token is (request, step, token index); a request's tokens run in (step,
/// token) order when every one has a step id (an SD dump may repeat a position in consecutive
/// verify steps), else in token order.
///
/// Damage. A token lacking some of the MoE layers (typically the last token or two of a request,
/// when the engine stopped mid-step; but anywhere) is dropped by default (IncompleteTokens::drop)
/// and reported per request; IncompleteTokens::error refuses the dump instead. Steps are formed
/// from the whole dump first, then thinned: a decode step whose token is dropped disappears (one
/// forward pass fewer: the request emits one token less); a prefill step keeps its other tokens;
/// a verify step must run draft_len + 1 tokens, so it is dropped whole. Token positions keep the
/// recorded values, so a gap shows where tokens went. A request left with no token is left out.
/// Tokens with phase "draft" (the draft model's own passes) are dropped and reported: the trace
/// holds the target model's routing. A last line (JSONL) or row (CSV) that cannot be read and has
/// no line end (the writer was killed mid-line), and the lost tail of a cut-short gzip stream, are
/// dropped and reported too (refused under IncompleteTokens::error).
/// Nothing is guessed silently: the report lists every inference, every field it ignored and
/// every record it dropped; inconsistent input (top-k lists of different lengths, weights on some
/// records only, a layer twice, an unknown phase) is a ConfigError naming the file, the record or
/// line (and CSV column) and the value.

#include "moesched/core/error.hpp"
#include "moesched/core/model.hpp"
#include "moesched/core/routing.hpp"
#include "moesched/io/json_reader.hpp"
#include "moesched/io/trace.hpp"
#include "moesched/trace/import_csv.hpp"
#include "moesched/trace/import_gzip.hpp"
#include "moesched/trace/import_options.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

namespace moesched::trace {

namespace import_detail {

/// A phase as dumps spell it: the trace's three, plus the draft model's own passes.
enum class DumpPhase : std::uint8_t { prefill, decode, verify, draft };

/// "Prefill", "prompt", "GENERATE", "sd-verify", "draft" ...; nullopt when unknown.
[[nodiscard]] inline std::optional<DumpPhase> read_phase(std::string_view text) {
  std::string s = lower(trim(text));
  for (char& c : s) {
    if (c == '-' || c == ' ') c = '_';
  }
  for (const char* p : {"prefill", "prompt", "context", "prefill_chunk", "chunked_prefill"}) {
    if (s == p) return DumpPhase::prefill;
  }
  for (const char* p : {"decode", "decoding", "generate", "generation", "gen"}) {
    if (s == p) return DumpPhase::decode;
  }
  for (const char* p : {"verify", "verification", "sd_verify", "spec_verify", "target_verify"}) {
    if (s == p) return DumpPhase::verify;
  }
  for (const char* p : {"draft", "drafting", "draft_model"}) {
    if (s == p) return DumpPhase::draft;
  }
  return std::nullopt;
}
inline constexpr const char* kPhaseSpellings =
    "expected a phase: prefill (or prompt, context, prefill_chunk, chunked_prefill), decode (or decoding, generate, generation, gen), "
    "verify (or verification, sd_verify, spec_verify, target_verify) or draft (dropped); any case";

[[nodiscard]] constexpr const char* dump_phase_name(DumpPhase p) noexcept {
  switch (p) {
    case DumpPhase::prefill: return "prefill";
    case DumpPhase::decode: return "decode";
    case DumpPhase::verify: return "verify";
    case DumpPhase::draft: return "draft";
  }
  return "?";
}

struct LayerRouting {
  std::vector<std::uint16_t> experts;
  std::vector<float> weights;
  bool has_weights = false;
};
struct TokenEntry {
  std::optional<DumpPhase> phase;
  std::optional<std::int64_t> step;
  std::optional<std::uint32_t> draft_len, accepted, token_id, position;
  std::map<std::int64_t, LayerRouting> layers;  // dump layer id -> routing
  std::string where;                             // first record that mentioned it
  std::uint64_t records = 0;                     // routing records that made it
};

/// Token identity: (request ordinal, step id or kNoStep, token index).
using TokenKey = std::tuple<std::size_t, std::int64_t, std::int64_t>;
inline constexpr std::int64_t kNoStep = std::numeric_limits<std::int64_t>::min();

/// Name as CSV/JSON: ".csv.gz" -> ".csv"
[[nodiscard]] inline std::string inner_extension(const std::string& name) {
  std::string n = lower(name);
  if (n.size() > 3 && n.compare(n.size() - 3, 3, ".gz") == 0) n.resize(n.size() - 3);
  const auto dot = n.find_last_of('.');
  const auto slash = n.find_last_of("/\\");
  if (dot == std::string::npos || (slash != std::string::npos && dot < slash)) return "";
  return n.substr(dot);
}

class Reader {
 public:
  Reader(std::string file, const ImportOptions& opt) : file_(std::move(file)), opt_(opt), f_(opt.fields) {}

  [[nodiscard]] std::string path(const std::string& where, const std::string& key) const {
    if (csv_columns_ != nullptr) {
      auto it = csv_columns_->find(key);
      if (it != csv_columns_->end()) return where + ", " + it->second;
    }
    return where.empty() ? key : key.empty() ? where : where + "." + key;
  }
  [[noreturn]] void fail(const std::string& where, const std::string& field, const std::string& value, const std::string& why) const {
    throw ConfigError(file_, path(where, field), value, why);
  }

  /// Input-level facts (gzip, cut-short data) reported before anything else.
  void note(std::string n) { input_notes_.push_back(std::move(n)); }
  void drop_input(std::string reason, std::uint64_t records) {
    DroppedRecords d;
    d.reason = std::move(reason);
    d.records = records;
    input_drops_.push_back(std::move(d));
  }

  // ---- reading ------------------------------------------------------------------------------
  void parse(std::string_view text) {
    if (text.size() >= 3 && text.substr(0, 3) == "\xEF\xBB\xBF") text.remove_prefix(3);
    const std::size_t i = text.find_first_not_of(" \t\r\n");
    if (i == std::string_view::npos) fail("", "", "", "the file is empty");
    const std::string ext = inner_extension(file_);
    bool csv = opt_.format == DumpFormat::csv;
    if (opt_.format == DumpFormat::automatic) {
      if (ext == ".csv" || ext == ".tsv") {
        csv = true;
      } else if (ext != ".json" && ext != ".jsonl" && ext != ".ndjson" && text[i] != '{' && text[i] != '[') {
        const std::size_t eol = text.find('\n', i);
        const std::string_view first = text.substr(i, eol == std::string_view::npos ? std::string_view::npos : eol - i);
        csv = first.find('{') == std::string_view::npos && first.find_first_of(",\t;") != std::string_view::npos;
      }
    }
    if (csv) {
      parse_csv(text);
    } else {
      parse_json(text, i);
    }
    if (!opt_.records_key.empty() && !records_key_found_) {
      throw ConfigError(file_, "--records", opt_.records_key, "no object in the dump holds this key");
    }
  }

  void parse_json(std::string_view text, std::size_t first) {
    std::optional<nlohmann::json> doc;
    std::string doc_error;
    if (text[first] == '[' || text[first] == '{') {
      try {
        doc = nlohmann::json::parse(text);
      } catch (const nlohmann::json::exception& e) {
        // not one JSON document (or a number out of range in it): read it as JSON Lines, which
        // reports the offending line
        doc_error = io::json_error_text(e);
      }
    }
    if (doc) {
      const nlohmann::json& j = *doc;
      if (j.is_array()) {
        for (std::size_t r = 0; r < j.size(); ++r) item(j[r], "record " + std::to_string(r), nullptr, 0);
      } else if (j.is_object() && is_container(j)) {
        container(j, "", nullptr, 0, true);
      } else {
        record(j, "record 0", nullptr);
      }
      return;
    }
    // JSON Lines
    std::vector<std::pair<std::size_t, std::size_t>> lines;  // [begin, end) of each line
    for (std::size_t b = 0; b <= text.size();) {
      const std::size_t e = std::min(text.find('\n', b), text.size());
      lines.emplace_back(b, e);
      if (e == text.size()) break;
      b = e + 1;
    }
    std::size_t nonblank = 0, last_nonblank = 0;
    for (std::size_t n = 0; n < lines.size(); ++n) {
      if (trim(text.substr(lines[n].first, lines[n].second - lines[n].first)).empty()) continue;
      ++nonblank;
      last_nonblank = n;
    }
    const bool ends_with_newline = !text.empty() && text.back() == '\n';
    std::uint64_t good = 0;
    for (std::size_t n = 0; n < lines.size(); ++n) {
      const std::string_view line = text.substr(lines[n].first, lines[n].second - lines[n].first);
      if (trim(line).empty()) continue;
      const std::string where = "line " + std::to_string(n + 1);
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception& e) {  // parse_error, or out_of_range for huge numbers
        if (n == last_nonblank && !ends_with_newline && good > 0 && opt_.incomplete == IncompleteTokens::drop) {
          drop_input("cut short at the end of the file (" + where + ", no line end): not read", 1);
          break;
        }
        if (good == 0 && nonblank > 1 && !doc_error.empty()) fail("", "", "", "not valid JSON (read as one document): " + doc_error);
        fail(where, "", "", "not valid JSON: " + io::json_error_text(e));
      }
      ++good;
      if (j.is_object() && is_container(j)) {
        container(j, where, nullptr, 0, false);
      } else if (j.is_array()) {  // a list of records a line (one flush of a hook)
        for (std::size_t r = 0; r < j.size(); ++r) item(j[r], where + "[" + std::to_string(r) + "]", nullptr, 0);
      } else {
        record(j, where, nullptr);
      }
    }
  }

  void parse_csv(std::string_view text) {
    const auto table = read_csv(text, file_, opt_.incomplete == IncompleteTokens::drop);
    const CsvLayout layout(table, f_, file_);
    csv_layout_ = layout.per_layer_columns() ? "CSV, one row per token with a column per layer" : "CSV, one row per (token, layer)";
    note(layout.describe(table.delimiter));
    if (table.cut_last) drop_input("cut short at the end of the file (line " + std::to_string(table.cut_line) + ", no line end): not read", 1);
    csv_columns_ = &layout.columns();
    try {
      for (const auto& row : table.rows) record(layout.record(row), "line " + std::to_string(row.line), nullptr);
    } catch (...) {
      csv_columns_ = nullptr;
      throw;
    }
    csv_columns_ = nullptr;
  }

  /// An element of a top-level array or of a list of records: a record, or an object holding records.
  void item(const nlohmann::json& v, const std::string& where, const nlohmann::json* inherited, int depth) {
    if (v.is_object() && is_container(v)) {
      container(v, where, inherited, depth + 1, false);
    } else {
      record(v, where, inherited);
    }
  }

  [[nodiscard]] bool has_any(const nlohmann::json& o, const std::vector<std::string>& names) const {
    return std::any_of(names.begin(), names.end(), [&](const std::string& n) { return o.contains(n); });
  }
  static bool object_list(const nlohmann::json& v) {
    if (!v.is_array()) return false;
    return std::any_of(v.begin(), v.end(), [](const nlohmann::json& e) { return e.is_object(); });
  }
  /// An object without routing fields that holds records (or the meta object).
  [[nodiscard]] bool is_container(const nlohmann::json& o) const {
    if (has_any(o, f_.layer) || has_any(o, f_.experts) || has_any(o, f_.layers)) return false;
    if (!opt_.records_key.empty() && o.contains(opt_.records_key)) return true;
    if (o.contains("meta")) return true;
    return std::any_of(o.begin(), o.end(), [](const nlohmann::json& v) { return object_list(v); });
  }
  [[nodiscard]] bool inheritable(const std::string& k) const {
    for (const auto* list : {&f_.request, &f_.request_key, &f_.phase, &f_.step, &f_.draft_len, &f_.accepted}) {
      if (std::find(list->begin(), list->end(), k) != list->end()) return true;
    }
    return false;
  }

  void container(const nlohmann::json& o, const std::string& where, const nlohmann::json* inherited, int depth, bool top) {
    if (depth > 32) fail(where, "", "", "records nested deeper than 32 objects");
    if (o.contains("meta")) absorb_meta(o["meta"], path(where, "meta"));
    std::string key;
    if (!opt_.records_key.empty()) {
      if (!o.contains(opt_.records_key)) {
        std::string keys;
        for (const auto& [k, _] : o.items()) keys += (keys.empty() ? "" : ", ") + k;
        throw ConfigError(file_, "--records", opt_.records_key,
                          "no such key in " + (where.empty() ? std::string("the top-level object") : where) + " (keys: " + keys + ")");
      }
      if (!o[opt_.records_key].is_array()) fail(where, opt_.records_key, io::render_json_value(o[opt_.records_key]), "expected a list of records");
      key = opt_.records_key;
      records_key_found_ = true;
    } else {
      std::vector<std::string> candidates;
      for (const auto& [k, v] : o.items()) {
        if (k != "meta" && object_list(v)) candidates.push_back(k);
      }
      if (candidates.size() > 1) {
        std::string list;
        for (const auto& c : candidates) list += (list.empty() ? "" : ", ") + ("'" + c + "' (" + std::to_string(o[c].size()) + " entries)");
        throw ConfigError(file_, where, "", (where.empty() ? std::string("the top-level object") : std::string("the object")) + " holds several lists of objects: " +
                                                list + "; name the records' key with --records KEY");
      }
      if (!candidates.empty()) key = candidates.front();
    }
    nlohmann::json inh = inherited != nullptr ? *inherited : nlohmann::json::object();
    for (const auto& [k, v] : o.items()) {
      if (k == "meta" || k == key) continue;
      const std::string name = where.empty() ? k : where + "." + k;
      if (v.is_array()) {
        std::string what = "values";
        if (!v.empty() && std::all_of(v.begin(), v.end(), [](const nlohmann::json& x) { return x.is_number(); })) what = "numbers";
        if (!v.empty() && std::all_of(v.begin(), v.end(), [](const nlohmann::json& x) { return x.is_string(); })) what = "strings";
        if (!v.empty() && std::all_of(v.begin(), v.end(), [](const nlohmann::json& x) { return x.is_array(); })) what = "lists";
        auto& a = ignored_lists_[top ? k : "*." + k];
        ++a.first;
        a.second = what;
      } else if (inheritable(k)) {
        inh[k] = v;
        inherited_keys_.insert(k);
      } else {
        if (!meta_json_.contains(k)) meta_json_[k] = v;
        outer_meta_keys_.insert(k);
      }
    }
    if (key.empty()) return;
    const nlohmann::json& list = o[key];
    records_under_[top ? key : "*." + key] += list.size();
    for (std::size_t r = 0; r < list.size(); ++r) {
      item(list[r], (where.empty() ? key : where + "." + key) + "[" + std::to_string(r) + "]", inh.empty() ? nullptr : &inh, depth);
    }
  }

  struct Found {
    const nlohmann::json* value = nullptr;
    std::string key;
    explicit operator bool() const noexcept { return value != nullptr; }
  };
  enum Role : std::uint8_t { kRequest, kToken, kPosition, kLayer, kExperts, kWeights, kLayers, kPhase, kStep, kDraftLen, kAccepted, kTokenId, kRoles };
  static constexpr const char* kRoleNames[kRoles] = {"request", "token", "position", "layer", "experts", "weights", "layers",
                                                      "phase", "step", "draft_len", "accepted", "token_id"};

  Found find(const nlohmann::json& rec, const std::vector<std::string>& names, std::set<std::string>& used, Role role) {
    for (const auto& n : names) {
      auto it = rec.find(n);
      if (it != rec.end()) {
        used.insert(n);
        // CSV: experts, weights and layers keys are made from the columns (the CSV note names them)
        if (csv_columns_ == nullptr || (role != kExperts && role != kWeights && role != kLayers)) used_spellings_[role].insert(n);
        return {&*it, n};
      }
    }
    return {};
  }

  std::int64_t integer(const nlohmann::json& v, const std::string& where, const std::string& key) const {
    if (v.is_number_integer()) return v.get<std::int64_t>();
    if (v.is_number_unsigned()) {
      if (v.get<std::uint64_t>() <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) return v.get<std::int64_t>();
    } else if (v.is_number_float()) {
      const double d = v.get<double>();
      if (std::isfinite(d) && d == std::floor(d) && std::abs(d) < 9.0e15) return static_cast<std::int64_t>(d);
    } else if (v.is_string()) {
      if (auto x = parse_integer(v.get<std::string>())) return *x;
    }
    fail(where, key, io::render_json_value(v), "expected an integer");
  }
  std::uint32_t small(const nlohmann::json& v, const std::string& where, const std::string& key, std::int64_t max) const {
    const auto x = integer(v, where, key);
    if (x < 0 || x > max) fail(where, key, std::to_string(x), "must be between 0 and " + std::to_string(max));
    return static_cast<std::uint32_t>(x);
  }
  /// A layer id: an integer, or a name holding exactly one number ("model.layers.3.mlp" -> 3).
  std::int64_t layer_id(const nlohmann::json& v, const std::string& where, const std::string& key) {
    if (v.is_string()) {
      const std::string s = v.get<std::string>();
      if (auto x = parse_integer(s)) return *x;
      std::vector<std::string> numbers;
      for (std::size_t i = 0; i < s.size();) {
        if (s[i] >= '0' && s[i] <= '9') {
          std::size_t j = i;
          while (j < s.size() && s[j] >= '0' && s[j] <= '9') ++j;
          numbers.push_back(s.substr(i, j - i));
          i = j;
        } else {
          ++i;
        }
      }
      if (numbers.size() == 1 && numbers.front().size() <= 6) {
        if (layer_name_example_.empty()) layer_name_example_ = s + "' -> " + numbers.front();
        return std::stoll(numbers.front());
      }
      fail(where, key, io::render_json_value(v), "expected a layer index: an integer, or a name holding one number such as model.layers.3.mlp");
    }
    return integer(v, where, key);
  }
  std::string key_of(const nlohmann::json& v) const { return v.is_string() ? v.get<std::string>() : v.dump(); }

  void routing(const nlohmann::json& ex, const nlohmann::json* w, const std::string& where, const std::string& ekey, const std::string& wkey,
               LayerRouting& out) const {
    if (!ex.is_array()) fail(where, ekey, io::render_json_value(ex), "expected a list of expert ids");
    for (const auto& e : ex) {
      const auto id = integer(e, where, ekey);
      if (id < 0 || id > 32767) fail(where, ekey, std::to_string(id), "expert ids must be between 0 and 32767");
      out.experts.push_back(static_cast<std::uint16_t>(id));
    }
    if (w != nullptr && !w->is_null()) {
      if (!w->is_array() || w->size() != ex.size()) fail(where, wkey, io::render_json_value(*w), "expected one weight per expert");
      for (const auto& x : *w) {
        if (!x.is_number()) fail(where, wkey, io::render_json_value(x), "expected numbers");
        out.weights.push_back(x.get<float>());
      }
      out.has_weights = true;
    }
  }

  void record(const nlohmann::json& rec_in, const std::string& where, const nlohmann::json* inherited) {
    if (!rec_in.is_object()) fail(where, "", io::render_json_value(rec_in), "a record must be a JSON object");
    if (rec_in.size() == 1 && rec_in.contains("meta")) {
      absorb_meta(rec_in["meta"], path(where, "meta"));
      return;
    }
    // fields of the enclosing object, for the roles this record does not give itself
    nlohmann::json merged;
    if (inherited != nullptr) {
      merged = rec_in;
      for (const auto* list : {&f_.request, &f_.phase, &f_.step, &f_.draft_len, &f_.accepted}) {
        if (has_any(rec_in, *list)) continue;
        for (const auto& n : *list) {
          if (inherited->contains(n)) merged[n] = (*inherited)[n];
        }
      }
      if (!has_any(rec_in, f_.request)) {
        for (const auto& n : f_.request_key) {
          if (!rec_in.contains(n) && inherited->contains(n)) merged[n] = (*inherited)[n];
        }
      }
    }
    const nlohmann::json& rec = inherited != nullptr ? merged : rec_in;
    ++report.records;
    std::set<std::string> used;
    // request: one field, or several together
    std::string rkey, rname;
    if (!f_.request_key.empty()) {
      nlohmann::json parts = nlohmann::json::array();
      for (const auto& n : f_.request_key) {
        auto it = rec.find(n);
        if (it == rec.end()) fail(where, n, "", "missing: the request key is made of " + join_names(f_.request_key, " + "));
        used.insert(n);
        parts.push_back(*it);
        rname += (rname.empty() ? "" : "/") + key_of(*it);
      }
      rkey = parts.dump();
    } else if (const auto req = find(rec, f_.request, used, kRequest)) {
      rname = key_of(*req.value);
      rkey = rname;
    } else {
      rname = rkey = "0";
      ++without_request_;
    }
    auto [rit, inserted] = request_index_.emplace(rkey, request_order_.size());
    if (inserted) request_order_.push_back(rname);
    std::optional<std::int64_t> step;
    if (const auto st = find(rec, f_.step, used, kStep)) step = integer(*st.value, where, st.key);
    std::int64_t token = 0;
    std::optional<std::int64_t> position;
    const auto tok = find(rec, f_.token, used, kToken);
    const auto pos = find(rec, f_.position, used, kPosition);
    if (pos) position = integer(*pos.value, where, pos.key);
    if (tok) {
      token = integer(*tok.value, where, tok.key);
    } else if (position) {
      token = *position;  // the position orders the tokens
    } else {
      // no token index: records of a request are its tokens in file order (one record a token)
      token = next_token_[rit->second]++;
      implicit_token_ = true;
    }
    TokenEntry& te = tokens_[{rit->second, step.value_or(kNoStep), token}];
    if (te.where.empty()) te.where = where;
    ++te.records;
    te.step = step;
    if (position) {
      if (*position < 0 || *position > std::int64_t{0xFFFFFFFF}) fail(where, pos.key, std::to_string(*position), "positions must be between 0 and 2^32 - 1");
      const auto p = static_cast<std::uint32_t>(*position);
      if (te.position && *te.position != p) {
        fail(where, pos.key, std::to_string(p), "differs from the position another record of this token gives (" + std::to_string(*te.position) + ")");
      }
      te.position = p;
    }
    if (const auto ph = find(rec, f_.phase, used, kPhase)) {
      const auto p = ph.value->is_string() ? read_phase(ph.value->get<std::string>()) : std::nullopt;
      if (!p) fail(where, ph.key, io::render_json_value(*ph.value), kPhaseSpellings);
      if (te.phase && *te.phase != *p) {
        fail(where, ph.key, io::render_json_value(*ph.value),
             std::string("differs from the phase another record of this token gives (") + dump_phase_name(*te.phase) + ")");
      }
      te.phase = p;
      const std::string spelled = ph.value->get<std::string>();
      if (spelled != dump_phase_name(*p)) phase_spellings_.emplace(spelled, dump_phase_name(*p));
    }
    if (const auto d = find(rec, f_.draft_len, used, kDraftLen)) te.draft_len = small(*d.value, where, d.key, 65535);
    if (const auto a = find(rec, f_.accepted, used, kAccepted)) te.accepted = small(*a.value, where, a.key, 65535);
    if (const auto id = find(rec, f_.token_id, used, kTokenId)) te.token_id = small(*id.value, where, id.key, std::int64_t{0xFFFFFFFF});

    auto add_layer = [&](std::int64_t layer, const nlohmann::json& v, const std::string& at, const nlohmann::json* w_outer) {
      std::set<std::string> inner;
      Found lex, lw;
      if (v.is_array()) {
        lex = {&v, ""};
      } else if (v.is_object()) {
        lex = find(v, f_.experts, inner, kExperts);
        lw = find(v, f_.weights, inner, kWeights);
        for (const auto& n : f_.layer) {
          if (v.contains(n)) inner.insert(n);
        }
      }
      if (!lex) fail(at, "", io::render_json_value(v), "expected {experts, weights} or a list of expert ids");
      if (v.is_object()) {
        for (const auto& [k, _] : v.items()) {
          if (inner.count(k) == 0) ++report.ignored["layers.*." + k];
        }
      }
      LayerRouting lr;
      routing(*lex.value, lw ? lw.value : w_outer, at, lex.key, lw ? lw.key : "weights", lr);
      if (!te.layers.emplace(layer, std::move(lr)).second) {
        fail(at, "", std::to_string(layer), "token " + std::to_string(token) + " of request " + rname + " has this layer twice");
      }
    };
    if (const auto lm = find(rec, f_.layers, used, kLayers)) {
      // B: the token's layers in one map or list (a layer field beside it is ignored)
      saw_b_ = true;
      const nlohmann::json& m = *lm.value;
      if (m.is_object()) {
        for (const auto& [k, v] : m.items()) {
          const std::string at = path(where, lm.key + "[" + k + "]");
          if (v.is_null()) {
            ++null_layers_;
            continue;
          }
          add_layer(layer_id(nlohmann::json(k), where, lm.key), v, at, nullptr);
        }
      } else if (m.is_array()) {
        for (std::size_t l = 0; l < m.size(); ++l) {
          const std::string at = path(where, lm.key + "[" + std::to_string(l) + "]");
          const nlohmann::json& v = m[l];
          if (v.is_null()) {
            ++null_layers_;
            continue;
          }
          auto id = static_cast<std::int64_t>(l);
          std::set<std::string> ignore;
          const Found inner = v.is_object() ? find(v, f_.layer, ignore, kLayer) : Found{};
          if (inner) {
            id = layer_id(*inner.value, at, inner.key);
          } else {
            list_positions_ = true;
          }
          add_layer(id, v, at, nullptr);
        }
      } else {
        fail(where, lm.key, io::render_json_value(m), "expected an object or a list of layers");
      }
    } else {
      const auto ly = find(rec, f_.layer, used, kLayer);
      const auto ex = find(rec, f_.experts, used, kExperts);
      const auto wf = find(rec, f_.weights, used, kWeights);
      if (!ly && ex && ex.value->is_array() && !ex.value->empty() && (*ex.value)[0].is_array()) {
        // B: one list of expert ids per layer, by position (and weights alike)
        saw_b_ = true;
        list_positions_ = true;
        const nlohmann::json* w = wf ? wf.value : nullptr;
        if (w != nullptr && w->is_null()) w = nullptr;
        if (w != nullptr && (!w->is_array() || w->size() != ex.value->size())) {
          fail(where, wf.key, io::render_json_value(*w), "expected one list of weights per layer, like " + ex.key);
        }
        for (std::size_t l = 0; l < ex.value->size(); ++l) {
          const std::string at = path(where, ex.key + "[" + std::to_string(l) + "]");
          const nlohmann::json& v = (*ex.value)[l];
          if (v.is_null()) {
            ++null_layers_;
            continue;
          }
          if (!v.is_array()) fail(at, "", io::render_json_value(v), "expected a list of expert ids");
          add_layer(static_cast<std::int64_t>(l), v, at, w != nullptr ? &(*w)[l] : nullptr);
        }
      } else {
        // A: one record per (token, layer)
        saw_a_ = true;
        if (!ly || !ex) {
          fail(where, !ly ? "layer" : "experts", "", "missing: a record needs a layer and its experts, or a layers map (field names: see --field)");
        }
        const auto layer = layer_id(*ly.value, where, ly.key);
        LayerRouting lr;
        routing(*ex.value, wf ? wf.value : nullptr, where, ex.key, wf ? wf.key : "weights", lr);
        if (!te.layers.emplace(layer, std::move(lr)).second) {
          fail(where, ly.key, std::to_string(layer), "token " + std::to_string(token) + " of request " + rname + " has this layer twice");
        }
      }
    }
    for (const auto& [k, _] : rec.items()) {
      if (used.count(k) == 0) ++report.ignored[k];
    }
  }

  void absorb_meta(const nlohmann::json& m, const std::string& at) {
    if (!m.is_object()) fail(at, "", io::render_json_value(m), "expected an object");
    meta_json_.update(m);
  }

  // ---- building the trace -------------------------------------------------------------------
  std::pair<io::TraceWriter, ImportReport> build() {
    if (tokens_.empty()) fail("", "", "", "no routing records found");
    const bool drop = opt_.incomplete == IncompleteTokens::drop;
    std::vector<std::string> notes = input_notes_;
    for (const auto& [k, n] : records_under_) {
      notes.push_back(k.rfind("*.", 0) == 0 ? std::to_string(n) + " records read from lists under '" + k.substr(2) + "' in enclosing objects"
                                            : std::to_string(n) + " records read from the top-level list '" + k + "'");
    }
    for (const auto& [k, a] : ignored_lists_) {
      notes.push_back((k.rfind("*.", 0) == 0 ? "lists '" + k.substr(2) + "' of " + a.second + " in " + std::to_string(a.first) + " enclosing objects"
                                             : "top-level list '" + k + "' of " + a.second) +
                      " ignored: not routing records");
    }
    if (!inherited_keys_.empty()) {
      notes.push_back("fields of enclosing objects applied to their records: " + join_set(inherited_keys_));
    }
    if (!outer_meta_keys_.empty()) notes.push_back("fields of enclosing objects kept as the dump's meta: " + join_set(outer_meta_keys_));
    report.layout = saw_a_ && saw_b_ ? "both layouts" : saw_a_ ? "per (token, layer) records" : "per-token records with a layers map";
    if (!csv_layout_.empty()) report.layout = csv_layout_;
    {
      std::string used;
      for (int r = 0; r < kRoles; ++r) {
        if (used_spellings_[r].empty()) continue;
        used += (used.empty() ? "" : ", ") + std::string(kRoleNames[r]) + " '" + join_set(used_spellings_[r], "'/'") + "'";
      }
      if (!f_.request_key.empty()) used = "request '" + join_names(f_.request_key, "' + '") + "'" + (used.empty() ? "" : ", ") + used;
      notes.push_back("fields read: " + used);
    }
    if (!f_.request_key.empty()) {
      notes.push_back("requests keyed by " + join_names(f_.request_key, " + ") + " (" + std::to_string(request_order_.size()) +
                      " distinct), named like '" + request_order_.front() + "'");
    }
    if (without_request_ > 0) notes.push_back(std::to_string(without_request_) + " records without a request field were put in request '0'");
    if (implicit_token_) notes.push_back("records without a token index were numbered in file order per request");
    if (!phase_spellings_.empty()) {
      std::string s;
      for (const auto& [a, b] : phase_spellings_) s += (s.empty() ? "" : ", ") + ("'" + a + "' -> " + b);
      notes.push_back("phases read as: " + s);
    }

    // draft tokens: not the target's routing
    std::map<std::size_t, DroppedRecords> draft_drops;
    std::vector<std::pair<const TokenKey*, TokenEntry*>> all;
    for (auto& [k, te] : tokens_) {
      if (te.phase == DumpPhase::draft) {
        auto& d = draft_drops[std::get<0>(k)];
        ++d.tokens;
        d.records += te.records;
        if (d.token_indices.size() < 8) d.token_indices.push_back(std::get<2>(k));
        continue;
      }
      all.emplace_back(&k, &te);
    }
    if (all.empty()) fail("", "", "", "no routing records of the target model (every token has phase 'draft')");

    // layers
    std::set<std::int64_t> ids;
    for (const auto& [_, te] : all) {
      for (const auto& [l, __] : te->layers) ids.insert(l);
    }
    if (ids.empty()) fail("", "layer", "", "no token has routing for any layer");
    std::map<std::int64_t, std::uint32_t> ordinal;
    std::uint32_t L = 0;
    if (opt_.shape) {
      const ModelShape& s = *opt_.shape;
      bool decoder = true, plain = true;
      for (auto id : ids) {
        decoder = decoder && id >= 0 && id < s.decoder_layers && s.is_moe_layer(static_cast<std::uint32_t>(id));
        plain = plain && id >= 0 && id < s.moe_layers();
      }
      L = s.moe_layers();
      if (plain) {
        for (auto id : ids) ordinal[id] = static_cast<std::uint32_t>(id);
        notes.push_back("layer ids read as MoE-layer ordinals 0.." + std::to_string(L - 1) + " of the model");
      } else if (decoder) {
        for (auto id : ids) ordinal[id] = (static_cast<std::uint32_t>(id) - s.first_dense_layers) / s.moe_layer_interval;
        notes.push_back("layer ids read as decoder-layer indices and mapped to MoE-layer ordinals");
      } else {
        std::string list;
        for (auto id : ids) list += (list.empty() ? "" : ", ") + std::to_string(id);
        fail("", "layer", list, "are neither MoE-layer ordinals (0.." + std::to_string(L - 1) + ") nor the model's MoE decoder layers");
      }
    } else {
      if (ids.size() > 4096) fail("", "layer", std::to_string(ids.size()) + " distinct ids", "more than 4096 MoE layers");
      for (auto id : ids) ordinal[id] = L++;
      const bool contiguous = *ids.rbegin() - *ids.begin() + 1 == static_cast<std::int64_t>(ids.size());
      notes.push_back("moe_layers = " + std::to_string(L) + " inferred from the distinct layer ids (" + std::to_string(*ids.begin()) + ".." +
                      std::to_string(*ids.rbegin()) + (contiguous ? "" : ", not contiguous") + "); pass --model to map decoder layers");
    }
    if (!layer_name_example_.empty()) notes.push_back("layer ids read from names holding one number ('" + layer_name_example_ + ")");
    if (list_positions_) notes.push_back("layer ids of per-layer lists are the list positions (entries without a layer field)");
    if (null_layers_ > 0) notes.push_back(std::to_string(null_layers_) + " null per-layer entries skipped (layers without routing)");

    // experts and top-k
    std::uint32_t max_id = 0;
    std::size_t k_seen = 0;
    for (const auto& [_, te] : all) {
      for (const auto& [__, lr] : te->layers) {
        for (auto e : lr.experts) max_id = std::max<std::uint32_t>(max_id, e);
        k_seen = std::max(k_seen, lr.experts.size());
      }
    }
    auto meta_uint = [&](std::initializer_list<const char*> keys) -> std::optional<std::uint32_t> {
      for (const char* k : keys) {
        if (meta_json_.contains(k) && meta_json_[k].is_number_unsigned() && meta_json_[k].get<std::uint64_t>() <= 0xFFFFFFFFU) {
          return meta_json_[k].get<std::uint32_t>();
        }
      }
      return std::nullopt;
    };
    std::uint32_t E = 0;
    if (opt_.experts) {
      E = *opt_.experts;
    } else if (opt_.shape) {
      E = opt_.shape->experts_per_layer;
    } else if (auto m = meta_uint({"num_experts", "n_routed_experts", "num_local_experts", "experts_per_layer"})) {
      E = *m;
      notes.push_back("experts_per_layer = " + std::to_string(E) + " from the dump's meta");
    } else {
      E = max_id + 1;
      notes.push_back("experts_per_layer = " + std::to_string(E) + " inferred as the largest expert id + 1 (pass --model or --experts if experts were never chosen)");
    }
    if (max_id >= E) fail("", "experts", std::to_string(max_id), "expert id at or above the expert count (" + std::to_string(E) + ")");
    std::uint32_t K = 0;
    if (opt_.top_k) {
      K = *opt_.top_k;
    } else if (opt_.shape) {
      K = opt_.shape->top_k;
    } else if (auto m = meta_uint({"top_k", "num_experts_per_tok", "moe_topk", "topk"})) {
      K = *m;
      notes.push_back("top_k = " + std::to_string(K) + " from the dump's meta");
    } else {
      K = static_cast<std::uint32_t>(k_seen);
      notes.push_back("top_k = " + std::to_string(K) + " inferred from the longest expert list");
    }
    std::string name = opt_.model_name;
    if (name.empty()) {
      for (const char* k : {"model", "model_name", "name"}) {
        if (meta_json_.contains(k) && meta_json_[k].is_string()) {
          name = meta_json_[k].get<std::string>();
          notes.push_back("model name '" + name + "' from the dump's meta");
          break;
        }
      }
    }

    // the tokens of each request in order: by (step, token) when every token has a step id (SD
    // dumps may repeat a position in consecutive steps), else by token index
    std::vector<std::vector<std::pair<const TokenKey*, TokenEntry*>>> by_request(request_order_.size());
    for (const auto& t : all) by_request[std::get<0>(*t.first)].push_back(t);
    for (auto& toks : by_request) {
      const bool all_steps = std::all_of(toks.begin(), toks.end(), [](const auto& t) { return t.second->step.has_value(); });
      if (!all_steps) {
        std::stable_sort(toks.begin(), toks.end(), [](const auto& a, const auto& b) { return std::get<2>(*a.first) < std::get<2>(*b.first); });
      }
    }

    // steps over the whole dump: by explicit step ids, else by phase runs, else prefill_tokens
    bool any_phase = false;
    for (const auto& [_, te] : all) any_phase = any_phase || te->phase.has_value() || te->step.has_value();
    struct Group {
      std::size_t request, begin, end;  // tokens [begin, end) of by_request[request]
      StepInfo info;
    };
    std::vector<Group> groups;
    for (std::size_t r = 0; r < by_request.size(); ++r) {
      const auto& toks = by_request[r];
      std::size_t i = 0;
      std::uint32_t index_in_request = 0;  // tokens of this request already placed in steps
      while (i < toks.size()) {
        const TokenEntry& head = *toks[i].second;
        std::size_t end = i + 1;
        StepPhase phase = to_step_phase(head.phase.value_or(DumpPhase::decode));
        if (head.step) {
          while (end < toks.size() && toks[end].second->step == head.step) ++end;
          if (!head.phase) phase = end - i > 1 ? StepPhase::prefill : StepPhase::decode;
        } else if (head.phase) {
          if (*head.phase == DumpPhase::prefill) {
            while (end < toks.size() && toks[end].second->phase == DumpPhase::prefill && !toks[end].second->step) ++end;
          }
        } else if (index_in_request < opt_.prefill_tokens) {
          phase = StepPhase::prefill;
          while (end < toks.size() && !toks[end].second->phase && !toks[end].second->step &&
                 index_in_request + static_cast<std::uint32_t>(end - i) < opt_.prefill_tokens) {
            ++end;
          }
        }
        StepInfo s;
        s.request = static_cast<std::uint32_t>(r);
        s.phase = phase;
        s.tokens = static_cast<std::uint32_t>(end - i);
        if (phase == StepPhase::verify) {
          s.draft_len = static_cast<std::uint16_t>(head.draft_len.value_or(s.tokens - 1));
          s.accepted = static_cast<std::uint16_t>(head.accepted.value_or(0));
          if (!head.accepted) fail(head.where, "accepted", "", "a verify step needs the accepted draft count");
        } else if (phase == StepPhase::decode && s.tokens > 1) {
          fail(head.where, "step", std::to_string(*head.step), "groups " + std::to_string(s.tokens) + " tokens but is not a prefill or verify step");
        }
        groups.push_back({r, i, end, s});
        index_in_request += s.tokens;
        i = end;
      }
    }
    if (!any_phase) {
      notes.push_back(opt_.prefill_tokens == 0
                          ? "no phase or step fields: every token imported as a one-token decode step (use --prefill-tokens N for prompts)"
                          : "no phase or step fields: the first " + std::to_string(opt_.prefill_tokens) + " tokens of each request form its prefill step");
    }

    // incomplete tokens: refused, or dropped (a verify step whole)
    auto complete = [&](const TokenEntry& te) {
      if (te.layers.size() < L) return false;
      std::vector<bool> have(L, false);
      for (const auto& [id, _] : te.layers) have[ordinal.at(id)] = true;
      return std::all_of(have.begin(), have.end(), [](bool b) { return b; });
    };
    std::map<std::size_t, DroppedRecords> incomplete_drops, verify_drops;
    std::vector<std::vector<const std::pair<const TokenKey*, TokenEntry*>*>> kept_tokens(groups.size());
    for (std::size_t g = 0; g < groups.size(); ++g) {
      const Group& gr = groups[g];
      const auto& toks = by_request[gr.request];
      bool any_incomplete = false;
      for (std::size_t t = gr.begin; t < gr.end; ++t) {
        const TokenEntry& te = *toks[t].second;
        if (complete(te)) continue;
        any_incomplete = true;
        if (!drop) {
          std::vector<bool> have(L, false);
          for (const auto& [id, _] : te.layers) have[ordinal.at(id)] = true;
          std::uint32_t l = 0;
          while (have[l]) ++l;
          fail(te.where, "layer", std::to_string(l), "token " + std::to_string(std::get<2>(*toks[t].first)) + " of request " + request_order_[gr.request] +
                                                         " has no routing for MoE layer " + std::to_string(l));
        }
      }
      for (std::size_t t = gr.begin; t < gr.end; ++t) {
        const TokenEntry& te = *toks[t].second;
        const bool ok = complete(te);
        if (ok && !(any_incomplete && gr.info.phase == StepPhase::verify)) {
          kept_tokens[g].push_back(&toks[t]);
          continue;
        }
        auto& d = ok ? verify_drops[gr.request] : incomplete_drops[gr.request];
        ++d.tokens;
        d.records += te.records;
        if (d.token_indices.size() < 8) d.token_indices.push_back(std::get<2>(*toks[t].first));
      }
    }

    // top-k, weights and token ids over the tokens kept
    bool any_w = false, all_w = true, any_id = false, all_id = true, any_pos = false, all_pos = true;
    for (const auto& kept : kept_tokens) {
      for (const auto* t : kept) {
        const TokenEntry& te = *t->second;
        any_id = any_id || te.token_id.has_value();
        all_id = all_id && te.token_id.has_value();
        any_pos = any_pos || te.position.has_value();
        all_pos = all_pos && te.position.has_value();
        for (const auto& [__, lr] : te.layers) {
          any_w = any_w || lr.has_weights;
          all_w = all_w && lr.has_weights;
        }
      }
    }
    if (any_w && !all_w) {
      for (const auto& kept : kept_tokens) {
        for (const auto* t : kept) {
          for (const auto& [__, lr] : t->second->layers) {
            if (!lr.has_weights) fail(t->second->where, "weights", "", "missing here but present on other records: give weights everywhere or nowhere");
          }
        }
      }
    }
    if (any_id && !all_id) notes.push_back("token ids present on some records only: not imported");
    if (any_pos && !all_pos) notes.push_back("positions present on some tokens only: the token index is used as the position");
    if (all_pos && any_pos && !used_spellings_[kToken].empty()) {
      notes.push_back("token order from the token index, token positions from '" + join_set(used_spellings_[kPosition], "'/'") + "'");
    }

    // the report's drop list: input damage first, then per request
    for (const auto& d : input_drops_) report.dropped.push_back(d);
    for (std::size_t r = 0; r < request_order_.size(); ++r) {
      auto add = [&](std::map<std::size_t, DroppedRecords>& m, const char* reason) {
        auto it = m.find(r);
        if (it == m.end()) return;
        it->second.request = request_order_[r];
        it->second.reason = reason;
        report.dropped.push_back(it->second);
      };
      add(incomplete_drops, "lacking some MoE layers");
      add(verify_drops, "of verify steps that lost a token (a verify step is kept whole or not at all)");
      add(draft_drops, "with phase 'draft' (the draft model's own passes)");
    }
    for (const auto& d : report.dropped) {
      report.dropped_tokens += d.tokens;
      report.dropped_records += d.records;
    }

    // requests left without tokens are left out (the others renumbered in order)
    std::vector<std::size_t> new_index(request_order_.size(), SIZE_MAX);
    std::vector<std::string> names;
    for (std::size_t g = 0; g < groups.size(); ++g) {
      if (!kept_tokens[g].empty() && new_index[groups[g].request] == SIZE_MAX) {
        new_index[groups[g].request] = 0;
      }
    }
    for (std::size_t r = 0; r < request_order_.size(); ++r) {
      if (new_index[r] == SIZE_MAX) {
        notes.push_back("request " + request_order_[r] + " has no token left: not in the trace");
        continue;
      }
      new_index[r] = names.size();
      names.push_back(request_order_[r]);
    }
    if (names.empty()) {
      fail("", "", "", "every token lacks some of the " + std::to_string(L) + " MoE layers: nothing to import (are the layer ids right? see --model)");
    }
    if (report.dropped_records > 0) {
      notes.push_back("dropped in all: " + std::to_string(report.dropped_tokens) + (report.dropped_tokens == 1 ? " token, " : " tokens, ") +
                      std::to_string(report.dropped_records) + (report.dropped_records == 1 ? " record" : " records") +
                      " (see the dropped lines; --incomplete error refuses damaged dumps)");
    }

    io::TraceMeta meta;
    meta.model = {name.empty() ? "unknown" : name, L, E, K};
    meta.source = opt_.source.empty() ? "imported routing dump" : opt_.source;
    meta.dataset = opt_.dataset;
    meta.request_count = static_cast<std::uint32_t>(names.size());
    meta.request_ids = names;
    meta.provenance = {{"imported_from", file_}, {"layout", report.layout}};
    if (report.dropped_tokens > 0 || report.dropped_records > 0) {
      nlohmann::json d = nlohmann::json::array();
      for (const auto& x : report.dropped) d.push_back(describe(x));
      meta.provenance["dropped"] = d;
    }
    if (!meta_json_.empty()) meta.provenance["dump_meta"] = meta_json_;
    io::TraceWriter w(meta);

    std::vector<std::uint16_t> ex;
    std::vector<float> wt;
    std::vector<std::uint32_t> tid, pos;
    std::vector<const LayerRouting*> by_ordinal(L, nullptr);
    for (std::size_t g = 0; g < groups.size(); ++g) {
      const auto& kept = kept_tokens[g];
      if (kept.empty()) continue;
      StepInfo s = groups[g].info;
      s.request = static_cast<std::uint32_t>(new_index[groups[g].request]);
      s.tokens = static_cast<std::uint32_t>(kept.size());
      ex.clear();
      wt.clear();
      tid.clear();
      pos.clear();
      for (const auto* t : kept) {
        const TokenEntry& te = *t->second;
        std::fill(by_ordinal.begin(), by_ordinal.end(), nullptr);
        for (const auto& [id, lr] : te.layers) by_ordinal[ordinal.at(id)] = &lr;
        for (std::uint32_t l = 0; l < L; ++l) {
          const LayerRouting& lr = *by_ordinal[l];
          if (lr.experts.size() != K) {
            fail(te.where, "experts", std::to_string(lr.experts.size()) + " ids", "every expert list must have top_k = " + std::to_string(K) + " ids");
          }
          ex.insert(ex.end(), lr.experts.begin(), lr.experts.end());
          if (all_w) wt.insert(wt.end(), lr.weights.begin(), lr.weights.end());
        }
        if (all_id) tid.push_back(*te.token_id);
        if (all_pos) {
          pos.push_back(*te.position);
        } else {
          const std::int64_t p = std::get<2>(*t->first);
          if (p > std::int64_t{0xFFFFFFFF}) fail(te.where, "token", std::to_string(p), "token indices must be below 2^32");
          pos.push_back(static_cast<std::uint32_t>(std::max<std::int64_t>(0, p)));
        }
      }
      const std::string& head_where = kept.front()->second->where;
      try {
        w.add_step(s, ex, wt, tid, pos);
      } catch (const ConfigError& e) {
        throw ConfigError(file_, head_where + " (" + e.field() + ")", e.value(), e.reason());
      }
      report.tokens += s.tokens;
      ++report.steps;
    }
    report.requests = names.size();
    report.layers = L;
    report.experts = E;
    report.top_k = K;
    report.notes = std::move(notes);
    return {std::move(w), std::move(report)};
  }

  ImportReport report;

 private:
  static StepPhase to_step_phase(DumpPhase p) noexcept {
    return p == DumpPhase::prefill ? StepPhase::prefill : p == DumpPhase::verify ? StepPhase::verify : StepPhase::decode;
  }
  static std::string join_names(const std::vector<std::string>& v, const char* sep) {
    std::string s;
    for (const auto& x : v) s += (s.empty() ? "" : sep) + x;
    return s;
  }
  static std::string join_set(const std::set<std::string>& v, const char* sep = ", ") {
    std::string s;
    for (const auto& x : v) s += (s.empty() ? "" : sep) + x;
    return s;
  }

  std::string file_;
  const ImportOptions& opt_;
  const ImportFieldNames& f_;
  const std::map<std::string, std::string>* csv_columns_ = nullptr;  // while reading CSV rows
  std::string csv_layout_;
  nlohmann::json meta_json_ = nlohmann::json::object();
  std::map<std::string, std::size_t> request_index_;
  std::vector<std::string> request_order_;
  std::map<std::size_t, std::int64_t> next_token_;
  std::map<TokenKey, TokenEntry> tokens_;
  std::set<std::string> used_spellings_[kRoles];
  std::vector<std::string> input_notes_;
  std::vector<DroppedRecords> input_drops_;
  std::map<std::string, std::uint64_t> records_under_;                         // list key -> records
  std::map<std::string, std::pair<std::uint64_t, std::string>> ignored_lists_;  // key -> (times, what)
  std::set<std::string> inherited_keys_, outer_meta_keys_;
  std::map<std::string, std::string> phase_spellings_;
  std::string layer_name_example_;
  std::uint64_t without_request_ = 0, null_layers_ = 0;
  bool saw_a_ = false, saw_b_ = false, implicit_token_ = false, list_positions_ = false, records_key_found_ = false;
};

}  // namespace import_detail

/// Import a routing dump held in memory (JSON, JSONL or CSV; gzip-compressed or not). `source_name`
/// names it in messages and, by its extension, can select CSV. See the file comment.
[[nodiscard]] inline std::pair<io::TraceWriter, ImportReport> import_routing_text(std::string_view text, const std::string& source_name,
                                                                                 const ImportOptions& opt) {
  import_detail::Reader r(source_name, opt);
  if (is_gzip(text)) {
    auto g = gunzip(text, source_name);
    if (g.cut_short && opt.incomplete == IncompleteTokens::error) {
      throw ConfigError(source_name, "", "", "gzip: the compressed stream ends early (file cut short?); --incomplete drop imports what it holds");
    }
    r.note("gzip-compressed: " + std::to_string(text.size()) + " bytes -> " + std::to_string(g.text.size()) + " bytes" +
           (g.members > 1 ? " (" + std::to_string(g.members) + " members)" : std::string()));
    if (g.cut_short) {
      r.note("the gzip stream ends early (file cut short?): its last line is read only if complete");
      // the lost tail: whatever follows the last line end is a partial line
      const auto nl = g.text.find_last_of('\n');
      const std::size_t keep = nl == std::string::npos ? 0 : nl + 1;
      if (keep < g.text.size()) {
        r.drop_input("cut short with the gzip stream (after byte " + std::to_string(keep) + " of the decompressed text): not read", 1);
        g.text.resize(keep);
      }
    }
    r.parse(g.text);
  } else {
    if (import_detail::lower(std::filesystem::path(source_name).extension().string()) == ".gz") {
      r.note("named .gz but not gzip-compressed: read as plain text");
    }
    r.parse(text);
  }
  return r.build();
}

/// Import a routing dump from a file (gzip detected by its magic bytes). See the file comment.
[[nodiscard]] inline std::pair<io::TraceWriter, ImportReport> import_routing_dump(const std::filesystem::path& path, const ImportOptions& opt) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(path.string(), "", "", std::filesystem::exists(path) ? "cannot open for reading" : "no such file");
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in.eof() && in.fail()) throw ConfigError(path.string(), "", "", "read failed");
  return import_routing_text(bytes, path.string(), opt);
}

}  // namespace moesched::trace
