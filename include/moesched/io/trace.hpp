#pragma once
/// Routing traces: the moesched-trace format (traces/FORMAT.md) on a safetensors container.
///
///   moesched::io::TraceMeta meta;
///   meta.model = {"mixtral-8x7b", /*moe_layers=*/32, /*experts=*/8, /*top_k=*/2};
///   meta.source = "my-recorder";
///   moesched::io::TraceWriter w(meta);
///   w.add_step({.request = 0, .phase = moesched::StepPhase::decode, .tokens = 1}, experts);  // 1*32*2 ids
///   w.write("run.trace.safetensors");                     // atomic: temp file + rename
///
///   auto t = moesched::io::Trace::open("run.trace.safetensors");   // mmap + full validation
///   for (moesched::StepInfo s : t.steps())
///     for (std::uint32_t l = 0; l < t.meta().model.moe_layers; ++l)
///       use(t.expert(s.first_token, l, 0));
///
/// Reading is zero-copy: the file is memory-mapped and pages come in as steps are visited; only
/// a per-step offset index (8 bytes a step) is built at open. open() validates the container,
/// the metadata, every shape against the metadata, and (unless told not to) every value: expert
/// ids below the expert count, no id twice in one token's top-k, steps consistent (phases, draft
/// and accepted counts, token counts adding up to the routing rows), prediction channels in
/// range and in order. Every error is a ConfigError naming the file, the tensor or record, and the
/// offending value.

#include "moesched/core/error.hpp"
#include "moesched/core/routing.hpp"
#include "moesched/io/json_reader.hpp"
#include "moesched/io/safetensors.hpp"

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <tuple>
#include <cstdint>
#include <filesystem>
#include <iterator>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace moesched::io {

/// The format version this code writes and the newest it reads.
inline constexpr std::uint32_t kTraceFormatVersion = 1;
/// Value of `__metadata__["format"]` in every trace.
inline constexpr std::string_view kTraceFormatName = "moesched-trace";
/// Padding id in prediction candidate lists (0xFF in U8 tensors, 0xFFFF in U16 tensors).
inline constexpr std::uint16_t kNoExpert = 0xFFFF;

/// The routing shape a trace was recorded with.
struct TraceModel {
  std::string name;
  std::uint32_t moe_layers = 0;
  std::uint32_t experts_per_layer = 0;
  std::uint32_t top_k = 0;
};

/// A prediction channel: what a named predictor said ahead of time.
struct ChannelDesc {
  std::string name;            ///< e.g. "skip_gate", "draft_gate", "mlp_stride2"
  std::string description;     ///< how it was computed and from what
  std::uint32_t max_candidates = 0;  ///< ranked candidates per prediction (padded with kNoExpert)
  bool has_scores = false;
};

/// Optional per-token hidden states for offline predictor research.
struct HiddenDesc {
  std::string name;         ///< e.g. "moe_input"
  std::string description;  ///< where in the layer they were captured
  std::vector<std::uint32_t> layers;  ///< MoE layer ordinals captured, in tensor order
  std::uint32_t hidden_size = 0;
  TensorDType dtype = TensorDType::f16;  ///< F16, BF16 or F32
};

/// Everything in a trace besides the arrays.
struct TraceMeta {
  TraceModel model;
  std::string source;   ///< engine / recorder that produced it
  std::string dataset;  ///< prompts or data set
  std::string notes;
  bool generated = false;  ///< synthetic data (never passed off as recorded)
  std::uint32_t request_count = 0;       ///< requests are numbered 0..request_count-1
  std::vector<std::string> request_ids;  ///< optional names, request_count long when present
  std::vector<ChannelDesc> channels;
  std::vector<HiddenDesc> hidden;
  nlohmann::json provenance = nlohmann::json::object();  ///< free-form: commands, parameters, hashes
};

/// One prediction of a channel.
struct Prediction {
  std::uint32_t step = 0;           ///< trace step the prediction is for
  std::uint16_t layer = 0;          ///< MoE layer ordinal it predicts
  std::int32_t token = -1;          ///< token within the step; -1 = for the whole step
  std::int16_t available_after = -1;  ///< usable once this MoE layer of the step ran; -1 = before the step
};

