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
/// State is sized at the first begin_pass (layers x experts); afterwards nothing allocates except
/// a per-layer candidate list growing past its high-water mark (push() appends; replace() keeps at
/// most the candidates of one prediction).

#include "moesched/core/config.hpp"
#include "moesched/core/expert_id.hpp"
#include "moesched/policy/baseline.hpp"
#include "moesched/policy/recency_list.hpp"
#include "moesched/runtime/executor.hpp"
#include "moesched/runtime/jobs.hpp"

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

namespace moesched::policy {

class PrefetchQueue {
 public:
  /// `depth`: copies (demand copies of the running layer included) kept outstanding before another
  /// prefetch is issued (at least 1). `lookahead`: prefetch only for the next `lookahead` layers
  /// after the running one (ProMoE's bounded lookahead; 0 = any later layer of the pass).
  explicit PrefetchQueue(std::uint32_t depth = 2, std::uint32_t lookahead = 0)
      : depth_(depth < 1 ? 1 : depth), lookahead_(lookahead) {}

  [[nodiscard]] std::uint32_t depth() const noexcept { return depth_; }
  [[nodiscard]] std::uint32_t lookahead() const noexcept { return lookahead_; }
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
    }
    pass_ = pass.index;
    layer_ = -1;
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
          e.promote(id);
          land(f);
        } else if (e.cancel(id)) {
          land(f);
          forget(e, f);
        }
      }
      low_[layer].clear();
    }
    cache_.demand(
        e, layer, needed, [&](std::uint32_t held) { return unused_prefetch(held, per); },
        [&](std::uint32_t evicted) { marks_[evicted] = 0; });
  }

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
    const std::uint32_t last = lookahead_ == 0 ? L : std::min(L, next_layer + lookahead_);
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
          cache_.touch(id, per);
          continue;
        }
        if (e.free_slots() == 0) {
          const std::uint32_t v = victim(e, l);
          if (v == RecencyList::kNone) break;  // retried when a copy lands or a layer ends
          if (!e.evict(ExpertId::from_flat(v, per))) break;
          forget(e, v);
        }
        if (!e.copy(id, CopyPriority::low)) break;
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
  template <Executor E>
  [[nodiscard]] std::uint32_t victim(const E& e, std::uint32_t layer) const {
    const std::uint32_t per = e.experts_per_layer();
    const std::int64_t L = e.layers();
    const std::int64_t cur = layer_;  // -1 before the first gate
    auto skip = [&](std::uint32_t held) { return unused_prefetch(held, per); };
    const std::int64_t need = static_cast<std::int64_t>(layer) - cur;  // turns until `layer` runs
    for (std::int64_t d = L; d > need; --d) {  // turn distance d: layer (cur + d) mod L
      const auto x = static_cast<std::uint32_t>(((cur + d) % L + L) % L);
      const std::uint32_t v = cache_.oldest_of_layer(e, x, skip);
      if (v != RecencyList::kNone) return v;
    }
    return RecencyList::kNone;
  }

 private:
  /// Flat id `held` was prefetched for a layer of this pass still to run.
  [[nodiscard]] bool unused_prefetch(std::uint32_t held, std::uint32_t per) const noexcept {
    return marks_[held] == pass_ + 1 && static_cast<std::int64_t>(held / per) > layer_;
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

  std::uint32_t depth_;
  std::uint32_t lookahead_;
  LayerLru cache_;
  std::vector<std::uint64_t> marks_;                 // pass + 1 while prefetched and not yet used
  std::vector<std::uint8_t> low_flight_;             // a low copy is queued or moving
  std::vector<std::vector<std::uint32_t>> low_;      // per layer: low copies submitted for it
  std::vector<std::vector<std::uint16_t>> pending_;  // per layer: candidates not yet copied
  std::uint32_t first_pending_ = 0;                  // no pending candidates below this layer
  std::vector<ExpertId> needed_;                     // the running layer's experts (from its gate)
  std::uint32_t low_count_ = 0;
  std::uint64_t pass_ = 0;
  std::int64_t layer_ = -1;                          // last gated layer of the pass, -1 before
};

}  // namespace moesched::policy
