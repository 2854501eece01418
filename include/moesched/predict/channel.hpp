#pragma once
/// Prediction channels recomputed from a trace's hidden states, exactly as tools/record/record.py
/// records them, and their agreement with recorded channels.
///
///   auto t = moesched::io::Trace::open("run.trace.safetensors");          // recorded with --hidden moe_input
///   auto gates = std::make_shared<const moesched::predict::GateSet>(moesched::predict::read_gates("g.safetensors"));
///   moesched::predict::ChannelData skip = moesched::predict::skip_gate_channel(t, *gates, {});
///   auto agree = moesched::predict::compare(skip, moesched::predict::channel_from_trace(t, t.channel_index("skip_gate")), t.meta().model.top_k);
///   moesched::predict::with_channels(t, {skip}, /*replace=*/true).write("out.trace.safetensors");
///
/// The channels (T rows of a hidden state = the trace's tokens in step order; C = candidates,
/// default the model's top_k):
///   skip_gate       steps that are not prefill: for m in 0..L-2 and every token t, router m+1 on
///                   `moe_input` row (t, m); layer m+1, available_after m.
///   draft_gate      verify steps: for m in 0..L-1 and token j < draft_len, router m on
///                   `draft_moe_input` row (j, m); layer m, available_after -1.
///   mlp_stride{S}   (learned kind mlp) steps that are not prefill: for each source layer src, the
///                   network on `layer_output` row (t, src); layer src+S, available_after src.
///   preattn_linear  (learned kind linear) the same on `attn_input`; available_after src-1 (-1
///                   for layer 0).
/// `in_prefill` adds prefill steps (record.py --channels-in-prefill; draft_gate has none).
/// Predictions come in (step, layer, token) order, the order of the trace format.

#include "moesched/core/error.hpp"
#include "moesched/io/trace.hpp"
#include "moesched/predict/predictors.hpp"
#include "moesched/predict/weights.hpp"
#include "moesched/trace/transform.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <vector>

namespace moesched::predict {

/// A whole prediction channel in memory: what TraceWriter::add_prediction takes, for every prediction.
struct ChannelData {
  io::ChannelDesc desc;                 ///< name, description, max_candidates (C), has_scores
  std::vector<io::Prediction> predictions;
  std::vector<std::uint16_t> experts;   ///< predictions x C, padded with io::kNoExpert
  std::vector<float> scores;            ///< predictions x C (0 where padded), empty without scores
  nlohmann::json provenance = nlohmann::json::object();  ///< how it was computed (files, options)

