#pragma once
/// The trace-driven discrete-event simulator: SimMachine (an Executor: expert memory, the
/// host-to-device link, the event clock) and replay(), which runs a Workload's passes on it under
/// a policy and returns the metrics.
///
///   moesched::sim::CostModel cost(model, gpu);
///   moesched::policy::OnDemand pol;
///   auto m = moesched::sim::replay(workload, cost, pol, {.budget = moesched::Bytes::gib(12)});
///   m.tpot_ms.mean;
///
/// What is simulated (ARCHITECTURE.md, "Simulator", has the picture):
/// - One compute stream runs, per pass: drafting (SD), then per MoE layer the dense part, the
///   router's answer (the policy's on_gate), then the layer's experts in reordered order: any
///   resident one first; when none is resident it stalls until the next needed copy lands (the
///   experts' outputs are summed, so order is free); then the LM head. Passes run back to back.
/// - One host-to-device link moves one chunk at a time (two streams do not beat one: the link is
///   the limit), high-priority copies first; a high copy waits for at most the chunk in transit.
/// - CPU workers (`cpu_workers`, a CpuExecutor) run the policy's predictor jobs, first come first
///   served, each for the duration the policy gives (its predictor's latency).
/// - Expert memory in slots: a copy takes a slot when submitted, evict/cancel give it back, the
///   needed experts of the running layer are pinned until their FFN ran.
/// Invariants (checked on every event when `check_invariants`, which tests and debug builds turn
/// on): no expert computed unless resident, slots in use never above the budget, every copied
/// byte accounted for, the clock never goes back. A violation throws InvariantError; a policy that
/// breaks the executor's contract gets PolicyError.

#include "moesched/core/config.hpp"
#include "moesched/core/error.hpp"
#include "moesched/core/expert_id.hpp"
#include "moesched/policy/concepts.hpp"
#include "moesched/sim/cost_model.hpp"
#include "moesched/sim/event_queue.hpp"
#include "moesched/sim/metrics.hpp"
#include "moesched/sim/timeline.hpp"
#include "moesched/sim/workload.hpp"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <span>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace moesched::sim {

/// The simulator broke one of its own invariants (a bug in moesched).
class InvariantError : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};
/// A policy broke the executor contract (evicting a pinned expert, leaving a need unmet, ...).
class PolicyError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

#ifdef NDEBUG
inline constexpr bool kCheckInvariantsByDefault = false;
#else
inline constexpr bool kCheckInvariantsByDefault = true;
#endif

struct SimOptions {
  Bytes budget{};                  ///< GPU memory for routed experts
  bool check_invariants = kCheckInvariantsByDefault;
  Timeline* timeline = nullptr;    ///< record compute, copies and stalls here when set
  std::uint64_t timeline_passes = 64;  ///< record only the first passes (files stay openable)
  std::uint32_t cpu_workers = 1;   ///< predictor threads (jobs of predictive policies)
};

[[nodiscard]] inline std::string expert_text(ExpertId id) {
  // Appended piece by piece: GCC 12 at -O3 warns falsely (-Wrestrict) on "L" + to_string(...).
  std::string s = "L";
  s += std::to_string(id.layer);
  s += "/E";
  s += std::to_string(id.expert);
  return s;
}

/// The simulated machine a policy drives. Models moesched::Executor.
class SimMachine {
 public:
  static constexpr std::uint32_t kNone = std::numeric_limits<std::uint32_t>::max();

  enum class EventKind : std::uint8_t { compute_done, chunk_done, cpu_done };
  struct EventData {
    EventKind kind = EventKind::compute_done;
    std::uint32_t expert = kNone;  ///< chunk_done: flat id; cpu_done: the job's tag
  };

  SimMachine(const CostModel& cost, RoutingShape shape, const SimOptions& opt)
      : cost_(&cost), shape_(shape), chunk_bytes_(cost.chunk_bytes()), chunk_times_(cost.chunk_times()) {
    const Bytes e = cost.expert_bytes();
    const std::uint64_t slots = opt.budget.count / e.count;
    capacity_ = static_cast<std::uint32_t>(std::min<std::uint64_t>(slots, std::uint64_t{shape.layers} * shape.experts));
    slots_.resize(std::size_t{shape.layers} * shape.experts);
    cpu_free_.assign(opt.cpu_workers, Nanoseconds{0});
    queue_.reserve(64);
  }

