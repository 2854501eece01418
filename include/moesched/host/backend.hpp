#pragma once
/// HostBackend: a real-time backend of the layer driver made of host threads and host buffers:
/// real copies (memcpy, chunked, high priority first, an optional rate limit that mimics a PCIe
/// link), a compute thread that runs the kernels in order, and CPU worker threads that run the
/// predictors. It exercises the threading rule and the lifecycle without a GPU, and it checks
/// every expert kernel against the data: a kernel that reads a slot holding the wrong bytes (an
/// expert computed while not resident, a slot overwritten while read) is counted in
/// verify_failures().
///
///   moesched::host::HostBackend::Config cfg{.layers = 4, .experts = 8, .expert_bytes = Bytes{4096},
///                                          .slots = 12, .chunks = 3, .link_gbps = 2.0};
///   const auto req = moesched::host::HostBackend::requirements(cfg);
///   std::vector<std::byte> device(req.device_bytes), store(req.host_bytes);   // caller-owned
///   moesched::host::fill_expert_store(store, cfg);
///   moesched::host::HostBackend backend(cfg, device, store);
///   if (auto s = backend.initialize(); !s) ...;             // starts the threads
///   moesched::runtime::LayerDriver driver(workload, backend);
///   driver.run(policy);                                      // drain() runs at the end of run()
///   backend.shutdown();                                      // joins (the destructor does too)
///
/// Threads: one copy thread (the link: one chunk at a time; a low copy yields to a queued high
/// one at a chunk boundary; a copy into a slot waits until every kernel submitted before it that
/// reads the slot has finished: stream order), one compute thread (kernels and predictor jobs
/// placed on the stream, in submission order; each spins for `kernel_time` of its order when one
/// is given), `cpu_workers` job threads. They report through a CompletionQueue that the driver
/// drains in wait()/poll(); no thread but the driver's calls policy code. All times are
/// std::chrono::steady_clock nanoseconds since the backend was constructed.
///
/// It has no activations: activation() is empty, and predictors see a null state.

#include "moesched/core/config.hpp"
#include "moesched/core/expert_id.hpp"
#include "moesched/core/units.hpp"
#include "moesched/runtime/backend.hpp"
#include "moesched/runtime/completion_queue.hpp"
#include "moesched/runtime/copy_queue.hpp"
#include "moesched/runtime/job_workers.hpp"
#include "moesched/runtime/jobs.hpp"
#include "moesched/runtime/status.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <limits>
#include <mutex>
#include <span>
#include <system_error>
#include <thread>
#include <vector>

namespace moesched::host {

/// How long a kernel takes: called on the compute thread, must not touch policy state.
using KernelTimeFn = Nanoseconds (*)(const void* context, const runtime::ComputeOrder& order) noexcept;

class HostBackend;

/// Fills `store` with every expert's weights: a distinct byte pattern per expert (what the
/// expert kernels check their slots against). Sized by HostBackend::requirements().host_bytes.
template <class Config>
void fill_expert_store(std::span<std::byte> store, const Config& cfg) {
  const std::size_t e = cfg.expert_bytes.count;
  const std::size_t n = std::size_t{cfg.layers} * cfg.experts;
  for (std::size_t f = 0; f < n && (f + 1) * e <= store.size(); ++f) {
    for (std::size_t i = 0; i < e; ++i) store[f * e + i] = static_cast<std::byte>((f * 131 + i * 7 + (i >> 8)) & 0xFFU);
  }
}

class HostBackend {
 public:
  static constexpr std::uint32_t kNone = std::numeric_limits<std::uint32_t>::max();

  struct Config {
    std::uint32_t layers = 0;       ///< MoE layers
    std::uint32_t experts = 0;      ///< routed experts per layer
    Bytes expert_bytes{};           ///< one expert's weights
    std::uint32_t slots = 0;        ///< expert slots in device memory
    std::uint32_t chunks = 1;       ///< copies per expert (equal parts), 1..64
    double link_gbps = 0.0;         ///< rate limit of the link in GB/s; 0 = as fast as memcpy
    std::uint32_t cpu_workers = 1;  ///< predictor threads
    KernelTimeFn kernel_time = nullptr;     ///< each kernel's duration (spun); null = no wait
    const void* kernel_time_context = nullptr;
  };