  [[nodiscard]] std::size_t size() const noexcept { return predictions.size(); }
  /// Candidates of prediction i (padding excluded).
  [[nodiscard]] std::span<const std::uint16_t> candidates(std::size_t i) const noexcept {
    const std::size_t c = desc.max_candidates;
    std::size_t n = 0;
    while (n < c && experts[i * c + n] != io::kNoExpert) ++n;
    return {experts.data() + i * c, n};
  }
  [[nodiscard]] std::span<const float> candidate_scores(std::size_t i) const noexcept {
    if (scores.empty()) return {};
    return {scores.data() + i * desc.max_candidates, candidates(i).size()};
  }
};

/// Options of the channel computations.
struct ChannelOptions {
  std::uint32_t candidates = 0;  ///< C; 0 = the trace's top_k
  bool in_prefill = false;       ///< predict in prefill steps too (record.py --channels-in-prefill)
  std::string name;              ///< the channel's name; empty = the default (skip_gate, ...)
};

namespace channel_detail {

/// The index of hidden state `state` in the trace, with its layer positions checked.
struct HiddenAccess {
  std::uint32_t index = 0;
  const io::HiddenDesc* desc = nullptr;
  std::vector<std::int64_t> slot;  ///< per MoE layer: position in desc->layers, or -1
};

inline HiddenAccess find_hidden(const io::Trace& t, HiddenState state, std::uint32_t hidden_size, const std::string& weights_source) {
  const std::string name(hidden_state_name(state));
  const auto& hs = t.meta().hidden;
  for (std::uint32_t h = 0; h < hs.size(); ++h) {
    if (hs[h].name != name) continue;
    if (hs[h].hidden_size != hidden_size) {
      throw ConfigError(t.container().source(), "hidden_states." + name + ".hidden_size", std::to_string(hs[h].hidden_size),
                        "the weights of " + weights_source + " have hidden_size " + std::to_string(hidden_size));
    }
    HiddenAccess a;
    a.index = h;
    a.desc = &hs[h];
    a.slot.assign(t.meta().model.moe_layers, -1);
    for (std::size_t j = 0; j < hs[h].layers.size(); ++j) {
      if (hs[h].layers[j] < a.slot.size()) a.slot[hs[h].layers[j]] = static_cast<std::int64_t>(j);
    }
    return a;
  }
  std::string have;
  for (const auto& h : hs) have += (have.empty() ? "" : ", ") + h.name;
  throw ConfigError(t.container().source(), "hidden_states", have.empty() ? "none" : have,
                    "trace " + t.container().source() + " has no hidden state '" + name + "' (record with --hidden " + name + ")");
}

inline std::uint32_t slot_of(const io::Trace& t, const HiddenAccess& a, std::uint32_t layer) {
  if (layer >= a.slot.size() || a.slot[layer] < 0) {
    throw ConfigError(t.container().source(), "hidden_states." + a.desc->name + ".layers", "MoE layer " + std::to_string(layer),
                      "not captured (the channel needs it; record all MoE layers)");
  }
  return static_cast<std::uint32_t>(a.slot[layer]);
}

/// Row (token, slot) of hidden array `a` as floats into out (hidden_size of them).
inline void read_row(const io::Trace& t, const HiddenAccess& a, std::uint64_t token, std::uint32_t slot, std::span<float> out) {
  const io::TensorInfo& ti = t.hidden_tensor(a.index);
  const std::uint64_t H = a.desc->hidden_size;
  const std::uint64_t first = (token * a.desc->layers.size() + slot) * H;
  for (std::uint64_t i = 0; i < H; ++i) out[i] = t.read_float(ti, first + i);
}

inline void check_shape(const io::Trace& t, const std::string& weights_source, std::uint32_t layers, std::uint32_t experts) {
  const auto& m = t.meta().model;
  if (m.moe_layers != layers || m.experts_per_layer != experts) {
    throw ConfigError(weights_source, "moe_layers, experts", std::to_string(layers) + ", " + std::to_string(experts),
                      "trace " + t.container().source() + " has " + std::to_string(m.moe_layers) + " MoE layers x " +
                          std::to_string(m.experts_per_layer) + " experts");
  }
}

inline std::uint32_t candidates(const io::Trace& t, const ChannelOptions& o) {
  const auto& m = t.meta().model;
  const std::uint32_t c = o.candidates == 0 ? m.top_k : o.candidates;
  if (c < 1 || c > m.experts_per_layer) {
    throw ConfigError("", "candidates", std::to_string(c), "must be between 1 and the expert count (" + std::to_string(m.experts_per_layer) + ")");
  }
  return c;
}

/// Appends one prediction with `n` ranked candidates (padding to C).
inline void push(ChannelData& ch, io::Prediction p, std::span<const runtime::ScoredExpert> ranked) {
  const std::uint32_t c = ch.desc.max_candidates;
  ch.predictions.push_back(p);
  for (std::uint32_t r = 0; r < c; ++r) {
    ch.experts.push_back(r < ranked.size() ? ranked[r].expert : io::kNoExpert);
    ch.scores.push_back(r < ranked.size() ? ranked[r].score : 0.0F);
  }
}

inline ChannelData start(const io::Trace& t, const ChannelOptions& o, const std::string& default_name, const std::string& text) {
  ChannelData ch;
  ch.desc.name = o.name.empty() ? default_name : o.name;
  ch.desc.description = text;
  ch.desc.max_candidates = candidates(t, o);
  ch.desc.has_scores = true;
  ch.provenance = {{"candidates", ch.desc.max_candidates}, {"in_prefill", o.in_prefill}};
  return ch;
}

/// One predictor of a channel: the hidden-state slot it reads, the layer it predicts, when.
template <class P>
struct Source {
  P predictor;
  std::uint32_t slot = 0;
  std::uint16_t layer = 0;
  std::int16_t available_after = 0;
};

/// The one loop every channel shares: for each step, its first `tokens_of(step)` tokens (0 skips
/// the step) through every source, appended in (layer, token) order (sources that predict one
/// layer are merged by token).
template <class P, class TokensOf>
void fill(const io::Trace& t, const HiddenAccess& h, std::uint32_t hidden_size, std::vector<Source<P>>& sources,
          TokensOf&& tokens_of, ChannelData& ch) {
  struct Made {
    std::uint16_t layer;
    std::int32_t token;
    std::int16_t after;
    std::size_t first;  // into ranked
    std::uint32_t n;
  };
  std::vector<float> row(hidden_size);
  std::vector<runtime::ScoredExpert> out(ch.desc.max_candidates);
  std::vector<Made> made;
  std::vector<runtime::ScoredExpert> ranked;
  for (std::uint64_t s = 0; s < t.step_count(); ++s) {
    const StepInfo st = t.step(s);
    const std::uint32_t tokens = tokens_of(st);
    if (tokens == 0) continue;
    made.clear();
    ranked.clear();
    for (Source<P>& src : sources) {
      for (std::uint32_t k = 0; k < tokens; ++k) {
        read_row(t, h, st.first_token + k, src.slot, row);
        const std::uint32_t n = src.predictor.rank(row, out);
        made.push_back({src.layer, static_cast<std::int32_t>(k), src.available_after, ranked.size(), n});
        ranked.insert(ranked.end(), out.begin(), out.begin() + n);
      }
    }
    std::stable_sort(made.begin(), made.end(),
                     [](const Made& a, const Made& b) { return std::tie(a.layer, a.token) < std::tie(b.layer, b.token); });
    for (const Made& m : made) {
      push(ch, {static_cast<std::uint32_t>(s), m.layer, m.token, m.after},
           std::span<const runtime::ScoredExpert>(ranked.data() + m.first, m.n));
    }
  }
}

/// Tokens predicted in a step: every token of steps that are not prefill (prefill too with
/// in_prefill).
[[nodiscard]] inline auto every_token(const ChannelOptions& o) {
  return [in_prefill = o.in_prefill](const StepInfo& st) -> std::uint32_t {
    return st.phase == StepPhase::prefill && !in_prefill ? 0 : st.tokens;
  };
}

}  // namespace channel_detail

/// One hidden state of a trace, row by row as floats: what an engine holds in memory for a token
/// at a layer, for loops of one's own (calling a predictor's rank() per token).
class HiddenReader {
 public:
  /// Throws ConfigError naming the trace when it has no such hidden state.
  HiddenReader(const io::Trace& t, HiddenState state) : t_(&t) {
    std::uint32_t size = 0;
    for (const auto& h : t.meta().hidden) {
      if (h.name == hidden_state_name(state)) size = h.hidden_size;
    }
    a_ = channel_detail::find_hidden(t, state, size, t.container().source());
  }
  [[nodiscard]] std::uint32_t hidden_size() const noexcept { return a_.desc->hidden_size; }
  /// Token `token`'s state at MoE layer `layer` into out (hidden_size() floats); throws when the
  /// trace did not capture that layer.
  void read(std::uint64_t token, std::uint32_t layer, std::span<float> out) const {
    if (out.size() != hidden_size()) {
      throw ConfigError(t_->container().source(), "hidden row", std::to_string(out.size()),
                        "the buffer must hold hidden_size (" + std::to_string(hidden_size()) + ") floats");
    }
    channel_detail::read_row(*t_, a_, token, channel_detail::slot_of(*t_, a_, layer), out);
  }