  // ---- Executor ----
  [[nodiscard]] Nanoseconds now() const noexcept { return queue_.now(); }
  [[nodiscard]] std::uint32_t layers() const noexcept { return shape_.layers; }
  [[nodiscard]] std::uint32_t experts_per_layer() const noexcept { return shape_.experts; }
  [[nodiscard]] std::uint32_t capacity_slots() const noexcept { return capacity_; }
  [[nodiscard]] std::uint32_t free_slots() const noexcept { return capacity_ - used_; }
  [[nodiscard]] Residency residency(ExpertId id) const noexcept { return slots_[flat(id)].state; }
  [[nodiscard]] bool evictable(ExpertId id) const noexcept {
    const Slot& s = slots_[flat(id)];
    return s.state == Residency::resident && s.pins == 0;
  }
  bool copy(ExpertId id, CopyPriority p) {
    const std::uint32_t f = flat(id);
    Slot& s = slots_[f];
    if (s.state != Residency::absent) {
      throw PolicyError("copy of " + expert_text(id) + ", which is not absent");
    }
    if (used_ >= capacity_) return false;
    ++used_;
    peak_ = std::max(peak_, used_);
    s.state = Residency::queued;
    s.priority = p;
    s.chunks_done = 0;
    s.prefetched = p == CopyPriority::low;
    s.used_since_copy = false;
    if (s.prefetched) ++metrics_.prefetch_copies;
    push_back(p, f);
    if (current_ == kNone) start_next_chunk();
    return true;
  }
  void evict(ExpertId id) {
    const std::uint32_t f = flat(id);
    Slot& s = slots_[f];
    if (s.state != Residency::resident || s.pins != 0) {
      throw PolicyError("evict of " + expert_text(id) + ", which is " +
                        (s.pins != 0 ? "pinned by the running layer" : "not resident"));
    }
    if (!s.used_since_copy) metrics_.wasted_bytes += cost_->expert_bytes();
    s.state = Residency::absent;
    --used_;
    ++metrics_.evictions;
  }
  bool cancel(ExpertId id) {
    const std::uint32_t f = flat(id);
    Slot& s = slots_[f];
    if (s.state != Residency::queued) return false;
    unlink(f);
    s.state = Residency::absent;
    if (s.prefetched) --metrics_.prefetch_copies;  // never moved a byte: not a prefetch after all
    --used_;
    ++metrics_.cancelled;
    return true;
  }
  void promote(ExpertId id) {
    const std::uint32_t f = flat(id);
    Slot& s = slots_[f];
    if (s.priority == CopyPriority::high) return;
    if (s.state == Residency::queued || (s.state == Residency::copying && f != current_)) {
      unlink(f);
      s.priority = CopyPriority::high;
      push_back(CopyPriority::high, f);
    } else if (f == current_) {
      s.priority = CopyPriority::high;
    }
  }

  // ---- CpuExecutor ----
  [[nodiscard]] std::uint32_t cpu_workers() const noexcept { return static_cast<std::uint32_t>(cpu_free_.size()); }
  /// Runs a job of `duration` on the first free worker, not before `ready_at` (nor now).
  void cpu_submit(std::uint32_t tag, Nanoseconds ready_at, Nanoseconds duration) {
    if (cpu_free_.empty()) throw PolicyError("a CPU job was submitted, but the machine has no CPU workers");
    if (duration.count() < 0) throw PolicyError("a CPU job of negative duration was submitted");
    const auto w = static_cast<std::size_t>(std::min_element(cpu_free_.begin(), cpu_free_.end()) - cpu_free_.begin());
    const Nanoseconds ready = std::max(ready_at, now());
    const Nanoseconds start = std::max(ready, cpu_free_[w]);
    cpu_free_[w] = start + duration;
    ++metrics_.cpu_jobs;
    metrics_.cpu_busy += duration;
    metrics_.cpu_wait += start - ready;
    if (timeline_ != nullptr) timeline_->cpu(start, duration, static_cast<std::uint32_t>(w), tag);
    queue_.push(start + duration, {EventKind::cpu_done, tag});
  }

  // ---- for the replay driver and tests ----
  [[nodiscard]] const RoutingShape& shape() const noexcept { return shape_; }
  [[nodiscard]] std::uint32_t flat(ExpertId id) const noexcept { return id.flat(shape_.experts); }
  [[nodiscard]] std::uint32_t used_slots() const noexcept { return used_; }
  [[nodiscard]] std::uint32_t peak_slots() const noexcept { return peak_; }
  [[nodiscard]] bool link_idle() const noexcept { return current_ == kNone; }
  [[nodiscard]] RunMetrics& metrics() noexcept { return metrics_; }
  [[nodiscard]] EventQueue<EventData>& events() noexcept { return queue_; }