  /// Memory the caller allocates: the slots ("device" memory) and the host copy of every expert.
  [[nodiscard]] static runtime::Requirements requirements(const Config& c) noexcept {
    runtime::Requirements r;
    r.device_bytes = std::size_t{c.slots} * c.expert_bytes.count;
    r.host_bytes = std::size_t{c.layers} * c.experts * c.expert_bytes.count;
    return r;
  }

  /// Keeps the spans (caller-owned); nothing runs until initialize().
  HostBackend(const Config& cfg, std::span<std::byte> device, std::span<const std::byte> host_store)
      : cfg_(cfg), device_(device), store_(host_store), epoch_(std::chrono::steady_clock::now()) {}
  HostBackend(const HostBackend&) = delete;
  HostBackend& operator=(const HostBackend&) = delete;
  ~HostBackend() { (void)shutdown(); }

  /// Checks the configuration and the memory, starts the threads.
  runtime::Status initialize() {
    using runtime::Status;
    using runtime::StatusCode;
    if (running_) return Status::fail(StatusCode::bad_argument, "HostBackend::initialize (already initialised)");
    const auto req = requirements(cfg_);
    if (cfg_.layers == 0 || cfg_.experts == 0 || cfg_.expert_bytes.count == 0 || cfg_.slots == 0) {
      return Status::fail(StatusCode::bad_argument, "HostBackend::initialize (layers, experts, expert_bytes and slots must be positive)");
    }
    if (cfg_.chunks < 1 || cfg_.chunks > 64 || cfg_.chunks > cfg_.expert_bytes.count) {
      return Status::fail(StatusCode::bad_argument, "HostBackend::initialize (chunks must be 1..64 and at most expert_bytes)");
    }
    if (!(cfg_.link_gbps >= 0.0)) return Status::fail(StatusCode::bad_argument, "HostBackend::initialize (link_gbps < 0)");
    if (device_.size() < req.device_bytes) {
      return Status::fail(StatusCode::bad_argument, "HostBackend::initialize (device memory below requirements().device_bytes)");
    }
    if (store_.size() < req.host_bytes) {
      return Status::fail(StatusCode::bad_argument, "HostBackend::initialize (host store below requirements().host_bytes)");
    }
    copies_.assign(std::size_t{cfg_.layers} * cfg_.experts, Copy{});
    waiting_ = runtime::CopyQueue(cfg_.layers * cfg_.experts);
    readers_submitted_.assign(cfg_.slots, 0);
    readers_done_.assign(cfg_.slots, 0);
    const std::uint64_t e = cfg_.expert_bytes.count;
    for (std::uint32_t c = 0; c < cfg_.chunks; ++c) chunk_offset_.push_back(e * c / cfg_.chunks);
    chunk_offset_.push_back(e);
    stop_ = false;
    try {
      threads_.emplace_back([this] { copy_loop(); });
      threads_.emplace_back([this] { compute_loop(); });
    } catch (const std::system_error&) {
      (void)shutdown();
      return Status::backend("std::thread", "could not start a thread");
    }
    if (const Status w = workers_.start(cfg_.cpu_workers, done_, epoch_); !w) {
      (void)shutdown();
      return w;
    }
    running_ = true;
    return Status::success();
  }

  /// Stops and joins every thread; what was queued is dropped. Idempotent.
  runtime::Status shutdown() noexcept {
    {
      std::lock_guard<std::mutex> lock(m_);
      stop_ = true;
    }
    copy_cv_.notify_all();
    compute_cv_.notify_all();
    idle_cv_.notify_all();
    workers_.stop();
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
    threads_.clear();
    running_ = false;
    return runtime::Status::success();
  }

