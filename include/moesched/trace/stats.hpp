#pragma once
/// Routing statistics of a trace: what researchers look at first.
///
///   auto t = moesched::io::Trace::open("run.trace.safetensors");
///   moesched::trace::TraceStats s = moesched::trace::compute_stats(t);
///   s.layers[3].gini;                 // popularity skew of layer 3
///   s.next_token_reuse;               // share of a token's experts the next token reuses
///   moesched::trace::stats_to_json(s);
///
/// Definitions (every "token pair" and "window" stays inside one request, in step order):
/// - popularity: activations per expert per layer; skew as the Gini coefficient, entropy over
///   log(experts) (1 = uniform), the share of activations of the top 10% experts, and how many
///   experts cover 50% and 90% of the activations;
/// - next_token_reuse: |E(t) & E(t-1)| / top_k at the same layer, averaged over token pairs;
/// - reuse distance: for each activation, tokens since the same request last used that expert at
///   that layer (1 = the previous token), as a histogram; "first" = never used before;
/// - next-layer hit rate: predict layer l+1's experts from layer l's with co-occurrence counts
///   fitted on the first half of the tokens, score on the second half (out of sample): the share
///   of the true top_k found in the predicted top_k; beside it the same score for predicting the
///   fitted half's most popular experts (the baseline the correlation must beat). Skipped (null)
///   above 1024 experts per layer;
/// - window union: distinct experts at a layer over w consecutive tokens, w = 2..8 (what an SD
///   verification of w tokens, or a batch, touches), averaged over windows and layers;
/// - channels: precision = hits / candidates listed, recall = hits / true experts, where the
///   truth of a whole-step prediction is the union over the step's tokens.

#include "moesched/core/routing.hpp"
#include "moesched/io/trace.hpp"
#include "moesched/policy/transition_predictor.hpp"
#include "moesched/runtime/jobs.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace moesched::trace {

struct LayerStats {
  std::vector<std::uint64_t> activations;  ///< per expert
  double gini = 0.0;
  double entropy = 0.0;        ///< normalised to [0, 1]
  double top10_share = 0.0;    ///< share of activations of the most popular 10% of experts
  std::uint32_t experts_for_50pct = 0;
  std::uint32_t experts_for_90pct = 0;
  double next_token_reuse = 0.0;
  std::optional<double> next_layer_hit;       ///< co-occurrence predictor, out of sample
  std::optional<double> next_layer_baseline;  ///< popularity predictor, out of sample
};

struct ChannelStats {
  std::string name;
  std::uint64_t predictions = 0;
  double precision = 0.0;
  double recall = 0.0;
  std::vector<double> recall_per_layer;  ///< NaN where the channel predicts nothing for a layer
};

/// Reuse-distance histogram buckets: 1, 2, 3-4, 5-8, ..., 129-256, >256, first use.
inline constexpr std::array<const char*, 11> kReuseBuckets{"1", "2", "3-4", "5-8", "9-16", "17-32", "33-64", "65-128", "129-256", ">256", "first"};

struct TraceStats {
  io::TraceModel model;
  bool generated = false;
  std::uint64_t requests = 0, steps = 0, tokens = 0;
  std::uint64_t prefill_steps = 0, decode_steps = 0, verify_steps = 0;
  std::uint64_t prefill_tokens = 0, emitted_tokens = 0;
  std::uint64_t drafted = 0, accepted = 0;  ///< over verify steps
  std::vector<LayerStats> layers;
  double gini = 0.0, entropy = 0.0, top10_share = 0.0;  ///< means over layers
  double next_token_reuse = 0.0;
  std::optional<double> next_layer_hit, next_layer_baseline;
  std::array<std::uint64_t, kReuseBuckets.size()> reuse_distance{};
  std::array<double, 7> window_union{};  ///< index w-2 for w = 2..8; 0 where no window fits
  std::vector<ChannelStats> channels;

  [[nodiscard]] double acceptance_rate() const noexcept {
    return drafted == 0 ? 0.0 : static_cast<double>(accepted) / static_cast<double>(drafted);
  }
};

