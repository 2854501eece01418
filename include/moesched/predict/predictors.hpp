#pragma once
/// Hidden-state expert predictors on the CPU (Eigen): a router applied to an earlier hidden state
/// (skip gate, draft gate) and learned per-layer networks (ProMoE's MLP, a pre-attention linear).
///
///   auto gates = std::make_shared<const moesched::predict::GateSet>(moesched::predict::read_gates("g.safetensors"));
///   auto skip = moesched::predict::GatePredictor::skip_gate(gates, /*after_layer=*/3);   // router 4 on moe_input of 3
///   std::array<moesched::runtime::ScoredExpert, 2> out;
///   std::uint32_t n = skip.rank(hidden_row, out);      // out[0..n): layer 4's experts, best first
///
/// Input: one token's hidden state (hidden_size floats) of the layer and kind `input()` names.
/// Where: a CPU thread (`where()` = JobResource::cpu_worker); rank() allocates nothing (its Eigen
/// buffers are sized at construction) and throws nothing, so it can run as a predictor job. One
/// object per thread: rank() writes the object's buffers. Cost: `flops()` per token (multiply-adds
/// count 2).
///
/// Ranking: candidates by score, highest first, ties to the lower expert id; at most out.size()
/// (and at most the expert count) are written. Gate scores are softmax(W x + b) or sigmoid(W x +
/// b) + score_bias, ranked by that score (what record.py's ranked_candidates does); with
/// group-limited routing (a gates file's n_group > 1, DeepSeek-V2/V3) only the experts of the
/// topk_group best groups are candidates, so a ranking holds at most topk_group x experts/n_group.
/// A learned predictor ranks by logit and reports sigmoid(logit).

#include "moesched/predict/weights.hpp"
#include "moesched/runtime/jobs.hpp"

#include <Eigen/Dense>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <span>
#include <vector>

namespace moesched::predict {

/// What a predictor reads: a hidden state of one MoE layer.
struct PredictorInput {
  HiddenState state = HiddenState::moe_input;
  std::uint32_t layer = 0;  ///< MoE layer ordinal of the hidden state
};

namespace predictors_detail {

/// out[0..n) := the top entries of `key` (higher first, ties to the lower index), with `score`
/// (the reported value) beside each; O(E x n), no allocation.
inline std::uint32_t select_top(const float* key, const float* score, std::uint32_t experts,
                                std::span<runtime::ScoredExpert> out, float* kept_key) noexcept {
  const auto cap = static_cast<std::uint32_t>(std::min<std::size_t>(out.size(), experts));
  std::uint32_t n = 0;
  for (std::uint32_t e = 0; e < experts; ++e) {
    const float k = key[e];
    if (k == -std::numeric_limits<float>::infinity()) continue;  // not a candidate (a group left out)
    // strictly greater: an equal key keeps the earlier (lower) id in front
    if (n == cap && !(k > kept_key[n - 1])) continue;
    std::uint32_t i = n < cap ? n++ : cap - 1;
    while (i > 0 && k > kept_key[i - 1]) {
      kept_key[i] = kept_key[i - 1];
      out[i] = out[i - 1];
      --i;
    }
    kept_key[i] = k;
    out[i] = {static_cast<std::uint16_t>(e), score[e]};
  }
  return n;
}

[[nodiscard]] inline float sigmoid(float x) noexcept { return 1.0F / (1.0F + std::exp(-x)); }
/// The exact (erf) GELU, torch's default.
[[nodiscard]] inline float gelu(float x) noexcept { return 0.5F * x * (1.0F + std::erf(x * 0.70710678118654752440F)); }

}  // namespace predictors_detail

/// One router applied to a hidden state: the skip gate (router l+1 on the input of MoE layer l) or the draft gate (router l on the draft's state).
class GatePredictor {
 public:
  /// Router `router_layer` of `gates` applied to hidden state `input`; predicts `router_layer`.
  GatePredictor(std::shared_ptr<const GateSet> gates, std::uint32_t router_layer, PredictorInput input)
      : gates_(std::move(gates)), layer_(router_layer), input_(input) {
    if (!gates_ || router_layer >= gates_->moe_layers) {
      throw ConfigError(gates_ ? gates_->source : std::string(), "router layer", std::to_string(router_layer),
                        "no such MoE layer in the gates file (" + std::to_string(gates_ ? gates_->moe_layers : 0) + " layers)");
    }
    const auto E = static_cast<Eigen::Index>(gates_->experts);
    logits_.resize(E);
    scores_.resize(E);
    kept_.resize(E);
    if (gates_->groups > 1) {
      key_.resize(E);
      group_key_.resize(gates_->groups);
      group_kept_.resize(gates_->groups);
    }
  }
  /// Router l+1 on the MoE input of layer l (Mixtral-offloading's speculative gate).
  [[nodiscard]] static GatePredictor skip_gate(std::shared_ptr<const GateSet> gates, std::uint32_t after_layer) {
    return {std::move(gates), after_layer + 1, {HiddenState::moe_input, after_layer}};
  }
  /// Router l on the draft model's feed-forward input at the matching layer (SP-MoE).
  [[nodiscard]] static GatePredictor draft_gate(std::shared_ptr<const GateSet> gates, std::uint32_t layer) {
    return {std::move(gates), layer, {HiddenState::draft_moe_input, layer}};
  }