  // ---- Backend ----
  [[nodiscard]] Nanoseconds now() const noexcept {
    return std::chrono::duration_cast<Nanoseconds>(std::chrono::steady_clock::now() - epoch_);
  }
  [[nodiscard]] std::uint32_t layers() const noexcept { return cfg_.layers; }
  [[nodiscard]] std::uint32_t experts_per_layer() const noexcept { return cfg_.experts; }
  [[nodiscard]] std::uint32_t slot_count() const noexcept { return cfg_.slots; }
  [[nodiscard]] Bytes expert_bytes() const noexcept { return cfg_.expert_bytes; }
  [[nodiscard]] DeviceAddress slot_address(runtime::SlotIndex s) const noexcept {
    return {reinterpret_cast<std::uintptr_t>(device_.data()) + std::uint64_t{s} * cfg_.expert_bytes.count};
  }
  [[nodiscard]] std::uint32_t cpu_workers() const noexcept { return cfg_.cpu_workers; }
  [[nodiscard]] std::span<const std::byte> activation(runtime::InputSource, std::uint32_t) const noexcept { return {}; }

  runtime::Status submit_compute(const runtime::ComputeOrder& k) {
    if (!running_) return runtime::Status::fail(runtime::StatusCode::shut_down, "submit_compute");
    if (k.kind == runtime::ComputeKind::expert && (k.slot >= cfg_.slots || !valid(k.expert))) {
      return runtime::Status::fail(runtime::StatusCode::bad_argument, "submit_compute", k.expert);
    }
    {
      std::lock_guard<std::mutex> lock(m_);
      if (k.kind == runtime::ComputeKind::expert) ++readers_submitted_[k.slot];
      stream_.push_back({k, {}, false, now()});
    }
    ++outstanding_;
    compute_cv_.notify_one();
    return runtime::Status::success();
  }

  runtime::Status submit_copy(const runtime::CopyOrder& c) {
    if (!running_) return runtime::Status::fail(runtime::StatusCode::shut_down, "submit_copy");
    if (c.slot >= cfg_.slots || !valid(c.expert)) {
      return runtime::Status::fail(runtime::StatusCode::bad_argument, "submit_copy", c.expert);
    }
    const std::uint32_t f = c.expert.flat(cfg_.experts);
    {
      std::lock_guard<std::mutex> lock(m_);
      Copy& s = copies_[f];
      if (s.in_flight) return runtime::Status::fail(runtime::StatusCode::not_absent, "submit_copy", c.expert);
      s = Copy{true, false, c.priority, 0, c.slot, readers_submitted_[c.slot]};
      waiting_.push_back(f, c.priority);
    }
    ++outstanding_;
    copy_cv_.notify_one();
    return runtime::Status::success();
  }
  bool cancel_copy(ExpertId id) {
    if (!valid(id)) return false;
    const std::uint32_t f = id.flat(cfg_.experts);
    std::lock_guard<std::mutex> lock(m_);
    Copy& s = copies_[f];
    if (!s.in_flight || s.started || f == current_) return false;
    waiting_.remove(f);
    s.in_flight = false;
    --outstanding_;
    return true;
  }
  void promote_copy(ExpertId id) {
    if (!valid(id)) return;
    const std::uint32_t f = id.flat(cfg_.experts);
    std::lock_guard<std::mutex> lock(m_);
    Copy& s = copies_[f];
    if (!s.in_flight || s.priority == CopyPriority::high) return;
    if (f != current_) (void)waiting_.promote(f);
    s.priority = CopyPriority::high;
  }
  [[nodiscard]] bool copy_started(ExpertId id) const {
    if (!valid(id)) return false;
    std::lock_guard<std::mutex> lock(m_);
    const Copy& s = copies_[id.flat(cfg_.experts)];
    return s.in_flight && s.started;
  }

  runtime::Status submit_job(const runtime::PredictorJob& j) {
    if (!running_) return runtime::Status::fail(runtime::StatusCode::shut_down, "submit_job");
    if (j.predict == nullptr) return runtime::Status::fail(runtime::StatusCode::bad_argument, "submit_job (no predict function)");
    if (j.where == runtime::JobResource::cpu_worker && cfg_.cpu_workers == 0) {
      return runtime::Status::fail(runtime::StatusCode::bad_argument, "submit_job (no CPU workers)");
    }
    ++outstanding_;
    if (j.where == runtime::JobResource::cpu_worker) {
      workers_.submit(j, now());
      return runtime::Status::success();
    }
    {
      std::lock_guard<std::mutex> lock(m_);
      stream_.push_back({{}, j, true, now()});
    }
    compute_cv_.notify_one();
    return runtime::Status::success();
  }