namespace trace_detail {

inline std::string at_token(std::uint64_t token, std::uint32_t layer) {
  return "[token " + std::to_string(token) + ", layer " + std::to_string(layer) + "]";
}

inline void check_model(const TraceModel& m, const std::string& source) {
  auto bad = [&](const char* f, std::uint32_t v, const std::string& why) {
    throw ConfigError(source, std::string("model.") + f, std::to_string(v), why);
  };
  if (m.moe_layers < 1 || m.moe_layers > 4096) bad("moe_layers", m.moe_layers, "must be between 1 and 4096");
  if (m.experts_per_layer < 1 || m.experts_per_layer > 32768) {
    bad("experts_per_layer", m.experts_per_layer, "must be between 1 and 32768");
  }
  if (m.top_k < 1 || m.top_k > m.experts_per_layer) {
    bad("top_k", m.top_k, "must be between 1 and experts_per_layer (" + std::to_string(m.experts_per_layer) + ")");
  }
}

/// Expert-id element type for a given expert count: U8 leaves 0xFF free as padding.
[[nodiscard]] inline TensorDType id_dtype(std::uint32_t experts) noexcept {
  return experts <= 255 ? TensorDType::u8 : TensorDType::u16;
}

inline nlohmann::ordered_json meta_to_json(const TraceMeta& m) {
  nlohmann::ordered_json j;
  j["format_version"] = kTraceFormatVersion;
  j["model"] = {{"name", m.model.name},
                {"moe_layers", m.model.moe_layers},
                {"experts_per_layer", m.model.experts_per_layer},
                {"top_k", m.model.top_k}};
  j["source"] = m.source;
  j["dataset"] = m.dataset;
  j["notes"] = m.notes;
  j["generated"] = m.generated;
  j["request_count"] = m.request_count;
  if (!m.request_ids.empty()) j["request_ids"] = m.request_ids;
  nlohmann::ordered_json ch = nlohmann::ordered_json::array();
  for (const auto& c : m.channels) {
    ch.push_back({{"name", c.name}, {"description", c.description}, {"max_candidates", c.max_candidates},
                  {"has_scores", c.has_scores}});
  }
  j["channels"] = ch;
  nlohmann::ordered_json hs = nlohmann::ordered_json::array();
  for (const auto& h : m.hidden) {
    hs.push_back({{"name", h.name}, {"description", h.description}, {"layers", h.layers},
                  {"hidden_size", h.hidden_size}, {"dtype", std::string(tensor_dtype_name(h.dtype))}});
  }
  j["hidden_states"] = hs;
  j["provenance"] = m.provenance;
  return j;
}

inline TraceMeta meta_from_json(const nlohmann::json& j, const std::string& source) {
  const std::string path = "__metadata__.moesched_trace";
  JsonObjectReader r(j, source, path);
  TraceMeta m;
  const auto version = r.required_uint("format_version", 1);
  if (version > kTraceFormatVersion) {
    throw r.error("format_version", "written by a newer moesched; this reader understands version " +
                                        std::to_string(kTraceFormatVersion));
  }
  {
    auto mr = r.object("model");
    m.model.name = mr.optional_string("name").value_or("");
    m.model.moe_layers = mr.required_u32("moe_layers", 1);
    m.model.experts_per_layer = mr.required_u32("experts_per_layer", 1);
    m.model.top_k = mr.required_u32("top_k", 1);
    mr.finish();
  }
  m.source = r.optional_string("source").value_or("");
  m.dataset = r.optional_string("dataset").value_or("");
  m.notes = r.optional_string("notes").value_or("");
  m.generated = r.optional_bool("generated").value_or(false);
  m.request_count = r.required_u32("request_count");
  m.request_ids = r.optional_string_list("request_ids");
  if (!m.request_ids.empty() && m.request_ids.size() != m.request_count) {
    throw r.error("request_ids", "has " + std::to_string(m.request_ids.size()) + " names for request_count " +
                                     std::to_string(m.request_count));
  }
  if (const auto* ch = r.raw("channels")) {
    if (!ch->is_array()) throw r.error("channels", "expected a list");
    for (std::size_t i = 0; i < ch->size(); ++i) {
      JsonObjectReader cr((*ch)[i], source, path + ".channels[" + std::to_string(i) + "]");
      ChannelDesc c;
      c.name = cr.required_string("name");
      c.description = cr.optional_string("description").value_or("");
      c.max_candidates = static_cast<std::uint32_t>(cr.required_uint("max_candidates", 1, 4096));
      c.has_scores = cr.optional_bool("has_scores").value_or(false);
      cr.finish();
      m.channels.push_back(std::move(c));
    }
  }
  if (const auto* hs = r.raw("hidden_states")) {
    if (!hs->is_array()) throw r.error("hidden_states", "expected a list");
    for (std::size_t i = 0; i < hs->size(); ++i) {
      JsonObjectReader hr((*hs)[i], source, path + ".hidden_states[" + std::to_string(i) + "]");
      HiddenDesc h;
      h.name = hr.required_string("name");
      h.description = hr.optional_string("description").value_or("");
      h.hidden_size = static_cast<std::uint32_t>(hr.required_uint("hidden_size", 1, 1U << 20U));
      const auto* layers = hr.raw("layers");
      if (layers == nullptr || !layers->is_array() || layers->empty()) throw hr.error("layers", "expected a non-empty list of MoE layer ordinals");
      for (const auto& l : *layers) {
        if (!l.is_number_unsigned() || l.get<std::uint64_t>() >= m.model.moe_layers) {
          throw hr.error("layers", "entries must be MoE layer ordinals below moe_layers (" + std::to_string(m.model.moe_layers) + ")");
        }
        h.layers.push_back(l.get<std::uint32_t>());
      }
      const auto dt = hr.optional_choice("dtype", {"F16", "BF16", "F32"}).value_or(0);
      h.dtype = dt == 0 ? TensorDType::f16 : dt == 1 ? TensorDType::bf16 : TensorDType::f32;
      hr.finish();
      m.hidden.push_back(std::move(h));
    }
  }
  if (const auto* p = r.raw("provenance")) {
    if (!p->is_object()) throw r.error("provenance", "expected an object");
    m.provenance = *p;
  }
  r.finish();
  check_model(m.model, source);
  for (std::size_t i = 0; i < m.channels.size(); ++i) {
    for (std::size_t k = 0; k < i; ++k) {
      if (m.channels[k].name == m.channels[i].name) {
        throw ConfigError(source, path + ".channels[" + std::to_string(i) + "].name", "\"" + m.channels[i].name + "\"",
                          "duplicate channel name");
      }
    }
  }
  return m;
}

}  // namespace trace_detail

/// Builds a trace in memory, then writes it atomically. Every added record is checked at once,
/// so a recorder learns of a bad record where it made it.
class TraceWriter {
 public:
  explicit TraceWriter(TraceMeta meta) : meta_(std::move(meta)) {
    trace_detail::check_model(meta_.model, "trace metadata");
    if (meta_.request_ids.size() > meta_.request_count) meta_.request_count = static_cast<std::uint32_t>(meta_.request_ids.size());
    per_token_ = std::uint64_t{meta_.model.moe_layers} * meta_.model.top_k;
    stamp_.assign(meta_.model.experts_per_layer, 0);
    channels_.resize(meta_.channels.size());
    hidden_.resize(meta_.hidden.size());
    for (const auto& c : meta_.channels) {
      if (c.max_candidates < 1) throw ConfigError("trace metadata", "channels." + c.name + ".max_candidates", "0", "must be positive");
    }
  }

  [[nodiscard]] const TraceMeta& meta() const noexcept { return meta_; }
  [[nodiscard]] std::uint64_t step_count() const noexcept { return request_.size(); }
  [[nodiscard]] std::uint64_t token_count() const noexcept { return tokens_; }

