#pragma once
/// Oracle: a policy with perfect knowledge of the future (the whole workload). It evicts the
/// held expert whose next use is furthest away (Belady) and prefetches the next absent expert in
/// the order of future use as soon as a slot is free or can be freed from an expert needed later.
///
///   moesched::policy::Oracle oracle(workload);
///   auto m = moesched::sim::replay(workload, cost, oracle, {.budget = b});
///
/// It is a strong reference, not a proof of optimality: choosing copies and their order jointly
/// is harder than paging, and a better schedule may exist. The provable floor is
/// moesched/sim/lower_bound.hpp; tests check that no policy, the oracle included, beats it.
/// Prefetches are low-priority copies, at most `depth` outstanding, so a demand copy (a miss
/// the oracle could not avoid for lack of memory) passes them.

#include "moesched/core/config.hpp"
#include "moesched/core/expert_id.hpp"
#include "moesched/policy/concepts.hpp"
#include "moesched/sim/workload.hpp"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <queue>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

namespace moesched::policy {

class Oracle {
 public:
  [[nodiscard]] static constexpr std::string_view name() noexcept { return "oracle"; }
  static constexpr std::uint64_t kNever = std::numeric_limits<std::uint64_t>::max();

  explicit Oracle(const sim::Workload& w, std::uint32_t depth = 2) : w_(&w), depth_(depth) {
    const auto& uses = w.all_uses();
    const std::uint32_t per = w.shape().experts;
    const std::size_t n = std::size_t{w.layers()} * per;
    next_.assign(uses.size(), kNever);
    flat_.resize(uses.size());
    nu_.assign(n, kNever);
    prefetching_.assign(n, 0);
    // Walk backwards: the next use of each expert after use u.
    for (std::uint64_t g = w.group_count(); g-- > 0;) {
      const auto layer = static_cast<std::uint32_t>(g % w.layers());
      for (std::uint64_t u = w.group_begin(g + 1); u-- > w.group_begin(g);) {
        const std::uint32_t f = layer * per + uses[u].expert;
        flat_[u] = f;
        next_[u] = nu_[f];
        nu_[f] = u;
      }
    }
  }

  template <Executor E>
  void on_pass_begin(E& e, const PassInfo&) {
    last_layer_ = kNone;
    prefetch(e);
  }
  template <Executor E>
  void on_gate(E& e, std::uint32_t layer, std::span<const ExpertId> needed) {
    if (layer != last_layer_) {
      // First call for this layer of this pass: consume its uses (a retry for unmet experts
      // comes with the same layer and does not).
      last_layer_ = layer;
      const std::uint64_t g = group_++;
      for (std::uint64_t u = w_->group_begin(g); u < w_->group_begin(g + 1); ++u) {
        nu_[flat_[u]] = next_[u];
        heap_.push({next_[u], flat_[u]});
      }
      cur_ = w_->group_begin(g + 1);
      cursor_ = std::max(cursor_, cur_);
    }
    for (ExpertId id : needed) {
      const Residency r = e.residency(id);
      if (r == Residency::queued || r == Residency::copying) {
        e.promote(id);
        continue;
      }
      if (r != Residency::absent) continue;
      if (e.free_slots() == 0) {
        const std::uint32_t v = victim(e, kNever);
        if (v == kNone) return;
        evict(e, v);
      }
      if (!e.copy(id, CopyPriority::high)) return;
    }
    prefetch(e);
  }
  template <Executor E> void on_expert_done(E& e, ExpertId) { prefetch(e); }
  template <Executor E>
  void on_copy_done(E& e, ExpertId id) {
    const std::uint32_t f = id.flat(e.experts_per_layer());
    if (prefetching_[f] != 0) {
      prefetching_[f] = 0;
      --outstanding_;
    }
    prefetch(e);
  }
  template <Executor E> void on_layer_done(E& e, std::uint32_t) { prefetch(e); }

 private:
  static constexpr std::uint32_t kNone = std::numeric_limits<std::uint32_t>::max();
  using Entry = std::pair<std::uint64_t, std::uint32_t>;  // (next use, flat id), max-heap

  /// Held evictable expert with the furthest next use, if that use is after `before`.
  template <Executor E>
  std::uint32_t victim(const E& e, std::uint64_t before) {
    const std::uint32_t per = e.experts_per_layer();
    skipped_.clear();
    std::uint32_t found = kNone;
    while (!heap_.empty()) {
      const Entry top = heap_.top();
      const ExpertId id = ExpertId::from_flat(top.second, per);
      if (nu_[top.second] != top.first || e.residency(id) == Residency::absent) {
        heap_.pop();  // stale
        continue;
      }
      if (before != kNever && !(top.first > before)) break;
      if (!e.evictable(id)) {
        skipped_.push_back(top);
        heap_.pop();
        continue;
      }
      found = top.second;
      break;
    }
    for (const Entry& s : skipped_) heap_.push(s);
    return found;
  }

  template <Executor E>
  void evict(E& e, std::uint32_t f) {
    e.evict(ExpertId::from_flat(f, e.experts_per_layer()));
    if (nu_[f] < cursor_) cursor_ = std::max(nu_[f], cur_);
  }

  template <Executor E>
  void prefetch(E& e) {
    const std::uint32_t per = e.experts_per_layer();
    const auto& uses = w_->all_uses();
    while (outstanding_ < depth_) {
      while (cursor_ < uses.size() &&
             e.residency(ExpertId::from_flat(flat_[cursor_], per)) != Residency::absent) {
        ++cursor_;
      }
      if (cursor_ >= uses.size()) return;
      const std::uint32_t f = flat_[cursor_];
      if (e.free_slots() == 0) {
        const std::uint32_t v = victim(e, cursor_);
        if (v == kNone) return;
        evict(e, v);
      }
      const ExpertId id = ExpertId::from_flat(f, per);
      if (!e.copy(id, CopyPriority::low)) return;
      heap_.push({nu_[f], f});
      prefetching_[f] = 1;
      ++outstanding_;
    }
  }

  const sim::Workload* w_;
  std::uint32_t depth_;
  std::vector<std::uint64_t> next_;   // per use: index of the same expert's next use
  std::vector<std::uint32_t> flat_;   // per use: flat expert id
  std::vector<std::uint64_t> nu_;     // per expert: its next use at or after cur_
  std::vector<std::uint8_t> prefetching_;
  std::priority_queue<Entry> heap_;
  std::vector<Entry> skipped_;
  std::uint64_t group_ = 0;           // next group to be gated
  std::uint64_t cur_ = 0;             // first use not yet consumed
  std::uint64_t cursor_ = 0;          // prefetch scan position
  std::uint32_t last_layer_ = kNone;
  std::uint32_t outstanding_ = 0;
};

}  // namespace moesched::policy
