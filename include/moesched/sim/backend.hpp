#pragma once
/// SimBackend: the discrete-event simulator as a backend of the layer driver (virtual time).
///
///   moesched::sim::CostModel cost(model, gpu);
///   moesched::sim::SimBackend backend(cost, workload.shape(), {.slots = 40, .cpu_workers = 1});
///   moesched::runtime::LayerDriver driver(workload, backend);
///   driver.run(policy);            // or sim::replay (moesched/sim/replay.hpp), which does both
///
/// What it simulates (ARCHITECTURE.md, "Simulator", has the picture):
/// - One compute stream runs kernels in submission order, each for the cost model's time: a draft
///   step, a layer's dense part, an expert's FFN over its tokens, the LM head, and predictor jobs
///   placed on the stream (JobResource::gpu_stream) for their `cost`.
/// - One host-to-device link moves one chunk at a time (two streams do not beat one: the link is
///   the limit), high-priority copies first; a low copy in transit yields after its current chunk,
///   so a high copy waits for at most one chunk.
/// - CPU workers run predictor jobs (JobResource::cpu_worker), first come first served, each for
///   its `cost`; `predict` runs when the charged time has passed, and its result is the job's.
/// - The executor's host time (CostModel::host(), zero unless a measured profile or FixedCosts
///   sets it): each submit_compute occupies the driver's thread for the order's submit time (one
///   after another), its kernels start no earlier than the submission's begin plus the launch
///   delay and end no earlier than the submission's end plus that delay, and every completion
///   reaches the driver `notify` after it happened (the stream and the link go on at once; only
///   the driver learns late); the driver's thread then works `handle` on each completion it
///   receives (its bookkeeping and the policy's hooks) before it can submit a kernel again; a copy
///   submitted while the link is idle starts `copy_launch` after its submission (the copy thread's
///   wake-up and its first copy call; a copy queued behind another starts when that one ends).
///   At batch 1 this is what separates a launch-bound GPU run from its kernels' device time.
/// - Kernels beside copies (CostModel::compute_slowdown_under_copy() = s, 1 unless a measured
///   profile or FixedCosts sets it): a kernel that starts while the link has copies runs s times
///   slower for as long as the copies already on or queued for the link last, then at full speed.
///   Copies submitted after the kernel started do not change its end (the stream commits a
///   kernel's end when it starts).
/// - Slot memory is virtual: slot s lives at address s x expert bytes; nothing is allocated
///   (requirements() is zero), and a copy into a slot always follows its last reader (the driver
///   unpins a slot only after its kernel's completion).
/// Time is integer nanoseconds; events are ordered by (time, sequence), so a run is bit-for-bit
/// deterministic.

#include "moesched/core/config.hpp"
#include "moesched/core/expert_id.hpp"
#include "moesched/core/units.hpp"
#include "moesched/runtime/backend.hpp"
#include "moesched/runtime/copy_queue.hpp"
#include "moesched/runtime/jobs.hpp"
#include "moesched/runtime/status.hpp"
#include "moesched/sim/cost_model.hpp"
#include "moesched/sim/event_queue.hpp"
#include "moesched/workload/workload.hpp"

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

namespace moesched::sim {

class SimBackend {
 public:
  static constexpr std::uint32_t kNone = std::numeric_limits<std::uint32_t>::max();

  struct Config {
    std::uint32_t slots = 0;        ///< expert slots (budget / expert bytes)
    std::uint32_t cpu_workers = 1;  ///< predictor threads
  };

  /// Nothing to allocate: slot memory is virtual.
  [[nodiscard]] static runtime::Requirements requirements(const CostModel&, const Config&) noexcept { return {}; }

  SimBackend(const CostModel& cost, RoutingShape shape, const Config& cfg)
      : cost_(&cost),
        shape_(shape),
        slots_(cfg.slots),
        expert_bytes_(cost.expert_bytes()),
        chunk_bytes_(cost.chunk_bytes()),
        chunk_times_(cost.chunk_times()),
        host_(cost.host()),
        host_on_(cost.host().any()),
        slow_(cost.compute_slowdown_under_copy()) {
    for (Nanoseconds t : chunk_times_) copy_total_ += t;
    copies_.resize(std::size_t{shape.layers} * shape.experts);
    dense_cache_.assign(shape.layers, Nanoseconds{-1});
    waiting_ = runtime::CopyQueue(shape.layers * shape.experts);
    cpu_free_.assign(cfg.cpu_workers, Nanoseconds{0});
    queue_.reserve(64);
  }
  SimBackend(CostModel&&, RoutingShape, const Config&) = delete;  // keeps a pointer: no temporaries