  /// Append a step; `experts` holds tokens x moe_layers x top_k ids (token-major), `weights` the
  /// matching gate weights or nothing (all steps or none), `token_ids`/`positions` one per token
  /// or nothing. Returns the step's index.
  std::uint64_t add_step(StepInfo s, std::span<const std::uint16_t> experts, std::span<const float> weights = {},
                         std::span<const std::uint32_t> token_ids = {}, std::span<const std::uint32_t> positions = {}) {
    const std::string rec = "step " + std::to_string(step_count());
    if (const char* why = s.defect()) throw ConfigError("", rec, describe(s), why);
    if (s.request >= meta_.request_count && !meta_.request_ids.empty()) {
      throw ConfigError("", rec + ".request", std::to_string(s.request),
                        "is not below the number of request_ids (" + std::to_string(meta_.request_ids.size()) + ")");
    }
    const std::uint64_t n = std::uint64_t{s.tokens} * per_token_;
    if (experts.size() != n) {
      throw ConfigError("", rec + ".experts", std::to_string(experts.size()) + " ids",
                        "expected tokens x moe_layers x top_k = " + std::to_string(n));
    }
    // Check everything before changing anything: a rejected step leaves the writer as it was.
    const int with_weights = optional_column(rec + ".weights", weights.size(), n, weights_present_, step_count());
    const int with_ids = optional_column(rec + ".token_ids", token_ids.size(), s.tokens, ids_present_, step_count());
    const int with_pos = optional_column(rec + ".positions", positions.size(), s.tokens, pos_present_, step_count());
    const std::uint32_t k = meta_.model.top_k;
    for (std::uint64_t row = 0; row < n / k; ++row) {
      ++round_;
      for (std::uint32_t j = 0; j < k; ++j) {
        const std::uint16_t id = experts[row * k + j];
        if (id >= meta_.model.experts_per_layer || stamp_[id] == round_) {
          const std::string where = "routing_experts" + trace_detail::at_token(tokens_ + row / meta_.model.moe_layers,
                                                                              static_cast<std::uint32_t>(row % meta_.model.moe_layers));
          throw ConfigError("", where, std::to_string(id),
                            id >= meta_.model.experts_per_layer
                                ? "expert id must be below experts_per_layer (" + std::to_string(meta_.model.experts_per_layer) + ")"
                                : std::string("expert chosen twice in one token's top-k"));
        }
        stamp_[id] = round_;
      }
    }
    for (float w : weights) {
      if (!std::isfinite(w) || std::abs(w) > 65504.0F) {
        throw ConfigError("", rec + ".weights", to_text(w), "gate weights must be finite and fit in float16 (|w| <= 65504)");
      }
    }
    weights_present_ = with_weights;
    ids_present_ = with_ids;
    pos_present_ = with_pos;
    if (s.request >= meta_.request_count) meta_.request_count = s.request + 1;
    s.first_token = tokens_;
    request_.push_back(s.request);
    phase_.push_back(static_cast<std::uint8_t>(s.phase));
    tokens_col_.push_back(s.tokens);
    draft_.push_back(s.draft_len);
    accepted_.push_back(s.accepted);
    experts_.insert(experts_.end(), experts.begin(), experts.end());
    for (float w : weights) weights_.push_back(float_to_half(w));
    token_ids_.insert(token_ids_.end(), token_ids.begin(), token_ids.end());
    positions_.insert(positions_.end(), positions.begin(), positions.end());
    tokens_ += s.tokens;
    return step_count() - 1;
  }

  /// Append a prediction to channel `c`. Predictions of a channel must come in (step, layer,
  /// token) order; `ranked` holds at most max_candidates distinct ids, best first.
  void add_prediction(std::uint32_t c, Prediction p, std::span<const std::uint16_t> ranked,
                      std::span<const float> scores = {}) {
    if (c >= channels_.size()) throw ConfigError("", "channel", std::to_string(c), "no such channel");
    const ChannelDesc& d = meta_.channels[c];
    Channel& ch = channels_[c];
    const std::string rec = "channel '" + d.name + "' prediction " + std::to_string(ch.step.size());
    if (p.layer >= meta_.model.moe_layers) throw ConfigError("", rec + ".layer", std::to_string(p.layer), "not an MoE layer ordinal");
    if (p.token < -1) throw ConfigError("", rec + ".token", std::to_string(p.token), "must be -1 (whole step) or a token index");
    if (p.available_after < -1 || p.available_after >= static_cast<int>(meta_.model.moe_layers)) {
      throw ConfigError("", rec + ".available_after", std::to_string(p.available_after), "must be -1 or an MoE layer ordinal");
    }
    if (!ch.step.empty()) {
      const auto prev = std::make_tuple(ch.step.back(), ch.layer.back(), ch.token.back());
      if (std::make_tuple(p.step, p.layer, p.token) < prev) {
        throw ConfigError("", rec, "step " + std::to_string(p.step) + ", layer " + std::to_string(p.layer),
                          "predictions must be added in (step, layer, token) order");
      }
    }
    if (ranked.size() > d.max_candidates) {
      throw ConfigError("", rec + ".candidates", std::to_string(ranked.size()),
                        "more than max_candidates (" + std::to_string(d.max_candidates) + ")");
    }
    if (d.has_scores != !scores.empty() || (!scores.empty() && scores.size() != ranked.size())) {
      throw ConfigError("", rec + ".scores", std::to_string(scores.size()),
                        d.has_scores ? "one score per candidate required" : "this channel has no scores");
    }
    for (float sc : scores) {
      if (!std::isfinite(sc) || std::abs(sc) > 65504.0F) {
        throw ConfigError("", rec + ".scores", to_text(sc), "scores must be finite and fit in float16 (|s| <= 65504)");
      }
    }
    ++round_;
    for (std::uint16_t id : ranked) {
      if (id >= meta_.model.experts_per_layer) {
        throw ConfigError("", rec + ".candidates", std::to_string(id), "expert id must be below experts_per_layer");
      }
      if (stamp_[id] == round_) throw ConfigError("", rec + ".candidates", std::to_string(id), "candidate listed twice");
      stamp_[id] = round_;
    }
    ch.step.push_back(p.step);
    ch.layer.push_back(p.layer);
    ch.token.push_back(p.token);
    ch.available_after.push_back(p.available_after);
    for (std::uint32_t r = 0; r < d.max_candidates; ++r) {
      ch.candidates.push_back(r < ranked.size() ? ranked[r] : kNoExpert);
      if (d.has_scores) ch.scores.push_back(float_to_half(r < scores.size() ? scores[r] : 0.0F));
    }
  }