  [[nodiscard]] PredictorInput input() const noexcept { return input_; }
  [[nodiscard]] std::uint32_t predicts() const noexcept { return layer_; }
  [[nodiscard]] static constexpr runtime::JobResource where() noexcept { return runtime::JobResource::cpu_worker; }
  [[nodiscard]] std::uint32_t hidden_size() const noexcept { return gates_->hidden_size; }
  [[nodiscard]] std::uint32_t experts() const noexcept { return gates_->experts; }
  /// Floating-point operations per token: the GEMV (2 E H), the bias and the scoring (about 4 E).
  [[nodiscard]] std::uint64_t flops() const noexcept {
    return 2ULL * gates_->experts * gates_->hidden_size + 4ULL * gates_->experts;
  }

  /// Rank the predicted layer's experts for one token's hidden state (hidden_size() floats; a
  /// different length writes nothing and returns 0). Returns how many candidates were written.
  std::uint32_t rank(std::span<const float> hidden, std::span<runtime::ScoredExpert> out) noexcept {
    if (hidden.size() != gates_->hidden_size) return 0;
    const GateRouter& r = gates_->routers[layer_];
    const Eigen::Map<const Eigen::VectorXf> x(hidden.data(), static_cast<Eigen::Index>(hidden.size()));
    logits_.noalias() = r.weight * x;
    if (r.bias.size() > 0) logits_ += r.bias;
    const auto E = logits_.size();
    if (gates_->scoring == GateScoring::softmax) {
      const float mx = logits_.maxCoeff();
      float sum = 0.0F;
      for (Eigen::Index e = 0; e < E; ++e) {
        scores_[e] = std::exp(logits_[e] - mx);
        sum += scores_[e];
      }
      scores_ /= sum;
    } else {
      for (Eigen::Index e = 0; e < E; ++e) scores_[e] = predictors_detail::sigmoid(logits_[e]);
      if (r.score_bias.size() > 0) scores_ += r.score_bias;
    }
    if (gates_->groups > 1) return rank_in_groups(out);
    return predictors_detail::select_top(scores_.data(), scores_.data(), gates_->experts, out, kept_.data());
  }

 private:
  /// Group-limited routing (GateSet::groups > 1): the groups_kept best groups by their group score
  /// (equal scores: the lower group first), then the experts of those groups by score.
  std::uint32_t rank_in_groups(std::span<runtime::ScoredExpert> out) noexcept {
    const std::uint32_t G = gates_->groups;
    const std::uint32_t per = gates_->experts / G;
    for (std::uint32_t g = 0; g < G; ++g) {
      float first = -std::numeric_limits<float>::infinity();
      float second = first;
      for (std::uint32_t i = g * per; i < (g + 1) * per; ++i) {
        const float v = scores_[static_cast<Eigen::Index>(i)];
        if (v > first) {
          second = first;
          first = v;
        } else if (v > second) {
          second = v;
        }
      }
      group_key_[g] = gates_->group_score == GroupScore::max ? first : first + second;
    }
    // Which groups: the best groups_kept of them, ties to the lower index (as torch.topk on CPU).
    std::fill(group_kept_.begin(), group_kept_.end(), false);
    for (std::uint32_t k = 0; k < gates_->groups_kept; ++k) {
      std::uint32_t best = G;
      for (std::uint32_t g = 0; g < G; ++g) {
        if (!group_kept_[g] && (best == G || group_key_[g] > group_key_[best])) best = g;
      }
      group_kept_[best] = true;
    }
    for (std::uint32_t e = 0; e < gates_->experts; ++e) {
      key_[static_cast<Eigen::Index>(e)] =
          group_kept_[e / per] ? scores_[static_cast<Eigen::Index>(e)] : -std::numeric_limits<float>::infinity();
    }
    return predictors_detail::select_top(key_.data(), scores_.data(), gates_->experts, out, kept_.data());
  }

