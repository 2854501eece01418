#pragma once
// Prediction tables for tests of predictive policies, shared by the simulator, host and CUDA tests.
#include <moesched/policy/prediction_table.hpp>
#include <moesched/workload/workload.hpp>

#include <cstdint>
#include <vector>

namespace moesched::test {

/// Predictions that are always right: each layer l of every pass predicted after layer
/// l - distance (layers closer to the start: at the pass start), candidates = the experts the
/// layer really uses.
inline policy::PredictionTable perfect_predictions(const Workload& w, std::uint32_t distance = 1) {
  policy::PredictionTable t("perfect");
  std::vector<std::uint16_t> c;
  for (std::uint64_t p = 0; p < w.pass_count(); ++p) {
    t.begin_pass();
    for (std::uint32_t l = 0; l < w.layers(); ++l) {
      c.clear();
      for (const auto& u : w.uses(p, l)) c.push_back(u.expert);
      const auto after = static_cast<std::int16_t>(static_cast<std::int64_t>(l) - distance);
      t.add({static_cast<std::uint16_t>(l), after < -1 ? std::int16_t{-1} : after, 0, 0, 0}, c);
    }
  }
  return t;
}

}  // namespace moesched::test