  // ---- Backend ----
  [[nodiscard]] Nanoseconds now() const noexcept { return queue_.now(); }
  [[nodiscard]] std::uint32_t layers() const noexcept { return shape_.layers; }
  [[nodiscard]] std::uint32_t experts_per_layer() const noexcept { return shape_.experts; }
  [[nodiscard]] std::uint32_t slot_count() const noexcept { return slots_; }
  [[nodiscard]] Bytes expert_bytes() const noexcept { return expert_bytes_; }
  [[nodiscard]] DeviceAddress slot_address(runtime::SlotIndex s) const noexcept {
    return {std::uint64_t{s} * expert_bytes_.count};
  }
  [[nodiscard]] std::uint32_t cpu_workers() const noexcept { return static_cast<std::uint32_t>(cpu_free_.size()); }
  [[nodiscard]] std::span<const std::byte> activation(runtime::InputSource, std::uint32_t) const noexcept { return {}; }

  MOESCHED_HOT runtime::Status submit_compute(const runtime::ComputeOrder& k) {
    Nanoseconds d{0};
    switch (k.kind) {
      case runtime::ComputeKind::draft_step: d = draft_step_time(*k.pass); break;
      case runtime::ComputeKind::dense: d = dense_time(k.layer, *k.pass); break;
      case runtime::ComputeKind::expert: d = cost_->expert_time(k.tokens); break;
      case runtime::ComputeKind::head: d = cost_->head_time(*k.pass); break;
    }
    if (host_on_) [[unlikely]] charge_submit(k.kind);
    push_stream({d, kNone});
    return runtime::Status::success();
  }

  MOESCHED_HOT runtime::Status submit_copy(const runtime::CopyOrder& c) {
    const std::uint32_t f = c.expert.flat(shape_.experts);
    Copy& s = copies_[f];
    if (s.in_flight) return runtime::Status::fail(runtime::StatusCode::not_absent, "submit_copy", c.expert);
    s.in_flight = true;
    s.priority = c.priority;
    s.chunks_done = 0;
    waiting_.push_back(f, c.priority);
    link_queued_ += copy_total_;
    if (current_ == kNone) start_next_chunk(host_.copy_launch);  // an idle link: the copy launch delay
    return runtime::Status::success();
  }
  MOESCHED_HOT bool cancel_copy(ExpertId id) {
    const std::uint32_t f = id.flat(shape_.experts);
    Copy& s = copies_[f];
    if (!s.in_flight || s.chunks_done != 0 || f == current_) return false;
    waiting_.remove(f);
    s.in_flight = false;
    link_queued_ -= copy_total_;
    return true;
  }
  void promote_copy(ExpertId id) {
    const std::uint32_t f = id.flat(shape_.experts);
    Copy& s = copies_[f];
    if (!s.in_flight || s.priority == CopyPriority::high) return;
    if (f != current_) (void)waiting_.promote(f);
    s.priority = CopyPriority::high;
  }
  [[nodiscard]] MOESCHED_HOT bool copy_started(ExpertId id) const noexcept {
    const std::uint32_t f = id.flat(shape_.experts);
    return copies_[f].in_flight && (copies_[f].chunks_done > 0 || f == current_);
  }

  runtime::Status submit_job(const runtime::PredictorJob& j) {
    if (j.cost.count() < 0) return runtime::Status::fail(runtime::StatusCode::bad_argument, "submit_job (negative cost)");
    const auto index = static_cast<std::uint32_t>(jobs_.size());
    if (!free_jobs_.empty()) {
      const std::uint32_t i = free_jobs_.back();
      free_jobs_.pop_back();
      jobs_[i] = {j, now(), Nanoseconds{0}, 0};
      return place(i, j);
    }
    jobs_.push_back({j, now(), Nanoseconds{0}, 0});
    return place(index, j);
  }

