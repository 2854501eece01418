#pragma once
/// ActivationMatrixPredictor: MoE-Infinity's expert activation matrices (an ExpertPredictor;
/// routing only). The running request's matrix (layers x experts: how often each gate asked for
/// each expert since the request began) is matched against stored matrices of earlier requests
/// by cosine similarity; the best match predicts the later layers.
///
///   moesched::policy::ActivationMatrixPredictor p(/*capacity=*/64);
///   moesched::policy::warm(p, training_workload);  // stores one matrix per request group
///   p.begin_pass(pass);                            // a prefill after decoding = a new request
///   p.observe(0, needed);                          // updates the match incrementally
///   p.predict(5, out);                             // matched row 5 + the request's own row 5
///
/// Request boundaries: the policy hooks carry no request id, so a request group starts at a pass
/// of phase prefill that follows a pass of another phase (or at the first pass); when it starts,
/// the previous group's matrix is stored (the oldest stored one is replaced when `capacity` are
/// held). Without prefill passes the whole run is one request and nothing is stored online.
/// Score of expert e at layer t: m[t][e] / sum_e m[t][e] of the best match m (none while nothing
/// matches) plus the same share in the running request's own matrix; experts scoring 0 are not
/// ranked.
/// Cost: observe() O(capacity x |needed|) (dot products are kept incrementally) plus O(capacity)
/// for the best match; predict() O(experts x out.size()); state (capacity + 1) x layers x
/// experts doubles, sized by resize(). Scores compare as floats; ties go to the lower id (and the older stored matrix).

#include "moesched/core/config.hpp"
#include "moesched/core/expert_id.hpp"
#include "moesched/core/routing.hpp"
#include "moesched/policy/expert_predictor.hpp"
#include "moesched/runtime/executor.hpp"
#include "moesched/runtime/jobs.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace moesched::policy {

class ActivationMatrixPredictor {
 public:
  [[nodiscard]] static constexpr std::string_view name() noexcept { return "activation-matrix"; }
  static constexpr std::uint32_t kNone = ~std::uint32_t{0};

  /// `capacity`: stored matrices kept (at least 1).
  explicit ActivationMatrixPredictor(std::uint32_t capacity = 64) : capacity_(capacity < 1 ? 1 : capacity) {}

  [[nodiscard]] std::uint32_t capacity() const noexcept { return capacity_; }
  [[nodiscard]] std::uint32_t stored() const noexcept { return stored_; }
  /// Index of the stored matrix most similar to the running request's, or kNone.
  [[nodiscard]] std::uint32_t best_match() const noexcept { return best_; }
  /// Cosine similarity of the running request's matrix to stored matrix i (0 when either is empty).
  [[nodiscard]] double similarity(std::uint32_t i) const noexcept {
    if (i >= stored_ || norm2_[i] == 0.0 || cur_norm2_ == 0.0) return 0.0;
    return dot_[i] / std::sqrt(norm2_[i] * cur_norm2_);
  }

  void resize(std::uint32_t layers, std::uint32_t experts) {
    if (layers == layers_ && experts == experts_) return;
    layers_ = layers;
    experts_ = experts;
    const std::size_t cells = std::size_t{layers} * experts;
    cur_.assign(cells, 0.0);
    cur_rows_.assign(layers, 0.0);
    store_.assign(std::size_t{capacity_} * cells, 0.0);
    rows_.assign(std::size_t{capacity_} * layers, 0.0);
    norm2_.assign(capacity_, 0.0);
    inv_norm_.assign(capacity_, 0.0);
    dot_.assign(capacity_, 0.0);
    stored_ = 0;
    next_ = 0;
    cur_norm2_ = 0.0;
    best_ = kNone;
    any_pass_ = false;
  }

  void begin_pass(const PassInfo& pass) noexcept {
    const bool starts = !any_pass_ || (pass.phase == StepPhase::prefill && last_phase_ != StepPhase::prefill);
    if (starts) end_request();
    any_pass_ = true;
    last_phase_ = pass.phase;
  }