 private:
  const io::Trace* t_;
  channel_detail::HiddenAccess a_;
};

/// skip_gate: router l+1 on `moe_input` of layer l, every token of each non-prefill step.
[[nodiscard]] inline ChannelData skip_gate_channel(const io::Trace& t, std::shared_ptr<const GateSet> gates, const ChannelOptions& o) {
  using namespace channel_detail;
  check_shape(t, gates->source, gates->moe_layers, gates->experts);
  const auto L = t.meta().model.moe_layers;
  ChannelData ch = start(t, o, "skip_gate",
                         "router of MoE layer l+1 applied to MoE layer l's input, per token; available after layer l "
                         "(recomputed by moesched-trace predict from hidden state moe_input)");
  ch.provenance["gates"] = gates->source;
  const HiddenAccess h = find_hidden(t, HiddenState::moe_input, gates->hidden_size, gates->source);
  std::vector<Source<GatePredictor>> sources;
  for (std::uint32_t m = 0; m + 1 < L; ++m) {
    sources.push_back({GatePredictor::skip_gate(gates, m), slot_of(t, h, m), static_cast<std::uint16_t>(m + 1),
                       static_cast<std::int16_t>(m)});
  }
  fill(t, h, gates->hidden_size, sources, every_token(o), ch);
  return ch;
}

/// draft_gate: router l on `draft_moe_input` of layer l, tokens 0..draft_len-1 of each verify step.
[[nodiscard]] inline ChannelData draft_gate_channel(const io::Trace& t, std::shared_ptr<const GateSet> gates, const ChannelOptions& o) {
  using namespace channel_detail;
  check_shape(t, gates->source, gates->moe_layers, gates->experts);
  const auto L = t.meta().model.moe_layers;
  ChannelData ch = start(t, o, "draft_gate",
                         "SP-MoE: the target's router of layer l applied to the draft's post-attention hidden state at the "
                         "matching layer, per verify token the draft processed (0..gamma-1); available before the verify step "
                         "(recomputed by moesched-trace predict from hidden state draft_moe_input)");
  ch.provenance["gates"] = gates->source;
  const HiddenAccess h = find_hidden(t, HiddenState::draft_moe_input, gates->hidden_size, gates->source);
  std::vector<Source<GatePredictor>> sources;
  for (std::uint32_t m = 0; m < L; ++m) {
    sources.push_back({GatePredictor::draft_gate(gates, m), slot_of(t, h, m), static_cast<std::uint16_t>(m), std::int16_t{-1}});
  }
  // the tokens the draft processed: 0..draft_len-1 of each verify step
  fill(t, h, gates->hidden_size, sources,
       [](const StepInfo& st) -> std::uint32_t { return st.phase == StepPhase::verify ? st.draft_len : 0; }, ch);
  return ch;
}

/// The channel name record.py gives a learned predictor: mlp_stride{S} or preattn_linear.
[[nodiscard]] inline std::string learned_channel_name(const LearnedSet& s) {
  return s.kind == LearnedKind::mlp ? "mlp_stride" + std::to_string(s.stride) : std::string("preattn_linear");
}

/// mlp_stride{S} / preattn_linear: each source layer's network on its hidden state, every token
/// of each non-prefill step.
[[nodiscard]] inline ChannelData learned_channel(const io::Trace& t, std::shared_ptr<const LearnedSet> set, const ChannelOptions& o) {
  using namespace channel_detail;
  check_shape(t, set->source, set->moe_layers, set->experts);
  const std::string hname(hidden_state_name(set->hidden_state));
  const bool mlp = set->kind == LearnedKind::mlp;
  ChannelData ch = start(t, o, learned_channel_name(*set),
                         (mlp ? "ProMoE: per-layer 2-layer MLP on the decoder-layer output of MoE layer l predicts layer l+stride; "
                                "available after layer l"
                              : "two linear maps on the pre-attention (post input-norm) hidden state of MoE layer l's decoder layer "
                                "predict layer l; available after layer l-1") +
                             std::string(" (recomputed by moesched-trace predict from hidden state ") + hname + ")");
  ch.provenance["learned"] = set->source;
  const HiddenAccess h = find_hidden(t, set->hidden_state, set->hidden_size, set->source);
  std::vector<Source<LearnedPredictor>> sources;
  for (std::size_t i = 0; i < set->layers.size(); ++i) {
    const std::uint32_t src = set->layers[i].source_layer;
    // attn_input of layer l exists once layer l-1 ran (-1: before the step)
    const int after = set->hidden_state == HiddenState::attn_input ? static_cast<int>(src) - 1 : static_cast<int>(src);
    sources.push_back({LearnedPredictor(set, i), slot_of(t, h, src), static_cast<std::uint16_t>(set->layers[i].target_layer),
                       static_cast<std::int16_t>(after)});
  }
  fill(t, h, set->hidden_size, sources, every_token(o), ch);
  return ch;
}

/// Channel `c` of a trace as ChannelData (to compare a recorded channel with a recomputed one).
[[nodiscard]] inline ChannelData channel_from_trace(const io::Trace& t, std::uint32_t c) {
  ChannelData ch;
  ch.desc = t.meta().channels.at(c);
  const std::uint32_t mc = ch.desc.max_candidates;
  const std::uint64_t n = t.prediction_count(c);
  ch.predictions.reserve(n);
  ch.experts.assign(n * mc, io::kNoExpert);
  if (ch.desc.has_scores) ch.scores.assign(n * mc, 0.0F);
  for (std::uint64_t i = 0; i < n; ++i) {
    ch.predictions.push_back(t.prediction(c, i));
    const std::uint32_t k = t.candidates(c, i, ch.experts.data() + i * mc);
    for (std::uint32_t r = 0; r < k && ch.desc.has_scores; ++r) ch.scores[i * mc + r] = t.score(c, i, r);
  }
  return ch;
}

/// How far two channels agree, prediction by prediction (matched by step, layer and token).
struct ChannelAgreement {
  std::uint64_t matched = 0;         ///< predictions present in both
  std::uint64_t only_a = 0;          ///< predictions only the first channel has
  std::uint64_t only_b = 0;          ///< predictions only the second channel has
  std::uint64_t equal_sets = 0;      ///< matched predictions whose candidate sets are equal (first min(C_a, C_b) of each)
  std::uint64_t equal_order = 0;     ///< ... whose ranked lists are identical
  std::uint64_t available_after_differs = 0;  ///< matched predictions with another available_after
  std::uint32_t top_k = 0;           ///< the k of the overlap
  double topk_overlap_sum = 0.0;     ///< sum over matched of |top-k(a) ∩ top-k(b)| / k
  std::uint64_t scored_pairs = 0;    ///< (prediction, expert) pairs scored in both
  double max_score_diff = 0.0;       ///< max |score_a - score_b| over the same expert, scores rounded to F16
  double score_diff_sum = 0.0;

