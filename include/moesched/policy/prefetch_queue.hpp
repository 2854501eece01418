#pragma once
/// PrefetchQueue: the per-layer prefetch queue and cache of a predictive policy (ProMoE's
/// mechanism, arXiv 2410.22134), separate from where its candidates come from.
///
///   moesched::policy::PrefetchQueue q(/*depth=*/2, /*lookahead=*/0);
///   q.begin_pass(exec, pass);                          // on_pass_begin
///   q.push(exec, /*layer=*/3, ranked);                 // a predictor's candidates for layer 3
///   q.gate(exec, layer, needed);                       // on_gate: early preemption + demand
///   q.copy_done(exec, id); q.expert_done(exec, id); q.layer_done(exec, layer);
///
/// What it does (one behaviour, one place: policy::Prefetch and policy::Predictive use it):
/// - Candidates wait per layer of the running pass, nearest layer first and in arrival order
///   within a layer. They are issued as low-priority copies while fewer than `depth` copies are
///   outstanding (the running layer's demand copies count) and within `lookahead` layers of the
///   running one (0 = any later layer), so speculation never queues ahead of the link nor evicts
///   for a copy that could not start soon. A candidate already resident or in flight is touched in
///   the cache, not copied again; a candidate of a layer whose gate ran is refused (push() says so).
/// - Cache: ProMoE's per-layer LRU (LayerLru: equal shares, borrowing) for demand copies, which
///   spare this pass's unused prefetches while anything else can go; a prefetch touches its entry.
/// - A prefetch evicts by Belady's rule with layers as the clock (victim()): from the layer whose
///   next turn is furthest, and never an expert needed sooner than the one it brings, nor one
///   prefetched for this pass and not yet used; with no such victim the prefetch waits (retried
///   when a copy lands or a layer ends).
/// - Early preemption at the gate: the layer's queued low copies that the gate did not ask for
///   are cancelled, the asked ones still queued or moving are promoted to high, and the absent ones
///   are copied at high priority (demand).
/// Every mechanism can be switched on its own (PrefetchQueueOptions), for the published policies
/// and their ablations:
/// - `victim`: layer_clock (above), layer_lru (ProMoE's and Mixtral-offloading's cache: a prefetch
///   evicts like a demand copy of its layer, LayerLru::victim), or utility (the ReuseModel: demand
///   and prefetch evict the held expert expected to be needed last, and a prefetch is issued only
///   when its candidate is expected to be needed before that victim; set_utility() gives the model).
/// - `preempt`: early preemption at the gate (off: the layer's speculative copies run on, at low
///   priority, whether asked or not).
/// - `touch`: a candidate already resident or in flight is touched in the per-layer LRU (ProMoE's
///   "a prefetch touches the entry"), and with `layer_lru` victims a resident candidate still
///   pending is never the victim of a prefetch (whatever its rank); off: its place in the LRU
///   order is left alone.
/// - set_cutoff(c, beyond) (per pass, SP-MoE): layers below c may be prefetched at any distance,
///   layers from c on only within `beyond` layers of the running one (0: never).
/// - set_depth(d) (per pass or phase): batched submission, e.g. every drafting-time copy at once.
/// State is sized at the first begin_pass (layers x experts); afterwards nothing allocates except
/// a per-layer candidate list growing past its high-water mark (push() appends; replace() keeps at
/// most the candidates of one prediction).

#include "moesched/core/config.hpp"
#include "moesched/core/expert_id.hpp"
#include "moesched/core/routing.hpp"
#include "moesched/policy/baseline.hpp"
#include "moesched/policy/prediction_ledger.hpp"
#include "moesched/policy/recency_list.hpp"
#include "moesched/policy/reuse_model.hpp"
#include "moesched/runtime/executor.hpp"
#include "moesched/runtime/jobs.hpp"

#include <algorithm>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

