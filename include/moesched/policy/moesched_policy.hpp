#pragma once
/// Moesched: moesched's own policy, a Pipeline preset combining the others' mechanisms with one
/// utility for eviction and prefetch (the ReuseModel):
/// - every eviction (demand and prefetch) takes the held expert that would hold its slot longest
///   per expected hit (layers until its layer's next turn over the probability it is asked for
///   there: the inverse of its hit density; `density` off: the expert expected to be needed last),
///   with probabilities learned online from the gates (its layer's last four turns, how often its
///   gate asked for it over the run against its layer's mean, and its rank in the running pass's
///   prediction) and layers as the clock;
/// - a prediction is prefetched only when its expert scores better than the expert it would evict
///   (no free slot), so a wrong or far guess does not displace a likely one, and
///   (`link_aware`) only when it is likelier to be used than the link is loaded (PrefetchQueue::
///   set_link_load: the load is measured online from the copies issued and the time passes take);
/// - early preemption at the gate, chunked copies (the registry's `chunks`, per matrix by default);
/// - SD passes: drafting-time prefetch up to the solver's cutoff, batched, then `beyond` layers
///   ahead during verification.
///
///   moesched::policy::Moesched p(tables, moesched::policy::TransitionPredictor{2}, latency_model);
///
/// Predictor: the given tables, or, with none, the routing-only predictor ranking `horizon` layers
/// after each gate. moesched-sim runs routing-only transitions by default (inline, no stream time,
/// so it runs on routing dumps); `predictor=auto` gives it the best channel the trace has
/// (draft_gate in SD traces, else mlp_stride2, else skip_gate). Every mechanism is an option
/// (utility off: the layer-clock victims of PrefetchQueue with unconditional prefetch).

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

struct MoeschedOptions {
  bool utility = true;             ///< ReuseModel victims and admission (off: layer-clock victims)
  bool link_aware = true;          ///< admit a prefetch only if P(used) exceeds the link's measured load
  bool frequency = true;           ///< utility: the state includes each expert's long-run frequency class
  bool density = true;             ///< utility: evict by d / p (layers held per expected hit), not expected next use
  bool preempt = true;             ///< early preemption at the gate
  bool cutoff = true;              ///< SD passes: bound drafting-time prefetch by `cutoff_rule`
  CutoffRule cutoff_rule = CutoffRule::solver;
  std::uint32_t fixed_cutoff = 0;
  bool batch = true;               ///< drafting: copies up to the cutoff submitted at once
  std::uint32_t beyond = 2;        ///< beyond the cutoff: layers ahead of the running one
  std::uint32_t depth = 2;         ///< copies outstanding
  std::uint32_t lookahead = 0;     ///< layers ahead a prefetch may be for (0 = any; the utility bounds it)
  std::uint32_t horizon = 2;       ///< routing fallback: layers ranked after each gate
  std::uint32_t top = 0;           ///< candidates per prediction (0: tables all, routing the last gate size)
};

class Moesched : public Pipeline {
 public:
  [[nodiscard]] static constexpr std::string_view name() noexcept { return "moesched"; }

  [[nodiscard]] static PipelineOptions pipeline_options(const MoeschedOptions& o) noexcept {
    PipelineOptions p;
    p.queue = {.depth = o.depth, .lookahead = o.lookahead,
               .victim = o.utility ? PrefetchVictim::utility : PrefetchVictim::layer_clock, .preempt = o.preempt,
               .touch = true};
    p.utility = o.utility;
    p.link_aware = o.link_aware;
    p.frequency = o.frequency;
    p.density = o.density;
    p.start_layers = o.horizon < 1 ? 1 : o.horizon;
    p.horizon = o.horizon;
    p.top = o.top;
    p.cutoff = o.cutoff ? PipelineCutoff::rule : PipelineCutoff::none;
    p.cutoff_rule = o.cutoff_rule;
    p.fixed_cutoff = o.fixed_cutoff;
    p.beyond = o.beyond;
    p.batch = o.batch;
    return p;
  }

  Moesched(std::vector<TableInput> tables, AnyRoutingPredictor fallback, std::optional<AnalyticalLatency> latency,
           MoeschedOptions o = {})
      : Pipeline(tables, fallback_unless(tables, std::move(fallback)), pipeline_options(o), latency) {}
};

static_assert(JobPolicy<Moesched, runtime::ArchetypeExecutor>);

}  // namespace moesched::policy
