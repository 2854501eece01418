#pragma once
/// JobWorkers: the CPU worker threads of a real-time backend, written once (the host backend and
/// the CUDA backend both run their `cpu_worker` predictor jobs here).
///
///   moesched::runtime::CompletionQueue done;
///   moesched::runtime::JobWorkers workers;
///   if (auto s = workers.start(2, done, epoch); !s) ...;
///   workers.submit(job, now);          // a worker runs job.predict, then pushes its Completion
///   workers.drain();                   // drops queued jobs, waits for running ones, reports none
///   workers.stop();                    // joins (the destructor does too)
///
/// First come first served over `n` threads. A job's `predict` runs on the worker thread and
/// writes the job's `out` span; its Completion (kind job, with the worker, the time it was queued,
/// started and ended, on steady_clock nanoseconds since `epoch`) goes to the completion queue,
/// which the driver drains on its own thread. Policy code never runs here.

#include "moesched/core/config.hpp"
#include "moesched/core/units.hpp"
#include "moesched/runtime/backend.hpp"
#include "moesched/runtime/completion_queue.hpp"
#include "moesched/runtime/jobs.hpp"
#include "moesched/runtime/status.hpp"

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

namespace moesched::runtime {

class JobWorkers {
 public:
  JobWorkers() = default;
  JobWorkers(const JobWorkers&) = delete;
  JobWorkers& operator=(const JobWorkers&) = delete;
  ~JobWorkers() { stop(); }

  /// Starts `n` threads that report to `done` (which must outlive them).
  Status start(std::uint32_t n, CompletionQueue& done, std::chrono::steady_clock::time_point epoch) {
    done_ = &done;
    epoch_ = epoch;
    stop_ = false;
    try {
      for (std::uint32_t w = 0; w < n; ++w) threads_.emplace_back([this, w] { loop(w); });
    } catch (const std::system_error&) {
      stop();
      return Status::backend("std::thread", "could not start a CPU worker thread");
    }
    return Status::success();
  }
  [[nodiscard]] std::uint32_t workers() const noexcept { return static_cast<std::uint32_t>(threads_.size()); }

  /// Queues `job` (received at `queued`).
  void submit(const PredictorJob& job, Nanoseconds queued) {
    {
      std::lock_guard<std::mutex> lock(m_);
      queue_.push_back({job, queued});
    }
    ready_.notify_one();
  }
  /// Drops the queued jobs and waits for the running ones; none of them is reported.
  void drain() {
    std::unique_lock<std::mutex> lock(m_);
    queue_.clear();
    draining_ = true;
    idle_.wait(lock, [&] { return stop_ || running_ == 0; });
    draining_ = false;
  }
  /// Joins every thread; queued jobs are dropped. Idempotent.
  void stop() noexcept {
    {
      std::lock_guard<std::mutex> lock(m_);
      stop_ = true;
    }
    ready_.notify_all();
    idle_.notify_all();
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
    threads_.clear();
  }

 private:
  struct Queued {
    PredictorJob job;
    Nanoseconds queued{};
  };

  [[nodiscard]] Nanoseconds now() const noexcept {
    return std::chrono::duration_cast<Nanoseconds>(std::chrono::steady_clock::now() - epoch_);
  }

  void loop(std::uint32_t worker) {
    std::unique_lock<std::mutex> lock(m_);
    for (;;) {
      ready_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (stop_) return;
      const Queued q = queue_.front();
      queue_.pop_front();
      ++running_;
      lock.unlock();
      Completion done;
      done.kind = CompletionKind::job;
      done.tag = q.job.tag;
      done.where = JobResource::cpu_worker;
      done.worker = worker;
      done.queued = q.queued;
      done.start = now();
      done.count = q.job.predict(q.job.predictor, q.job.input, q.job.out);
      done.end = now();
      lock.lock();
      --running_;
      if (!draining_) done_->push(done);
      idle_.notify_all();
    }
  }

  CompletionQueue* done_ = nullptr;
  std::chrono::steady_clock::time_point epoch_{};
  std::mutex m_;
  std::condition_variable ready_;
  std::condition_variable idle_;
  std::deque<Queued> queue_;
  std::uint32_t running_ = 0;
  bool stop_ = false;
  bool draining_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace moesched::runtime
