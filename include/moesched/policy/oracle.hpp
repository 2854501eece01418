#pragma once
/// The offline references, policies with perfect knowledge of the future (the whole workload):
/// Oracle (Belady's replacement decisions, each copy issued as early as memory allows: the fewest
/// copies) and AggressiveOracle (below: the link never idles while a useful copy exists).
///
///   moesched::policy::Oracle oracle(workload);
///   auto m = moesched::sim::replay(workload, cost, oracle, {.budget = b});
///
/// At the first pass it runs Belady (evict the held expert whose next use is furthest away) over
/// the workload's whole sequence of expert uses with the executor's slot count, which yields the
/// fewest copies any policy can make for that sequence, and records each miss as a fetch
/// (expert, victim). At run time it issues the fetches in order, each as soon as its victim has
/// run its last use before the fetch (the offline "conservative" prefetching algorithm of Cao,
/// Felten, Karlin and Li, 1995): as many copies as Belady, each as early as possible. Fetches are
/// low-priority copies, at most `depth` outstanding; a fetch the gate is waiting for is promoted.
///
/// It is a strong reference, not a proof of optimality: sometimes copying more, earlier, is
/// faster. The provable floor is moesched/sim/lower_bound.hpp; tests check that no policy, the
/// oracle included, beats it. It reads only the Workload (moesched/workload/), so it runs on any
/// backend whose run replays that workload.

#include "moesched/core/config.hpp"
#include "moesched/core/expert_id.hpp"
#include "moesched/runtime/archetype.hpp"
#include "moesched/runtime/executor.hpp"
#include "moesched/workload/workload.hpp"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <queue>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

namespace moesched::policy {

namespace oracle_detail {
/// The prefetches a reference issued ahead and that have not landed (urgent copies never count).
class AheadCount {
 public:
  void reset(std::size_t experts) { counted_.assign(experts, 0); }
  [[nodiscard]] std::uint32_t count() const noexcept { return count_; }
  void issued(std::uint32_t flat) {
    counted_[flat] = 1;
    ++count_;
  }
  void landed(std::uint32_t flat) {
    if (counted_[flat] == 0) return;
    counted_[flat] = 0;
    --count_;
  }

 private:
  std::vector<std::uint8_t> counted_;  // per flat id: its copy in flight counts
  std::uint32_t count_ = 0;
};
}  // namespace oracle_detail

class Oracle {
 public:
  [[nodiscard]] static constexpr std::string_view name() noexcept { return "oracle"; }
  static constexpr std::uint64_t kNever = std::numeric_limits<std::uint64_t>::max();
  static constexpr std::uint32_t kNone = std::numeric_limits<std::uint32_t>::max();

  explicit Oracle(const Workload& w, std::uint32_t depth = 2) : w_(&w), depth_(depth == 0 ? 1 : depth) {}
  explicit Oracle(Workload&&, std::uint32_t = 2) = delete;  // keeps a pointer: no temporaries

  /// One copy of Belady's schedule.
  struct Fetch {
    std::uint64_t use = 0;          ///< position (index into the workload's uses) it serves
    std::uint32_t expert = 0;       ///< flat id
    std::uint32_t victim = kNone;   ///< flat id to evict first, or none
    std::uint64_t victim_done = 0;  ///< the victim's last use before `use` (must have run)
  };
  /// The schedule (after the first pass began).
  [[nodiscard]] const std::vector<Fetch>& schedule() const noexcept { return fetches_; }