  struct Slot {
    Residency state = Residency::absent;
    CopyPriority priority = CopyPriority::high;
    bool prefetched = false;
    bool used_since_copy = false;
    std::uint8_t chunks_done = 0;
    std::uint8_t pins = 0;
    std::uint32_t prev = kNone;
    std::uint32_t next = kNone;
  };
  [[nodiscard]] Slot& slot(std::uint32_t f) noexcept { return slots_[f]; }
  [[nodiscard]] const Slot& slot(std::uint32_t f) const noexcept { return slots_[f]; }

  /// Handles a chunk_done event; returns the flat id of an expert that became resident, or kNone.
  std::uint32_t finish_chunk(std::uint32_t f) {
    Slot& s = slots_[f];
    const std::size_t c = s.chunks_done;
    metrics_.bytes_copied += chunk_bytes_[c];
    metrics_.link_busy += chunk_times_[c];
    ++metrics_.chunks_copied;
    s.chunks_done = static_cast<std::uint8_t>(c + 1);
    std::uint32_t landed = kNone;
    if (s.chunks_done == chunk_bytes_.size()) {
      s.state = Residency::resident;
      ++metrics_.experts_copied;
      landed = f;
      current_ = kNone;
    } else {
      s.state = Residency::copying;
      // A high copy waits for at most one chunk of a low one.
      if (s.priority == CopyPriority::low && head_[0] != kNone) {
        push_front(CopyPriority::low, f);
        current_ = kNone;
      }
    }
    start_next_chunk();
    return landed;
  }

  /// Throws InvariantError if the slot accounting is inconsistent.
  void check_invariants() const {
    std::uint32_t held = 0;
    Bytes partial{0};  // bytes of copies under way
    for (const Slot& s : slots_) {
      if (s.state != Residency::absent) ++held;
      if (s.state == Residency::resident && s.chunks_done != chunk_bytes_.size()) {
        throw InvariantError("a resident expert has not received all its chunks");
      }
      if (s.state == Residency::copying) {
        for (std::size_t c = 0; c < s.chunks_done; ++c) partial += chunk_bytes_[c];
      }
    }
    const Bytes landed = cost_->expert_bytes() * metrics_.experts_copied;
    if (metrics_.bytes_copied != landed + partial) {
      throw InvariantError("bytes copied (" + std::to_string(metrics_.bytes_copied.count) +
                           ") differ from landed plus partial copies (" + std::to_string((landed + partial).count) + ")");
    }
    if (held != used_) {
      throw InvariantError("slots in use (" + std::to_string(used_) + ") differ from experts held (" +
                           std::to_string(held) + ")");
    }
    if (used_ > capacity_) {
      throw InvariantError("slots in use (" + std::to_string(used_) + ") exceed the budget (" +
                           std::to_string(capacity_) + ")");
    }
  }

  void set_timeline(Timeline* t) noexcept { timeline_ = t; }

 private:
  void start_next_chunk() {
    if (current_ == kNone) {
      const int q = head_[0] != kNone ? 0 : 1;
      if (head_[q] == kNone) return;
      current_ = head_[q];
      unlink(current_);
    }
    Slot& s = slots_[current_];
    if (s.state == Residency::queued) s.state = Residency::copying;
    const Nanoseconds d = chunk_times_[s.chunks_done];
    if (timeline_ != nullptr) {
      timeline_->copy(now(), d, ExpertId::from_flat(current_, shape_.experts), s.chunks_done,
                      static_cast<std::uint32_t>(chunk_bytes_.size()), s.priority == CopyPriority::high);
    }
    queue_.push(now() + d, {EventKind::chunk_done, current_});
  }
  void push_back(CopyPriority p, std::uint32_t f) {
    const int q = static_cast<int>(p);
    Slot& s = slots_[f];
    s.prev = tail_[q];
    s.next = kNone;
    if (tail_[q] != kNone) slots_[tail_[q]].next = f; else head_[q] = f;
    tail_[q] = f;
  }
  void push_front(CopyPriority p, std::uint32_t f) {
    const int q = static_cast<int>(p);
    Slot& s = slots_[f];
    s.next = head_[q];
    s.prev = kNone;
    if (head_[q] != kNone) slots_[head_[q]].prev = f; else tail_[q] = f;
    head_[q] = f;
  }
  void unlink(std::uint32_t f) {
    Slot& s = slots_[f];
    const int q = static_cast<int>(s.priority);
    if (s.prev != kNone) slots_[s.prev].next = s.next; else if (head_[q] == f) head_[q] = s.next;
    if (s.next != kNone) slots_[s.next].prev = s.prev; else if (tail_[q] == f) tail_[q] = s.prev;
    s.prev = s.next = kNone;
  }