  /// Set hidden-state array `h` (raw little-endian elements of its dtype, tokens x layers x
  /// hidden_size, token-major). Checked against the token count at write time.
  void set_hidden(std::uint32_t h, std::vector<std::byte> data) {
    if (h >= hidden_.size()) throw ConfigError("", "hidden_states", std::to_string(h), "no such hidden-state array");
    hidden_[h] = std::move(data);
  }

  /// The safetensors container of this trace.
  [[nodiscard]] SafetensorsWriter to_safetensors() const {
    SafetensorsWriter w;
    w.metadata("format", std::string(kTraceFormatName));
    w.metadata("format_version", std::to_string(kTraceFormatVersion));
    w.metadata("moesched_trace", trace_detail::meta_to_json(meta_).dump());
    const std::uint64_t s = step_count();
    w.add_values("step_request", TensorDType::u32, {s}, request_);
    w.add_values("step_phase", TensorDType::u8, {s}, phase_);
    w.add_values("step_tokens", TensorDType::u32, {s}, tokens_col_);
    w.add_values("step_draft_len", TensorDType::u16, {s}, draft_);
    w.add_values("step_accepted", TensorDType::u16, {s}, accepted_);
    const std::vector<std::uint64_t> routing_shape{tokens_, meta_.model.moe_layers, meta_.model.top_k};
    add_ids(w, "routing_experts", routing_shape, experts_);
    if (weights_present_ == 1) w.add_values("routing_weights", TensorDType::f16, routing_shape, weights_);
    if (ids_present_ == 1) w.add_values("token_ids", TensorDType::u32, {tokens_}, token_ids_);
    if (pos_present_ == 1) w.add_values("token_positions", TensorDType::u32, {tokens_}, positions_);
    for (std::size_t c = 0; c < channels_.size(); ++c) {
      const Channel& ch = channels_[c];
      const std::string p = "channel." + std::to_string(c) + ".";
      const std::uint64_t n = ch.step.size();
      for (auto st : ch.step) {
        if (st >= s) {
          throw ConfigError("", "channel '" + meta_.channels[c].name + "'", "step " + std::to_string(st),
                            "predicts a step the trace does not have (" + std::to_string(s) + " steps)");
        }
      }
      w.add_values(p + "step", TensorDType::u32, {n}, ch.step);
      w.add_values(p + "layer", TensorDType::u16, {n}, ch.layer);
      w.add_values(p + "token", TensorDType::i32, {n}, ch.token);
      w.add_values(p + "available_after", TensorDType::i16, {n}, ch.available_after);
      add_ids(w, p + "experts", {n, meta_.channels[c].max_candidates}, ch.candidates);
      if (meta_.channels[c].has_scores) w.add_values(p + "scores", TensorDType::f16, {n, meta_.channels[c].max_candidates}, ch.scores);
    }
    for (std::size_t h = 0; h < hidden_.size(); ++h) {
      const HiddenDesc& d = meta_.hidden[h];
      const std::vector<std::uint64_t> shape{tokens_, d.layers.size(), d.hidden_size};
      if (hidden_[h].empty()) throw ConfigError("", "hidden_states." + d.name, "", "declared but never set");
      w.add("hidden." + std::to_string(h), d.dtype, shape, hidden_[h]);
    }
    return w;
  }

  /// Write the trace to `path` (atomically).
  void write(const std::filesystem::path& path) const {
    try {
      to_safetensors().write(path);
    } catch (const ConfigError& e) {
      throw e.in_source(path.string());
    }
  }

 private:
  struct Channel {
    std::vector<std::uint32_t> step;
    std::vector<std::uint16_t> layer;
    std::vector<std::int32_t> token;
    std::vector<std::int16_t> available_after;
    std::vector<std::uint16_t> candidates;
    std::vector<std::uint16_t> scores;  // f16 bits
  };

  static std::string describe(const StepInfo& s) {
    return std::string(phase_name(s.phase)) + ", tokens " + std::to_string(s.tokens) + ", draft_len " +
           std::to_string(s.draft_len) + ", accepted " + std::to_string(s.accepted);
  }
  /// An optional per-step column: present in every step or in none (state: -1 unknown, 0, 1).
  /// Returns the state after this step; changes nothing.
  static int optional_column(const std::string& field, std::size_t got, std::uint64_t want, int state,
                             std::uint64_t step) {
    const int here = got == 0 ? 0 : 1;
    if (here == 1 && got != want) {
      throw ConfigError("", field, std::to_string(got) + " values", "expected " + std::to_string(want));
    }
    if (state != -1 && state != here) {
      throw ConfigError("", field, here ? "present" : "absent",
                        "must be given for every step or for none (step " + std::to_string(step) + " differs)");
    }
    return here;
  }
  void add_ids(SafetensorsWriter& w, const std::string& name, std::vector<std::uint64_t> shape,
               const std::vector<std::uint16_t>& ids) const {
    if (trace_detail::id_dtype(meta_.model.experts_per_layer) == TensorDType::u8) {
      std::vector<std::uint8_t> narrow(ids.size());
      for (std::size_t i = 0; i < ids.size(); ++i) narrow[i] = ids[i] == kNoExpert ? 0xFF : static_cast<std::uint8_t>(ids[i]);
      w.add_values(name, TensorDType::u8, std::move(shape), narrow);
    } else {
      w.add_values(name, TensorDType::u16, std::move(shape), ids);
    }
  }