  template <Executor E>
  void on_pass_begin(E& e, const PassInfo&) {
    if (!planned_) plan(e.capacity_slots());
    last_layer_ = kNone;
    issue(e, kNone);
  }
  template <Executor E>
  void on_gate(E& e, std::uint32_t layer, std::span<const ExpertId> needed) {
    if (layer != last_layer_) {
      // First call for this layer of this pass (a retry for unmet experts has the same layer).
      last_layer_ = layer;
      cur_ = w_->group_begin(++group_);
    }
    for (ExpertId id : needed) {
      const Residency r = e.residency(id);
      if (r == Residency::queued || r == Residency::copying) e.promote(id);
    }
    issue(e, kNone);
    // Anything still absent is among the next fetches; ask for it at high priority.
    for (ExpertId id : needed) {
      if (e.residency(id) != Residency::absent) continue;
      issue(e, id.flat(e.experts_per_layer()));
    }
  }
  template <Executor E> void on_expert_done(E& e, ExpertId) { issue(e, kNone); }
  template <Executor E>
  void on_copy_done(E& e, ExpertId id) {
    // Only the fetches issued ahead count against `depth`; an urgent one never did.
    ahead_.landed(id.flat(e.experts_per_layer()));
    issue(e, kNone);
  }
  template <Executor E> void on_layer_done(E& e, std::uint32_t) { issue(e, kNone); }

 private:
  using Entry = std::pair<std::uint64_t, std::uint32_t>;  // (next use, flat id), max-heap

  /// Belady over the use sequence with `slots` slots.
  void plan(std::uint32_t slots) {
    planned_ = true;
    ahead_.reset(std::size_t{w_->layers()} * w_->shape().experts);
    const auto& uses = w_->all_uses();
    const std::uint32_t per = w_->shape().experts;
    const std::size_t n = std::size_t{w_->layers()} * per;
    std::vector<std::uint32_t> flat(uses.size());
    std::vector<std::uint64_t> next(uses.size(), kNever);
    std::vector<std::uint64_t> nu(n, kNever);
    for (std::uint64_t g = w_->group_count(); g-- > 0;) {
      const auto layer = static_cast<std::uint32_t>(g % w_->layers());
      for (std::uint64_t u = w_->group_begin(g + 1); u-- > w_->group_begin(g);) {
        const std::uint32_t f = layer * per + uses[u].expert;
        flat[u] = f;
        next[u] = nu[f];
        nu[f] = u;
      }
    }
    std::vector<std::uint8_t> held(n, 0);
    std::vector<std::uint64_t> last(n, 0);
    std::priority_queue<Entry> heap;
    std::uint32_t count = 0;
    for (std::uint64_t u = 0; u < uses.size(); ++u) {
      const std::uint32_t f = flat[u];
      if (held[f] == 0) {
        Fetch fe{u, f, kNone, 0};
        if (count == slots) {
          for (;;) {  // stale entries: evicted, or a next use that has since moved on
            const Entry top = heap.top();
            heap.pop();
            if (held[top.second] != 0 && nu[top.second] == top.first) {
              fe.victim = top.second;
              break;
            }
          }
          held[fe.victim] = 0;
          fe.victim_done = last[fe.victim];
        } else {
          ++count;
        }
        held[f] = 1;
        fetches_.push_back(fe);
      }
      last[f] = u;
      nu[f] = next[u];
      heap.push({nu[f], f});
    }
  }

  /// Issues fetches in order while their victims are done and slots allow; a fetch for `urgent`
  /// (a flat id the gate waits for) goes at high priority and ignores the outstanding limit.
  template <Executor E>
  void issue(E& e, std::uint32_t urgent) {
    const std::uint32_t per = e.experts_per_layer();
    while (next_ < fetches_.size()) {
      const Fetch& f = fetches_[next_];
      const bool is_urgent = f.expert == urgent;
      if (ahead_.count() >= depth_ && urgent == kNone) return;
      if (f.victim != kNone) {
        const ExpertId v = ExpertId::from_flat(f.victim, per);
        if (f.victim_done >= cur_ || !e.evictable(v)) return;  // the victim still has work to do
        if (!e.evict(v)) return;
      }
      if (!e.copy(ExpertId::from_flat(f.expert, per), is_urgent ? CopyPriority::high : CopyPriority::low)) return;
      if (!is_urgent) {
        ahead_.issued(f.expert);
      }
      ++next_;
      if (is_urgent) return;
    }
  }

