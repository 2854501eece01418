#pragma once
/// Predictive: a prefetching policy over any routing-only ExpertPredictor and the PrefetchQueue.
///
///   moesched::policy::Predictive<moesched::policy::TransitionPredictor> pol(
///       moesched::policy::TransitionPredictor{2}, {.depth = 2, .horizon = 2});
///   auto m = moesched::sim::replay(workload, cost, pol, {.budget = moesched::Bytes::gib(8)});
///
///   moesched::policy::Predictive<moesched::policy::ActivationMatrixPredictor> moe_infinity(
///       moesched::policy::ActivationMatrixPredictor{64}, {.horizon = 0});   // every later layer
///
/// The predictor is driven by the RankAhead component (moesched/policy/rank_ahead.hpp).
/// Per pass: at its start the predictor ranks the first `horizon` layers (from what earlier passes
/// showed); at each layer's gate (its first call) the predictor observes the gate's set, then ranks
/// the next `horizon` layers of the pass (0 = every later layer), and each ranking replaces that
/// layer's candidates not yet issued in the queue. The queue (moesched/policy/prefetch_queue.hpp)
/// issues them at low priority, nearest layer first, within `depth` outstanding copies and the
/// `lookahead`, evicts for them by the layer-clock Belady rule, preempts at the gate and serves the
/// gate's demand through per-layer LRU.
/// Candidates per ranking: `top`, or with top = 0 as many as that layer's gate asked for last time
/// (a verification pass of several tokens needs more than one token's top_k).
/// The predictor runs inline, on the driver's thread, inside the hooks (routing-only predictors
/// cost well under a microsecond per call: bench/bench_policy.cpp); no job and no other thread
/// reads its state, so it needs only an Executor. Virtual time charges it nothing.

#include "moesched/core/config.hpp"
#include "moesched/core/expert_id.hpp"
#include "moesched/policy/activation_matrix_predictor.hpp"
#include "moesched/policy/expert_predictor.hpp"
#include "moesched/policy/popularity_predictor.hpp"
#include "moesched/policy/prefetch_queue.hpp"
#include "moesched/policy/rank_ahead.hpp"
#include "moesched/policy/transition_predictor.hpp"
#include "moesched/runtime/archetype.hpp"
#include "moesched/runtime/executor.hpp"
#include "moesched/runtime/jobs.hpp"

#include <algorithm>
#include <cstdint>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

namespace moesched::policy {

/// Knobs of a Predictive policy (each switchable for ablations).
struct PredictiveOptions {
  std::uint32_t depth = 2;      ///< copies kept outstanding before another prefetch (PrefetchQueue)
  std::uint32_t lookahead = 0;  ///< issue only for the next N layers (0 = any later layer)
  std::uint32_t horizon = 2;    ///< layers ranked ahead after each gate (0 = every later layer)
  std::uint32_t top = 0;        ///< candidates per ranking (0 = the layer's last gate size)
};

template <ExpertPredictor P>
class Predictive {
 public:
  [[nodiscard]] static constexpr std::string_view name() noexcept { return "predict"; }

  explicit Predictive(P predictor = P{}, PredictiveOptions opt = {})
      : feed_(std::move(predictor), opt.top), opt_(opt), queue_(opt.depth, opt.lookahead) {}

  [[nodiscard]] const P& predictor() const noexcept { return feed_.predictor(); }
  [[nodiscard]] P& predictor() noexcept { return feed_.predictor(); }
  [[nodiscard]] const PredictiveOptions& options() const noexcept { return opt_; }
  /// Rankings the predictor made.
  [[nodiscard]] std::uint64_t rankings() const noexcept { return feed_.rankings(); }

  template <Executor E>
  void on_pass_begin(E& e, const PassInfo& pass) {
    feed_.resize(e.layers(), e.experts_per_layer());
    feed_.begin_pass(pass);
    queue_.begin_pass(e, pass);
    gated_ = -1;
    rank_ahead(e, 0);
  }

  template <Executor E>
  void on_gate(E& e, std::uint32_t layer, std::span<const ExpertId> needed) {
    queue_.gate(e, layer, needed);
    if (gated_ == static_cast<std::int64_t>(layer)) return;  // a later call: demand only
    gated_ = layer;
    feed_.observe(layer, needed);
    rank_ahead(e, layer + 1);
  }
  template <Executor E>
  void on_expert_done(E& e, ExpertId id) {
    queue_.expert_done(e, id);
  }
  template <Executor E>
  void on_copy_done(E& e, ExpertId id) {
    queue_.copy_done(e, id);
  }
  template <Executor E>
  void on_layer_done(E& e, std::uint32_t layer) {
    queue_.layer_done(e, layer);
  }

 private:
  /// Ranks layers first .. first + horizon - 1 of the pass and hands them to the queue.
  template <Executor E>
  void rank_ahead(E& e, std::uint32_t first) {
    feed_.rank(first, opt_.horizon, [&](std::uint32_t t, std::span<const runtime::ScoredExpert> ranked) {
      (void)queue_.replace(e, t, ranked);
    });
  }

  RankAhead<P> feed_;
  PredictiveOptions opt_;
  PrefetchQueue queue_;
  std::int64_t gated_ = -1;
};

static_assert(Policy<Predictive<PopularityPredictor>, runtime::ArchetypeExecutor>);
static_assert(Policy<Predictive<TransitionPredictor>, runtime::ArchetypeExecutor>);
static_assert(Policy<Predictive<ActivationMatrixPredictor>, runtime::ArchetypeExecutor>);

}  // namespace moesched::policy