  TraceMeta meta_;
  std::uint64_t per_token_ = 0;
  std::uint64_t tokens_ = 0;
  std::vector<std::uint32_t> request_;
  std::vector<std::uint8_t> phase_;
  std::vector<std::uint32_t> tokens_col_;
  std::vector<std::uint16_t> draft_;
  std::vector<std::uint16_t> accepted_;
  std::vector<std::uint16_t> experts_;
  std::vector<std::uint16_t> weights_;  // f16 bits
  std::vector<std::uint32_t> token_ids_;
  std::vector<std::uint32_t> positions_;
  int weights_present_ = -1;
  int ids_present_ = -1;
  int pos_present_ = -1;
  std::vector<Channel> channels_;
  std::vector<std::vector<std::byte>> hidden_;
  std::vector<std::uint64_t> stamp_;
  std::uint64_t round_ = 0;
};

/// How much open() checks.
struct TraceOpenOptions {
  /// Scan every value (ids, steps, channels). Costs one pass over the data at memory speed;
  /// turn off only for files this process wrote or validated itself.
  bool validate_data = true;
};

/// A validated, memory-mapped trace. Move-only (it keeps pointers into its tensor table).
class Trace {
 public:
  Trace() = default;
  Trace(Trace&&) noexcept = default;
  Trace& operator=(Trace&&) noexcept = default;
  Trace(const Trace&) = delete;
  Trace& operator=(const Trace&) = delete;

  [[nodiscard]] static Trace open(const std::filesystem::path& path, TraceOpenOptions opt = {}) {
    Trace t;
    t.file_ = SafetensorsFile::open(path);
    t.init(opt);
    return t;
  }
  /// From a buffer the caller keeps alive (tests, fuzzing, in-memory pipelines).
  [[nodiscard]] static Trace from_buffer(const std::byte* data, std::uint64_t size, std::string source,
                                         TraceOpenOptions opt = {}) {
    Trace t;
    t.file_ = SafetensorsFile::from_buffer(data, size, std::move(source));
    t.init(opt);
    return t;
  }

  [[nodiscard]] const TraceMeta& meta() const noexcept { return meta_; }
  [[nodiscard]] const SafetensorsFile& container() const noexcept { return file_; }
  [[nodiscard]] std::uint64_t step_count() const noexcept { return step_tokens_->shape[0]; }
  [[nodiscard]] std::uint64_t token_count() const noexcept { return experts_->shape[0]; }

  /// Step `s` (s < step_count()).
  [[nodiscard]] StepInfo step(std::uint64_t s) const noexcept {
    StepInfo i;
    i.request = file_.load<std::uint32_t>(*step_request_, s);
    i.phase = static_cast<StepPhase>(file_.load<std::uint8_t>(*step_phase_, s));
    i.tokens = file_.load<std::uint32_t>(*step_tokens_, s);
    i.draft_len = file_.load<std::uint16_t>(*step_draft_, s);
    i.accepted = file_.load<std::uint16_t>(*step_accepted_, s);
    i.first_token = first_token_[s];
    return i;
  }
  /// Expert chosen in top-k slot `k` of `token` at MoE layer `layer`.
  [[nodiscard]] std::uint16_t expert(std::uint64_t token, std::uint32_t layer, std::uint32_t k) const noexcept {
    const std::uint64_t i = (token * meta_.model.moe_layers + layer) * meta_.model.top_k + k;
    return wide_ids_ ? file_.load<std::uint16_t>(*experts_, i) : std::to_integer<std::uint16_t>(file_.bytes(*experts_)[i]);
  }
  /// The top_k experts of `token` at `layer`, into out[0..top_k).
  void experts(std::uint64_t token, std::uint32_t layer, std::uint16_t* out) const noexcept {
    copy_ids((token * meta_.model.moe_layers + layer) * meta_.model.top_k, meta_.model.top_k, out);
  }
  /// All moe_layers x top_k experts of `token` (layer-major), into out[0..moe_layers * top_k).
  void token_experts(std::uint64_t token, std::uint16_t* out) const noexcept {
    const std::uint64_t n = std::uint64_t{meta_.model.moe_layers} * meta_.model.top_k;
    copy_ids(token * n, n, out);
  }
  [[nodiscard]] bool has_weights() const noexcept { return weights_ != nullptr; }
  /// Gate weight of (token, layer, k); requires has_weights().
  [[nodiscard]] float weight(std::uint64_t token, std::uint32_t layer, std::uint32_t k) const noexcept {
    const std::uint64_t i = (token * meta_.model.moe_layers + layer) * meta_.model.top_k + k;
    return read_float(*weights_, i);
  }
  [[nodiscard]] bool has_token_ids() const noexcept { return token_ids_ != nullptr; }
  [[nodiscard]] std::uint32_t token_id(std::uint64_t token) const noexcept { return file_.load<std::uint32_t>(*token_ids_, token); }
  [[nodiscard]] bool has_positions() const noexcept { return positions_ != nullptr; }
  [[nodiscard]] std::uint32_t position(std::uint64_t token) const noexcept { return file_.load<std::uint32_t>(*positions_, token); }

