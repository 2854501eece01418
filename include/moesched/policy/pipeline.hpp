#pragma once
/// Pipeline: a predictive policy assembled from the components, every mechanism a switch. The
/// published policies (mixtral_offloading.hpp, promoe.hpp, spmoe.hpp, moesched_policy.hpp) are
/// presets of it; an ablation is one option changed.
///
///   moesched::policy::Pipeline p({{&table, moesched::Nanoseconds{200'000},
///                                  moesched::runtime::JobResource::cpu_worker}},
///                                std::nullopt, {.queue = {.victim = moesched::policy::PrefetchVictim::layer_lru}});
///   auto m = moesched::sim::replay(workload, cost, p, {.budget = moesched::Bytes::gib(8)});
///
/// What feeds what:
///   predictor sources ──► PredictionLedger (what was predicted, scored at each gate)
///     TableJobs: a trace channel (or any PredictionTable) as predictor jobs, released at most
///                `lead` layers ahead (0 = as recorded)
///     RankAhead<AnyRoutingPredictor>: a routing-only predictor, `start_layers` ranked at the pass
///                start and `horizon` after each gate (the fallback when no table is given)
///        │  candidates (first `top`)
///        ▼
///   PrefetchQueue (depth, lookahead, victim rule, early preemption, touch) ◄── ReuseModel (utility)
///        ▲ set_cutoff(c, beyond), set_depth (batch) per SD pass
///   cutoff: choose_cutoff(rule) over the AnalyticalLatency model, the memory budget, the ledger's
///   expected experts per layer and its per-layer recall (the confidence)
/// With a cutoff rule other than `none`, an SD pass prefetches layers below the cutoff during
/// drafting (all at once with `batch`: the depth is lifted until the first gate) and later layers
/// only `beyond` layers ahead of the running one; a pass without drafting prefetches layer-ahead.
/// Table results replace nothing (several sets of one layer add up: the draft tokens of a window);
/// a routing ranking replaces the layer's candidates not yet issued when it is the only source.
/// Reordered inference (resident experts first) is the layer driver's and always on.
/// Needs a JobExecutor (tables run as jobs). The tables and the latency model are the caller's
/// and must outlive the policy. Not movable once running (the queue points into it): construct it
/// in place.

#include "moesched/core/config.hpp"
#include "moesched/core/error.hpp"
#include "moesched/core/expert_id.hpp"
#include "moesched/core/units.hpp"
#include "moesched/policy/any_predictor.hpp"
#include "moesched/policy/cutoff_solver.hpp"
#include "moesched/policy/latency_model.hpp"
#include "moesched/policy/prediction_ledger.hpp"
#include "moesched/policy/prediction_table.hpp"
#include "moesched/policy/prefetch_queue.hpp"
#include "moesched/policy/rank_ahead.hpp"
#include "moesched/policy/reuse_model.hpp"
#include "moesched/policy/table_jobs.hpp"
#include "moesched/runtime/archetype.hpp"
#include "moesched/runtime/executor.hpp"
#include "moesched/runtime/jobs.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace moesched::policy {

/// A prediction table and where its predictor runs, at what cost.
struct TableInput {
  const PredictionTable* table = nullptr;
  Nanoseconds latency{};
  runtime::JobResource where = runtime::JobResource::cpu_worker;
};

/// Whether and how an SD pass bounds its drafting-time prefetch.
enum class PipelineCutoff : std::uint8_t {
  none,  ///< no cutoff: the queue's lookahead alone bounds how far ahead copies go
  rule,  ///< PipelineOptions::cutoff_rule (solver, closed form, fixed, all)
};

