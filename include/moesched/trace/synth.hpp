#pragma once
/// Synthetic routing traces: skewed popularity, temporal reuse, cross-layer correlation,
/// speculative-decoding steps and prediction channels of chosen accuracy. Deterministic by seed.
///
///   moesched::trace::SynthParams p;
///   p.moe_layers = 32; p.experts = 8; p.top_k = 2;
///   p.requests = 4; p.decode_tokens = 256; p.sd_draft_len = 4; p.sd_acceptance = 0.7;
///   moesched::io::TraceWriter w = moesched::trace::synthesize(p);
///   w.write("synthetic.trace.safetensors");
///
/// Model of one token's routing at one layer, slot by slot (top_k distinct experts):
///   with probability `reuse`, an expert the same request used at this layer on the previous token;
///   else with probability `cross_layer`, the image of one of this token's experts at the previous
///     layer under a fixed random map (layer l's expert e "leads to" expert map_l(e) at l+1);
///   else an expert drawn from the layer's popularity: Zipf with exponent `zipf` over a random
///     per-layer ranking of the experts (zipf = 0 is uniform).
/// A candidate that is already in the token's set is redrawn from popularity. Speculative
/// decoding groups decode tokens into verify steps of draft_len + 1 tokens; each draft token is
/// accepted with probability `sd_acceptance` until the first rejection; the step emits
/// accepted + 1 tokens. Channels: "synthetic_skip_gate" predicts layer l of each token after layer
/// l-1 ran; "synthetic_draft_gate" predicts every layer of the tokens the draft model processed
/// (tokens 0..draft_len-1 of a verify step), available before the step. In both, each of the
/// token's true experts is listed with probability `*_accuracy`, the rest of the top_k candidates
/// are wrong experts, all in random order.

#include "moesched/core/error.hpp"
#include "moesched/core/random.hpp"
#include "moesched/core/routing.hpp"
#include "moesched/io/trace.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <string>
#include <tuple>
#include <vector>

namespace moesched::trace {

/// Parameters of synthesize(); every one is documented in the file comment and in
/// `moesched-trace synth --help`.
struct SynthParams {
  std::uint64_t seed = 1;
  std::string model_name = "synthetic";
  std::uint32_t moe_layers = 32;
  std::uint32_t experts = 8;
  std::uint32_t top_k = 2;
  std::uint32_t requests = 4;
  std::uint32_t prompt_tokens = 32;   ///< prefill length per request
  std::uint32_t decode_tokens = 128;  ///< output tokens per request
  double zipf = 0.8;
  double reuse = 0.3;
  double cross_layer = 0.3;
  std::uint32_t sd_draft_len = 0;     ///< 0 = plain decoding
  double sd_acceptance = 0.7;
  double skip_gate_accuracy = -1.0;   ///< < 0: no skip-gate channel
  double draft_gate_accuracy = -1.0;  ///< < 0: no draft-gate channel (needs sd_draft_len > 0)

  /// Throws ConfigError naming the bad parameter.
  void validate() const {
    auto prob = [](const char* f, double v, bool optional) {
      if (optional && v < 0.0) return;
      if (!(v >= 0.0 && v <= 1.0)) throw ConfigError("", f, to_text(v), optional ? "must be in [0, 1] (or negative: off)" : "must be in [0, 1]");
    };
    prob("reuse", reuse, false);
    prob("cross_layer", cross_layer, false);
    prob("sd_acceptance", sd_acceptance, false);
    prob("skip_gate_accuracy", skip_gate_accuracy, true);
    prob("draft_gate_accuracy", draft_gate_accuracy, true);
    if (!(zipf >= 0.0 && zipf <= 10.0)) throw ConfigError("", "zipf", to_text(zipf), "must be in [0, 10]");
    if (requests < 1) throw ConfigError("", "requests", "0", "must be positive");
    if (prompt_tokens < 1) throw ConfigError("", "prompt_tokens", "0", "must be positive (a request starts with a prefill)");
    if (sd_draft_len > 64) throw ConfigError("", "sd_draft_len", std::to_string(sd_draft_len), "must be at most 64");
    if (draft_gate_accuracy >= 0.0 && sd_draft_len == 0) {
      throw ConfigError("", "draft_gate_accuracy", to_text(draft_gate_accuracy), "needs speculative decoding (sd_draft_len > 0)");
    }
    if (top_k < 1 || top_k > experts) {
      throw ConfigError("", "top_k", std::to_string(top_k), "must be between 1 and experts (" + std::to_string(experts) + ")");
    }
  }
};

namespace synth_detail {

/// Samples experts of one layer from a Zipf popularity over a random ranking.
class Popularity {
 public:
  Popularity(std::uint32_t experts, double zipf, Rng& rng) : cdf_(experts), expert_of_rank_(experts) {
    std::iota(expert_of_rank_.begin(), expert_of_rank_.end(), std::uint16_t{0});
    for (std::uint32_t i = experts; i > 1; --i) std::swap(expert_of_rank_[i - 1], expert_of_rank_[rng.below(i)]);
    double total = 0.0;
    for (std::uint32_t r = 0; r < experts; ++r) total += std::pow(static_cast<double>(r + 1), -zipf);
    double acc = 0.0;
    for (std::uint32_t r = 0; r < experts; ++r) {
      acc += std::pow(static_cast<double>(r + 1), -zipf) / total;
      cdf_[r] = acc;
    }
    cdf_.back() = 1.0;
  }
  std::uint16_t draw(Rng& rng) const {
    const double u = rng.uniform();
    const auto it = std::upper_bound(cdf_.begin(), cdf_.end(), u);
    const auto rank = static_cast<std::size_t>(std::min<std::ptrdiff_t>(it - cdf_.begin(), static_cast<std::ptrdiff_t>(cdf_.size()) - 1));
    return expert_of_rank_[rank];
  }