  /// Index of the channel called `name`; ConfigError listing the channels if there is none.
  [[nodiscard]] std::uint32_t channel_index(std::string_view name) const {
    std::string list;
    for (std::size_t c = 0; c < meta_.channels.size(); ++c) {
      if (meta_.channels[c].name == name) return static_cast<std::uint32_t>(c);
      list += (list.empty() ? "" : ", ") + meta_.channels[c].name;
    }
    throw ConfigError(file_.source(), "channel", std::string(name), "no such prediction channel; the trace has: " + (list.empty() ? std::string("none") : list));
  }
  [[nodiscard]] std::uint64_t prediction_count(std::uint32_t c) const noexcept { return channels_[c].step->shape[0]; }
  [[nodiscard]] Prediction prediction(std::uint32_t c, std::uint64_t i) const noexcept {
    const ChannelTensors& ch = channels_[c];
    return {file_.load<std::uint32_t>(*ch.step, i), file_.load<std::uint16_t>(*ch.layer, i),
            file_.load<std::int32_t>(*ch.token, i), file_.load<std::int16_t>(*ch.available_after, i)};
  }
  /// Candidates of prediction i, best first, into out[0..max_candidates); returns how many.
  std::uint32_t candidates(std::uint32_t c, std::uint64_t i, std::uint16_t* out) const noexcept {
    const ChannelTensors& ch = channels_[c];
    const std::uint32_t m = meta_.channels[c].max_candidates;
    std::uint32_t n = 0;
    for (std::uint32_t r = 0; r < m; ++r) {
      const std::uint64_t idx = i * m + r;
      const std::uint16_t id = wide_ids_ ? file_.load<std::uint16_t>(*ch.experts, idx)
                                         : std::to_integer<std::uint16_t>(file_.bytes(*ch.experts)[idx]);
      if (id == kNoExpert || (!wide_ids_ && id == 0xFF)) break;
      out[n++] = id;
    }
    return n;
  }
  [[nodiscard]] float score(std::uint32_t c, std::uint64_t i, std::uint32_t r) const noexcept {
    return read_float(*channels_[c].scores, i * meta_.channels[c].max_candidates + r);
  }
  /// Predictions of channel c for step s: indices [first, second).
  [[nodiscard]] std::pair<std::uint64_t, std::uint64_t> predictions_of_step(std::uint32_t c, std::uint64_t s) const noexcept {
    return {channels_[c].step_begin[s], channels_[c].step_begin[s + 1]};
  }
  /// Hidden-state tensor h (shape tokens x layers x hidden_size).
  [[nodiscard]] const TensorInfo& hidden_tensor(std::uint32_t h) const noexcept { return *hidden_[h]; }
  /// Element i of one of this trace's float tensors (F16, BF16 or F32: weights, scores, hidden
  /// states) as float.
  [[nodiscard]] float read_float(const TensorInfo& t, std::uint64_t i) const noexcept {
    switch (t.dtype) {
      case TensorDType::f16: return half_to_float(file_.load<std::uint16_t>(t, i));
      case TensorDType::bf16: return bf16_to_float(file_.load<std::uint16_t>(t, i));
      default: return file_.load<float>(t, i);
    }
  }

  /// Forward range over the steps.
  class StepRange {
   public:
    class iterator {
     public:
      using iterator_category = std::input_iterator_tag;
      using value_type = StepInfo;
      using difference_type = std::ptrdiff_t;
      iterator() = default;
      iterator(const Trace* t, std::uint64_t s) : t_(t), s_(s) {}
      StepInfo operator*() const noexcept { return t_->step(s_); }
      iterator& operator++() noexcept {
        ++s_;
        return *this;
      }
      iterator operator++(int) noexcept {
        iterator old = *this;
        ++s_;
        return old;
      }
      friend bool operator==(const iterator& a, const iterator& b) noexcept { return a.s_ == b.s_; }

     private:
      const Trace* t_ = nullptr;
      std::uint64_t s_ = 0;
    };
    explicit StepRange(const Trace* t) : t_(t) {}
    [[nodiscard]] iterator begin() const noexcept { return {t_, 0}; }
    [[nodiscard]] iterator end() const noexcept { return {t_, t_->step_count()}; }

   private:
    const Trace* t_;
  };
  [[nodiscard]] StepRange steps() const noexcept { return StepRange(this); }

 private:
  struct ChannelTensors {
    const TensorInfo* step = nullptr;
    const TensorInfo* layer = nullptr;
    const TensorInfo* token = nullptr;
    const TensorInfo* available_after = nullptr;
    const TensorInfo* experts = nullptr;
    const TensorInfo* scores = nullptr;
    std::vector<std::uint64_t> step_begin;  // step_count + 1
  };

  /// ids [first, first + n) of routing_experts into out, widening U8 ids.
  void copy_ids(std::uint64_t first, std::uint64_t n, std::uint16_t* __restrict__ out) const noexcept {
    const std::byte* p = file_.bytes(*experts_);
    if (wide_ids_) {
      std::memcpy(out, p + 2 * first, 2 * n);  // little-endian host (static_assert in safetensors.hpp)
    } else {
      // restrict: the source bytes may not alias `out`, so the widening loop vectorises
      const auto* __restrict__ b = reinterpret_cast<const std::uint8_t*>(p + first);
      for (std::uint64_t i = 0; i < n; ++i) out[i] = b[i];
    }
  }

  [[noreturn]] void fail(const std::string& field, const std::string& value, const std::string& reason) const {
    throw ConfigError(file_.source(), field, value, reason);
  }

  const TensorInfo* need(const std::string& name, std::initializer_list<TensorDType> dtypes,
                         const std::vector<std::uint64_t>& shape) {
    const TensorInfo* t = file_.find(name);
    if (t == nullptr) fail(name, "", "required tensor is missing");
    check(*t, dtypes, shape);
    return t;
  }
  const TensorInfo* maybe(const std::string& name, std::initializer_list<TensorDType> dtypes,
                          const std::vector<std::uint64_t>& shape) {
    const TensorInfo* t = file_.find(name);
    if (t != nullptr) check(*t, dtypes, shape);
    return t;
  }
  void check(const TensorInfo& t, std::initializer_list<TensorDType> dtypes, const std::vector<std::uint64_t>& shape) const {
    bool ok = false;
    std::string names;
    for (auto d : dtypes) {
      ok = ok || d == t.dtype;
      names += (names.empty() ? "" : " or ") + std::string(tensor_dtype_name(d));
    }
    if (!ok) fail(t.name + ".dtype", std::string(tensor_dtype_name(t.dtype)), "expected " + names);
    auto render = [](const std::vector<std::uint64_t>& s) {
      std::string out = "[";
      for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
      return out + "]";
    };
    if (t.shape != shape) fail(t.name + ".shape", render(t.shape), "expected " + render(shape) + " from the metadata and the step tensors");
  }

