#pragma once
/// ArchetypeExecutor: an executor with exactly what the Executor and JobExecutor concepts offer,
/// and nothing else. Every policy of the library is `static_assert`ed against it in its own
/// header and run against it in a test (tests/runtime/test_archetype.cpp), so a policy that
/// reaches past the concept (a simulator-only member, a backend's internals) does not compile.
///
///   static_assert(moesched::Policy<MyPolicy, moesched::runtime::ArchetypeExecutor>);
///   moesched::runtime::ArchetypeExecutor e(/*layers=*/2, /*experts=*/4, /*slots=*/3);
///   MyPolicy p;
///   p.on_pass_begin(e, {});
///   p.on_gate(e, 0, needed);   // the body instantiates: any member outside the concept fails here
///
/// It behaves like a machine whose copies land only when the test says so (Control::land), whose clock
/// stands still and whose jobs are kept, not run: enough to drive hooks by hand.

#include "moesched/core/config.hpp"
#include "moesched/core/expert_id.hpp"
#include "moesched/core/units.hpp"
#include "moesched/runtime/executor.hpp"
#include "moesched/runtime/jobs.hpp"
#include "moesched/runtime/status.hpp"

#include <cstdint>
#include <vector>

namespace moesched::runtime {

class ArchetypeExecutor {
 public:
  ArchetypeExecutor(std::uint32_t layers, std::uint32_t experts, std::uint32_t slots)
      : layers_(layers), per_(experts), slots_(slots), state_(std::size_t{layers} * experts, Residency::absent) {}

  [[nodiscard]] Nanoseconds now() const noexcept { return Nanoseconds{0}; }
  [[nodiscard]] std::uint32_t layers() const noexcept { return layers_; }
  [[nodiscard]] std::uint32_t experts_per_layer() const noexcept { return per_; }
  [[nodiscard]] std::uint32_t capacity_slots() const noexcept { return slots_; }
  [[nodiscard]] std::uint32_t free_slots() const noexcept { return slots_ - used_; }
  [[nodiscard]] Residency residency(ExpertId id) const noexcept { return state_[id.flat(per_)]; }
  [[nodiscard]] bool evictable(ExpertId id) const noexcept { return state_[id.flat(per_)] == Residency::resident; }
  [[nodiscard]] DeviceAddress address(ExpertId id) const noexcept { return {id.flat(per_)}; }
  Status copy(ExpertId id, CopyPriority) {
    if (state_[id.flat(per_)] != Residency::absent) return Status::fail(StatusCode::not_absent, "copy", id);
    if (used_ == slots_) return Status::fail(StatusCode::no_free_slot, "copy", id);
    state_[id.flat(per_)] = Residency::queued;
    ++used_;
    ++copies_;
    queued_.push_back(id);
    return Status::success();
  }
  Status evict(ExpertId id) {
    if (state_[id.flat(per_)] != Residency::resident) return Status::fail(StatusCode::not_resident, "evict", id);
    state_[id.flat(per_)] = Residency::absent;
    --used_;
    return Status::success();
  }
  bool cancel(ExpertId id) {
    if (state_[id.flat(per_)] != Residency::queued) return false;
    state_[id.flat(per_)] = Residency::absent;
    --used_;
    return true;
  }
  void promote(ExpertId) noexcept {}
  [[nodiscard]] std::uint32_t cpu_workers() const noexcept { return 1; }
  Status submit_job(const PredictorJob& job) {
    jobs_.push_back(job);
    return Status::success();
  }

  /// What a test driving it may do beyond the concepts (a separate type, so that a policy's
  /// generic `e.member` can never reach it).
  struct Control {
    /// A queued copy lands.
    static void land(ArchetypeExecutor& e, ExpertId id) { e.state_[id.flat(e.per_)] = Residency::resident; }
    [[nodiscard]] static std::uint64_t copies(const ArchetypeExecutor& e) noexcept { return e.copies_; }
    [[nodiscard]] static std::vector<PredictorJob>& jobs(ArchetypeExecutor& e) noexcept { return e.jobs_; }
    /// Every copy still queued lands, in submission order, each followed by `done(id)` (which may
    /// queue more: those land too).
    template <class Done>
    static void land_all(ArchetypeExecutor& e, Done&& done) {
      for (std::size_t i = 0; i < e.queued_.size(); ++i) {
        const ExpertId id = e.queued_[i];
        if (e.state_[id.flat(e.per_)] != Residency::queued) continue;  // cancelled (or cancelled and queued again)
        e.state_[id.flat(e.per_)] = Residency::resident;
        done(id);
      }
      e.queued_.clear();
    }
  };

 private:
  std::uint32_t layers_;
  std::uint32_t per_;
  std::uint32_t slots_;
  std::uint32_t used_ = 0;
  std::uint64_t copies_ = 0;
  std::vector<Residency> state_;
  std::vector<PredictorJob> jobs_;
  std::vector<ExpertId> queued_;  // copies in submission order (Control::land_all)
};

static_assert(JobExecutor<ArchetypeExecutor>);

}  // namespace moesched::runtime