struct PipelineOptions {
  PrefetchQueueOptions queue{};
  std::uint32_t lead = 0;          ///< tables: a prediction for layer t is released no earlier than after t - lead (0 = as recorded)
  std::uint32_t start_layers = 1;  ///< routing: layers ranked at the pass start
  std::uint32_t horizon = 1;       ///< routing: layers ranked after each gate (0 = every later one)
  std::uint32_t top = 0;           ///< candidates kept per prediction (0: tables all, routing the last gate size)
  PipelineCutoff cutoff = PipelineCutoff::none;
  CutoffRule cutoff_rule = CutoffRule::solver;
  std::uint32_t fixed_cutoff = 0;  ///< for CutoffRule::fixed
  std::uint32_t beyond = 1;        ///< beyond the cutoff: layers ahead of the running one that may be prefetched
  bool batch = false;              ///< drafting: submit every copy up to the cutoff at once
  bool utility = false;            ///< the ReuseModel scores victims and admissions (with queue.victim = utility)
  bool link_aware = false;         ///< utility: admit a prefetch only if P(used) exceeds the link's load (needs the latency model)
  bool frequency = false;          ///< utility: the ReuseModel's state includes each expert's frequency class
  bool density = false;            ///< utility: score d / p (hit density) instead of the expected layers to next use
};

class Pipeline {
 public:
  [[nodiscard]] static constexpr std::string_view name() noexcept { return "pipeline"; }

  /// Throws ConfigError when a cutoff rule that needs the latency model (solver, closed form) has
  /// none, or a table is null.
  Pipeline(std::vector<TableInput> tables, std::optional<AnyRoutingPredictor> routing, PipelineOptions opt,
           std::optional<AnalyticalLatency> latency = std::nullopt)
      : opt_(with_victim(opt)), queue_(opt_.queue), latency_(latency), reuse_(opt_.frequency, opt_.density) {
    for (std::size_t i = 0; i < tables.size(); ++i) {
      if (tables[i].table == nullptr) throw ConfigError("", "tables", std::to_string(i), "is null");
      jobs_.emplace_back(*tables[i].table, tables[i].latency, tables[i].where,
                         static_cast<std::uint32_t>(i) * TableJobs::kTagSpan);
    }
    if (routing) feed_.emplace(std::move(*routing), opt_.top);
    const bool needs_model = opt_.cutoff == PipelineCutoff::rule &&
                             (opt_.cutoff_rule == CutoffRule::solver || opt_.cutoff_rule == CutoffRule::closed_form);
    if (needs_model && !latency_) {
      throw ConfigError("", "cutoff", "solver", "needs a latency model (AnalyticalLatency)");
    }
  }
  /// The usual way to pick a source: `tables` when there are any, else `fallback`.
  static std::optional<AnyRoutingPredictor> fallback_unless(const std::vector<TableInput>& tables,
                                                            AnyRoutingPredictor fallback) {
    if (!tables.empty()) return std::nullopt;
    return fallback;
  }
  /// Removes every predictor source (before the run): the ablation "no prediction" (demand
  /// copies under the configured cache and victim rules only).
  void drop_predictors() noexcept {
    jobs_.clear();
    feed_.reset();
  }
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  [[nodiscard]] const PipelineOptions& options() const noexcept { return opt_; }
  [[nodiscard]] const PredictionLedger& ledger() const noexcept { return ledger_; }
  [[nodiscard]] const ReuseModel& reuse() const noexcept { return reuse_; }
  [[nodiscard]] const PrefetchQueue& queue() const noexcept { return queue_; }
  /// Table sources (in order) and the routing source, if any.
  [[nodiscard]] std::span<const TableJobs> tables() const noexcept { return jobs_; }
  [[nodiscard]] const RankAhead<AnyRoutingPredictor>* routing() const noexcept { return feed_ ? &*feed_ : nullptr; }
  /// Which predictor runs: the tables' channels and the routing predictor, joined by '+'.
  [[nodiscard]] std::string predictor_label() const {
    std::string s;
    for (const auto& j : jobs_) s += (s.empty() ? "" : "+") + j.table().channel();
    if (feed_) s += (s.empty() ? "" : "+") + std::string(feed_->predictor().label());
    return s.empty() ? std::string("none") : s;
  }
  /// Predictions that came back after their layer's gate or their pass.
  [[nodiscard]] std::uint64_t too_late() const noexcept {
    std::uint64_t n = too_late_;
    for (const auto& j : jobs_) n += j.stale();
    return n;
  }
  /// The link load the queue's admission uses (utility with link_aware).
  [[nodiscard]] double link_load() const noexcept { return queue_.link_load(); }
  /// SD passes that chose a cutoff, and the sum of their cutoffs (mean = sum / count).
  [[nodiscard]] std::uint64_t cutoff_passes() const noexcept { return cutoff_passes_; }
  [[nodiscard]] std::uint64_t cutoff_sum() const noexcept { return cutoff_sum_; }
  /// The cutoff of the running pass (PrefetchQueue::kNoCutoff when none applies).
  [[nodiscard]] std::uint32_t cutoff() const noexcept { return queue_.cutoff(); }