  void init(TraceOpenOptions opt) {
    const auto& md = file_.metadata();
    const auto fmt = md.find("format");
    if (fmt == md.end() || fmt->second != kTraceFormatName) {
      fail("__metadata__.format", fmt == md.end() ? "" : "\"" + fmt->second + "\"",
           "not a moesched trace (expected \"moesched-trace\")");
    }
    const auto mt = md.find("moesched_trace");
    if (mt == md.end()) fail("__metadata__.moesched_trace", "", "required metadata is missing");
    nlohmann::json mj;
    try {
      mj = nlohmann::json::parse(mt->second);
    } catch (const nlohmann::json::exception&) {  // parse_error, or out_of_range for huge numbers
      fail("__metadata__.moesched_trace", "", "not valid JSON");
    }
    meta_ = trace_detail::meta_from_json(mj, file_.source());
    const auto& m = meta_.model;

    const TensorInfo* tok = file_.find("step_tokens");
    if (tok == nullptr) fail("step_tokens", "", "required tensor is missing");
    if (tok->shape.size() != 1) fail("step_tokens.shape", std::to_string(tok->shape.size()) + " dimensions", "expected 1");
    const std::uint64_t s = tok->shape[0];
    step_tokens_ = need("step_tokens", {TensorDType::u32}, {s});
    step_request_ = need("step_request", {TensorDType::u32}, {s});
    step_phase_ = need("step_phase", {TensorDType::u8}, {s});
    step_draft_ = need("step_draft_len", {TensorDType::u16}, {s});
    step_accepted_ = need("step_accepted", {TensorDType::u16}, {s});
    first_token_.resize(s + 1);
    std::uint64_t total = 0;
    for (std::uint64_t i = 0; i < s; ++i) {
      first_token_[i] = total;
      total += file_.load<std::uint32_t>(*step_tokens_, i);
    }
    first_token_[s] = total;
    const TensorInfo* ex = file_.find("routing_experts");
    if (ex == nullptr) fail("routing_experts", "", "required tensor is missing");
    if (ex->shape.size() == 3 && ex->shape[0] != total) {
      fail("step_tokens", "sum " + std::to_string(total),
           "the steps' token counts must add up to the routing rows (routing_experts has " + std::to_string(ex->shape[0]) + ")");
    }
    experts_ = need("routing_experts", {TensorDType::u8, TensorDType::u16}, {total, m.moe_layers, m.top_k});
    wide_ids_ = experts_->dtype == TensorDType::u16;
    weights_ = maybe("routing_weights", {TensorDType::f16, TensorDType::bf16, TensorDType::f32}, {total, m.moe_layers, m.top_k});
    token_ids_ = maybe("token_ids", {TensorDType::u32}, {total});
    positions_ = maybe("token_positions", {TensorDType::u32}, {total});
    const auto id_types = {experts_->dtype};
    for (std::size_t c = 0; c < meta_.channels.size(); ++c) {
      const std::string p = "channel." + std::to_string(c) + ".";
      ChannelTensors ch;
      const TensorInfo* st = file_.find(p + "step");
      if (st == nullptr) fail(p + "step", "", "required tensor is missing (channel '" + meta_.channels[c].name + "')");
      if (st->shape.size() != 1) fail(p + "step.shape", std::to_string(st->shape.size()) + " dimensions", "expected 1");
      const std::uint64_t n = st->shape[0];
      const std::uint64_t mc = meta_.channels[c].max_candidates;
      ch.step = need(p + "step", {TensorDType::u32}, {n});
      ch.layer = need(p + "layer", {TensorDType::u16}, {n});
      ch.token = need(p + "token", {TensorDType::i32}, {n});
      ch.available_after = need(p + "available_after", {TensorDType::i16}, {n});
      ch.experts = need(p + "experts", id_types, {n, mc});
      ch.scores = meta_.channels[c].has_scores ? need(p + "scores", {TensorDType::f16, TensorDType::bf16, TensorDType::f32}, {n, mc}) : nullptr;
      channels_.push_back(std::move(ch));
    }
    for (std::size_t h = 0; h < meta_.hidden.size(); ++h) {
      const HiddenDesc& d = meta_.hidden[h];
      hidden_.push_back(need("hidden." + std::to_string(h), {d.dtype}, {total, d.layers.size(), d.hidden_size}));
    }
    for (const auto& t : file_.tensors()) {
      if (!known_tensor(t.name)) fail(t.name, "", "unknown tensor (extensions must be named 'extra.*')");
    }
    // channel step index (needs sorted steps: checked here, whatever validate_data says)
    for (std::size_t c = 0; c < channels_.size(); ++c) {
      ChannelTensors& ch = channels_[c];
      ch.step_begin.assign(s + 1, 0);
      const std::uint64_t n = ch.step->shape[0];
      std::uint64_t i = 0;
      for (std::uint64_t st = 0; st < s; ++st) {
        ch.step_begin[st] = i;
        while (i < n && file_.load<std::uint32_t>(*ch.step, i) == st) ++i;
      }
      ch.step_begin[s] = i;
      if (i != n) {
        const auto bad = file_.load<std::uint32_t>(*ch.step, i);
        fail("channel." + std::to_string(c) + ".step[" + std::to_string(i) + "]", std::to_string(bad),
             bad >= s ? "predicts a step the trace does not have (" + std::to_string(s) + " steps)"
                      : "predictions must be sorted by step");
      }
    }
    if (opt.validate_data) validate_data();
  }