  const CostModel* cost_;
  RoutingShape shape_;
  std::span<const Bytes> chunk_bytes_;
  std::span<const Nanoseconds> chunk_times_;
  std::vector<Slot> slots_;
  std::uint32_t capacity_ = 0;
  std::uint32_t used_ = 0;
  std::uint32_t peak_ = 0;
  std::uint32_t head_[2]{kNone, kNone};
  std::uint32_t tail_[2]{kNone, kNone};
  std::uint32_t current_ = kNone;
  std::vector<Nanoseconds> cpu_free_;  // per worker: when it is free
  EventQueue<EventData> queue_;
  RunMetrics metrics_;
  Timeline* timeline_ = nullptr;
};

static_assert(Executor<SimMachine>);
static_assert(CpuExecutor<SimMachine>);

namespace engine_detail {

/// Token-weighted percentile of (value, weight) samples.
inline double weighted_percentile(std::vector<std::pair<double, std::uint32_t>>& v, double q) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  std::uint64_t total = 0;
  for (const auto& s : v) total += s.second;
  const double target = q * static_cast<double>(total);
  std::uint64_t acc = 0;
  for (const auto& s : v) {
    acc += s.second;
    if (static_cast<double>(acc) >= target) return s.first;
  }
  return v.back().first;
}

inline Distribution summarize(std::vector<std::pair<double, std::uint32_t>>& v) {
  Distribution d;
  std::uint64_t w = 0;
  double sum = 0.0;
  for (const auto& s : v) {
    sum += s.first * s.second;
    w += s.second;
  }
  d.mean = w == 0 ? 0.0 : sum / static_cast<double>(w);
  d.p50 = weighted_percentile(v, 0.5);
  d.p99 = weighted_percentile(v, 0.99);
  return d;
}

}  // namespace engine_detail

/// Replays `w` under policy `pol` on a machine with `opt.budget` bytes of expert memory.
/// Throws ConfigError if the budget cannot hold the largest set of experts one layer needs at
/// once, PolicyError if the policy breaks the executor contract.
template <class P>
  requires Policy<P, SimMachine>