  std::shared_ptr<const GateSet> gates_;
  std::uint32_t layer_ = 0;
  PredictorInput input_;
  Eigen::VectorXf logits_, scores_, kept_;
  Eigen::VectorXf key_;             // group-limited routing: scores, or -inf outside the kept groups
  std::vector<float> group_key_;    // per group
  std::vector<char> group_kept_;    // per group (char: no vector<bool> proxies on the hot path)
};

/// A learned per-layer predictor (kind mlp: standardise, Linear, exact GELU, Linear; kind linear: without the GELU), scores sigmoid(logit).
class LearnedPredictor {
 public:
  /// The network of entry `index` of `set.layers`.
  LearnedPredictor(std::shared_ptr<const LearnedSet> set, std::size_t index) : set_(std::move(set)), index_(index) {
    if (!set_ || index >= set_->layers.size()) {
      throw ConfigError(set_ ? set_->source : std::string(), "predictor", std::to_string(index),
                        "no such entry (" + std::to_string(set_ ? set_->layers.size() : 0) + " source layers)");
    }
    z_.resize(static_cast<Eigen::Index>(set_->hidden_size));
    h_.resize(static_cast<Eigen::Index>(set_->hidden_dim));
    logits_.resize(static_cast<Eigen::Index>(set_->experts));
    scores_.resize(static_cast<Eigen::Index>(set_->experts));
    kept_.resize(static_cast<Eigen::Index>(set_->experts));
  }

  [[nodiscard]] PredictorInput input() const noexcept { return {set_->hidden_state, layer().source_layer}; }
  [[nodiscard]] std::uint32_t predicts() const noexcept { return layer().target_layer; }
  [[nodiscard]] LearnedKind kind() const noexcept { return set_->kind; }
  [[nodiscard]] static constexpr runtime::JobResource where() noexcept { return runtime::JobResource::cpu_worker; }
  [[nodiscard]] std::uint32_t hidden_size() const noexcept { return set_->hidden_size; }
  [[nodiscard]] std::uint32_t experts() const noexcept { return set_->experts; }
  /// Floating-point operations per token: standardising (2 H), the two GEMVs (2 D H + 2 E D),
  /// biases (D + E), the GELU (about 8 D for mlp) and the sigmoids (about 4 E).
  [[nodiscard]] std::uint64_t flops() const noexcept {
    const std::uint64_t H = set_->hidden_size, D = set_->hidden_dim, E = set_->experts;
    return 2 * H + 2 * D * H + 2 * E * D + D + E + (set_->kind == LearnedKind::mlp ? 8 * D : 0) + 4 * E;
  }

  /// As GatePredictor::rank: one token's hidden state in, ranked experts out; no allocation.
  std::uint32_t rank(std::span<const float> hidden, std::span<runtime::ScoredExpert> out) noexcept {
    if (hidden.size() != set_->hidden_size) return 0;
    const LearnedLayer& p = layer();
    const Eigen::Map<const Eigen::VectorXf> x(hidden.data(), static_cast<Eigen::Index>(hidden.size()));
    z_ = (x - p.mean).cwiseQuotient(p.std);
    h_.noalias() = p.w1 * z_;
    h_ += p.b1;
    if (set_->kind == LearnedKind::mlp) {
      for (Eigen::Index i = 0; i < h_.size(); ++i) h_[i] = predictors_detail::gelu(h_[i]);
    }
    logits_.noalias() = p.w2 * h_;
    logits_ += p.b2;
    for (Eigen::Index e = 0; e < logits_.size(); ++e) scores_[e] = predictors_detail::sigmoid(logits_[e]);
    return predictors_detail::select_top(logits_.data(), scores_.data(), set_->experts, out, kept_.data());
  }

 private:
  [[nodiscard]] const LearnedLayer& layer() const noexcept { return set_->layers[index_]; }
  std::shared_ptr<const LearnedSet> set_;
  std::size_t index_ = 0;
  Eigen::VectorXf z_, h_, logits_, scores_, kept_;
};

}  // namespace moesched::predict