  template <JobExecutor E>
  void on_pass_begin(E& e, const PassInfo& pass) {
    const std::uint32_t L = e.layers();
    if (last_need_.empty()) {
      ledger_.resize(L, e.experts_per_layer());
      reuse_.resize(L, e.experts_per_layer());
      last_need_.assign(L, 0);
      confidence_.assign(L, 1.0);
      if (feed_) feed_->resize(L, e.experts_per_layer());
    }
    if (opt_.utility && opt_.link_aware && latency_) {
      // The link's load over the decode and verification passes so far: copies x copy time / time.
      const Nanoseconds now = e.now();
      if (pass_started_ && phase_ != StepPhase::prefill) {
        link_work_ += static_cast<double>(queue_.copies() - pass_copies_) *
                      static_cast<double>(latency_->expert_copy_time().count());
        link_time_ += static_cast<double>((now - pass_start_).count());
      }
      pass_started_ = true;
      pass_start_ = now;
      pass_copies_ = queue_.copies();
    }
    queue_.begin_pass(e, pass);
    queue_.set_utility(opt_.utility ? &reuse_ : nullptr, &ledger_, pass.phase);
    if (link_time_ > 0.0) queue_.set_link_load(link_work_ / link_time_);
    ledger_.begin_pass();
    phase_ = pass.phase;
    gated_ = -1;
    std::uint32_t start = opt_.start_layers;
    if (opt_.cutoff == PipelineCutoff::rule) {
      if (pass.draft_len > 0) {
        const std::uint32_t c = plan_cutoff(e, pass);
        queue_.set_cutoff(c, opt_.beyond);
        if (opt_.batch) queue_.set_depth(e.capacity_slots());
        start = std::max<std::uint32_t>(c, 1);
        ++cutoff_passes_;
        cutoff_sum_ += c;
      } else {
        queue_.set_cutoff(0, opt_.beyond);
        start = 1;
      }
    }
    for (auto& j : jobs_) j.submit(e, pass, opt_.lead);
    if (feed_) {
      feed_->begin_pass(pass);
      feed_->rank(0, start, [&](std::uint32_t t, std::span<const runtime::ScoredExpert> r) { deliver(e, t, r, true); });
    }
  }

