#pragma once
/// SpMoE: SP-MoE's policy (arXiv 2510.10302) as a Pipeline preset: while the draft model runs, the
/// draft-gate predictions (the target's gate of layer l on the draft's layer-l state) are
/// prefetched for the layers up to the cutoff layer, in one batch; beyond the cutoff, layer-ahead
/// prefetch during verification.
///
///   moesched::policy::SpMoE p({{&draft_gate_table, router_time, moesched::runtime::JobResource::gpu_stream}},
///                             moesched::policy::TransitionPredictor{2}, latency_model);
///
/// The cutoff of each SD pass comes from choose_cutoff (moesched/policy/cutoff_solver.hpp) over the
/// analytical latency model (moesched/policy/latency_model.hpp): the draft window's time, one
/// expert's copy time and size, the memory budget, the expected distinct predicted experts per
/// layer and each layer's recall as the confidence, both measured online by the PredictionLedger.
/// Predictor: the given tables (a trace's `draft_gate` channel, released draft token by draft
/// token), or, with none, the routing-only fallback ranking the layers up to the cutoff at the pass
/// start and the next layer after each gate. Passes without drafting prefetch layer-ahead.
/// Mechanisms (each an option): the cutoff rule (solver, closed form, a fixed depth, all layers),
/// batched submission during drafting, the layer-ahead fallback beyond the cutoff (`beyond` = 0
/// turns it off), early preemption. Victims: Belady with layers as the clock (PrefetchQueue).

#include "moesched/core/config.hpp"
#include "moesched/policy/any_predictor.hpp"
#include "moesched/policy/cutoff_solver.hpp"
#include "moesched/policy/latency_model.hpp"
#include "moesched/policy/pipeline.hpp"
#include "moesched/policy/prefetch_queue.hpp"
#include "moesched/runtime/archetype.hpp"
#include "moesched/runtime/executor.hpp"

#include <cstdint>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

namespace moesched::policy {

struct SpMoEOptions {
  CutoffRule cutoff = CutoffRule::solver;
  std::uint32_t fixed_cutoff = 0;  ///< for CutoffRule::fixed
  bool batch = true;               ///< drafting: every copy up to the cutoff submitted at once
  std::uint32_t beyond = 1;        ///< beyond the cutoff: layers ahead of the running one (0 = no prefetch)
  bool preempt = true;
  std::uint32_t depth = 2;         ///< copies outstanding during verification
  std::uint32_t top = 0;           ///< candidates per prediction (0: tables all, routing the last gate size)
};

class SpMoE : public Pipeline {
 public:
  [[nodiscard]] static constexpr std::string_view name() noexcept { return "spmoe"; }

  [[nodiscard]] static PipelineOptions pipeline_options(const SpMoEOptions& o) noexcept {
    PipelineOptions p;
    p.queue = {.depth = o.depth, .lookahead = 0, .victim = PrefetchVictim::layer_clock, .preempt = o.preempt, .touch = true};
    p.start_layers = 1;
    p.horizon = 1;
    p.top = o.top;
    p.cutoff = PipelineCutoff::rule;
    p.cutoff_rule = o.cutoff;
    p.fixed_cutoff = o.fixed_cutoff;
    p.beyond = o.beyond;
    p.batch = o.batch;
    return p;
  }

  SpMoE(std::vector<TableInput> tables, AnyRoutingPredictor fallback, std::optional<AnalyticalLatency> latency,
        SpMoEOptions o = {})
      : Pipeline(tables, fallback_unless(tables, std::move(fallback)), pipeline_options(o), latency) {}
};

static_assert(JobPolicy<SpMoE, runtime::ArchetypeExecutor>);

}  // namespace moesched::policy
