#pragma once
/// Machine<Backend>: the Executor a policy drives, written once over any backend.
///
///   moesched::sim::SimBackend backend(cost, shape, {.slots = 40});
///   moesched::runtime::Machine machine(backend);       // what the layer driver hands a policy
///   (void)machine.copy({3, 5}, moesched::CopyPriority::low);
///   machine.residency({3, 5});                          // queued, until the driver takes the landing
///
/// It keeps the expert memory's books: which slot each expert holds, its residency, the pins of the
/// running layer, the free-slot list, whether a copy was a prefetch and whether it was used since,
/// and the counters the metrics need (prefetch copies, evictions, cancellations, wasted bytes).
/// The backend only moves bytes into slots and runs work. Residency changes only on the driver's
/// thread: a copy is resident once the driver has taken its last chunk's completion (land()).
///
/// Predictor jobs (moesched/runtime/jobs.hpp) are held here until the pass reaches their ready
/// point (the driver calls reach()), then handed to the backend in submission order.
///
/// Contract violations (copy of a non-absent expert, evict of a pinned one, ...) return a Status and
/// are also recorded as the machine's fault(): the driver ends the run with it.

#include "moesched/core/config.hpp"
#include "moesched/core/expert_id.hpp"
#include "moesched/core/units.hpp"
#include "moesched/runtime/backend.hpp"
#include "moesched/runtime/executor.hpp"
#include "moesched/runtime/jobs.hpp"
#include "moesched/runtime/status.hpp"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

namespace moesched::runtime {

/// Counters the machine keeps for the run's metrics.
struct MachineCounters {
  std::uint64_t prefetch_copies = 0;  ///< low-priority copies submitted (and not cancelled)
  std::uint64_t evictions = 0;
  std::uint64_t cancelled = 0;
  Bytes wasted_bytes{};               ///< bytes of copies evicted before any use
  std::uint32_t peak_slots = 0;
};

template <Backend B>
class Machine {
 public:
  static constexpr std::uint32_t kNoSlot = std::numeric_limits<std::uint32_t>::max();

  /// Book-keeping of one expert.
  struct ExpertState {
    Residency state = Residency::absent;  ///< absent, queued (in flight: copying if the backend moved bytes) or resident
    CopyPriority priority = CopyPriority::high;
    bool prefetched = false;       ///< brought by a low-priority copy
    bool used_since_copy = false;  ///< its FFN ran since it landed
    std::uint8_t pins = 0;         ///< the running layer needs it
    SlotIndex slot = kNoSlot;
  };

  explicit Machine(B& backend)
      : b_(&backend),
        layers_(backend.layers()),
        per_(backend.experts_per_layer()),
        expert_bytes_(backend.expert_bytes()),
        capacity_(std::min<std::uint32_t>(backend.slot_count(), backend.layers() * backend.experts_per_layer())) {
    st_.resize(std::size_t{layers_} * per_);
    free_.reserve(capacity_);
    for (std::uint32_t s = capacity_; s-- > 0;) free_.push_back(s);  // slot 0 first
    begin_pass(0);
  }
  Machine(B&& backend) = delete;  // keeps a pointer: no temporaries