namespace stats_detail {

inline std::size_t reuse_bucket(std::uint64_t d) noexcept {
  if (d <= 1) return 0;
  if (d == 2) return 1;
  std::size_t b = 2;
  std::uint64_t hi = 4;
  while (d > hi && b < 9) {
    hi *= 2;
    ++b;
  }
  return b;
}

inline void popularity(LayerStats& ls) {
  std::vector<std::uint64_t> c = ls.activations;
  std::sort(c.begin(), c.end());
  const auto n = static_cast<double>(c.size());
  const double total = static_cast<double>(std::accumulate(c.begin(), c.end(), std::uint64_t{0}));
  if (total == 0.0) return;
  double weighted = 0.0;
  for (std::size_t i = 0; i < c.size(); ++i) weighted += static_cast<double>(i + 1) * static_cast<double>(c[i]);
  ls.gini = (2.0 * weighted) / (n * total) - (n + 1.0) / n;
  double h = 0.0;
  for (auto x : c) {
    if (x > 0) {
      const double q = static_cast<double>(x) / total;
      h -= q * std::log(q);
    }
  }
  ls.entropy = c.size() > 1 ? h / std::log(n) : 1.0;
  const std::size_t top = std::max<std::size_t>(1, (c.size() + 9) / 10);
  double acc = 0.0;
  std::uint32_t k = 0;
  for (std::size_t i = c.size(); i-- > 0;) {
    acc += static_cast<double>(c[i]);
    ++k;
    if (k == top) ls.top10_share = acc / total;
    if (ls.experts_for_50pct == 0 && acc >= 0.5 * total) ls.experts_for_50pct = k;
    if (ls.experts_for_90pct == 0 && acc >= 0.9 * total) ls.experts_for_90pct = k;
  }
}

}  // namespace stats_detail