  const Workload* w_;
  std::uint32_t depth_;
  bool planned_ = false;
  std::vector<Fetch> fetches_;
  std::size_t next_ = 0;              // next fetch to issue
  std::uint64_t group_ = 0;           // groups gated so far
  std::uint64_t cur_ = 0;             // first use not yet gated
  std::uint32_t last_layer_ = kNone;
  oracle_detail::AheadCount ahead_;   // fetches issued ahead and not landed
};

static_assert(Policy<Oracle, runtime::ArchetypeExecutor>);

/// AggressiveOracle: the time-aware offline reference (the "aggressive" integrated prefetching and
/// caching algorithm of Cao, Felten, Karlin and Li, 1995), beside Oracle's fewest copies.
///
///   moesched::policy::AggressiveOracle oracle(workload);
///   auto m = moesched::sim::replay(workload, cost, oracle, {.budget = b});
///
/// Whenever fewer than `depth` of its prefetches are in flight it fetches the next expert the
/// future needs that is not held, into a free slot or in place of the held expert whose next use
/// is furthest away, provided that use comes after the fetched expert's (a fetch never makes a
/// nearer use miss). So the link never idles while a useful copy exists: it may copy more than
/// Belady but stalls less when copies, not slots, are the bottleneck. A needed expert still absent
/// at its gate is copied at high priority in place of the furthest-used evictable expert. Like
/// Oracle it reads the Workload only; neither is proven optimal (the floor is
/// moesched/sim/lower_bound.hpp), and a report takes the better of the two as its reference.
class AggressiveOracle {
 public:
  [[nodiscard]] static constexpr std::string_view name() noexcept { return "oracle-aggressive"; }
  static constexpr std::uint64_t kNever = std::numeric_limits<std::uint64_t>::max();