  MOESCHED_HOT bool wait(runtime::Completion& out) {
    if (queue_.empty()) return false;
    const auto ev = queue_.pop();
    if (host_on_) [[unlikely]] {
      if (host_.notify.count() > 0) {
        wait_notified(ev.payload, out);
      } else {
        deliver(ev.payload, out);
      }
      // The driver handles the completion before its next submission begins.
      host_free_ = std::max(now(), host_free_) + host_.handle;
      return true;
    }
    deliver(ev.payload, out);
    return true;
  }
  bool poll(runtime::Completion& out) {
    if (queue_.empty() || queue_.top().time > now()) return false;
    return wait(out);
  }
  runtime::Status drain() {
    while (!queue_.empty()) (void)queue_.pop();  // what was running finishes; nothing is reported
    stream_.clear();
    stream_head_ = 0;
    stream_busy_ = false;
    current_ = kNone;
    waiting_.clear();
    link_queued_ = Nanoseconds{0};
    for (Copy& c : copies_) c = Copy{};
    notified_.clear();
    notified_head_ = 0;
    windows_.clear();
    window_head_ = 0;
    return runtime::Status::success();
  }


 private:
  enum class EventKind : std::uint8_t { stream_done, chunk_done, cpu_done, notified };
  struct Payload {
    EventKind kind = EventKind::stream_done;
    std::uint32_t index = kNone;  ///< chunk_done: flat id; cpu_done: job index
  };
  struct Copy {
    bool in_flight = false;
    CopyPriority priority = CopyPriority::high;
    std::uint8_t chunks_done = 0;
  };
  struct StreamItem {
    Nanoseconds duration{};
    std::uint32_t job = kNone;  ///< a predictor job on the stream, or a driver kernel
  };
  /// With host costs, one per driver kernel (not stream jobs), in stream order.
  struct HostWindow {
    Nanoseconds ready{};    ///< earliest start: its submission's begin + the launch delay
    Nanoseconds min_end{};  ///< earliest end: its submission's end + the launch delay (its last kernel)
  };
  struct Job {
    runtime::PredictorJob job;
    Nanoseconds queued{};
    Nanoseconds start{};
    std::uint32_t worker = 0;
  };

  runtime::Status place(std::uint32_t i, const runtime::PredictorJob& j) {
    if (j.where == runtime::JobResource::gpu_stream) {
      push_stream({j.cost, i});
      return runtime::Status::success();
    }
    if (cpu_free_.empty()) {
      free_jobs_.push_back(i);
      return runtime::Status::fail(runtime::StatusCode::bad_argument, "submit_job (no CPU workers)");
    }
    const auto w = static_cast<std::size_t>(std::min_element(cpu_free_.begin(), cpu_free_.end()) - cpu_free_.begin());
    const Nanoseconds start = std::max(now(), cpu_free_[w]);
    cpu_free_[w] = start + j.cost;
    jobs_[i].start = start;
    jobs_[i].worker = static_cast<std::uint32_t>(w);
    queue_.push(start + j.cost, {EventKind::cpu_done, i});
    return runtime::Status::success();
  }

  MOESCHED_HOT void push_stream(StreamItem item) {
    if (stream_busy_) {
      stream_.push_back(item);
      return;
    }
    start_stream(item);
  }
  void start_stream(StreamItem item) {
    stream_busy_ = true;
    running_ = item;
    Nanoseconds t = now();
    Nanoseconds end = t + item.duration;
    if (host_on_ && item.job == kNone) [[unlikely]] {
      const HostWindow w = windows_[window_head_];
      if (++window_head_ == windows_.size()) {
        windows_.clear();
        window_head_ = 0;
      }
      t = std::max(t, w.ready);
      end = std::max(t + beside_copies(t, item.duration), w.min_end);
    } else if (slow_ > 1.0) [[unlikely]] {
      end = t + beside_copies(t, item.duration);
    }
    if (item.job != kNone) jobs_[item.job].start = t;
    stream_start_ = t;
    queue_.push(end, {EventKind::stream_done, kNone});
  }

  /// A kernel of `d` alone, starting at `t`: the part that overlaps the copies on or queued for
  /// the link (until chunk_end_ + link_queued_) runs slow_ times slower.
  [[nodiscard]] Nanoseconds beside_copies(Nanoseconds t, Nanoseconds d) const noexcept {
    if (slow_ <= 1.0 || current_ == kNone) return d;
    const Nanoseconds busy = chunk_end_ + link_queued_;
    if (busy <= t) return d;
    const auto overlap = static_cast<double>((busy - t).count());
    const double slowed = static_cast<double>(d.count()) * slow_;
    if (slowed <= overlap) return ceil_ns(slowed);
    return ceil_ns(overlap + static_cast<double>(d.count()) - overlap / slow_);
  }

