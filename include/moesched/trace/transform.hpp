#pragma once
/// Cutting and combining traces.
///
///   moesched::trace::SliceSpec spec;
///   spec.requests = {0, 1};           // keep these requests (empty = all), renumbered 0..n-1
///   spec.step_begin = 10; spec.step_end = 200;
///   spec.layer_begin = 0; spec.layer_end = 8;
///   moesched::trace::slice(t, spec).write("part.trace.safetensors");
///
///   moesched::trace::merge({&a, &b}, {"a.st", "b.st"}).write("both.trace.safetensors");
///
/// Both copy everything the inputs hold (routing, weights, token ids and positions, channel
/// predictions, hidden states) for what is kept; nothing is dropped silently: a merge of inputs
/// that differ in what they carry is an error naming the input and the difference.

#include "moesched/core/error.hpp"
#include "moesched/io/trace.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <vector>

namespace moesched::trace {

/// What slice() keeps.
struct SliceSpec {
  std::vector<std::uint32_t> requests;  ///< empty = all
  std::uint64_t step_begin = 0;
  std::uint64_t step_end = std::numeric_limits<std::uint64_t>::max();
  std::uint32_t layer_begin = 0;
  std::uint32_t layer_end = std::numeric_limits<std::uint32_t>::max();
};

namespace transform_detail {

/// Copy one step's per-token data from `t` into vectors for TraceWriter::add_step.
struct StepData {
  std::vector<std::uint16_t> experts;
  std::vector<float> weights;
  std::vector<std::uint32_t> ids, pos;
};
inline void read_step(const io::Trace& t, const StepInfo& s, std::uint32_t lb, std::uint32_t le, StepData& d) {
  const std::uint32_t K = t.meta().model.top_k;
  d.experts.clear();
  d.weights.clear();
  d.ids.clear();
  d.pos.clear();
  std::vector<std::uint16_t> row(K);
  for (std::uint64_t tok = s.first_token; tok < s.first_token + s.tokens; ++tok) {
    for (std::uint32_t l = lb; l < le; ++l) {
      t.experts(tok, l, row.data());
      d.experts.insert(d.experts.end(), row.begin(), row.end());
      if (t.has_weights()) {
        for (std::uint32_t k = 0; k < K; ++k) d.weights.push_back(t.weight(tok, l, k));
      }
    }
    if (t.has_token_ids()) d.ids.push_back(t.token_id(tok));
    if (t.has_positions()) d.pos.push_back(t.position(tok));
  }
}

/// Append hidden-state rows of `t`'s token range (only layers in [lb, le)) to `out[h]`.
inline void copy_hidden(const io::Trace& t, std::uint64_t first, std::uint64_t count, std::uint32_t lb, std::uint32_t le,
                        std::vector<std::vector<std::byte>>& out) {
  for (std::uint32_t h = 0; h < t.meta().hidden.size(); ++h) {
    const auto& d = t.meta().hidden[h];
    const auto& tensor = t.hidden_tensor(h);
    const std::uint64_t row = std::uint64_t{d.hidden_size} * io::tensor_dtype_size(d.dtype);
    const std::byte* base = t.container().bytes(tensor);
    for (std::uint64_t tok = first; tok < first + count; ++tok) {
      for (std::size_t j = 0; j < d.layers.size(); ++j) {
        if (d.layers[j] < lb || d.layers[j] >= le) continue;
        const std::byte* src = base + (tok * d.layers.size() + j) * row;
        out[h].insert(out[h].end(), src, src + row);
      }
    }
  }
}

}  // namespace transform_detail

/// A new trace with the requests, steps and layers `spec` keeps.
[[nodiscard]] inline io::TraceWriter slice(const io::Trace& t, const SliceSpec& spec) {
  const auto& src = t.meta();
  const std::uint32_t lb = spec.layer_begin;
  const std::uint32_t le = std::min(spec.layer_end, src.model.moe_layers);
  if (lb >= le) {
    throw ConfigError("", "--layers", std::to_string(lb) + "-" + std::to_string(spec.layer_end - 1),
                      "selects no MoE layer (the trace has " + std::to_string(src.model.moe_layers) + ")");
  }
  std::vector<std::int64_t> new_request(src.request_count, spec.requests.empty() ? 0 : -1);
  std::uint32_t kept = 0;
  if (spec.requests.empty()) {
    for (std::uint32_t r = 0; r < src.request_count; ++r) new_request[r] = kept++;
  } else {
    for (auto r : spec.requests) {
      if (r >= src.request_count) {
        throw ConfigError("", "--requests", std::to_string(r), "the trace has " + std::to_string(src.request_count) + " requests");
      }
      if (new_request[r] < 0) new_request[r] = kept++;
    }
  }
  io::TraceMeta meta = src;
  meta.model.moe_layers = le - lb;
  meta.request_count = kept;
  meta.request_ids.clear();
  if (!src.request_ids.empty()) {
    meta.request_ids.resize(kept);
    for (std::uint32_t r = 0; r < src.request_count; ++r) {
      if (new_request[r] >= 0) meta.request_ids[static_cast<std::size_t>(new_request[r])] = src.request_ids[r];
    }
  }
  meta.hidden.clear();
  std::vector<std::uint32_t> hidden_index;
  for (std::uint32_t h = 0; h < src.hidden.size(); ++h) {
    io::HiddenDesc d = src.hidden[h];
    d.layers.clear();
    for (auto l : src.hidden[h].layers) {
      if (l >= lb && l < le) d.layers.push_back(l - lb);
    }
    if (!d.layers.empty()) {
      meta.hidden.push_back(d);
      hidden_index.push_back(h);
    }
  }
  meta.provenance["sliced_from"] = {{"requests", spec.requests}, {"steps", {spec.step_begin, std::min<std::uint64_t>(spec.step_end, t.step_count())}},
                                    {"layers", {lb, le}}};
  io::TraceWriter w(meta);
  transform_detail::StepData d;
  std::vector<std::vector<std::byte>> hidden(src.hidden.size());
  std::vector<std::int64_t> new_step(t.step_count(), -1);
  for (std::uint64_t si = spec.step_begin; si < std::min<std::uint64_t>(spec.step_end, t.step_count()); ++si) {
    StepInfo s = t.step(si);
    if (new_request[s.request] < 0) continue;
    transform_detail::read_step(t, s, lb, le, d);
    transform_detail::copy_hidden(t, s.first_token, s.tokens, lb, le, hidden);
    s.request = static_cast<std::uint32_t>(new_request[s.request]);
    new_step[si] = static_cast<std::int64_t>(w.add_step(s, d.experts, d.weights, d.ids, d.pos));
  }
  for (std::size_t j = 0; j < hidden_index.size(); ++j) w.set_hidden(static_cast<std::uint32_t>(j), std::move(hidden[hidden_index[j]]));
  std::vector<std::uint16_t> cand(4096);
  std::vector<float> scores;
  for (std::uint32_t c = 0; c < src.channels.size(); ++c) {
    for (std::uint64_t i = 0; i < t.prediction_count(c); ++i) {
      io::Prediction p = t.prediction(c, i);
      if (new_step[p.step] < 0 || p.layer < lb || p.layer >= le) continue;
      const std::uint32_t n = t.candidates(c, i, cand.data());
      scores.clear();
      if (src.channels[c].has_scores) {
        for (std::uint32_t r = 0; r < n; ++r) scores.push_back(t.score(c, i, r));
      }
      p.step = static_cast<std::uint32_t>(new_step[p.step]);
      p.layer = static_cast<std::uint16_t>(p.layer - lb);
      // availability after a layer that was cut away: the latest kept layer before it, else
      // "before the step"
      p.available_after = p.available_after < static_cast<int>(lb) ? std::int16_t{-1}
                                                                   : static_cast<std::int16_t>(std::min<int>(p.available_after, static_cast<int>(le) - 1) - static_cast<int>(lb));
      w.add_prediction(c, p, std::span<const std::uint16_t>(cand.data(), n), scores);
    }
  }
  return w;
}

/// Concatenate traces of the same routing shape; requests of input i follow those of input i-1.
/// Inputs must agree on what they carry (weights, token ids, positions, hidden states) and on
/// each channel's shape; `names` label the inputs in errors and provenance.
[[nodiscard]] inline io::TraceWriter merge(const std::vector<const io::Trace*>& inputs, const std::vector<std::string>& names) {
  if (inputs.empty()) throw ConfigError("", "inputs", "0", "nothing to merge");
  const io::TraceMeta& first = inputs[0]->meta();
  io::TraceMeta meta = first;
  meta.request_count = 0;
  meta.request_ids.clear();
  meta.channels.clear();
  meta.provenance = {{"merged_from", names}};
  std::vector<std::string> sources, datasets;
  bool any_ids = false;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const io::Trace& t = *inputs[i];
    const auto& m = t.meta();
    auto differ = [&](const std::string& what, const std::string& a, const std::string& b) {
      throw ConfigError(names[i], what, b, "differs from " + names[0] + " (" + a + "): only traces of the same kind merge");
    };
    if (m.model.moe_layers != first.model.moe_layers || m.model.experts_per_layer != first.model.experts_per_layer ||
        m.model.top_k != first.model.top_k) {
      auto shape = [](const io::TraceModel& x) {
        return std::to_string(x.moe_layers) + " layers x " + std::to_string(x.experts_per_layer) + " experts, top-" + std::to_string(x.top_k);
      };
      differ("model", shape(first.model), shape(m.model));
    }
    if (t.has_weights() != inputs[0]->has_weights()) differ("routing_weights", inputs[0]->has_weights() ? "present" : "absent", t.has_weights() ? "present" : "absent");
    if (t.has_token_ids() != inputs[0]->has_token_ids()) differ("token_ids", inputs[0]->has_token_ids() ? "present" : "absent", t.has_token_ids() ? "present" : "absent");
    if (t.has_positions() != inputs[0]->has_positions()) differ("token_positions", inputs[0]->has_positions() ? "present" : "absent", t.has_positions() ? "present" : "absent");
    if (m.hidden.size() != first.hidden.size()) differ("hidden_states", std::to_string(first.hidden.size()), std::to_string(m.hidden.size()));
    for (std::size_t h = 0; h < m.hidden.size(); ++h) {
      if (m.hidden[h].name != first.hidden[h].name || m.hidden[h].layers != first.hidden[h].layers ||
          m.hidden[h].hidden_size != first.hidden[h].hidden_size || m.hidden[h].dtype != first.hidden[h].dtype) {
        differ("hidden_states[" + std::to_string(h) + "]", first.hidden[h].name, m.hidden[h].name);
      }
    }
    for (const auto& c : m.channels) {
      auto it = std::find_if(meta.channels.begin(), meta.channels.end(), [&](const io::ChannelDesc& x) { return x.name == c.name; });
      if (it == meta.channels.end()) {
        meta.channels.push_back(c);
      } else if (it->max_candidates != c.max_candidates || it->has_scores != c.has_scores) {
        differ("channel '" + c.name + "'", std::to_string(it->max_candidates) + " candidates", std::to_string(c.max_candidates) + " candidates");
      }
    }
    any_ids = any_ids || !m.request_ids.empty();
    meta.generated = meta.generated || m.generated;
    if (std::find(sources.begin(), sources.end(), m.source) == sources.end()) sources.push_back(m.source);
    if (std::find(datasets.begin(), datasets.end(), m.dataset) == datasets.end()) datasets.push_back(m.dataset);
  }
  auto join = [](const std::vector<std::string>& v) {
    std::string out;
    for (const auto& x : v) out += (out.empty() ? "" : "; ") + x;
    return out;
  };
  meta.source = join(sources);
  meta.dataset = join(datasets);
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const auto& m = inputs[i]->meta();
    if (any_ids) {
      for (std::uint32_t r = 0; r < m.request_count; ++r) {
        meta.request_ids.push_back(m.request_ids.empty() ? names[i] + "#" + std::to_string(r) : m.request_ids[r]);
      }
    }
    meta.request_count += m.request_count;
  }
  io::TraceWriter w(meta);
  transform_detail::StepData d;
  std::vector<std::vector<std::byte>> hidden(meta.hidden.size());
  std::uint32_t request_offset = 0;
  std::uint32_t step_offset = 0;
  struct Pending {
    io::Prediction p;
    std::vector<std::uint16_t> cand;
    std::vector<float> scores;
  };
  std::vector<std::vector<Pending>> preds(meta.channels.size());
  std::vector<std::uint16_t> cand(4096);
  for (const io::Trace* t : inputs) {
    const std::uint32_t L = t->meta().model.moe_layers;
    for (std::uint64_t si = 0; si < t->step_count(); ++si) {
      StepInfo s = t->step(si);
      transform_detail::read_step(*t, s, 0, L, d);
      transform_detail::copy_hidden(*t, s.first_token, s.tokens, 0, L, hidden);
      s.request += request_offset;
      (void)w.add_step(s, d.experts, d.weights, d.ids, d.pos);
    }
    for (std::uint32_t c = 0; c < t->meta().channels.size(); ++c) {
      const auto& desc = t->meta().channels[c];
      const auto out = static_cast<std::size_t>(std::find_if(meta.channels.begin(), meta.channels.end(),
                                                             [&](const io::ChannelDesc& x) { return x.name == desc.name; }) -
                                                meta.channels.begin());
      for (std::uint64_t i = 0; i < t->prediction_count(c); ++i) {
        Pending pd{t->prediction(c, i), {}, {}};
        const std::uint32_t n = t->candidates(c, i, cand.data());
        pd.cand.assign(cand.begin(), cand.begin() + n);
        if (desc.has_scores) {
          for (std::uint32_t r = 0; r < n; ++r) pd.scores.push_back(t->score(c, i, r));
        }
        pd.p.step += step_offset;
        preds[out].push_back(std::move(pd));
      }
    }
    request_offset += t->meta().request_count;
    step_offset += static_cast<std::uint32_t>(t->step_count());
  }
  for (std::uint32_t h = 0; h < hidden.size(); ++h) w.set_hidden(h, std::move(hidden[h]));
  for (std::uint32_t c = 0; c < preds.size(); ++c) {
    for (const auto& pd : preds[c]) w.add_prediction(c, pd.p, pd.cand, pd.scores);
  }
  return w;
}

}  // namespace moesched::trace