  explicit AggressiveOracle(const Workload& w, std::uint32_t depth = 2) : w_(&w), depth_(depth == 0 ? 1 : depth) {
    const auto& uses = w.all_uses();
    const std::uint32_t per = w.shape().experts;
    flat_.resize(uses.size());
    done_.assign(uses.size(), 0);
    next_.assign(uses.size(), kNever);
    nu_.assign(std::size_t{w.layers()} * per, kNever);
    ahead_.reset(nu_.size());
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
  explicit AggressiveOracle(Workload&&, std::uint32_t = 2) = delete;  // keeps a pointer: no temporaries

  template <Executor E>
  void on_pass_begin(E& e, const PassInfo&) {
    last_layer_ = kNoLayer;
    fill(e);
  }
  template <Executor E>
  void on_gate(E& e, std::uint32_t layer, std::span<const ExpertId> needed) {
    if (layer != last_layer_) {
      // First call for this layer of this pass: the previous group's uses are done.
      last_layer_ = layer;
      const std::uint64_t begin = w_->group_begin(gated_);
      for (std::uint64_t u = cur_; u < begin; ++u) advance(u);
      cur_ = begin;
      end_ = w_->group_begin(++gated_);
    }
    for (ExpertId id : needed) {
      const Residency r = e.residency(id);
      if (r == Residency::queued || r == Residency::copying) e.promote(id);
    }
    for (ExpertId id : needed) {
      if (e.residency(id) != Residency::absent) continue;
      if (e.free_slots() == 0) {
        const std::uint32_t v = victim(e, 0);
        if (v == kNoExpert) break;  // every slot busy: retried when a copy lands
        if (!e.evict(ExpertId::from_flat(v, e.experts_per_layer()))) break;
        scan_ = cur_;  // a demand eviction may uncover an earlier use
      }
      if (!e.copy(id, CopyPriority::high)) break;
      const std::uint32_t f = id.flat(e.experts_per_layer());
      heap_.push({nu_[f], f});
    }
    fill(e);
  }
  template <Executor E>
  void on_expert_done(E& e, ExpertId id) {
    // Its use in the running group is done: its next use moves on now, not at the next gate.
    const std::uint32_t f = id.flat(e.experts_per_layer());
    for (std::uint64_t u = cur_; u < end_; ++u) {
      if (flat_[u] == f) {
        advance(u);
        break;
      }
    }
    fill(e);
  }
  template <Executor E>
  void on_copy_done(E& e, ExpertId id) {
    ahead_.landed(id.flat(e.experts_per_layer()));
    fill(e);
  }
  template <Executor E> void on_layer_done(E& e, std::uint32_t) { fill(e); }

 private:
  static constexpr std::uint32_t kNoLayer = std::numeric_limits<std::uint32_t>::max();
  static constexpr std::uint32_t kNoExpert = std::numeric_limits<std::uint32_t>::max();
  using Entry = std::pair<std::uint64_t, std::uint32_t>;  // (next use, flat id), max-heap

  /// Use `u` ran: its expert's next use moves on (once).
  void advance(std::uint64_t u) {
    if (done_[u] != 0) return;
    done_[u] = 1;
    const std::uint32_t f = flat_[u];
    nu_[f] = next_[u];
    heap_.push({nu_[f], f});
  }

  /// The resident, evictable expert whose next use is furthest and after `after`; kNoExpert if none.
  template <Executor E>
  std::uint32_t victim(E& e, std::uint64_t after) {
    const std::uint32_t per = e.experts_per_layer();
    std::uint32_t found = kNoExpert;
    aside_.clear();
    while (!heap_.empty()) {
      const Entry top = heap_.top();
      if (top.first != nu_[top.second]) {  // stale: the next use moved on
        heap_.pop();
        continue;
      }
      const ExpertId id = ExpertId::from_flat(top.second, per);
      const Residency r = e.residency(id);
      if (r == Residency::absent) {  // stale: evicted; pushed again when fetched
        heap_.pop();
        continue;
      }
      if (top.first <= after && top.first != kNever) break;  // nothing held is needed later than that
      heap_.pop();
      aside_.push_back(top);
      if (r == Residency::resident && e.evictable(id)) {
        found = top.second;
        aside_.pop_back();  // the caller evicts it
        break;
      }
    }
    for (const Entry& a : aside_) heap_.push(a);
    return found;
  }

  /// Fetches ahead while the link may take more (see the class comment).
  template <Executor E>
  void fill(E& e) {
    const std::uint32_t per = e.experts_per_layer();
    const std::uint64_t n = flat_.size();
    scan_ = std::max(scan_, cur_);
    while (ahead_.count() < depth_) {
      while (scan_ < n && e.residency(ExpertId::from_flat(flat_[scan_], per)) != Residency::absent) ++scan_;
      if (scan_ >= n) return;
      const std::uint32_t f = flat_[scan_];
      if (e.free_slots() == 0) {
        const std::uint32_t v = victim(e, scan_);
        if (v == kNoExpert) return;
        if (!e.evict(ExpertId::from_flat(v, per))) return;
      }
      if (!e.copy(ExpertId::from_flat(f, per), CopyPriority::low)) return;
      heap_.push({nu_[f], f});
      ahead_.issued(f);
    }
  }

  const Workload* w_;
  std::uint32_t depth_;
  std::vector<std::uint32_t> flat_;   // per use: flat expert id
  std::vector<std::uint64_t> next_;   // per use: the same expert's next use, or kNever
  std::vector<std::uint8_t> done_;    // per use: ran (its expert's next use moved on)
  std::vector<std::uint64_t> nu_;     // per flat id: next use at or after cur_
  oracle_detail::AheadCount ahead_;   // prefetches issued ahead and not landed
  std::priority_queue<Entry> heap_;   // held experts by next use (lazy: stale entries skipped)
  std::vector<Entry> aside_;
  std::uint64_t cur_ = 0;             // first use of the group gated last
  std::uint64_t end_ = 0;             // its end
  std::uint64_t gated_ = 0;           // groups gated so far
  std::uint64_t scan_ = 0;            // uses before it (from cur_) are held or in flight
  std::uint32_t last_layer_ = kNoLayer;
};

static_assert(Policy<AggressiveOracle, runtime::ArchetypeExecutor>);

}  // namespace moesched::policy