  template <JobExecutor E>
  void on_gate(E& e, std::uint32_t layer, std::span<const ExpertId> needed) {
    const bool first = gated_ != static_cast<std::int64_t>(layer);
    if (first) {
      if (opt_.batch) queue_.set_depth(opt_.queue.depth);  // verification: back to the usual depth
      ledger_.observe(layer, needed);
      reuse_.observe(layer, needed, phase_, ledger_);
      last_need_[layer] = static_cast<std::uint32_t>(needed.size());
    }
    queue_.gate(e, layer, needed);
    if (!first) return;  // a later call: demand only
    gated_ = layer;
    if (feed_) {
      feed_->observe(layer, needed);
      feed_->rank(layer + 1, opt_.horizon,
                  [&](std::uint32_t t, std::span<const runtime::ScoredExpert> r) { deliver(e, t, r, true); });
    }
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
  /// A table's predictor job ended: its candidates join the ledger and the queue.
  template <JobExecutor E>
  void on_job_done(E& e, std::uint32_t tag, std::uint32_t count) {
    for (auto& j : jobs_) {
      if (!j.owns(tag)) continue;
      const TableJobs::Result r = j.take(tag, count);
      if (r.set != nullptr) deliver(e, r.set->layer, r.ranked, false);
      return;
    }
  }

 private:
  /// Candidates for `layer` of the running pass.
  template <Executor E>
  void deliver(E& e, std::uint32_t layer, std::span<const runtime::ScoredExpert> ranked, bool routing) {
    if (opt_.top > 0 && !routing && ranked.size() > opt_.top) ranked = ranked.first(opt_.top);
    if (static_cast<std::int64_t>(layer) <= gated_) {
      ++too_late_;
      return;
    }
    ledger_.record(layer, ranked);
    const bool ok = routing && jobs_.empty() ? queue_.replace(e, layer, ranked) : queue_.push(e, layer, ranked);
    if (!ok) ++too_late_;
  }

  /// The cutoff of an SD pass under the configured rule.
  template <Executor E>
  std::uint32_t plan_cutoff(const E& e, const PassInfo& pass) {
    const std::uint32_t L = e.layers();
    double k = 0.0;
    std::uint32_t known = 0;
    for (std::uint32_t l = 0; l < L; ++l) {
      confidence_[l] = ledger_.recall(l);
      const double m = ledger_.mean_predicted(l) > 0.0 ? ledger_.mean_predicted(l) : static_cast<double>(last_need_[l]);
      if (m > 0.0) {
        k += m;
        ++known;
      }
    }
    k = known > 0 ? k / known : 1.0;
    CutoffInputs in;
    in.layers = L;
    in.tokens = std::max<std::uint32_t>(pass.tokens, 1);
    in.experts_per_layer = k;
    in.confidence = confidence_;
    if (latency_) {
      in.draft_window = latency_->draft_window_time(pass.draft_len);
      in.free_memory = latency_->expert_bytes() * e.capacity_slots();
      return choose_cutoff(opt_.cutoff_rule, opt_.fixed_cutoff, *latency_, in);
    }
    return opt_.cutoff_rule == CutoffRule::fixed ? std::min(opt_.fixed_cutoff, L) : L;
  }

  static PipelineOptions with_victim(PipelineOptions o) noexcept {
    if (o.utility) o.queue.victim = PrefetchVictim::utility;
    return o;
  }

  PipelineOptions opt_;
  PrefetchQueue queue_;
  std::optional<AnalyticalLatency> latency_;
  std::vector<TableJobs> jobs_;
  std::optional<RankAhead<AnyRoutingPredictor>> feed_;
  PredictionLedger ledger_;
  ReuseModel reuse_;
  std::vector<std::uint32_t> last_need_;  // per layer: experts its last gate asked for
  std::vector<double> confidence_;        // per layer: the cutoff's p_l (ledger recall)
  StepPhase phase_ = StepPhase::decode;
  std::int64_t gated_ = -1;
  std::uint64_t too_late_ = 0;
  std::uint64_t cutoff_passes_ = 0;
  std::uint64_t cutoff_sum_ = 0;
  bool pass_started_ = false;             // link load: a pass is being measured
  Nanoseconds pass_start_{};
  std::uint64_t pass_copies_ = 0;
  double link_work_ = 0.0;                // ns of copies issued in decode/verify passes
  double link_time_ = 0.0;                // ns those passes took
};

static_assert(JobPolicy<Pipeline, runtime::ArchetypeExecutor>);

}  // namespace moesched::policy
