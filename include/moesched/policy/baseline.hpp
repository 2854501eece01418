#pragma once
/// Baseline policies: what an engine does without prediction. Each models moesched::Policy for
/// any Executor, so every backend of the layer driver (simulator, host, CUDA) runs the same code.
///
///   moesched::policy::OnDemand     copy on miss; the budget is one LRU cache over all layers
///   moesched::policy::LayerLru     per-layer LRU with equal shares (Mixtral-offloading, ProMoE)
///   moesched::policy::Lfu          evict the least frequently used (ties: least recently)
///   moesched::policy::StaticPopular pin the most used experts, stage misses through LRU slots
///
///   moesched::policy::LayerLru lru;
///   auto m = moesched::sim::replay(workload, cost, lru, {.budget = moesched::Bytes::gib(8)});
///
/// None of them prefetches: every copy is a high-priority demand copy submitted when the gate
/// asks for an absent expert. (The oracle, with perfect knowledge of the future, is in
/// moesched/policy/oracle.hpp; predictive policies build on these.)

#include "moesched/core/config.hpp"
#include "moesched/core/expert_id.hpp"
#include "moesched/policy/recency_list.hpp"
#include "moesched/runtime/archetype.hpp"
#include "moesched/runtime/executor.hpp"

#include <algorithm>
#include <limits>
#include <cstdint>
#include <numeric>
#include <set>
#include <span>
#include <string_view>
#include <tuple>
#include <vector>

namespace moesched::policy {

namespace baseline_detail {

/// Lazily sized per-expert state shared by the baselines.
template <Executor E>
std::uint32_t expert_count(const E& e) {
  return e.layers() * e.experts_per_layer();
}

/// Copies every absent needed expert at high priority, evicting `victim()` when no slot is free.
/// Stops (to be called again later) when nothing can be evicted yet.
template <Executor E, class Victim, class OnCopy>
void demand(E& e, std::span<const ExpertId> needed, Victim&& victim, OnCopy&& on_copy) {
  for (ExpertId id : needed) {
    if (e.residency(id) != Residency::absent) continue;
    if (e.free_slots() == 0) {
      const std::uint32_t v = victim();
      if (v == RecencyList::kNone) return;
      const ExpertId vid = ExpertId::from_flat(v, e.experts_per_layer());
      if (!e.evict(vid)) return;
      on_copy(vid, false);
    }
    if (!e.copy(id, CopyPriority::high)) return;
    on_copy(id, true);
  }
}

/// Never skips: the default filter of oldest_evictable.
struct KeepAll {
  constexpr bool operator()(std::uint32_t) const noexcept { return false; }
};
/// Does nothing: the default eviction listener of LayerLru::demand.
struct Ignore {
  constexpr void operator()(std::uint32_t) const noexcept {}
};

/// Oldest evictable id of `list` that `skip` does not exclude, or kNone.
template <Executor E, class Skip = KeepAll>
std::uint32_t oldest_evictable(const E& e, const RecencyList& list, const Skip& skip = {}) {
  for (std::uint32_t v = list.oldest(); v != RecencyList::kNone; v = list.newer(v)) {
    if (e.evictable(ExpertId::from_flat(v, e.experts_per_layer())) && !skip(v)) return v;
  }
  return RecencyList::kNone;
}

}  // namespace baseline_detail

/// Copy on miss; when the budget is full, evict the least recently used expert of any layer.
class OnDemand {
 public:
  [[nodiscard]] static constexpr std::string_view name() noexcept { return "on-demand"; }

  template <Executor E>
  void on_pass_begin(E& e, const PassInfo&) {
    if (held_.size() == 0 && cap_ == 0) {
      cap_ = baseline_detail::expert_count(e);
      held_ = RecencyList(cap_);
    }
  }
  template <Executor E>
  void on_gate(E& e, std::uint32_t, std::span<const ExpertId> needed) {
    const std::uint32_t per = e.experts_per_layer();
    for (ExpertId id : needed) {
      if (e.residency(id) != Residency::absent) held_.touch(id.flat(per));
    }
    baseline_detail::demand(
        e, needed, [&] { return baseline_detail::oldest_evictable(e, held_); },
        [&](ExpertId id, bool in) {
          if (in) held_.touch(id.flat(per)); else held_.remove(id.flat(per));
        });
  }
  template <Executor E> void on_expert_done(E&, ExpertId) {}
  template <Executor E> void on_copy_done(E&, ExpertId) {}
  template <Executor E> void on_layer_done(E&, std::uint32_t) {}

 private:
  RecencyList held_;
  std::uint32_t cap_ = 0;
};

/// Per-layer LRU: each MoE layer owns an equal share of the budget (the first layers get the
/// remainder) and evicts its own least recently used expert. A layer that needs more experts at
/// once than its share borrows from the layer furthest over its share.
///
/// Also a cache component for predictive policies: touch(), forget() and victim() let a policy
/// place prefetched experts in the same per-layer order (policy::Prefetch does).
class LayerLru {
 public:
  [[nodiscard]] static constexpr std::string_view name() noexcept { return "lru"; }