  /// CostModel::dense_time and one draft step's time, computed once per pass (and dense twin:
  /// layers doing the same dense work): a roofline dense part is about a hundred instructions, a
  /// draft step one per layer, and every layer's dense order and every draft step ask for them.
  MOESCHED_HOT Nanoseconds dense_time(std::uint32_t layer, const Pass& p) {
    same_pass(p);
    Nanoseconds& c = dense_cache_[cost_->dense_twin(layer)];
    if (c.count() < 0) c = cost_->dense_time(layer, p);
    return c;
  }
  Nanoseconds draft_step_time(const Pass& p) {
    same_pass(p);
    if (draft_cache_.count() < 0) draft_cache_ = cost_->draft_time(p) / p.draft_len;
    return draft_cache_;
  }
  /// Forgets the cached times when `p` is not the pass they were computed for.
  MOESCHED_HOT void same_pass(const Pass& p) {
    const std::array<std::uint64_t, 5> key{p.tokens, p.kv_tokens, p.attention_pairs, p.member_count, p.draft_len};
    if (&p == dense_pass_ && key == dense_key_) [[likely]] return;
    std::fill(dense_cache_.begin(), dense_cache_.end(), Nanoseconds{-1});
    draft_cache_ = Nanoseconds{-1};
    dense_pass_ = &p;
    dense_key_ = key;
  }

  /// The driver's thread submits an order: it is busy for the kind's submit time after whatever it
  /// submitted before. The order's first kernel starts no earlier than the submission's begin plus
  /// the launch delay, and it ends no earlier than the submission's end plus the launch delay (its
  /// last kernel is launched at the end: at batch 1 kernels can be shorter than their launches).
  void charge_submit(runtime::ComputeKind kind) {
    const Nanoseconds begin = std::max(now(), host_free_);
    Nanoseconds cost{0};
    switch (kind) {
      case runtime::ComputeKind::draft_step: cost = host_.submit_draft; break;
      case runtime::ComputeKind::dense: cost = host_.submit_dense; break;
      case runtime::ComputeKind::expert: cost = host_.submit_expert; break;
      case runtime::ComputeKind::head: cost = host_.submit_head; break;
    }
    host_free_ = begin + cost;
    windows_.push_back({begin + host_.launch, host_free_ + host_.launch});
  }

  /// wait() with a notify delay: what happens at an event's time happens then (the stream and the
  /// link go on), and its completion reaches the driver `notify` later, in the order they happened.
  void wait_notified(Payload p, runtime::Completion& out) {
    for (;;) {
      if (p.kind == EventKind::notified) {
        out = notified_[notified_head_];
        if (++notified_head_ == notified_.size()) {
          notified_.clear();
          notified_head_ = 0;
        }
        return;
      }
      runtime::Completion c;
      deliver(p, c);
      notified_.push_back(c);
      queue_.push(now() + host_.notify, {EventKind::notified, kNone});
      p = queue_.pop().payload;
    }
  }

  MOESCHED_HOT void deliver(const Payload& p, runtime::Completion& out) {
    switch (p.kind) {
      case EventKind::stream_done: {
        if (running_.job != kNone) {
          finish_job(running_.job, out);
        } else {
          // Only the fields of a compute completion are set (the driver reads no others).
          out.kind = runtime::CompletionKind::compute;
          out.start = stream_start_;
          out.end = now();
        }
        stream_busy_ = false;
        if (stream_head_ < stream_.size()) {
          const StreamItem next = stream_[stream_head_];
          if (++stream_head_ == stream_.size()) {
            stream_.clear();
            stream_head_ = 0;
          }
          start_stream(next);
        }
        return;
      }
      case EventKind::chunk_done: finish_chunk(p.index, out); return;
      case EventKind::cpu_done: finish_job(p.index, out); return;
      case EventKind::notified: return;  // wait_notified() takes these
    }
  }