namespace moesched::policy {

/// How a prefetch (and, for `utility`, a demand copy) chooses what to evict.
enum class PrefetchVictim : std::uint8_t {
  layer_clock,  ///< Belady with layers as the clock, LRU within a layer (demand: per-layer LRU)
  layer_lru,    ///< the predicted layer's own LRU share, borrowing (ProMoE, Mixtral-offloading)
  utility,      ///< the ReuseModel's expected next use, for prefetch and demand alike (moesched)
};

/// The queue's switches (see the header comment); the defaults are the original mechanism.
struct PrefetchQueueOptions {
  std::uint32_t depth = 2;      ///< copies outstanding (demand of the running layer included), at least 1
  std::uint32_t lookahead = 0;  ///< issue only for the next N layers after the running one (0 = any)
  PrefetchVictim victim = PrefetchVictim::layer_clock;
  bool preempt = true;          ///< early preemption at the gate
  bool touch = true;            ///< a resident or in-flight candidate is touched in the LRU
};

class PrefetchQueue {
 public:
  /// No cutoff (set_cutoff): every layer may be prefetched at any distance.
  static constexpr std::uint32_t kNoCutoff = ~std::uint32_t{0};

  /// `depth`: copies (demand copies of the running layer included) kept outstanding before another
  /// prefetch is issued (at least 1). `lookahead`: prefetch only for the next `lookahead` layers
  /// after the running one (ProMoE's bounded lookahead; 0 = any later layer of the pass).
  explicit PrefetchQueue(std::uint32_t depth = 2, std::uint32_t lookahead = 0)
      : PrefetchQueue(PrefetchQueueOptions{.depth = depth, .lookahead = lookahead}) {}
  explicit PrefetchQueue(const PrefetchQueueOptions& opt)
      : opt_(opt), depth_(opt.depth < 1 ? 1 : opt.depth), lookahead_(opt.lookahead) {
    opt_.depth = depth_;
  }

  [[nodiscard]] std::uint32_t depth() const noexcept { return depth_; }
  [[nodiscard]] std::uint32_t lookahead() const noexcept { return lookahead_; }
  [[nodiscard]] const PrefetchQueueOptions& options() const noexcept { return opt_; }
  /// Copies kept outstanding from now on (batched submission; at least 1). begin_pass() restores
  /// the configured depth.
  void set_depth(std::uint32_t depth) noexcept { depth_ = depth < 1 ? 1 : depth; }
  /// For the running pass: layers below `cutoff` may be prefetched at any distance, later layers
  /// only within `beyond` layers of the running one (0: never). begin_pass() lifts it.
  void set_cutoff(std::uint32_t cutoff, std::uint32_t beyond) noexcept {
    cutoff_ = cutoff;
    beyond_ = beyond;
  }
  [[nodiscard]] std::uint32_t cutoff() const noexcept { return cutoff_; }
  /// The model the `utility` victim rule reads, and the phase of the running pass (call at every
  /// pass start; the pointers must stay valid while the queue runs).
  void set_utility(const ReuseModel* model, const PredictionLedger* ledger, StepPhase phase) noexcept {
    reuse_ = model;
    ledger_ = ledger;
    phase_ = phase;
  }
  /// For the `utility` rule: the share of time the link is busy (0..1). A candidate is issued only
  /// when its probability of being used exceeds it: a wrong copy costs its link time when the link
  /// is the bottleneck (about `load` of the time), a right one hides a demand copy's wait when it
  /// is not (about 1 - `load`), so a copy used with probability q gains q (1 - load) - (1 - q) load
  /// copy times, positive iff q > load. 0 (the default): link cost ignored.
  void set_link_load(double load) noexcept { load_ = load < 0.0 ? 0.0 : (load > 1.0 ? 1.0 : load); }
  [[nodiscard]] double link_load() const noexcept { return load_; }
  /// Prefetch candidates dropped because they were not expected to be needed before their victim
  /// (or, with a link load, not likely enough to be used).
  [[nodiscard]] std::uint64_t declined() const noexcept { return declined_; }
  /// Copies the queue submitted: prefetches and the gates' demand copies.
  [[nodiscard]] std::uint64_t copies() const noexcept { return copies_; }
  /// The last gated layer of the running pass, -1 before its first gate.
  [[nodiscard]] std::int64_t gated_layer() const noexcept { return layer_; }
  /// The cache (per-layer LRU order) the queue keeps.
  [[nodiscard]] const LayerLru& cache() const noexcept { return cache_; }
  /// Candidates waiting for `layer` (not yet issued).
  [[nodiscard]] std::span<const std::uint16_t> pending(std::uint32_t layer) const noexcept { return pending_[layer]; }

