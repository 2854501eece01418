#pragma once
/// Prefetch: a predictive policy fed by a PredictionTable through predictor jobs.
///
///   moesched::policy::Prefetch pol(table, moesched::Nanoseconds{200'000});  // 200 us a prediction
///   auto m = moesched::sim::replay(workload, cost, pol, {.budget = moesched::Bytes::gib(8)});
///
/// The mechanism is ProMoE's (arXiv 2410.22134), with the predictor abstracted to a table:
/// - Every predicted set of the pass becomes one predictor job (moesched/runtime/jobs.hpp; the
///   TableJobs component, moesched/policy/table_jobs.hpp) whose
///   ready point is where the set's input exists: after MoE layer `after` of the pass, after
///   draft step `draft_tokens` of an SD pass, or the pass start. The job runs where the predictor
///   runs (`where`: CPU workers for an MLP, the compute stream for a router GEMV) and costs
///   `latency` there; it returns the set's ranked candidates (PredictionTable::predict), whose
///   absent members are then copied at low priority, in rank order, unless the predicted layer's
///   gate already ran (too late: dropped).
/// - Queue, cache, victim choice and early preemption are the PrefetchQueue component
///   (moesched/policy/prefetch_queue.hpp): candidates wait per layer, nearest layer first, and are
///   issued while fewer than `depth` copies are outstanding and within `lookahead` layers; demand
///   copies use per-layer LRU sparing this pass's unused prefetches; a prefetch evicts by Belady's
///   rule with layers as the clock; at a layer's gate its unasked speculative copies are cancelled
///   and the asked ones promoted.
/// Needs a JobExecutor (every runtime::Machine is one).

#include "moesched/core/config.hpp"
#include "moesched/core/expert_id.hpp"
#include "moesched/core/units.hpp"
#include "moesched/policy/prediction_table.hpp"
#include "moesched/policy/prefetch_queue.hpp"
#include "moesched/policy/table_jobs.hpp"
#include "moesched/runtime/archetype.hpp"
#include "moesched/runtime/executor.hpp"
#include "moesched/runtime/jobs.hpp"

#include <algorithm>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace moesched::policy {

class Prefetch {
 public:
  [[nodiscard]] static constexpr std::string_view name() noexcept { return "prefetch"; }

  /// `table` must outlive the policy and have one entry per pass of the replay. `depth`: copies
  /// (demand copies of the running layer included) the policy keeps outstanding before it issues
  /// another prefetch.
  /// `lookahead`: prefetch only for the next `lookahead` layers after the running one (ProMoE's
  /// bounded lookahead; 0 = any later layer of the pass).
  /// `where`: where the predictor runs (its `latency` is charged there).
  Prefetch(const PredictionTable& table, Nanoseconds latency, std::uint32_t depth = 2, std::uint32_t lookahead = 0,
           runtime::JobResource where = runtime::JobResource::cpu_worker)
      : jobs_(table, latency, where), queue_(depth, lookahead) {}
  Prefetch(PredictionTable&&, Nanoseconds, std::uint32_t = 2, std::uint32_t = 0,
           runtime::JobResource = runtime::JobResource::cpu_worker) = delete;  // keeps a pointer

  /// Predictor jobs that ended after the gate of the layer they predicted (or after their pass).
  [[nodiscard]] std::uint64_t too_late() const noexcept { return too_late_ + jobs_.stale(); }

  template <JobExecutor E>
  void on_pass_begin(E& e, const PassInfo& pass) {
    queue_.begin_pass(e, pass);
    jobs_.submit(e, pass);  // one job per predicted set, ready where its input exists
  }

  template <JobExecutor E>
  void on_gate(E& e, std::uint32_t layer, std::span<const ExpertId> needed) {
    queue_.gate(e, layer, needed);
  }
  template <JobExecutor E>
  void on_expert_done(E& e, ExpertId id) {
    queue_.expert_done(e, id);
  }
  template <JobExecutor E>
  void on_copy_done(E& e, ExpertId id) {
    queue_.copy_done(e, id);
  }
  template <JobExecutor E>
  void on_layer_done(E& e, std::uint32_t layer) {
    queue_.layer_done(e, layer);
  }

  /// A predictor job ended: its candidates join the prefetch queue (unless too late).
  template <JobExecutor E>
  void on_job_done(E& e, std::uint32_t tag, std::uint32_t count) {
    const TableJobs::Result r = jobs_.take(tag, count);
    if (r.set == nullptr) return;  // the pass it was for is over (counted by the jobs)
    if (!queue_.push(e, r.set->layer, r.ranked)) ++too_late_;
  }

 private:
  TableJobs jobs_;
  PrefetchQueue queue_;
  std::uint64_t too_late_ = 0;
};

static_assert(JobPolicy<Prefetch, runtime::ArchetypeExecutor>);

}  // namespace moesched::policy