  [[nodiscard]] bool known_tensor(const std::string& n) const {
    static constexpr std::string_view fixed[] = {"step_request", "step_phase", "step_tokens", "step_draft_len",
                                                 "step_accepted", "routing_experts", "routing_weights",
                                                 "token_ids", "token_positions"};
    for (auto f : fixed) {
      if (n == f) return true;
    }
    if (n.rfind("extra.", 0) == 0) return true;
    for (std::size_t c = 0; c < channels_.size(); ++c) {
      const std::string p = "channel." + std::to_string(c) + ".";
      for (const char* part : {"step", "layer", "token", "available_after", "experts", "scores"}) {
        if (n == p + part && (std::string_view(part) != "scores" || meta_.channels[c].has_scores)) return true;
      }
    }
    for (std::size_t h = 0; h < hidden_.size(); ++h) {
      if (n == "hidden." + std::to_string(h)) return true;
    }
    return false;
  }

  void validate_data() const {
    const auto& m = meta_.model;
    for (std::uint64_t s = 0; s < step_count(); ++s) {
      const StepInfo i = step(s);
      const auto ph = file_.load<std::uint8_t>(*step_phase_, s);
      if (ph > 2) fail("step_phase[" + std::to_string(s) + "]", std::to_string(ph), "must be 0 (prefill), 1 (decode) or 2 (verify)");
      if (const char* why = i.defect()) {
        fail("step " + std::to_string(s), std::string(phase_name(i.phase)) + ", tokens " + std::to_string(i.tokens) +
                                              ", draft_len " + std::to_string(i.draft_len) + ", accepted " + std::to_string(i.accepted),
             why);
      }
      if (i.request >= meta_.request_count) {
        fail("step_request[" + std::to_string(s) + "]", std::to_string(i.request),
             "must be below request_count (" + std::to_string(meta_.request_count) + ")");
      }
    }
    std::vector<std::uint64_t> stamp(m.experts_per_layer, 0);
    std::uint64_t round = 0;
    std::vector<std::uint16_t> ids(std::size_t{m.moe_layers} * m.top_k);
    for (std::uint64_t t = 0; t < token_count(); ++t) {
      token_experts(t, ids.data());
      for (std::uint32_t l = 0; l < m.moe_layers; ++l) {
        const std::uint16_t* row = ids.data() + std::size_t{l} * m.top_k;
        ++round;
        for (std::uint32_t k = 0; k < m.top_k; ++k) {
          const std::uint16_t id = row[k];
          if (id >= m.experts_per_layer) {
            fail("routing_experts" + trace_detail::at_token(t, l), std::to_string(id),
                 "expert id must be below experts_per_layer (" + std::to_string(m.experts_per_layer) + ")");
          }
          if (stamp[id] == round) fail("routing_experts" + trace_detail::at_token(t, l), std::to_string(id), "expert chosen twice in one token's top-k");
          stamp[id] = round;
        }
      }
    }
    if (weights_ != nullptr) {
      const std::uint64_t n = weights_->numel();
      for (std::uint64_t i = 0; i < n; ++i) {
        const float w = read_float(*weights_, i);
        if (!std::isfinite(w)) fail("routing_weights[" + std::to_string(i) + "]", to_text(w), "gate weights must be finite");
      }
    }
    for (std::uint32_t c = 0; c < channels_.size(); ++c) {
      const std::string p = "channel." + std::to_string(c) + ".";
      const std::uint32_t mc = meta_.channels[c].max_candidates;
      std::vector<std::uint16_t> cand(mc);
      Prediction prev{};
      for (std::uint64_t i = 0; i < prediction_count(c); ++i) {
        const Prediction pr = prediction(c, i);
        const std::string at = "[" + std::to_string(i) + "]";
        if (pr.layer >= m.moe_layers) fail(p + "layer" + at, std::to_string(pr.layer), "not an MoE layer ordinal");
        if (pr.token < -1 || (pr.token >= 0 && static_cast<std::uint32_t>(pr.token) >= step(pr.step).tokens)) {
          fail(p + "token" + at, std::to_string(pr.token), "must be -1 or a token index within step " + std::to_string(pr.step));
        }
        if (pr.available_after < -1 || pr.available_after >= static_cast<int>(m.moe_layers)) {
          fail(p + "available_after" + at, std::to_string(pr.available_after), "must be -1 or an MoE layer ordinal");
        }
        if (i > 0 && std::make_tuple(pr.step, pr.layer, pr.token) < std::make_tuple(prev.step, prev.layer, prev.token)) {
          fail(p + "step" + at, std::to_string(pr.step), "predictions must be sorted by (step, layer, token)");
        }
        prev = pr;
        const std::uint32_t n = candidates(c, i, cand.data());
        ++round;
        for (std::uint32_t r = 0; r < mc; ++r) {
          const std::uint64_t idx = i * mc + r;
          const std::uint16_t raw = wide_ids_ ? file_.load<std::uint16_t>(*channels_[c].experts, idx)
                                              : std::to_integer<std::uint16_t>(file_.bytes(*channels_[c].experts)[idx]);
          const bool pad = raw == (wide_ids_ ? kNoExpert : 0xFF);
          if (r >= n && !pad) fail(p + "experts" + at, std::to_string(raw), "candidates after the padding id");
          if (r < n) {
            if (raw >= m.experts_per_layer) fail(p + "experts" + at, std::to_string(raw), "expert id must be below experts_per_layer");
            if (stamp[raw] == round) fail(p + "experts" + at, std::to_string(raw), "candidate listed twice");
            stamp[raw] = round;
          }
        }
      }
    }
  }

  SafetensorsFile file_;
  TraceMeta meta_;
  const TensorInfo* step_request_ = nullptr;
  const TensorInfo* step_phase_ = nullptr;
  const TensorInfo* step_tokens_ = nullptr;
  const TensorInfo* step_draft_ = nullptr;
  const TensorInfo* step_accepted_ = nullptr;
  const TensorInfo* experts_ = nullptr;
  const TensorInfo* weights_ = nullptr;
  const TensorInfo* token_ids_ = nullptr;
  const TensorInfo* positions_ = nullptr;
  bool wide_ids_ = false;
  std::vector<std::uint64_t> first_token_;
  std::vector<ChannelTensors> channels_;
  std::vector<const TensorInfo*> hidden_;
};

}  // namespace moesched::io