  /// Makes `id` its layer's most recently used expert.
  void touch(ExpertId id, std::uint32_t experts_per_layer) { lists_[id.layer].touch(id.flat(experts_per_layer)); }
  /// Drops `id` from the order (it was evicted or its copy cancelled).
  void forget(ExpertId id, std::uint32_t experts_per_layer) { lists_[id.layer].remove(id.flat(experts_per_layer)); }
  /// The experts `layer` holds, least recently used first (flat ids).
  [[nodiscard]] const RecencyList& order(std::uint32_t layer) const noexcept { return lists_[layer]; }
  /// Slots `layer` may hold before it borrows (its equal share of the budget).
  [[nodiscard]] std::uint32_t share(std::uint32_t layer) const noexcept { return share_[layer]; }
  /// Least recently used evictable expert of `layer` that `skip` does not exclude, or kNone.
  template <Executor E, class Skip = baseline_detail::KeepAll>
  std::uint32_t oldest_of_layer(const E& e, std::uint32_t layer, const Skip& skip = {}) const {
    return baseline_detail::oldest_evictable(e, lists_[layer], skip);
  }
  /// Flat id of the expert to evict to make room for one of `layer`, skipping ids `skip` excludes;
  /// RecencyList::kNone when nothing can be evicted.
  template <Executor E, class Skip = baseline_detail::KeepAll>
  std::uint32_t victim(const E& e, std::uint32_t layer, const Skip& skip = {}) const {
    if (lists_[layer].size() >= share_[layer]) {
      const std::uint32_t v = baseline_detail::oldest_evictable(e, lists_[layer], skip);
      if (v != RecencyList::kNone) return v;
    }
    // Borrow: the layer furthest over its share that has an evictable expert.
    std::uint32_t best = RecencyList::kNone;
    std::int64_t over = std::numeric_limits<std::int64_t>::min();
    for (std::uint32_t l = 0; l < lists_.size(); ++l) {
      const std::int64_t o = std::int64_t{lists_[l].size()} - std::int64_t{share_[l]};
      if (o <= over) continue;
      const std::uint32_t v = baseline_detail::oldest_evictable(e, lists_[l], skip);
      if (v == RecencyList::kNone) continue;
      best = v;
      over = o;
    }
    return best;
  }

  template <Executor E>
  void on_pass_begin(E& e, const PassInfo&) {
    if (!lists_.empty()) return;
    const std::uint32_t L = e.layers();
    lists_.assign(L, RecencyList(baseline_detail::expert_count(e)));
    share_.assign(L, e.capacity_slots() / L);
    for (std::uint32_t l = 0; l < e.capacity_slots() % L; ++l) ++share_[l];
  }
  template <Executor E>
  void on_gate(E& e, std::uint32_t layer, std::span<const ExpertId> needed) {
    demand(e, layer, needed);
  }
  /// The gate's demand: touches the needed experts already held and copies the absent ones at
  /// high priority, evicting victim(layer). Experts `spare` excludes are evicted only when
  /// nothing else can go; `on_evict(flat id)` hears of every eviction.
  template <Executor E, class Spare = baseline_detail::KeepAll, class OnEvict = baseline_detail::Ignore>
  void demand(E& e, std::uint32_t layer, std::span<const ExpertId> needed, const Spare& spare = {},
              const OnEvict& on_evict = {}) {
    const std::uint32_t per = e.experts_per_layer();
    for (ExpertId id : needed) {
      if (e.residency(id) != Residency::absent) lists_[layer].touch(id.flat(per));
    }
    baseline_detail::demand(
        e, needed,
        [&] {
          const std::uint32_t v = victim(e, layer, spare);
          return v != RecencyList::kNone ? v : victim(e, layer);
        },
        [&](ExpertId id, bool in) {
          if (in) {
            lists_[id.layer].touch(id.flat(per));
          } else {
            lists_[id.layer].remove(id.flat(per));
            on_evict(id.flat(per));
          }
        });
  }
  template <Executor E> void on_expert_done(E&, ExpertId) {}
  template <Executor E> void on_copy_done(E&, ExpertId) {}
  template <Executor E> void on_layer_done(E&, std::uint32_t) {}

 private:
  std::vector<RecencyList> lists_;
  std::vector<std::uint32_t> share_;
};

/// Least frequently used: counts every use since the start; evicts the held expert with the
/// lowest count, the least recently used among equals.
class Lfu {
 public:
  [[nodiscard]] static constexpr std::string_view name() noexcept { return "lfu"; }

