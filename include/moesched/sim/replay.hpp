#pragma once
/// replay(): a Workload under a policy on the simulated machine, in one call (the layer driver
/// over a SimBackend sized from the budget).
///
///   moesched::sim::CostModel cost(model, gpu);
///   moesched::policy::LayerLru lru;
///   auto m = moesched::sim::replay(workload, cost, lru, {.budget = moesched::Bytes::gib(12)});
///   m.tpot_ms.mean;
///
/// Throws ConfigError if the budget cannot hold the largest set of experts one layer needs at
/// once, runtime::PolicyError (with the driver's fault text) if the policy breaks the executor
/// contract, runtime::InvariantError if moesched breaks its own.

#include "moesched/core/config.hpp"
#include "moesched/core/units.hpp"
#include "moesched/runtime/driver.hpp"
#include "moesched/runtime/machine.hpp"
#include "moesched/runtime/metrics.hpp"
#include "moesched/runtime/timeline.hpp"
#include "moesched/sim/backend.hpp"
#include "moesched/sim/cost_model.hpp"
#include "moesched/workload/workload.hpp"

#include <algorithm>
#include <cstdint>

namespace moesched::sim {

/// The machine a policy drives in the simulator.
using SimMachine = runtime::Machine<SimBackend>;

struct SimOptions {
  Bytes budget{};                      ///< GPU memory for routed experts
  bool check_invariants = runtime::kCheckInvariantsByDefault;
  runtime::Timeline* timeline = nullptr;  ///< record compute, copies, stalls and jobs here when set
  std::uint64_t timeline_passes = 64;  ///< record only the first passes (files stay openable)
  std::uint32_t cpu_workers = 1;       ///< predictor threads
  std::uint32_t compute_ahead = 1;     ///< kernels the driver keeps submitted (runtime::DriverOptions)
};

/// Expert slots `budget` holds for `cost`'s experts in a workload of `shape`.
[[nodiscard]] inline std::uint32_t slots_for(Bytes budget, const CostModel& cost, RoutingShape shape) noexcept {
  const std::uint64_t all = std::uint64_t{shape.layers} * shape.experts;
  return static_cast<std::uint32_t>(std::min<std::uint64_t>(budget.count / cost.expert_bytes().count, all));
}

/// Replays `w` under policy `pol` on a machine with `opt.budget` bytes of expert memory.
template <class P>
  requires Policy<P, SimMachine>
runtime::RunMetrics replay(const Workload& w, const CostModel& cost, P& pol, const SimOptions& opt) {
  SimBackend backend(cost, w.shape(), {slots_for(opt.budget, cost, w.shape()), opt.cpu_workers});
  runtime::LayerDriver<SimBackend> driver(
      w, backend, {opt.check_invariants, opt.timeline, opt.timeline_passes, opt.compute_ahead});
  if (!driver.run(pol)) throw runtime::PolicyError(driver.fault_text());
  runtime::RunMetrics m = driver.metrics();
  m.budget = opt.budget;
  return m;
}

}  // namespace moesched::sim