 private:
  std::vector<double> cdf_;
  std::vector<std::uint16_t> expert_of_rank_;
};

}  // namespace synth_detail

/// Generate a trace. The result's metadata says it is generated and records every parameter.
[[nodiscard]] inline io::TraceWriter synthesize(const SynthParams& p) {
  p.validate();
  io::TraceMeta meta;
  meta.model = {p.model_name, p.moe_layers, p.experts, p.top_k};
  meta.source = "moesched-trace synth";
  meta.dataset = "synthetic (no real prompts)";
  meta.notes = "Generated data: routing drawn from the documented synthetic model, not recorded from a model.";
  meta.generated = true;
  meta.request_count = p.requests;
  meta.provenance = {{"generator", "moesched::trace::synthesize"},
                     {"seed", p.seed}, {"zipf", p.zipf}, {"reuse", p.reuse}, {"cross_layer", p.cross_layer},
                     {"requests", p.requests}, {"prompt_tokens", p.prompt_tokens}, {"decode_tokens", p.decode_tokens},
                     {"sd_draft_len", p.sd_draft_len}, {"sd_acceptance", p.sd_acceptance},
                     {"skip_gate_accuracy", p.skip_gate_accuracy}, {"draft_gate_accuracy", p.draft_gate_accuracy}};
  const bool skip = p.skip_gate_accuracy >= 0.0;
  const bool draft = p.draft_gate_accuracy >= 0.0 && p.sd_draft_len > 0;
  if (skip) meta.channels.push_back({"synthetic_skip_gate", "synthetic: layer l predicted after layer l-1, accuracy " + to_text(p.skip_gate_accuracy), p.top_k, true});
  if (draft) meta.channels.push_back({"synthetic_draft_gate", "synthetic: every layer of the draft's input tokens, before the step, accuracy " + to_text(p.draft_gate_accuracy), p.top_k, true});
  io::TraceWriter w(meta);

  Rng rng(p.seed);
  std::vector<synth_detail::Popularity> pop;
  pop.reserve(p.moe_layers);
  for (std::uint32_t l = 0; l < p.moe_layers; ++l) pop.emplace_back(p.experts, p.zipf, rng);
  std::vector<std::vector<std::uint16_t>> next_map(p.moe_layers, std::vector<std::uint16_t>(p.experts));
  for (auto& m : next_map) {
    for (auto& e : m) e = static_cast<std::uint16_t>(rng.below(p.experts));
  }
  const std::uint32_t k = p.top_k;
  const std::uint32_t layers = p.moe_layers;
  std::vector<std::uint16_t> prev(std::size_t{layers} * k);  // previous token of this request
  std::vector<std::uint16_t> row(k);

  auto route_token = [&](bool has_prev, std::vector<std::uint16_t>& out) {
    for (std::uint32_t l = 0; l < layers; ++l) {
      for (std::uint32_t j = 0; j < k; ++j) {
        std::uint16_t e = 0;
        bool ok = false;
        for (int attempt = 0; attempt < 4 && !ok; ++attempt) {
          const double u = rng.uniform();
          if (has_prev && u < p.reuse) {
            e = prev[l * k + rng.below(k)];
          } else if (l > 0 && u < p.reuse + (1.0 - p.reuse) * p.cross_layer) {
            e = next_map[l - 1][out[std::size_t{l - 1} * k + rng.below(k)]];
          } else {
            e = pop[l].draw(rng);
          }
          ok = std::find(row.begin(), row.begin() + j, e) == row.begin() + j;
        }
        while (!ok) {  // fall back to popularity until distinct (top_k <= experts: terminates)
          e = pop[l].draw(rng);
          ok = std::find(row.begin(), row.begin() + j, e) == row.begin() + j;
        }
        row[j] = e;
      }
      std::copy(row.begin(), row.end(), out.begin() + static_cast<std::ptrdiff_t>(std::size_t{l} * k));
    }
    std::copy(out.end() - static_cast<std::ptrdiff_t>(std::size_t{layers} * k), out.end(), prev.begin());
  };

  auto predict = [&](const std::uint16_t* truth, double accuracy, std::vector<std::uint16_t>& cand, std::vector<float>& scores) {
    cand.clear();
    for (std::uint32_t j = 0; j < k; ++j) {
      if (rng.chance(accuracy)) cand.push_back(truth[j]);
    }
    // fill up with wrong experts, as many as exist (experts - top_k of them)
    const std::size_t want = std::min<std::size_t>(k, cand.size() + (p.experts - k));
    while (cand.size() < want) {
      const auto e = static_cast<std::uint16_t>(rng.below(p.experts));
      if (std::find(truth, truth + k, e) == truth + k && std::find(cand.begin(), cand.end(), e) == cand.end()) cand.push_back(e);
    }
    for (std::size_t i = cand.size(); i > 1; --i) std::swap(cand[i - 1], cand[rng.below(i)]);
    scores.resize(cand.size());
    for (std::size_t i = 0; i < cand.size(); ++i) scores[i] = static_cast<float>(cand.size() - i) / static_cast<float>(cand.size());
  };

  struct Pending {
    io::Prediction where;
    std::vector<std::uint16_t> cand;
    std::vector<float> scores;
  };
  std::vector<Pending> skip_preds;
  std::vector<Pending> draft_preds;
  std::vector<std::uint16_t> ids;
  std::vector<std::uint16_t> cand;
  std::vector<float> scores;

  auto emit_step = [&](StepInfo s, bool has_prev_first) {
    ids.assign(std::size_t{s.tokens} * layers * k, 0);
    std::vector<std::uint16_t> tok(std::size_t{layers} * k);
    const auto step_index = static_cast<std::uint32_t>(w.step_count());
    for (std::uint32_t t = 0; t < s.tokens; ++t) {
      route_token(has_prev_first || t > 0, tok);
      std::copy(tok.begin(), tok.end(), ids.begin() + static_cast<std::ptrdiff_t>(std::size_t{t} * layers * k));
      for (std::uint32_t l = 0; l < layers; ++l) {
        const std::uint16_t* truth = tok.data() + std::size_t{l} * k;
        if (skip && l > 0) {
          predict(truth, p.skip_gate_accuracy, cand, scores);
          skip_preds.push_back({{step_index, static_cast<std::uint16_t>(l), static_cast<std::int32_t>(t), static_cast<std::int16_t>(l - 1)}, cand, scores});
        }
        if (draft && s.phase == StepPhase::verify && t < s.draft_len) {
          predict(truth, p.draft_gate_accuracy, cand, scores);
          draft_preds.push_back({{step_index, static_cast<std::uint16_t>(l), static_cast<std::int32_t>(t), -1}, cand, scores});
        }
      }
    }
    w.add_step(s, ids);
    // a channel's predictions must be in (step, layer, token) order
    auto flush = [&](std::vector<Pending>& v, std::uint32_t channel) {
      std::stable_sort(v.begin(), v.end(), [](const Pending& a, const Pending& b) {
        return std::make_tuple(a.where.layer, a.where.token) < std::make_tuple(b.where.layer, b.where.token);
      });
      for (const auto& pd : v) w.add_prediction(channel, pd.where, pd.cand, pd.scores);
      v.clear();
    };
    if (skip) flush(skip_preds, 0);
    if (draft) flush(draft_preds, skip ? 1 : 0);
  };

  for (std::uint32_t r = 0; r < p.requests; ++r) {
    emit_step({.request = r, .phase = StepPhase::prefill, .tokens = p.prompt_tokens}, false);
    std::uint32_t produced = 1;  // the prefill emits the first output token
    while (produced < p.decode_tokens) {
      if (p.sd_draft_len == 0) {
        emit_step({.request = r, .phase = StepPhase::decode, .tokens = 1}, true);
        ++produced;
        continue;
      }
      std::uint16_t accepted = 0;
      while (accepted < p.sd_draft_len && rng.chance(p.sd_acceptance)) ++accepted;
      const auto g = static_cast<std::uint16_t>(p.sd_draft_len);
      emit_step({.request = r, .phase = StepPhase::verify, .tokens = std::uint32_t{g} + 1U, .draft_len = g, .accepted = accepted}, true);
      produced += accepted + 1U;
    }
  }
  return w;
}

}  // namespace moesched::trace
