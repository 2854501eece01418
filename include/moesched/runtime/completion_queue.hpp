#pragma once
/// CompletionQueue: how work that finishes on other threads reaches the driver's thread.
///
///   moesched::runtime::CompletionQueue q;
///   // a copy worker, a CPU worker, a CUDA event poller:
///   q.push(completion);
///   // the driver (the only consumer):
///   moesched::runtime::Completion c;
///   if (q.pop_wait(c)) ...;          // blocks until one arrives or close()
///   q.try_pop(c);                    // never blocks
///   q.pop_wait(c, 50us);             // polls for 50 us first, then blocks
///
/// Many producers, one consumer; a mutex and a condition variable (completions arrive at most
/// every few microseconds, so a lock-free ring would buy nothing measurable). Waking a thread
/// blocked on the condition variable takes several microseconds on Linux, which at batch 1 is a
/// fair share of a layer: a consumer with a core to itself can poll for a while first (the spin
/// overload of pop_wait), reading an atomic count, not the lock. Producers never call
/// into policy code: the driver drains the queue and runs the hooks itself (the threading rule of
/// moesched/runtime/executor.hpp). A real backend sizes it with reserve() at start-up.

#include "moesched/core/config.hpp"
#include "moesched/runtime/backend.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <mutex>

namespace moesched::runtime {

class CompletionQueue {
 public:
  /// Called from any thread.
  void push(const Completion& c) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      items_.push_back(c);
      count_.store(items_.size(), std::memory_order_release);
    }
    ready_.notify_one();
  }
  /// Takes the oldest completion; false when the queue is empty.
  bool try_pop(Completion& out) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (items_.empty()) return false;
    take(out);
    return true;
  }
  /// Takes the oldest completion, waiting for one; false once close() was called and it is empty.
  bool pop_wait(Completion& out) {
    std::unique_lock<std::mutex> lock(mutex_);
    ready_.wait(lock, [&] { return !items_.empty() || closed_; });
    if (items_.empty()) return false;
    take(out);
    return true;
  }
  /// As pop_wait, but first polls for up to `spin` on this thread (busy: the consumer should have
  /// a core); one that arrives meanwhile is taken without a condition-variable wake-up.
  bool pop_wait(Completion& out, std::chrono::nanoseconds spin) {
    if (spin.count() > 0) {
      const auto until = std::chrono::steady_clock::now() + spin;
      do {
        if (count_.load(std::memory_order_acquire) != 0 && try_pop(out)) return true;
        for (int i = 0; i < 16; ++i) cpu_relax();
      } while (std::chrono::steady_clock::now() < until);
    }
    return pop_wait(out);
  }
  /// Wakes a waiting consumer for good (shutdown).
  void close() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      closed_ = true;
    }
    ready_.notify_all();
  }
  /// Discards every completion not yet taken.
  void clear() {
    std::lock_guard<std::mutex> lock(mutex_);
    items_.clear();
    count_.store(0, std::memory_order_release);
  }
  [[nodiscard]] std::size_t size() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return items_.size();
  }

 private:
  /// With the lock held.
  void take(Completion& out) {
    out = items_.front();
    items_.pop_front();
    count_.store(items_.size(), std::memory_order_release);
  }
  static void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
  }

  mutable std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<Completion> items_;
  std::atomic<std::size_t> count_{0};  // items_.size(), for the spinning consumer
  bool closed_ = false;
};

}  // namespace moesched::runtime