  void finish_job(std::uint32_t i, runtime::Completion& out) {
    Job& j = jobs_[i];
    out = runtime::Completion{};
    out.kind = runtime::CompletionKind::job;
    out.tag = j.job.tag;
    out.where = j.job.where;
    out.worker = j.worker;
    out.queued = j.queued;
    out.start = j.start;
    out.end = now();
    out.count = j.job.predict(j.job.predictor, j.job.input, j.job.out);
    free_jobs_.push_back(i);
  }

  MOESCHED_HOT void finish_chunk(std::uint32_t f, runtime::Completion& out) {
    Copy& s = copies_[f];
    const std::size_t c = s.chunks_done;
    out.kind = runtime::CompletionKind::chunk;
    out.landed = false;
    out.expert = ExpertId::from_flat(f, shape_.experts);
    out.chunk = static_cast<std::uint32_t>(c);
    out.chunks = static_cast<std::uint32_t>(chunk_bytes_.size());
    out.bytes = chunk_bytes_[c];
    out.high = s.priority == CopyPriority::high;
    out.start = now() - chunk_times_[c];
    out.end = now();
    s.chunks_done = static_cast<std::uint8_t>(c + 1);
    if (s.chunks_done == chunk_bytes_.size()) {
      out.landed = true;
      s.in_flight = false;
      current_ = kNone;
    } else if (s.priority == CopyPriority::low && waiting_.high_waiting()) {
      // A high copy waits for at most one chunk of a low one.
      waiting_.push_front(f, CopyPriority::low);
      current_ = kNone;
    }
    start_next_chunk();
  }

  /// Puts the next chunk on the link, `launch` from now (an idle link's copy launch delay; 0 when
  /// the copy engine's window already holds it: a chunk behind another or a copy behind a copy).
  MOESCHED_HOT void start_next_chunk(Nanoseconds launch = Nanoseconds{0}) {
    if (current_ == kNone) {
      current_ = waiting_.pop();
      if (current_ == kNone) return;
    }
    const Nanoseconds c = chunk_times_[copies_[current_].chunks_done];
    link_queued_ -= c;
    chunk_end_ = now() + launch + c;
    queue_.push(chunk_end_, {EventKind::chunk_done, current_});
  }
  const CostModel* cost_;
  RoutingShape shape_;
  std::uint32_t slots_;
  Bytes expert_bytes_;
  std::span<const Bytes> chunk_bytes_;
  std::span<const Nanoseconds> chunk_times_;
  std::vector<Copy> copies_;
  runtime::CopyQueue waiting_;     // copies waiting for the link
  std::uint32_t current_ = kNone;  // the copy on the link
  StreamItem running_{};               // on the stream now (when stream_busy_)
  std::vector<StreamItem> stream_;     // waiting behind it, from stream_head_
  std::size_t stream_head_ = 0;
  bool stream_busy_ = false;
  Nanoseconds stream_start_{};
  std::vector<Job> jobs_;
  std::vector<std::uint32_t> free_jobs_;
  std::vector<Nanoseconds> cpu_free_;  // per worker: when it is free
  HostTimes host_;
  bool host_on_ = false;
  double slow_ = 1.0;                        // kernel time beside copies / alone (CostModel)
  Nanoseconds copy_total_{0};                // link time of one whole expert copy (all chunks)
  Nanoseconds chunk_end_{0};                 // when the chunk on the link (current_) ends
  Nanoseconds link_queued_{0};               // link time of the chunks not started: current_'s rest and waiting_
  Nanoseconds host_free_{0};                 // the driver's thread is busy (submitting, handling) until then
  const Pass* dense_pass_ = nullptr;          // the pass dense_cache_ holds, with its key fields
  std::array<std::uint64_t, 5> dense_key_{};
  std::vector<Nanoseconds> dense_cache_;     // per dense twin (CostModel::dense_twin); -1: not computed yet
  Nanoseconds draft_cache_{-1};              // one draft step; -1: not computed yet
  std::vector<HostWindow> windows_;          // of the driver kernels submitted and not started, from window_head_
  std::size_t window_head_ = 0;
  std::vector<runtime::Completion> notified_;// happened, not yet received by the driver, from notified_head_
  std::size_t notified_head_ = 0;
  EventQueue<Payload> queue_;
};

static_assert(runtime::Backend<SimBackend>);

}  // namespace moesched::sim