  [[nodiscard]] double equal_set_fraction() const noexcept { return matched ? static_cast<double>(equal_sets) / static_cast<double>(matched) : 0.0; }
  [[nodiscard]] double equal_order_fraction() const noexcept { return matched ? static_cast<double>(equal_order) / static_cast<double>(matched) : 0.0; }
  [[nodiscard]] double mean_topk_overlap() const noexcept { return matched ? topk_overlap_sum / static_cast<double>(matched) : 0.0; }
  [[nodiscard]] double mean_score_diff() const noexcept { return scored_pairs ? score_diff_sum / static_cast<double>(scored_pairs) : 0.0; }
  [[nodiscard]] nlohmann::json to_json() const {
    return {{"matched", matched}, {"only_first", only_a}, {"only_second", only_b}, {"equal_sets", equal_set_fraction()},
            {"equal_order", equal_order_fraction()}, {"top_k", top_k}, {"mean_topk_overlap", mean_topk_overlap()},
            {"max_score_diff", max_score_diff}, {"mean_score_diff", mean_score_diff()},
            {"available_after_differs", available_after_differs}};
  }
};

/// Agreement of channel `a` with channel `b`; `top_k` is the k of the overlap (the model's top_k).
[[nodiscard]] inline ChannelAgreement compare(const ChannelData& a, const ChannelData& b, std::uint32_t top_k) {
  ChannelAgreement r;
  r.top_k = top_k;
  const auto key = [](const io::Prediction& p) { return std::make_tuple(p.step, p.layer, p.token); };
  const auto f16 = [](float v) { return static_cast<double>(io::half_to_float(io::float_to_half(v))); };
  std::size_t i = 0, j = 0;
  while (i < a.size() || j < b.size()) {
    if (j == b.size() || (i < a.size() && key(a.predictions[i]) < key(b.predictions[j]))) {
      ++r.only_a;
      ++i;
      continue;
    }
    if (i == a.size() || key(b.predictions[j]) < key(a.predictions[i])) {
      ++r.only_b;
      ++j;
      continue;
    }
    ++r.matched;
    if (a.predictions[i].available_after != b.predictions[j].available_after) ++r.available_after_differs;
    const auto ca = a.candidates(i), cb = b.candidates(j);
    const std::size_t c = std::min(ca.size(), cb.size());
    auto overlap = [&](std::size_t k) {
      std::size_t o = 0;
      for (std::size_t x = 0; x < std::min(k, ca.size()); ++x) {
        for (std::size_t y = 0; y < std::min(k, cb.size()); ++y) o += ca[x] == cb[y] ? 1 : 0;
      }
      return o;
    };
    if (overlap(c) == c) ++r.equal_sets;
    if (std::equal(ca.begin(), ca.begin() + static_cast<std::ptrdiff_t>(c), cb.begin())) ++r.equal_order;
    const std::size_t k = std::min<std::size_t>({top_k, ca.size(), cb.size()});
    r.topk_overlap_sum += k ? static_cast<double>(overlap(k)) / static_cast<double>(k) : 1.0;
    const auto sa = a.candidate_scores(i), sb = b.candidate_scores(j);
    if (!sa.empty() && !sb.empty()) {
      for (std::size_t x = 0; x < ca.size(); ++x) {
        for (std::size_t y = 0; y < cb.size(); ++y) {
          if (ca[x] != cb[y]) continue;
          const double d = std::abs(f16(sa[x]) - f16(sb[y]));
          r.max_score_diff = std::max(r.max_score_diff, d);
          r.score_diff_sum += d;
          ++r.scored_pairs;
        }
      }
    }
    ++i;
    ++j;
  }
  return r;
}

/// A copy of `t` with `channels` added (a channel whose name the trace already has replaces it in
/// place when `replace`, else is an error). Routing, weights (as F16), token ids, positions,
/// hidden states and the other channels are kept; provenance records the recomputed channels.
[[nodiscard]] inline io::TraceWriter with_channels(const io::Trace& t, const std::vector<ChannelData>& channels, bool replace) {
  io::TraceMeta meta = t.meta();
  const std::size_t old = meta.channels.size();
  std::vector<std::int64_t> slot_of_new(channels.size(), -1);
  std::vector<bool> replaced(old, false);
  for (std::size_t k = 0; k < channels.size(); ++k) {
    for (std::size_t q = 0; q < k; ++q) {
      if (channels[q].desc.name == channels[k].desc.name) {
        throw ConfigError("", "channel", channels[k].desc.name, "computed twice (give one of them another name)");
      }
    }
    for (std::size_t c = 0; c < old; ++c) {
      if (meta.channels[c].name != channels[k].desc.name) continue;
      if (!replace) {
        throw ConfigError(t.container().source(), "channel", channels[k].desc.name,
                          "the trace already has this channel (choose another name, or replace it)");
      }
      meta.channels[c] = channels[k].desc;
      replaced[c] = true;
      slot_of_new[k] = static_cast<std::int64_t>(c);
    }
    if (slot_of_new[k] < 0) {
      slot_of_new[k] = static_cast<std::int64_t>(meta.channels.size());
      meta.channels.push_back(channels[k].desc);
    }
    meta.provenance["recomputed_channels"][channels[k].desc.name] = channels[k].provenance;
  }
  io::TraceWriter w(meta);
  const std::uint32_t L = meta.model.moe_layers;
  trace::transform_detail::StepData d;
  std::vector<std::vector<std::byte>> hidden(meta.hidden.size());
  for (StepInfo s : t.steps()) {
    trace::transform_detail::read_step(t, s, 0, L, d);
    trace::transform_detail::copy_hidden(t, s.first_token, s.tokens, 0, L, hidden);
    (void)w.add_step(s, d.experts, d.weights, d.ids, d.pos);
  }
  for (std::uint32_t h = 0; h < hidden.size(); ++h) w.set_hidden(h, std::move(hidden[h]));
  auto add_all = [&w](std::uint32_t c, const ChannelData& ch) {
    for (std::size_t i = 0; i < ch.size(); ++i) w.add_prediction(c, ch.predictions[i], ch.candidates(i), ch.candidate_scores(i));
  };
  for (std::uint32_t c = 0; c < old; ++c) {
    if (!replaced[c]) add_all(c, channel_from_trace(t, c));
  }
  for (std::size_t k = 0; k < channels.size(); ++k) add_all(static_cast<std::uint32_t>(slot_of_new[k]), channels[k]);
  return w;
}

}  // namespace moesched::predict
