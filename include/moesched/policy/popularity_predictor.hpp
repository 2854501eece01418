#pragma once
/// PopularityPredictor: ranks a layer's experts by how often its gate asked for them, with
/// recency decay (an ExpertPredictor; routing only).
///
///   moesched::policy::PopularityPredictor p(/*decay=*/0.8);
///   p.resize(2, 4);
///   p.observe(0, needed);                    // every observe of layer 0 ages its scores once
///   std::uint32_t n = p.predict(0, out);     // highest decayed count first
///
/// Score of expert e at layer l after its gates g = 1..n: sum over g of decay^(n - g) x [e asked
/// at g], compared as floats (ties: the lower id); only experts with a positive score are ranked; decay = 1 is plain frequency (LFU order), decay near 0 is "what the last gate asked".
/// Cost: observe() O(experts), predict() O(experts x out.size()); no allocation after resize().

#include "moesched/core/config.hpp"
#include "moesched/core/expert_id.hpp"
#include "moesched/policy/expert_predictor.hpp"
#include "moesched/runtime/executor.hpp"
#include "moesched/runtime/jobs.hpp"

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace moesched::policy {

class PopularityPredictor {
 public:
  [[nodiscard]] static constexpr std::string_view name() noexcept { return "popularity"; }

  /// `decay` in [0, 1]: weight a past gate keeps per later gate of the same layer.
  explicit PopularityPredictor(double decay = 0.9) : decay_(decay < 0.0 ? 0.0 : (decay > 1.0 ? 1.0 : decay)) {}

  [[nodiscard]] double decay() const noexcept { return decay_; }

  void resize(std::uint32_t layers, std::uint32_t experts) {
    if (layers == layers_ && experts == experts_) return;
    layers_ = layers;
    experts_ = experts;
    score_.assign(std::size_t{layers} * experts, 0.0);
  }
  void begin_pass(const PassInfo&) noexcept {}
  void observe(std::uint32_t layer, std::span<const ExpertId> needed) noexcept {
    double* s = score_.data() + std::size_t{layer} * experts_;
    for (std::uint32_t e = 0; e < experts_; ++e) s[e] *= decay_;
    for (ExpertId id : needed) s[id.expert] += 1.0;
  }
  [[nodiscard]] std::uint32_t predict(std::uint32_t layer, std::span<runtime::ScoredExpert> out) const noexcept {
    const double* s = score_.data() + std::size_t{layer} * experts_;
    std::uint32_t n = 0;
    for (std::uint32_t e = 0; e < experts_; ++e) {
      if (s[e] > 0.0) predictor_detail::offer_scored(out, n, static_cast<std::uint16_t>(e), static_cast<float>(s[e]));
    }
    return n;
  }

 private:
  double decay_;
  std::uint32_t layers_ = 0;
  std::uint32_t experts_ = 0;
  std::vector<double> score_;  // [layer * experts + expert]
};

static_assert(ExpertPredictor<PopularityPredictor>);

}  // namespace moesched::policy