  // ---- Executor ----
  [[nodiscard]] Nanoseconds now() const { return b_->now(); }
  [[nodiscard]] std::uint32_t layers() const noexcept { return layers_; }
  [[nodiscard]] std::uint32_t experts_per_layer() const noexcept { return per_; }
  [[nodiscard]] std::uint32_t capacity_slots() const noexcept { return capacity_; }
  [[nodiscard]] MOESCHED_HOT std::uint32_t free_slots() const noexcept { return static_cast<std::uint32_t>(free_.size()); }
  [[nodiscard]] MOESCHED_HOT Residency residency(ExpertId id) const {
    const ExpertState& s = st_[id.flat(per_)];
    if (s.state != Residency::queued) return s.state;
    return b_->copy_started(id) ? Residency::copying : Residency::queued;
  }
  [[nodiscard]] MOESCHED_HOT bool evictable(ExpertId id) const noexcept {
    const ExpertState& s = st_[id.flat(per_)];
    return s.state == Residency::resident && s.pins == 0;
  }
  [[nodiscard]] DeviceAddress address(ExpertId id) const {
    const ExpertState& s = st_[id.flat(per_)];
    return s.slot == kNoSlot ? DeviceAddress{} : b_->slot_address(s.slot);
  }
  MOESCHED_HOT Status copy(ExpertId id, CopyPriority p) {
    if (!valid(id)) return fault(Status::fail(StatusCode::bad_argument, "copy", id));
    ExpertState& s = st_[id.flat(per_)];
    if (s.state != Residency::absent) return fault(Status::fail(StatusCode::not_absent, "copy", id));
    if (free_.empty()) return Status::fail(StatusCode::no_free_slot, "copy", id);
    const SlotIndex slot = free_.back();
    const Status r = b_->submit_copy({id, slot, p});
    if (!r) return fault(r);
    free_.pop_back();
    s.state = Residency::queued;
    s.priority = p;
    s.prefetched = p == CopyPriority::low;
    s.used_since_copy = false;
    s.slot = slot;
    if (s.prefetched) ++counters_.prefetch_copies;
    counters_.peak_slots = std::max(counters_.peak_slots, capacity_ - free_slots());
    return Status::success();
  }
  MOESCHED_HOT Status evict(ExpertId id) {
    if (!valid(id)) return fault(Status::fail(StatusCode::bad_argument, "evict", id));
    ExpertState& s = st_[id.flat(per_)];
    if (s.state != Residency::resident) return fault(Status::fail(StatusCode::not_resident, "evict", id));
    if (s.pins != 0) return fault(Status::fail(StatusCode::pinned, "evict", id));
    if (!s.used_since_copy) counters_.wasted_bytes += expert_bytes_;
    release(s);
    ++counters_.evictions;
    return Status::success();
  }
  MOESCHED_HOT bool cancel(ExpertId id) {
    if (!valid(id)) return false;
    ExpertState& s = st_[id.flat(per_)];
    if (s.state != Residency::queued || !b_->cancel_copy(id)) return false;
    if (s.prefetched) --counters_.prefetch_copies;  // never moved a byte: not a prefetch after all
    release(s);
    ++counters_.cancelled;
    return true;
  }
  MOESCHED_HOT void promote(ExpertId id) {
    if (!valid(id)) return;
    ExpertState& s = st_[id.flat(per_)];
    if (s.state != Residency::queued || s.priority == CopyPriority::high) return;
    b_->promote_copy(id);
    s.priority = CopyPriority::high;
  }

  // ---- JobExecutor ----
  [[nodiscard]] std::uint32_t cpu_workers() const { return b_->cpu_workers(); }
  /// Holds `job` until its ready point in the running pass (now, if it has passed).
  Status submit_job(const PredictorJob& job) {
    if (job.predict == nullptr) return fault(Status::fail(StatusCode::bad_argument, "submit_job (no predict function)"));
    if (job.where == JobResource::cpu_worker && b_->cpu_workers() == 0) {
      return fault(Status::fail(StatusCode::bad_argument, "submit_job (a CPU job, but the backend has no CPU workers)"));
    }
    if (job.input.layer >= layers_ ||
        (job.ready.kind == ReadyPoint::Kind::after_layer && job.ready.index >= layers_)) {
      return fault(Status::fail(StatusCode::bad_argument, "submit_job (layer out of range)"));
    }
    const std::uint32_t point = ordinal(job.ready);
    if (point <= reached_ && reached_ != kNotStarted) return release(job);
    pending_[point].push_back(job);
    ++pending_count_;
    return Status::success();
  }