  /// A pass starts: sizes the state at the first call; drops every pending candidate.
  template <Executor E>
  void begin_pass(E& e, const PassInfo& pass) {
    cache_.on_pass_begin(e, pass);
    if (marks_.empty()) {
      const std::uint32_t per = e.experts_per_layer();
      marks_.assign(std::size_t{e.layers()} * per, 0);
      low_flight_.assign(marks_.size(), 0);
      low_.assign(e.layers(), {});
      pending_.assign(e.layers(), {});
      for (auto& q : pending_) q.reserve(per);
      for (auto& q : low_) q.reserve(per);
      needed_.reserve(per);
      victims_.reserve(per);
    }
    pass_ = pass.index;
    layer_ = -1;
    depth_ = opt_.depth;
    cutoff_ = kNoCutoff;
    beyond_ = 0;
    for (auto& q : pending_) q.clear();
    first_pending_ = e.layers();
    needed_.clear();
  }

  /// Appends `ranked` (best first) to `layer`'s pending candidates and issues what it can.
  /// Returns false (nothing queued) when `layer`'s gate already ran in this pass.
  template <Executor E>
  bool push(E& e, std::uint32_t layer, std::span<const runtime::ScoredExpert> ranked) {
    if (static_cast<std::int64_t>(layer) <= layer_) return false;
    auto& q = pending_[layer];
    for (const runtime::ScoredExpert& c : ranked) q.push_back(c.expert);
    first_pending_ = std::min<std::uint32_t>(first_pending_, layer);
    pump(e);
    return true;
  }
  /// As push(), but a newer prediction replaces `layer`'s candidates not yet issued.
  template <Executor E>
  bool replace(E& e, std::uint32_t layer, std::span<const runtime::ScoredExpert> ranked) {
    if (static_cast<std::int64_t>(layer) <= layer_) return false;
    pending_[layer].clear();
    return push(e, layer, ranked);
  }

  /// The gate of `layer` asked for `needed` (on_gate): the first call of a layer preempts its
  /// speculative copies; every call copies the absent needed experts at high priority.
  template <Executor E>
  void gate(E& e, std::uint32_t layer, std::span<const ExpertId> needed) {
    const std::uint32_t per = e.experts_per_layer();
    if (layer_ != static_cast<std::int64_t>(layer)) {  // first call for this layer
      layer_ = layer;
      needed_.assign(needed.begin(), needed.end());
      for (std::uint32_t f : low_[layer]) {
        const ExpertId id = ExpertId::from_flat(f, per);
        const auto r = e.residency(id);
        if (low_flight_[f] == 0 || (r != Residency::queued && r != Residency::copying)) continue;
        bool asked = false;
        for (ExpertId n : needed) asked = asked || n == id;
        if (asked) {
          if (opt_.preempt) e.promote(id);
          land(f);  // counted with the layer's demand from now on
        } else if (opt_.preempt && e.cancel(id)) {
          land(f);
          forget(e, f);
        }
      }
      low_[layer].clear();
    }
    std::uint32_t absent_before = 0;
    for (ExpertId id : needed) absent_before += e.residency(id) == Residency::absent ? 1U : 0U;
    demand(e, layer, needed);
    for (ExpertId id : needed) absent_before -= e.residency(id) == Residency::absent ? 1U : 0U;
    copies_ += absent_before;
  }

