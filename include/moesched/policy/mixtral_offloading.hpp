#pragma once
/// MixtralOffloading: Mixtral-offloading's policy (Eliseev and Mazur, arXiv 2312.17238) as a
/// Pipeline preset: a per-layer LRU cache, and speculative loading of the next layer's experts from
/// the skip gate (the next layer's router on the current hidden state).
///
///   moesched::policy::MixtralOffloading p({{&skip_gate_table, router_time,
///                                           moesched::runtime::JobResource::gpu_stream}},
///                                         moesched::policy::TransitionPredictor{2});
///   auto m = moesched::sim::replay(workload, cost, p, {.budget = b});
///
/// Predictor: the given tables (a trace's `skip_gate` channel; a gate runs on the compute stream),
/// or, with none, the routing-only fallback ranking the next layer after each gate. Mechanisms
/// (each an option): speculative loading (off: exactly per-layer LRU), the next layer only
/// (lookahead 1), the speculated experts placed in (and evicting from) their layer's LRU share, a
/// resident guess touched in the LRU; no early preemption by default (the original has no
/// priorities to preempt; `preempt` turns ProMoE's on for ablations).

#include "moesched/core/config.hpp"
#include "moesched/policy/any_predictor.hpp"
#include "moesched/policy/pipeline.hpp"
#include "moesched/policy/prefetch_queue.hpp"
#include "moesched/runtime/archetype.hpp"
#include "moesched/runtime/executor.hpp"

#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

namespace moesched::policy {

struct MixtralOffloadingOptions {
  bool speculate = true;       ///< load the next layer's guessed experts (off: per-layer LRU only)
  bool preempt = false;        ///< cancel wrong guesses at the gate (not in the original)
  bool touch = true;           ///< a guess already resident is touched in its layer's LRU
  std::uint32_t depth = 2;     ///< copies outstanding before another guess is issued
  std::uint32_t lookahead = 1; ///< layers ahead of the running one a guess may be for
  std::uint32_t top = 0;       ///< guesses per layer (0: tables all, routing the last gate size)
};

class MixtralOffloading : public Pipeline {
 public:
  [[nodiscard]] static constexpr std::string_view name() noexcept { return "mixtral-offloading"; }

  [[nodiscard]] static PipelineOptions pipeline_options(const MixtralOffloadingOptions& o) noexcept {
    PipelineOptions p;
    p.queue = {.depth = o.depth, .lookahead = o.lookahead, .victim = PrefetchVictim::layer_lru, .preempt = o.preempt,
               .touch = o.touch};
    p.start_layers = 1;
    p.horizon = 1;
    p.top = o.top;
    return p;
  }

  MixtralOffloading(std::vector<TableInput> tables, AnyRoutingPredictor fallback, MixtralOffloadingOptions o = {})
      : Pipeline(o.speculate ? tables : std::vector<TableInput>{},
                 o.speculate ? fallback_unless(tables, std::move(fallback)) : std::nullopt, pipeline_options(o)) {}
};

static_assert(JobPolicy<MixtralOffloading, runtime::ArchetypeExecutor>);

}  // namespace moesched::policy