  // ---- for the layer driver ----
  [[nodiscard]] MOESCHED_HOT ExpertState& state(std::uint32_t flat) noexcept { return st_[flat]; }
  [[nodiscard]] MOESCHED_HOT const ExpertState& state(std::uint32_t flat) const noexcept { return st_[flat]; }
  [[nodiscard]] B& backend() noexcept { return *b_; }
  [[nodiscard]] const MachineCounters& counters() const noexcept { return counters_; }
  [[nodiscard]] std::uint32_t used_slots() const noexcept { return capacity_ - free_slots(); }
  /// The first contract violation of the run (ok when none).
  [[nodiscard]] const Status& fault() const noexcept { return fault_; }
  /// The copy of flat id `f` landed: the expert is resident.
  void land(std::uint32_t f) noexcept { st_[f].state = Residency::resident; }
  /// A new pass with `draft_len` draft steps begins; no ready point is reached yet.
  void begin_pass(std::uint32_t draft_len) {
    draft_len_ = draft_len;
    reached_ = kNotStarted;
    pending_.resize(std::size_t{draft_len} + layers_ + 1);
    for (auto& q : pending_) q.clear();
    pending_count_ = 0;
  }
  /// The pass reached `point`: jobs waiting for it (or an earlier one) go to the backend.
  MOESCHED_HOT Status reach(ReadyPoint point) {
    const std::uint32_t to = ordinal(point);
    const std::uint32_t from = reached_ == kNotStarted ? 0 : reached_ + 1;
    reached_ = to;
    if (pending_count_ == 0) return Status::success();
    return release_pending(from, to);
  }

 private:
  Status release_pending(std::uint32_t from, std::uint32_t to) {
    for (std::uint32_t i = from; i <= to; ++i) {
      for (const PredictorJob& j : pending_[i]) {
        --pending_count_;
        if (const Status s = release(j); !s) return s;
      }
      pending_[i].clear();
    }
    return Status::success();
  }

 public:
  /// Slots held (checked against the free list and the budget); ok or an invariant message.
  [[nodiscard]] const char* check_invariants() const noexcept {
    std::uint32_t held = 0;
    for (const ExpertState& s : st_) {
      if (s.state != Residency::absent) ++held;
      if ((s.state == Residency::absent) != (s.slot == kNoSlot)) return "an expert's slot disagrees with its residency";
    }
    if (held != used_slots()) return "slots in use differ from the experts holding one";
    if (used_slots() > capacity_) return "slots in use exceed the budget";
    return nullptr;
  }

 private:
  static constexpr std::uint32_t kNotStarted = std::numeric_limits<std::uint32_t>::max();

  [[nodiscard]] bool valid(ExpertId id) const noexcept { return id.layer < layers_ && id.expert < per_; }
  Status fault(Status s) noexcept {
    if (fault_.ok()) fault_ = s;
    return s;
  }
  void release(ExpertState& s) {
    free_.push_back(s.slot);
    s.slot = kNoSlot;
    s.state = Residency::absent;
  }
  [[nodiscard]] std::uint32_t ordinal(ReadyPoint p) const noexcept {
    switch (p.kind) {
      case ReadyPoint::Kind::pass_start: return 0;
      case ReadyPoint::Kind::after_draft: return std::min(p.index, draft_len_);
      case ReadyPoint::Kind::after_layer: return draft_len_ + 1 + p.index;
    }
    return 0;
  }
  Status release(const PredictorJob& job) {
    const Status s = b_->submit_job(job);
    return s ? s : fault(s);
  }

  B* b_;
  std::uint32_t layers_;
  std::uint32_t per_;
  Bytes expert_bytes_;
  std::uint32_t capacity_;
  std::vector<ExpertState> st_;
  std::vector<SlotIndex> free_;
  MachineCounters counters_;
  Status fault_{};
  std::uint32_t draft_len_ = 0;
  std::uint32_t reached_ = kNotStarted;
  std::vector<std::vector<PredictorJob>> pending_;  // per ready-point ordinal
  std::uint64_t pending_count_ = 0;
};

}  // namespace moesched::runtime