/// Compute every statistic in one pass over the steps (plus one for the next-layer predictor).
[[nodiscard]] inline TraceStats compute_stats(const io::Trace& t) {
  const auto& m = t.meta().model;
  const std::uint32_t L = m.moe_layers, E = m.experts_per_layer, K = m.top_k;
  TraceStats s;
  s.model = m;
  s.generated = t.meta().generated;
  s.requests = t.meta().request_count;
  s.steps = t.step_count();
  s.tokens = t.token_count();
  s.layers.resize(L);
  for (auto& ls : s.layers) ls.activations.assign(E, 0);

  // the last step of each request, so per-request state can be released after it; keyed by
  // request so that memory follows the requests that have steps, not request_count
  std::unordered_map<std::uint32_t, std::uint64_t> last_step;
  for (std::uint64_t i = 0; i < s.steps; ++i) last_step[t.step(i).request] = i;

  // position + 1 of the last use of each (layer, expert), 0 = never: a flat array for real model
  // sizes, a hash map when layers x experts is huge (only used experts then cost memory)
  const bool flat = std::uint64_t{L} * E <= (1U << 20U);
  struct RequestState {
    std::uint64_t position = 0;  // tokens of this request seen so far
    std::vector<std::uint64_t> last_use;
    std::unordered_map<std::uint64_t, std::uint64_t> last_use_sparse;
    std::vector<std::uint16_t> history;  // ring of the last 8 tokens' rows [8 * L * K]
  };
  std::unordered_map<std::uint32_t, RequestState> req;
  std::vector<std::uint64_t> stamp(E, 0);
  std::uint64_t round = 0;
  double reuse_sum = 0.0;
  std::uint64_t reuse_pairs = 0;
  std::vector<double> layer_reuse(L, 0.0);
  std::array<double, 7> union_sum{};
  std::array<std::uint64_t, 7> union_count{};
  std::vector<std::uint16_t> row(std::size_t{L} * K);

  for (std::uint64_t si = 0; si < s.steps; ++si) {
    const StepInfo st = t.step(si);
    switch (st.phase) {
      case StepPhase::prefill: ++s.prefill_steps; s.prefill_tokens += st.tokens; break;
      case StepPhase::decode: ++s.decode_steps; break;
      case StepPhase::verify: ++s.verify_steps; s.drafted += st.draft_len; s.accepted += st.accepted; break;
    }
    s.emitted_tokens += st.emitted_tokens();
    auto [slot, fresh] = req.try_emplace(st.request);
    RequestState* rs = &slot->second;
    if (fresh) {
      if (flat) rs->last_use.assign(std::size_t{L} * E, 0);
      rs->history.assign(std::size_t{8} * L * K, 0);
    }
    for (std::uint32_t j = 0; j < st.tokens; ++j) {
      const std::uint64_t tok = st.first_token + j;
      const std::uint64_t pos = rs->position;
      t.token_experts(tok, row.data());
      for (std::uint32_t l = 0; l < L; ++l) {
        const std::uint16_t* cur = row.data() + std::size_t{l} * K;
        for (std::uint32_t k = 0; k < K; ++k) {
          const std::uint16_t e = cur[k];
          ++s.layers[l].activations[e];
          const std::uint64_t key = std::uint64_t{l} * E + e;
          std::uint64_t& lu = flat ? rs->last_use[key] : rs->last_use_sparse[key];
          s.reuse_distance[lu == 0 ? kReuseBuckets.size() - 1 : stats_detail::reuse_bucket(pos + 1 - lu)]++;
          lu = pos + 1;
        }
        // windows ending at this token: previous tokens from the ring, newest first
        ++round;
        std::uint32_t distinct = 0;
        for (std::uint32_t k = 0; k < K; ++k) {
          if (stamp[cur[k]] != round) {
            stamp[cur[k]] = round;
            ++distinct;
          }
        }
        for (std::uint32_t w = 2; w <= 8 && w <= pos + 1; ++w) {
          const std::uint64_t back = (pos - (w - 1)) % 8;
          const std::uint16_t* old = rs->history.data() + (back * L + l) * K;
          std::uint32_t shared = 0;
          for (std::uint32_t k = 0; k < K; ++k) {
            if (stamp[old[k]] != round) {
              stamp[old[k]] = round;
              ++distinct;
            } else if (w == 2) {
              ++shared;
            }
          }
          if (w == 2) {
            const double r = static_cast<double>(shared) / K;
            reuse_sum += r;
            layer_reuse[l] += r;
          }
          union_sum[w - 2] += distinct;
          ++union_count[w - 2];
        }
      }
      if (pos > 0) ++reuse_pairs;
      std::copy(row.begin(), row.end(), rs->history.begin() + static_cast<std::ptrdiff_t>((pos % 8) * L * K));
      ++rs->position;
    }
    if (last_step[st.request] == si) req.erase(st.request);
  }
  s.next_token_reuse = reuse_pairs == 0 ? 0.0 : reuse_sum / static_cast<double>(reuse_pairs * L);
  for (std::uint32_t l = 0; l < L; ++l) {
    s.layers[l].next_token_reuse = reuse_pairs == 0 ? 0.0 : layer_reuse[l] / static_cast<double>(reuse_pairs);
  }
  for (std::size_t w = 0; w < 7; ++w) s.window_union[w] = union_count[w] == 0 ? 0.0 : union_sum[w] / static_cast<double>(union_count[w]);
  for (auto& ls : s.layers) {
    stats_detail::popularity(ls);
    s.gini += ls.gini / L;
    s.entropy += ls.entropy / L;
    s.top10_share += ls.top10_share / L;
  }

  // next-layer predictor: fit on the first half of the tokens, score on the second half (the
  // co-occurrence ranking is policy::TransitionCounts, the one the transition predictor uses)
  if (E <= 1024 && L >= 2 && s.tokens >= 2) {
    const std::uint64_t half = s.tokens / 2;
    policy::TransitionCounts co(E);
    std::vector<std::uint16_t> a(K), b(K);
    std::vector<runtime::ScoredExpert> pred(K), order(K);
    double hit_all = 0.0, base_all = 0.0;
    for (std::uint32_t l = 0; l + 1 < L; ++l) {
      co.clear();
      for (std::uint64_t tok = 0; tok < half; ++tok) {
        t.experts(tok, l, a.data());
        t.experts(tok, l + 1, b.data());
        co.add(a, b);
      }
      // the baseline: the fitted half's most popular experts (ties: the lower id)
      co.rank({}, order);
      double hits = 0.0, base = 0.0;
      for (std::uint64_t tok = half; tok < s.tokens; ++tok) {
        t.experts(tok, l, a.data());
        t.experts(tok, l + 1, b.data());
        // co-occurrence first; ties go to the more popular expert, then the lower id
        co.rank(a, pred);
        for (std::uint32_t k = 0; k < K; ++k) {
          if (std::find(b.begin(), b.end(), pred[k].expert) != b.end()) hits += 1.0;
          if (std::find(b.begin(), b.end(), order[k].expert) != b.end()) base += 1.0;
        }
      }
      const double n = static_cast<double>((s.tokens - half) * K);
      s.layers[l].next_layer_hit = hits / n;
      s.layers[l].next_layer_baseline = base / n;
      hit_all += hits / n / (L - 1);
      base_all += base / n / (L - 1);
    }
    s.next_layer_hit = hit_all;
    s.next_layer_baseline = base_all;
  }

  // prediction channels
  std::vector<std::uint16_t> cand(4096), truth(K);
  for (std::uint32_t c = 0; c < t.meta().channels.size(); ++c) {
    ChannelStats cs;
    cs.name = t.meta().channels[c].name;
    cs.predictions = t.prediction_count(c);
    std::vector<double> lhits(L, 0.0), ltruth(L, 0.0);
    double hits = 0.0, listed = 0.0, truths = 0.0;
    for (std::uint64_t i = 0; i < cs.predictions; ++i) {
      const io::Prediction p = t.prediction(c, i);
      const std::uint32_t n = t.candidates(c, i, cand.data());
      const StepInfo st = t.step(p.step);
      ++round;
      std::uint32_t true_count = 0;
      const std::uint64_t from = p.token < 0 ? st.first_token : st.first_token + static_cast<std::uint64_t>(p.token);
      const std::uint64_t to = p.token < 0 ? st.first_token + st.tokens : from + 1;
      for (std::uint64_t tok = from; tok < to; ++tok) {
        t.experts(tok, p.layer, truth.data());
        for (auto e : truth) {
          if (stamp[e] != round) {
            stamp[e] = round;
            ++true_count;
          }
        }
      }
      std::uint32_t h = 0;
      for (std::uint32_t r = 0; r < n; ++r) h += stamp[cand[r]] == round ? 1U : 0U;
      hits += h;
      listed += n;
      truths += true_count;
      lhits[p.layer] += h;
      ltruth[p.layer] += true_count;
    }
    cs.precision = listed == 0.0 ? 0.0 : hits / listed;
    cs.recall = truths == 0.0 ? 0.0 : hits / truths;
    for (std::uint32_t l = 0; l < L; ++l) cs.recall_per_layer.push_back(ltruth[l] == 0.0 ? std::nan("") : lhits[l] / ltruth[l]);
    s.channels.push_back(std::move(cs));
  }
  return s;
}