  bool wait(runtime::Completion& out) {
    if (outstanding_ == 0) return false;
    if (!done_.pop_wait(out)) return false;
    account(out);
    return true;
  }
  bool poll(runtime::Completion& out) {
    if (outstanding_ == 0 || !done_.try_pop(out)) return false;
    account(out);
    return true;
  }
  /// Cancels queued copies, kernels and jobs, lets the running ones finish, discards completions.
  runtime::Status drain() {
    workers_.drain();
    std::unique_lock<std::mutex> lock(m_);
    waiting_.clear();
    stream_.clear();
    draining_ = true;
    copy_cv_.notify_all();
    idle_cv_.wait(lock, [&] { return stop_ || (current_ == kNone && !compute_busy_); });
    for (Copy& c : copies_) c.in_flight = false;
    readers_done_ = readers_submitted_;  // the dropped kernels will never read
    draining_ = false;
    done_.clear();
    outstanding_ = 0;
    return runtime::Status::success();
  }

  // ---- checks ----
  /// Expert kernels whose slot did not hold their expert's bytes (must stay 0).
  [[nodiscard]] std::uint64_t verify_failures() const noexcept { return verify_failures_.load(); }
  /// Expert kernels run.
  [[nodiscard]] std::uint64_t expert_kernels() const noexcept { return expert_kernels_.load(); }

 private:
  struct Copy {
    bool in_flight = false;
    bool started = false;
    CopyPriority priority = CopyPriority::high;
    std::uint32_t chunks_done = 0;
    runtime::SlotIndex slot = 0;
    std::uint64_t readers = 0;  ///< kernels reading the slot submitted before the copy: wait for them
  };
  struct StreamItem {
    runtime::ComputeOrder order{};
    runtime::PredictorJob job{};  ///< when is_job: a predictor job placed on the stream
    bool is_job = false;
    Nanoseconds queued{};
  };

  [[nodiscard]] bool valid(ExpertId id) const noexcept { return id.layer < cfg_.layers && id.expert < cfg_.experts; }
  /// Driver thread: a final completion ends one piece of outstanding work.
  void account(const runtime::Completion& c) {
    if (c.kind != runtime::CompletionKind::chunk || c.landed) --outstanding_;
  }

  void copy_loop() {
    std::unique_lock<std::mutex> lock(m_);
    for (;;) {
      copy_cv_.wait(lock, [&] { return stop_ || current_ != kNone || (!draining_ && !waiting_.empty()); });
      if (stop_) return;
      if (current_ == kNone) current_ = waiting_.pop();
      const std::uint32_t f = current_;
      // Stream order: the slot's earlier readers finish before a byte lands in it.
      copy_cv_.wait(lock, [&] { return stop_ || draining_ || readers_done_[copies_[f].slot] >= copies_[f].readers; });
      if (stop_) return;
      if (draining_) {  // dropped (a partial copy is abandoned: drain discards it)
        copies_[f].in_flight = false;
        current_ = kNone;
        idle_cv_.notify_all();
        continue;
      }
      Copy& c = copies_[f];
      c.started = true;
      const std::uint32_t chunk = c.chunks_done;
      const std::uint64_t off = chunk_offset_[chunk];
      const std::uint64_t n = chunk_offset_[chunk + 1] - off;
      std::byte* dst = device_.data() + std::uint64_t{c.slot} * cfg_.expert_bytes.count + off;
      const std::byte* src = store_.data() + std::uint64_t{f} * cfg_.expert_bytes.count + off;
      lock.unlock();
      const Nanoseconds start = now();
      std::memcpy(dst, src, n);
      if (cfg_.link_gbps > 0.0) {
        const auto until = epoch_ + start + Nanoseconds{static_cast<std::int64_t>(static_cast<double>(n) / cfg_.link_gbps)};
        std::this_thread::sleep_until(until);
      }
      const Nanoseconds end = now();
      lock.lock();
      runtime::Completion done;
      done.kind = runtime::CompletionKind::chunk;
      done.expert = ExpertId::from_flat(f, cfg_.experts);
      done.chunk = chunk;
      done.chunks = cfg_.chunks;
      done.bytes = Bytes{n};
      done.high = c.priority == CopyPriority::high;
      done.start = start;
      done.end = end;
      c.chunks_done = chunk + 1;
      if (c.chunks_done == cfg_.chunks || draining_) {
        done.landed = c.chunks_done == cfg_.chunks;
        c.in_flight = false;
        current_ = kNone;
      } else if (c.priority == CopyPriority::low && waiting_.high_waiting()) {
        waiting_.push_front(f, CopyPriority::low);  // a high copy waits for at most one chunk of a low one
        current_ = kNone;
      }
      if (!draining_) done_.push(done);
      idle_cv_.notify_all();
    }
  }

