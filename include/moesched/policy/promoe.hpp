#pragma once
/// ProMoE: ProMoE's policy (arXiv 2410.22134) as a Pipeline preset: a learned predictor with
/// stride, chunked prefetch, early preemption, reordered inference, a per-layer LRU cache that
/// prefetches touch, and a bounded lookahead.
///
///   moesched::policy::ProMoE p({{&mlp_stride2_table, moesched::Nanoseconds{200'000},
///                                moesched::runtime::JobResource::cpu_worker}},
///                              moesched::policy::TransitionPredictor{2});
///
/// Predictor: the given tables (a trace's `mlp_stride2` channel: the MLP on CPU workers, layer l's
/// output predicting layer l + 2), or, with none, the routing-only fallback ranking the next
/// `stride` layers after each gate. Mechanisms (each an option):
/// - stride: a prediction is released `stride` layers ahead of its layer at most (stride 1 keeps
///   the stride-2 predictor's accuracy and removes its extra layer of lead time);
/// - early preemption: at a layer's gate its unasked speculative copies are cancelled, the asked
///   ones promoted to high priority;
/// - per-layer LRU, a prefetch evicting from its layer's share; `touch`: a predicted expert already
///   resident is touched (kept);
/// - bounded lookahead: copies only for the next `lookahead` layers;
/// - chunked copies (one per matrix, so a precise copy waits at most one chunk) are a property of
///   the copy engine, not of the Executor: moesched-sim's registry sets the cost model's chunks
///   for `promoe` (its `chunks` option); reordered inference is the layer driver's.

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

struct ProMoEOptions {
  std::uint32_t stride = 2;     ///< layers of lead a prediction may have (at least 1)
  bool preempt = true;          ///< early preemption at the gate
  bool touch = true;            ///< a prefetch touches its LRU entry
  std::uint32_t depth = 2;      ///< copies outstanding before another prefetch
  std::uint32_t lookahead = 2;  ///< layers ahead of the running one a prefetch may be for (0 = any)
  std::uint32_t top = 0;        ///< candidates per prediction (0: tables all, routing the last gate size)
};

class ProMoE : public Pipeline {
 public:
  [[nodiscard]] static constexpr std::string_view name() noexcept { return "promoe"; }

  [[nodiscard]] static PipelineOptions pipeline_options(const ProMoEOptions& o) noexcept {
    const std::uint32_t stride = o.stride < 1 ? 1 : o.stride;
    PipelineOptions p;
    p.queue = {.depth = o.depth, .lookahead = o.lookahead, .victim = PrefetchVictim::layer_lru, .preempt = o.preempt,
               .touch = o.touch};
    p.lead = stride;
    p.start_layers = stride;
    p.horizon = stride;
    p.top = o.top;
    return p;
  }

  ProMoE(std::vector<TableInput> tables, AnyRoutingPredictor fallback, ProMoEOptions o = {})
      : Pipeline(tables, fallback_unless(tables, std::move(fallback)), pipeline_options(o)) {}
};

static_assert(JobPolicy<ProMoE, runtime::ArchetypeExecutor>);

}  // namespace moesched::policy