 private:
  /// The gate's demand copies under the configured victim rule.
  template <Executor E>
  void demand(E& e, std::uint32_t layer, std::span<const ExpertId> needed) {
    const std::uint32_t per = e.experts_per_layer();
    if (opt_.victim == PrefetchVictim::utility && reuse_ != nullptr) {
      for (ExpertId id : needed) {
        if (e.residency(id) != Residency::absent) cache_.touch(id, per);
      }
      // One scan for the gate's evictions: the worst `absent` held experts in the order repeated
      // utility_victim(e, true) calls would return them (each eviction and demand copy in
      // between leaves the others' next use and scan order as they were), then single scans.
      std::uint32_t absent = 0;
      for (ExpertId id : needed) absent += e.residency(id) == Residency::absent ? 1U : 0U;
      bool scanned = false;
      std::size_t next = 0;
      baseline_detail::demand(
          e, needed,
          [&] {
            if (!scanned) {
              utility_victims(e, absent, victims_);
              scanned = true;
            }
            if (next < victims_.size()) return victims_[next++].first;
            const std::uint32_t v = utility_victim(e, true).first;
            return v != RecencyList::kNone ? v : utility_victim(e, false).first;
          },
          [&](ExpertId id, bool in) {
            if (in) {
              cache_.touch(id, per);
            } else {
              forget(e, id.flat(per));
            }
          });
      return;
    }
    cache_.demand(
        e, layer, needed, [&](std::uint32_t held) { return unused_prefetch(held, per); },
        [&](std::uint32_t evicted) { marks_[evicted] = 0; });
  }

 public:
  template <Executor E>
  void expert_done(E& e, ExpertId id) {
    marks_[id.flat(e.experts_per_layer())] = 0;
  }
  template <Executor E>
  void copy_done(E& e, ExpertId id) {
    land(id.flat(e.experts_per_layer()));
    pump(e);
  }
  template <Executor E>
  void layer_done(E& e, std::uint32_t) {
    needed_.clear();
    pump(e);
  }

  /// Issues pending prefetches, nearest layer first, while fewer than depth copies are
  /// outstanding and within the lookahead.
  template <Executor E>
  void pump(E& e) {
    const std::uint32_t per = e.experts_per_layer();
    const std::uint64_t mark = pass_ + 1;
    const auto L = static_cast<std::uint32_t>(pending_.size());
    const auto next_layer = static_cast<std::uint32_t>(layer_ + 1);  // layer_ >= -1
    first_pending_ = std::min(L, std::max(first_pending_, next_layer));
    std::uint32_t last = lookahead_ == 0 ? L : std::min(L, next_layer + lookahead_);
    if (cutoff_ != kNoCutoff) {
      const std::uint32_t reach = beyond_ == 0 ? 0 : next_layer + beyond_;
      last = std::min(last, std::max(cutoff_, reach));
    }
    // The utility victim is scanned for once and reused while candidates are declined: a decline
    // changes nothing, and a touch only moves an expert behind those of its layer, which cannot
    // make it win a tie it lost. An eviction makes it stale.
    std::pair<std::uint32_t, double> held_victim{RecencyList::kNone, 0.0};
    bool victim_known = false;
    for (std::uint32_t l = first_pending_; l < last; ++l) {
      auto& q = pending_[l];
      std::size_t i = 0;
      for (; i < q.size(); ++i) {
        std::uint32_t outstanding = low_count_;
        for (ExpertId n : needed_) outstanding += e.residency(n) == Residency::resident ? 0U : 1U;
        if (outstanding >= depth_) break;
        const ExpertId id{static_cast<std::uint16_t>(l), q[i]};
        const std::uint32_t f = id.flat(per);
        if (e.residency(id) != Residency::absent) {
          if (opt_.touch) cache_.touch(id, per);
          continue;
        }
        if (opt_.victim == PrefetchVictim::utility && reuse_ != nullptr && load_ > 0.0 &&
            !(reuse_->probability(id, layer_, phase_, *ledger_) > load_)) {
          ++declined_;  // a likely waste of link time
          continue;
        }
        if (e.free_slots() == 0) {
          std::uint32_t v = RecencyList::kNone;
          if (opt_.victim == PrefetchVictim::utility && reuse_ != nullptr) {
            if (!victim_known) {
              held_victim = utility_victim(e, true);
              victim_known = true;
            }
            const auto [u, worst] = held_victim;
            if (u == RecencyList::kNone) break;  // retried when a copy lands or a layer ends
            if (!(reuse_->next_use(id, layer_, phase_, *ledger_) < worst)) {
              ++declined_;  // not expected to be needed before what it would evict
              continue;
            }
            v = u;
            victim_known = false;
          } else {
            v = victim(e, l);
          }
          if (v == RecencyList::kNone) break;  // retried when a copy lands or a layer ends
          if (!e.evict(ExpertId::from_flat(v, per))) break;
          forget(e, v);
        }
        if (!e.copy(id, CopyPriority::low)) break;
        ++copies_;
        cache_.touch(id, per);
        marks_[f] = mark;
        low_flight_[f] = 1;
        ++low_count_;
        low_[l].push_back(f);
      }
      q.erase(q.begin(), q.begin() + static_cast<std::ptrdiff_t>(i));
      if (!q.empty()) return;  // blocked: keep the order (nearest layer first)
      first_pending_ = l + 1;
    }
  }