RunMetrics replay(const Workload& w, const CostModel& cost, P& pol, const SimOptions& opt) {
  using Kind = SimMachine::EventKind;
  constexpr std::uint32_t kNone = SimMachine::kNone;
  const RoutingShape shape = w.shape();
  const std::uint32_t L = shape.layers;
  SimMachine m(cost, shape, opt);
  if (m.capacity_slots() < w.max_layer_union()) {
    throw ConfigError("", "cache_budget", to_text(opt.budget.gigabytes()) + " GB",
                      "holds " + std::to_string(m.capacity_slots()) + " experts, but one layer of this workload needs " +
                          std::to_string(w.max_layer_union()) + " at once (" +
                          to_text(static_cast<double>(w.max_layer_union()) * cost.expert_bytes().gigabytes()) +
                          " GB)");
  }
  RunMetrics& r = m.metrics();
  r.policy = std::string(P::name());
  r.layers.assign(L, LayerMetrics{});
  r.budget = opt.budget;
  r.capacity_slots = m.capacity_slots();
  r.requests = w.request_count();
  r.activations = w.activations();

  auto& q = m.events();
  std::vector<ExpertId> needed;
  std::vector<ExpertId> unmet;
  std::vector<std::uint32_t> remaining;   // use indices of the running layer still to compute
  std::vector<std::pair<double, std::uint32_t>> tpot;  // (ms per token, tokens)
  std::vector<std::pair<double, std::uint32_t>> ttft;
  std::unordered_map<std::uint32_t, double> first_token_ms;  // request -> TTFT (last prefill pass)
  Timeline* tl = opt.timeline;

  enum class Stage : std::uint8_t { pass_begin, dense, gate, experts, head, pass_end, done };
  Stage stage = w.pass_count() == 0 ? Stage::done : Stage::pass_begin;
  std::uint64_t p = 0;
  std::uint32_t layer = 0;
  std::uint32_t running = kNone;      // flat id of the expert whose FFN runs
  bool compute_busy = false;
  bool stalled = false;
  Nanoseconds stall_since{};
  Nanoseconds pass_start{};
  Nanoseconds batch_start{};
  std::uint64_t current_batch = std::numeric_limits<std::uint64_t>::max();
  std::span<const ExpertUse> uses;
  const Pass* pass = nullptr;
  bool recording = false;
  Nanoseconds end_time{};  // the last pass's end (copies or CPU jobs may still run after it)

  auto run_kernel = [&](Nanoseconds d, TimelineKind kind, std::uint32_t a, std::uint32_t b) {
    compute_busy = true;
    r.compute_busy += d;
    if (recording) tl->compute(m.now(), d, kind, a, b);
    q.push(m.now() + d, {Kind::compute_done, kNone});
  };
  auto collect_unmet = [&] {
    unmet.clear();
    for (std::uint32_t i : remaining) {
      const ExpertId id{static_cast<std::uint16_t>(layer), uses[i].expert};
      if (m.residency(id) == Residency::absent) unmet.push_back(id);
    }
  };
  auto check = [&] {
    if (opt.check_invariants) m.check_invariants();
  };

  // Advances the compute stream while it can; returns when a kernel runs, it stalls, or the run ends.
  auto advance = [&] {
    for (;;) {
      switch (stage) {
        case Stage::pass_begin: {
          pass = &w.pass(p);
          pass_start = m.now();
          if (pass->batch_index != current_batch) {
            current_batch = pass->batch_index;
            batch_start = m.now();
          }
          recording = tl != nullptr && p < opt.timeline_passes;
          m.set_timeline(recording ? tl : nullptr);
          PassInfo info{p, pass->phase, pass->tokens, pass->member_count, pass->draft_len, cost.draft_time(*pass)};
          pol.on_pass_begin(m, info);
          layer = 0;
          stage = Stage::dense;
          if (info.draft_time.count() > 0) {
            run_kernel(info.draft_time, TimelineKind::draft, pass->draft_len, 0);
            return;
          }
          break;
        }
        case Stage::dense:
          stage = Stage::gate;
          run_kernel(cost.dense_time(layer, *pass), TimelineKind::dense, layer, 0);
          return;
        case Stage::gate: {
          uses = w.uses(p, layer);
          needed.clear();
          remaining.clear();
          LayerMetrics& lm = r.layers[layer];
          for (std::uint32_t i = 0; i < uses.size(); ++i) {
            const ExpertId id{static_cast<std::uint16_t>(layer), uses[i].expert};
            needed.push_back(id);
            remaining.push_back(i);
            auto& s = m.slot(m.flat(id));
            ++lm.uses;
            switch (s.state) {
              case Residency::resident:
                if (!s.used_since_copy && s.prefetched) ++lm.prefetch_hits; else ++lm.cache_hits;
                break;
              case Residency::queued:
              case Residency::copying:
                if (s.prefetched) ++lm.late; else ++lm.misses;
                break;
              case Residency::absent: ++lm.misses; break;
            }
          }
          // Every needed expert is pinned from the gate until its FFN ran, whether it is
          // resident yet or not (an expert appears once per layer).
          for (ExpertId id : needed) m.slot(m.flat(id)).pins = 1;
          pol.on_gate(m, layer, std::span<const ExpertId>(needed));
          stage = Stage::experts;
          check();
          [[fallthrough]];
        }
        case Stage::experts: {
          // Reordered inference: the first resident expert still to run.
          std::size_t pick = remaining.size();
          for (std::size_t i = 0; i < remaining.size(); ++i) {
            const ExpertId id{static_cast<std::uint16_t>(layer), uses[remaining[i]].expert};
            if (m.residency(id) == Residency::resident) {
              pick = i;
              break;
            }
          }
          if (pick < remaining.size()) {
            if (stalled) {
              stalled = false;
              const Nanoseconds d = m.now() - stall_since;
              r.layers[layer].stall += d;
              r.stall += d;
              if (pass->phase != StepPhase::prefill) r.decode_stall += d;
              if (recording) tl->stall(stall_since, d, layer);
            }
            const std::uint32_t use = remaining[pick];
            remaining.erase(remaining.begin() + static_cast<std::ptrdiff_t>(pick));
            const ExpertId id{static_cast<std::uint16_t>(layer), uses[use].expert};
            running = m.flat(id);
            run_kernel(cost.expert_time(uses[use].tokens), TimelineKind::expert, layer, id.expert);
            return;
          }
          if (!remaining.empty()) {
            if (!stalled) {
              stalled = true;
              stall_since = m.now();
            }
            return;
          }
          pol.on_layer_done(m, layer);
          if (++layer < L) {
            stage = Stage::dense;
          } else {
            stage = Stage::head;
          }
          break;
        }
        case Stage::head:
          stage = Stage::pass_end;
          run_kernel(cost.head_time(*pass), TimelineKind::head, 0, 0);
          return;
        case Stage::pass_end: {
          const Nanoseconds d = m.now() - pass_start;
          ++r.passes;
          const double ms = to_ms(d);
          if (pass->phase == StepPhase::prefill) {
            r.prefill_time += d;
            const double since = to_ms(m.now() - batch_start);
            for (const PassMember& mem : w.members(*pass)) first_token_ms[mem.request] = since;
          } else {
            r.decode_time += d;
            ++r.decode_passes;
            for (const PassMember& mem : w.members(*pass)) {
              if (mem.emitted == 0) continue;
              tpot.emplace_back(ms / mem.emitted, mem.emitted);
              r.decode_tokens += mem.emitted;
            }
          }
          if (++p < w.pass_count()) {
            stage = Stage::pass_begin;
          } else {
            stage = Stage::done;
            end_time = m.now();
            return;
          }
          break;
        }
        case Stage::done: return;
      }
    }
  };

  advance();
  while (!q.empty()) {
    const auto ev = q.pop();
    if (ev.payload.kind == Kind::chunk_done) {
      const std::uint32_t landed = m.finish_chunk(ev.payload.expert);
      if (landed != kNone) pol.on_copy_done(m, ExpertId::from_flat(landed, shape.experts));
    } else if (ev.payload.kind == Kind::cpu_done) {
      if constexpr (CpuPolicy<P, SimMachine>) {
        pol.on_cpu_done(m, ev.payload.expert);
      } else {
        throw InvariantError("a CPU job ended, but policy '" + std::string(P::name()) + "' takes no CPU results");
      }
    } else {
      compute_busy = false;
      if (running != kNone) {
        auto& s = m.slot(running);
        if (opt.check_invariants && s.state != Residency::resident) {
          throw InvariantError("computed " + expert_text(ExpertId::from_flat(running, shape.experts)) +
                               " while it was not resident");
        }
        if (s.prefetched && !s.used_since_copy) ++r.prefetch_used;
        s.used_since_copy = true;
        s.pins = 0;
        const std::uint32_t done = running;
        running = kNone;
        pol.on_expert_done(m, ExpertId::from_flat(done, shape.experts));
      }
    }
    if (stage == Stage::experts) {
      collect_unmet();
      if (!unmet.empty()) pol.on_gate(m, layer, std::span<const ExpertId>(unmet));
    }
    if (!compute_busy) advance();
    check();
    if (q.empty() && stage != Stage::done) {
      collect_unmet();
      throw PolicyError("policy '" + std::string(P::name()) + "' left " + std::to_string(unmet.size()) +
                        " needed expert(s) of layer " + std::to_string(layer) + " of pass " + std::to_string(p) +
                        " absent (first: " + (unmet.empty() ? std::string("?") : expert_text(unmet.front())) +
                        ") with nothing in flight");
    }
  }

  // Totals.
  r.total_time = end_time;
  r.peak_expert_memory = cost.expert_bytes() * m.peak_slots();
  for (const auto& lm : r.layers) {
    r.uses += lm.uses;
    r.cache_hits += lm.cache_hits;
    r.prefetch_hits += lm.prefetch_hits;
    r.late += lm.late;
    r.misses += lm.misses;
  }
  r.link_busy_share = r.total_time.count() == 0 ? 0.0
                                               : static_cast<double>(r.link_busy.count()) /
                                                     static_cast<double>(r.total_time.count());
  r.tokens_per_s = r.decode_time.count() == 0 ? 0.0
                                              : static_cast<double>(r.decode_tokens) /
                                                    (static_cast<double>(r.decode_time.count()) * 1e-9);
  for (const auto& [req, ms] : first_token_ms) {
    (void)req;
    ttft.emplace_back(ms, 1U);
  }
  r.tpot_ms = engine_detail::summarize(tpot);
  r.ttft_ms = engine_detail::summarize(ttft);
  if (opt.check_invariants && r.bytes_copied.count != r.experts_copied * cost.expert_bytes().count) {
    throw InvariantError("bytes copied (" + std::to_string(r.bytes_copied.count) + ") differ from the bytes of the " +
                         std::to_string(r.experts_copied) + " experts that landed");
  }
  return r;
}

}  // namespace moesched::sim