  void compute_loop() {
    std::unique_lock<std::mutex> lock(m_);
    for (;;) {
      compute_cv_.wait(lock, [&] { return stop_ || !stream_.empty(); });
      if (stop_) return;
      const StreamItem it = stream_.front();
      stream_.pop_front();
      compute_busy_ = true;
      lock.unlock();
      const Nanoseconds start = now();
      runtime::Completion done;
      done.start = start;
      if (it.is_job) {
        done.kind = runtime::CompletionKind::job;
        done.tag = it.job.tag;
        done.where = runtime::JobResource::gpu_stream;
        done.queued = it.queued;
        done.count = it.job.predict(it.job.predictor, it.job.input, it.job.out);
      } else {
        done.kind = runtime::CompletionKind::compute;
        if (cfg_.kernel_time != nullptr) {
          const Nanoseconds until = start + cfg_.kernel_time(cfg_.kernel_time_context, it.order);
          while (now() < until) std::this_thread::yield();
        }
        run_kernel(it.order);  // last: the slot must still hold the expert when the kernel ends
      }
      done.end = now();
      lock.lock();
      compute_busy_ = false;
      if (!it.is_job && it.order.kind == runtime::ComputeKind::expert) {
        ++readers_done_[it.order.slot];
        copy_cv_.notify_all();
      }
      if (!draining_) done_.push(done);
      idle_cv_.notify_all();
    }
  }

  /// The kernel's real work: an expert checks that its slot holds its weights.
  void run_kernel(const runtime::ComputeOrder& k) {
    if (k.kind != runtime::ComputeKind::expert) return;
    const std::uint64_t e = cfg_.expert_bytes.count;
    const std::byte* slot = device_.data() + std::uint64_t{k.slot} * e;
    const std::byte* want = store_.data() + std::uint64_t{k.expert.flat(cfg_.experts)} * e;
    if (std::memcmp(slot, want, e) != 0) verify_failures_.fetch_add(1);
    expert_kernels_.fetch_add(1);
  }

  Config cfg_;
  std::span<std::byte> device_;
  std::span<const std::byte> store_;
  std::chrono::steady_clock::time_point epoch_;
  std::vector<std::uint64_t> chunk_offset_;
  bool running_ = false;             // driver thread only
  std::uint64_t outstanding_ = 0;    // driver thread only: work whose final completion is not taken

  mutable std::mutex m_;             // guards everything below except the atomics
  std::condition_variable copy_cv_;
  std::condition_variable compute_cv_;
  std::condition_variable idle_cv_;
  bool stop_ = false;
  bool draining_ = false;
  std::vector<Copy> copies_;
  runtime::CopyQueue waiting_;       // copies waiting for the link
  std::uint32_t current_ = kNone;    // the copy on the link
  std::vector<std::uint64_t> readers_submitted_;
  std::vector<std::uint64_t> readers_done_;
  std::deque<StreamItem> stream_;
  bool compute_busy_ = false;

  runtime::CompletionQueue done_;
  runtime::JobWorkers workers_;      // the cpu_worker predictor jobs
  std::atomic<std::uint64_t> verify_failures_{0};
  std::atomic<std::uint64_t> expert_kernels_{0};
  std::vector<std::thread> threads_;
};

static_assert(runtime::Backend<HostBackend>);

}  // namespace moesched::host
