#pragma once
// An in-memory routing source (models moesched::RoutingSource) for simulator tests.
#include <moesched/core/random.hpp>
#include <moesched/core/routing.hpp>
#include <moesched/workload/workload.hpp>

#include <cstdint>
#include <initializer_list>
#include <utility>
#include <vector>

namespace moesched::test {

struct VecRouting {
  std::uint32_t layers = 1;
  std::uint32_t top_k = 1;
  std::vector<StepInfo> steps;
  std::vector<std::uint16_t> ids;  // token-major: token x layer x k

  /// One prediction of the single in-memory channel (models policy::PredictionSource with c = 0).
  struct Prediction {
    std::uint32_t step = 0;
    std::uint16_t layer = 0;
    std::int32_t token = -1;
    std::int16_t available_after = -1;
    std::vector<std::uint16_t> candidates;
  };
  std::vector<Prediction> predictions;  // sorted by step

  [[nodiscard]] std::pair<std::uint64_t, std::uint64_t> predictions_of_step(std::uint32_t, std::uint64_t s) const {
    std::uint64_t a = 0;
    while (a < predictions.size() && predictions[a].step < s) ++a;
    std::uint64_t b = a;
    while (b < predictions.size() && predictions[b].step == s) ++b;
    return {a, b};
  }
  [[nodiscard]] const Prediction& prediction(std::uint32_t, std::uint64_t i) const { return predictions[i]; }
  std::uint32_t candidates(std::uint32_t, std::uint64_t i, std::uint16_t* out) const {
    for (std::size_t r = 0; r < predictions[i].candidates.size(); ++r) out[r] = predictions[i].candidates[r];
    return static_cast<std::uint32_t>(predictions[i].candidates.size());
  }

  [[nodiscard]] std::uint64_t step_count() const { return steps.size(); }
  [[nodiscard]] StepInfo step(std::uint64_t s) const { return steps[s]; }
  void token_experts(std::uint64_t t, std::uint16_t* out) const {
    for (std::uint32_t i = 0; i < layers * top_k; ++i) out[i] = ids[t * layers * top_k + i];
  }
  [[nodiscard]] std::uint64_t tokens() const { return ids.size() / (layers * top_k); }

  /// Appends a step whose tokens route as given (tokens x layers x k ids).
  void add(StepInfo s, std::initializer_list<std::uint16_t> token_ids) {
    s.first_token = tokens();
    for (std::uint16_t id : token_ids) ids.push_back(id);  // (insert of a list: GCC 12 -Wstringop-overflow false positive)
    steps.push_back(s);
  }
};

/// Random routing: `requests` requests, each a prefill of `prompt` tokens then `decode` decode
/// steps; expert popularity skewed by `skew` (0 = uniform).
inline VecRouting random_routing(std::uint64_t seed, std::uint32_t layers, std::uint32_t experts,
                                 std::uint32_t top_k, std::uint32_t requests, std::uint32_t prompt,
                                 std::uint32_t decode, double skew = 0.5) {
  Rng rng(seed);
  VecRouting r;
  r.layers = layers;
  r.top_k = top_k;
  auto token = [&] {
    for (std::uint32_t l = 0; l < layers; ++l) {
      std::vector<std::uint16_t> chosen;
      while (chosen.size() < top_k) {
        // Skew: with probability `skew` draw from the first half of the experts.
        const std::uint32_t span = rng.chance(skew) ? (experts + 1) / 2 : experts;
        const auto e = static_cast<std::uint16_t>(rng.below(span));
        bool dup = false;
        for (auto c : chosen) dup = dup || c == e;
        if (!dup) chosen.push_back(e);
      }
      r.ids.insert(r.ids.end(), chosen.begin(), chosen.end());
    }
  };
  for (std::uint32_t q = 0; q < requests; ++q) {
    StepInfo p{.request = q, .phase = StepPhase::prefill, .tokens = prompt};
    p.first_token = r.tokens();
    for (std::uint32_t t = 0; t < prompt; ++t) token();
    r.steps.push_back(p);
    for (std::uint32_t d = 0; d < decode; ++d) {
      StepInfo s{.request = q, .phase = StepPhase::decode, .tokens = 1};
      s.first_token = r.tokens();
      token();
      r.steps.push_back(s);
    }
  }
  return r;
}

}  // namespace moesched::test