  /// The expert to evict for a prefetch of `layer`: Belady's rule with layers as the clock. The
  /// layers run in a cycle, so an expert's next use is at the earliest its layer's next turn;
  /// evict from the layer whose turn is furthest (the one just run first), least recently used
  /// within it, and only from layers whose turn comes after `layer`'s (else the copy would evict
  /// something needed sooner than what it brings). Experts prefetched for this pass and not yet
  /// used are kept. RecencyList::kNone when there is no such expert.
  /// With `victim = layer_lru`: the predicted layer's LRU victim (LayerLru::victim), sparing this
  /// pass's unused prefetches.
  template <Executor E>
  [[nodiscard]] std::uint32_t victim(const E& e, std::uint32_t layer) const {
    const std::uint32_t per = e.experts_per_layer();
    const std::int64_t L = e.layers();
    const std::int64_t cur = layer_;  // -1 before the first gate
    auto skip = [&](std::uint32_t held) { return unused_prefetch(held, per); };
    if (opt_.victim == PrefetchVictim::layer_lru) {
      // With touch, a prediction keeps all its resident candidates, not only those ranked above
      // the one being copied: a pending candidate of its own layer is not a victim either (else a
      // copy for the prediction's first, absent candidate evicts its second, resident one).
      auto keep = [&](std::uint32_t held) {
        return unused_prefetch(held, per) || (opt_.touch && pending_candidate(held, per));
      };
      return cache_.victim(e, layer, keep);
    }
    const std::int64_t need = static_cast<std::int64_t>(layer) - cur;  // turns until `layer` runs
    for (std::int64_t d = L; d > need; --d) {  // turn distance d: layer (cur + d) mod L
      const auto x = static_cast<std::uint32_t>(((cur + d) % L + L) % L);
      const std::uint32_t v = cache_.oldest_of_layer(e, x, skip);
      if (v != RecencyList::kNone) return v;
    }
    return RecencyList::kNone;
  }