  void observe(std::uint32_t layer, std::span<const ExpertId> needed) noexcept {
    double* row = cur_.data() + std::size_t{layer} * experts_;
    for (ExpertId id : needed) {
      const std::size_t cell = std::size_t{layer} * experts_ + id.expert;
      cur_norm2_ += 2.0 * row[id.expert] + 1.0;
      row[id.expert] += 1.0;
      cur_rows_[layer] += 1.0;
      const double* m = store_.data() + cell * capacity_;  // the cell of every stored matrix
      for (std::uint32_t i = 0; i < stored_; ++i) dot_[i] += m[i];
    }
    best_ = kNone;
    double best = 0.0;
    for (std::uint32_t i = 0; i < stored_; ++i) {
      const double s = dot_[i] * inv_norm_[i];  // the running matrix's norm is common to all
      if (s > best) {
        best = s;
        best_ = i;
      }
    }
  }

  [[nodiscard]] std::uint32_t predict(std::uint32_t layer, std::span<runtime::ScoredExpert> out) const noexcept {
    const double* own = cur_.data() + std::size_t{layer} * experts_;
    const double own_sum = cur_rows_[layer];
    const double* match = best_ == kNone ? nullptr : store_.data() + std::size_t{layer} * experts_ * capacity_ + best_;
    const double match_sum = best_ == kNone ? 0.0 : rows_[std::size_t{best_} * layers_ + layer];
    auto score = [&](std::uint32_t e) {
      double s = own_sum > 0.0 ? own[e] / own_sum : 0.0;
      if (match != nullptr && match_sum > 0.0) s += match[std::size_t{e} * capacity_] / match_sum;
      return s;
    };
    std::uint32_t n = 0;
    for (std::uint32_t e = 0; e < experts_; ++e) {
      const double s = score(e);
      if (s > 0.0) predictor_detail::offer_scored(out, n, static_cast<std::uint16_t>(e), static_cast<float>(s));
    }
    return n;
  }

  /// Stores the running request's matrix (if it saw any gate) and starts an empty one.
  void end_request() noexcept {
    if (cur_norm2_ > 0.0 && !cur_.empty()) {
      const std::size_t cells = std::size_t{layers_} * experts_;
      const std::uint32_t slot = next_;
      for (std::size_t c = 0; c < cells; ++c) store_[c * capacity_ + slot] = cur_[c];
      std::copy(cur_rows_.begin(), cur_rows_.end(), rows_.begin() + static_cast<std::ptrdiff_t>(std::size_t{slot} * layers_));
      norm2_[slot] = cur_norm2_;
      inv_norm_[slot] = 1.0 / std::sqrt(cur_norm2_);
      next_ = (next_ + 1) % capacity_;
      stored_ = std::min(stored_ + 1, capacity_);
    }
    std::fill(cur_.begin(), cur_.end(), 0.0);
    std::fill(cur_rows_.begin(), cur_rows_.end(), 0.0);
    std::fill(dot_.begin(), dot_.end(), 0.0);
    cur_norm2_ = 0.0;
    best_ = kNone;
  }

 private:
  std::uint32_t capacity_;
  std::uint32_t layers_ = 0;
  std::uint32_t experts_ = 0;
  std::vector<double> cur_;       // running request [layer * experts + expert]
  std::vector<double> cur_rows_;  // its per-layer sums
  double cur_norm2_ = 0.0;
  std::vector<double> store_;     // [(layer * experts + expert) * capacity + slot]: a cell's slots side by side
  std::vector<double> rows_;      // [slot][layer] sums
  std::vector<double> norm2_;     // per slot: squared norm
  std::vector<double> inv_norm_;  // per slot: 1 / norm (0 while empty)
  std::vector<double> dot_;       // per slot: dot product with the running matrix
  std::uint32_t stored_ = 0;
  std::uint32_t next_ = 0;        // slot the next stored matrix takes
  std::uint32_t best_ = kNone;
  bool any_pass_ = false;
  StepPhase last_phase_ = StepPhase::decode;
};

static_assert(ExpertPredictor<ActivationMatrixPredictor>);

}  // namespace moesched::policy
