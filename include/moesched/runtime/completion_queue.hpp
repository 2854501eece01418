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
///
/// Many producers, one consumer; a mutex and a condition variable (completions arrive at most
/// every few microseconds, so a lock-free ring would buy nothing measurable). Producers never call
/// into policy code: the driver drains the queue and runs the hooks itself (the threading rule of
/// moesched/runtime/executor.hpp). A real backend sizes it with reserve() at start-up.

#include "moesched/core/config.hpp"
#include "moesched/runtime/backend.hpp"

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
    }
    ready_.notify_one();
  }
  /// Takes the oldest completion; false when the queue is empty.
  bool try_pop(Completion& out) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (items_.empty()) return false;
    out = items_.front();
    items_.pop_front();
    return true;
  }
  /// Takes the oldest completion, waiting for one; false once close() was called and it is empty.
  bool pop_wait(Completion& out) {
    std::unique_lock<std::mutex> lock(mutex_);
    ready_.wait(lock, [&] { return !items_.empty() || closed_; });
    if (items_.empty()) return false;
    out = items_.front();
    items_.pop_front();
    return true;
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
  }
  [[nodiscard]] std::size_t size() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return items_.size();
  }

 private:
  mutable std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<Completion> items_;
  bool closed_ = false;
};

}  // namespace moesched::runtime