/// Everything in TraceStats as JSON (NaN and absent values as null).
[[nodiscard]] inline nlohmann::ordered_json stats_to_json(const TraceStats& s) {
  auto num = [](double v) { return std::isfinite(v) ? nlohmann::ordered_json(v) : nlohmann::ordered_json(nullptr); };
  auto opt = [&](const std::optional<double>& v) { return v ? num(*v) : nlohmann::ordered_json(nullptr); };
  nlohmann::ordered_json j;
  j["model"] = {{"name", s.model.name}, {"moe_layers", s.model.moe_layers}, {"experts_per_layer", s.model.experts_per_layer}, {"top_k", s.model.top_k}};
  j["generated"] = s.generated;
  j["counts"] = {{"requests", s.requests}, {"steps", s.steps}, {"tokens", s.tokens}, {"prefill_steps", s.prefill_steps},
                 {"decode_steps", s.decode_steps}, {"verify_steps", s.verify_steps}, {"prefill_tokens", s.prefill_tokens},
                 {"emitted_tokens", s.emitted_tokens}, {"drafted", s.drafted}, {"accepted", s.accepted}};
  j["acceptance_rate"] = num(s.acceptance_rate());
  j["popularity"] = {{"gini", num(s.gini)}, {"entropy", num(s.entropy)}, {"top10_share", num(s.top10_share)}};
  j["next_token_reuse"] = num(s.next_token_reuse);
  j["next_layer_hit"] = opt(s.next_layer_hit);
  j["next_layer_baseline"] = opt(s.next_layer_baseline);
  nlohmann::ordered_json rd = nlohmann::ordered_json::object();
  for (std::size_t b = 0; b < kReuseBuckets.size(); ++b) rd[kReuseBuckets[b]] = s.reuse_distance[b];
  j["reuse_distance"] = rd;
  nlohmann::ordered_json wu = nlohmann::ordered_json::object();
  for (std::size_t w = 0; w < 7; ++w) wu[std::to_string(w + 2)] = num(s.window_union[w]);
  j["window_union"] = wu;
  nlohmann::ordered_json layers = nlohmann::ordered_json::array();
  for (std::size_t l = 0; l < s.layers.size(); ++l) {
    const auto& ls = s.layers[l];
    layers.push_back({{"layer", l}, {"gini", num(ls.gini)}, {"entropy", num(ls.entropy)}, {"top10_share", num(ls.top10_share)},
                      {"experts_for_50pct", ls.experts_for_50pct}, {"experts_for_90pct", ls.experts_for_90pct},
                      {"next_token_reuse", num(ls.next_token_reuse)}, {"next_layer_hit", opt(ls.next_layer_hit)},
                      {"next_layer_baseline", opt(ls.next_layer_baseline)}, {"activations", ls.activations}});
  }
  j["layers"] = layers;
  nlohmann::ordered_json ch = nlohmann::ordered_json::array();
  for (const auto& c : s.channels) {
    nlohmann::ordered_json per = nlohmann::ordered_json::array();
    for (double r : c.recall_per_layer) per.push_back(num(r));
    ch.push_back({{"name", c.name}, {"predictions", c.predictions}, {"precision", num(c.precision)}, {"recall", num(c.recall)},
                  {"recall_per_layer", per}});
  }
  j["channels"] = ch;
  return j;
}

}  // namespace moesched::trace