 private:
  /// The evictable held expert expected to be needed last (ties: the least recently used of the
  /// lowest layer), sparing this pass's unused prefetches when `spare`; with its expected next use.
  template <Executor E>
  [[nodiscard]] std::pair<std::uint32_t, double> utility_victim(const E& e, bool spare) const {
    const std::uint32_t per = e.experts_per_layer();
    std::uint32_t best = RecencyList::kNone;
    double worst = -1.0;
    for (std::uint32_t l = 0; l < e.layers(); ++l) {
      const RecencyList& list = cache_.order(l);
      for (std::uint32_t v = list.oldest(); v != RecencyList::kNone; v = list.newer(v)) {
        const ExpertId id = ExpertId::from_flat(v, per);
        if ((spare && unused_prefetch(v, per)) || !e.evictable(id)) continue;
        const double t = reuse_->next_use(id, layer_, phase_, *ledger_);
        if (t > worst) {
          worst = t;
          best = v;
        }
      }
    }
    return {best, worst};
  }
  /// The `k` evictable held experts expected to be needed last, this pass's unused prefetches
  /// spared, worst first, in the order k successive utility_victim(e, true) calls (each followed by
  /// that victim's eviction) would return them: by next use, descending, ties in scan order.
  template <Executor E>
  void utility_victims(const E& e, std::uint32_t k, std::vector<std::pair<std::uint32_t, double>>& out) const {
    out.clear();
    if (k == 0) return;
    const std::uint32_t per = e.experts_per_layer();
    for (std::uint32_t l = 0; l < e.layers(); ++l) {
      const RecencyList& list = cache_.order(l);
      for (std::uint32_t v = list.oldest(); v != RecencyList::kNone; v = list.newer(v)) {
        const ExpertId id = ExpertId::from_flat(v, per);
        if (unused_prefetch(v, per) || !e.evictable(id)) continue;
        const double t = reuse_->next_use(id, layer_, phase_, *ledger_);
        if (out.size() == k && !(t > out.back().second)) continue;
        // After every entry at least as late (earlier in scan order wins ties).
        std::size_t i = out.size();
        while (i > 0 && out[i - 1].second < t) --i;
        if (out.size() == k) out.pop_back();
        out.insert(out.begin() + static_cast<std::ptrdiff_t>(i), {v, t});
      }
    }
  }
  /// Flat id `held` was prefetched for a layer of this pass still to run.
  [[nodiscard]] bool unused_prefetch(std::uint32_t held, std::uint32_t per) const noexcept {
    return marks_[held] == pass_ + 1 && static_cast<std::int64_t>(held / per) > layer_;
  }
  /// Flat id `held` is a pending candidate of its own layer, a layer of this pass still to run.
  [[nodiscard]] bool pending_candidate(std::uint32_t held, std::uint32_t per) const noexcept {
    const std::uint32_t l = held / per;
    if (static_cast<std::int64_t>(l) <= layer_) return false;
    const auto x = static_cast<std::uint16_t>(held % per);
    const auto& q = pending_[l];
    return std::find(q.begin(), q.end(), x) != q.end();
  }
  /// A low copy of flat id f landed, was cancelled or became a demand copy.
  void land(std::uint32_t f) {
    if (low_flight_[f] == 0) return;
    low_flight_[f] = 0;
    --low_count_;
  }
  template <Executor E>
  void forget(const E& e, std::uint32_t f) {
    cache_.forget(ExpertId::from_flat(f, e.experts_per_layer()), e.experts_per_layer());
    marks_[f] = 0;
  }

  PrefetchQueueOptions opt_;
  std::uint32_t depth_;
  std::uint32_t lookahead_;
  std::uint32_t cutoff_ = kNoCutoff;
  std::uint32_t beyond_ = 0;
  const ReuseModel* reuse_ = nullptr;
  const PredictionLedger* ledger_ = nullptr;
  StepPhase phase_ = StepPhase::decode;
  std::uint64_t declined_ = 0;
  std::uint64_t copies_ = 0;
  double load_ = 0.0;
  LayerLru cache_;
  std::vector<std::uint64_t> marks_;                 // pass + 1 while prefetched and not yet used
  std::vector<std::uint8_t> low_flight_;             // a low copy is queued or moving
  std::vector<std::vector<std::uint32_t>> low_;      // per layer: low copies submitted for it
  std::vector<std::vector<std::uint16_t>> pending_;  // per layer: candidates not yet copied
  std::uint32_t first_pending_ = 0;                  // no pending candidates below this layer
  std::vector<ExpertId> needed_;                     // the running layer's experts (from its gate)
  std::vector<std::pair<std::uint32_t, double>> victims_;  // a gate's demand victims (utility_victims)
  std::uint32_t low_count_ = 0;
  std::uint64_t pass_ = 0;
  std::int64_t layer_ = -1;                          // last gated layer of the pass, -1 before
};

}  // namespace moesched::policy