  template <Executor E>
  void on_pass_begin(E& e, const PassInfo&) {
    if (count_.empty()) {
      count_.assign(baseline_detail::expert_count(e), 0);
      stamp_.assign(count_.size(), 0);
    }
  }
  template <Executor E>
  void on_gate(E& e, std::uint32_t, std::span<const ExpertId> needed) {
    const std::uint32_t per = e.experts_per_layer();
    for (ExpertId id : needed) {
      const std::uint32_t f = id.flat(per);
      if (e.residency(id) != Residency::absent) order_.erase(key(f));
      ++count_[f];
      stamp_[f] = ++clock_;
      if (e.residency(id) != Residency::absent) order_.insert(key(f));
    }
    baseline_detail::demand(
        e, needed,
        [&] {
          for (const auto& k : order_) {
            const std::uint32_t f = std::get<2>(k);
            if (e.evictable(ExpertId::from_flat(f, per))) return f;
          }
          return RecencyList::kNone;
        },
        [&](ExpertId id, bool in) {
          if (in) order_.insert(key(id.flat(per))); else order_.erase(key(id.flat(per)));
        });
  }
  template <Executor E> void on_expert_done(E&, ExpertId) {}
  template <Executor E> void on_copy_done(E&, ExpertId) {}
  template <Executor E> void on_layer_done(E&, std::uint32_t) {}

 private:
  using Key = std::tuple<std::uint64_t, std::uint64_t, std::uint32_t>;
  [[nodiscard]] Key key(std::uint32_t f) const { return {count_[f], stamp_[f], f}; }

  std::vector<std::uint64_t> count_;
  std::vector<std::uint64_t> stamp_;
  std::set<Key> order_;  // held experts, least frequently then least recently used first
  std::uint64_t clock_ = 0;
};

/// Static popularity: the most used experts of a profile are copied in at the start (low
/// priority, before the first pass) and never evicted; the other slots (at least `reserve`, the
/// most experts one layer needs at once) stage misses with LRU eviction.
class StaticPopular {
 public:
  [[nodiscard]] static constexpr std::string_view name() noexcept { return "static"; }

  /// `uses[flat id]` = how often the profile used each expert; `reserve` = staging slots.
  StaticPopular(std::vector<std::uint64_t> uses, std::uint32_t reserve)
      : uses_(std::move(uses)), reserve_(reserve) {}

  template <Executor E>
  void on_pass_begin(E& e, const PassInfo&) {
    if (started_) return;
    started_ = true;
    const std::uint32_t n = baseline_detail::expert_count(e);
    uses_.resize(n, 0);
    staging_ = RecencyList(n);
    pinned_.assign(n, 0);
    std::vector<std::uint32_t> ids(n);
    std::iota(ids.begin(), ids.end(), 0U);
    std::stable_sort(ids.begin(), ids.end(), [&](std::uint32_t a, std::uint32_t b) { return uses_[a] > uses_[b]; });
    const std::uint32_t keep = e.capacity_slots() > reserve_ ? e.capacity_slots() - reserve_ : 0;
    for (std::uint32_t i = 0; i < keep && i < n && uses_[ids[i]] > 0; ++i) {
      const ExpertId id = ExpertId::from_flat(ids[i], e.experts_per_layer());
      if (e.residency(id) == Residency::absent && e.copy(id, CopyPriority::low)) pinned_[ids[i]] = 1;
    }
  }
  template <Executor E>
  void on_gate(E& e, std::uint32_t, std::span<const ExpertId> needed) {
    const std::uint32_t per = e.experts_per_layer();
    for (ExpertId id : needed) {
      const std::uint32_t f = id.flat(per);
      if (pinned_[f] != 0) {
        e.promote(id);  // still loading: it is needed now
      } else if (e.residency(id) != Residency::absent) {
        staging_.touch(f);
      }
    }
    baseline_detail::demand(
        e, needed, [&] { return baseline_detail::oldest_evictable(e, staging_); },
        [&](ExpertId id, bool in) {
          if (in) staging_.touch(id.flat(per)); else staging_.remove(id.flat(per));
        });
  }
  template <Executor E> void on_expert_done(E&, ExpertId) {}
  template <Executor E> void on_copy_done(E&, ExpertId) {}
  template <Executor E> void on_layer_done(E&, std::uint32_t) {}

  /// Experts kept for the whole run.
  [[nodiscard]] std::uint32_t pinned_count() const noexcept {
    return static_cast<std::uint32_t>(std::count(pinned_.begin(), pinned_.end(), std::uint8_t{1}));
  }

 private:
  std::vector<std::uint64_t> uses_;
  std::uint32_t reserve_ = 0;
  bool started_ = false;
  RecencyList staging_;
  std::vector<std::uint8_t> pinned_;
};

static_assert(Policy<OnDemand, runtime::ArchetypeExecutor>);
static_assert(Policy<LayerLru, runtime::ArchetypeExecutor>);
static_assert(Policy<Lfu, runtime::ArchetypeExecutor>);
static_assert(Policy<StaticPopular, runtime::ArchetypeExecutor>);

}  // namespace moesched::policy
