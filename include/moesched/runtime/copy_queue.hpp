#pragma once
/// CopyQueue: the order in which an expert link serves copies, written once for every backend.
///
///   moesched::runtime::CopyQueue q(/*ids=*/64);
///   q.push_back(3, moesched::CopyPriority::low);
///   q.push_back(9, moesched::CopyPriority::high);
///   q.pop();                           // 9: high copies first, each priority first in first out
///   // a low copy in transit yields at a chunk boundary when a high one waits:
///   if (q.high_waiting()) q.push_front(current, moesched::CopyPriority::low);
///
/// Two intrusive FIFO lists (high, low) over flat expert ids: push, remove, promote and pop in
/// O(1), no allocation after construction. The rule it serves (ARCHITECTURE.md, backend table):
/// high priority first; a low copy that has moved a chunk goes back to the front of the low list
/// when a high one waits, so a high copy waits for at most the chunk in transit; promoting a queued
/// low copy moves it to the back of the high list. Not thread-safe: a threaded backend holds its
/// own lock around it.

#include "moesched/core/config.hpp"
#include "moesched/runtime/executor.hpp"

#include <cstdint>
#include <limits>
#include <vector>

namespace moesched::runtime {

class CopyQueue {
 public:
  static constexpr std::uint32_t kNone = std::numeric_limits<std::uint32_t>::max();

  CopyQueue() = default;
  /// A queue over flat ids 0 .. ids - 1.
  explicit CopyQueue(std::uint32_t ids) : prev_(ids, kNone), next_(ids, kNone), list_(ids, kOut) {}

  [[nodiscard]] bool empty() const noexcept { return head_[0] == kNone && head_[1] == kNone; }
  [[nodiscard]] bool high_waiting() const noexcept { return head_[0] != kNone; }
  [[nodiscard]] bool contains(std::uint32_t f) const noexcept { return list_[f] != kOut; }

  /// Appends `f` (not queued) to its priority's list.
  MOESCHED_HOT void push_back(std::uint32_t f, CopyPriority p) noexcept {
    const auto q = static_cast<std::uint8_t>(p);
    list_[f] = q;
    prev_[f] = tail_[q];
    next_[f] = kNone;
    if (tail_[q] != kNone) next_[tail_[q]] = f; else head_[q] = f;
    tail_[q] = f;
  }
  /// Puts `f` (not queued) first in its priority's list (a preempted copy resumes first).
  void push_front(std::uint32_t f, CopyPriority p) noexcept {
    const auto q = static_cast<std::uint8_t>(p);
    list_[f] = q;
    next_[f] = head_[q];
    prev_[f] = kNone;
    if (head_[q] != kNone) prev_[head_[q]] = f; else tail_[q] = f;
    head_[q] = f;
  }
  /// Takes `f` out of whichever list holds it (no-op if none).
  MOESCHED_HOT void remove(std::uint32_t f) noexcept {
    const std::uint8_t q = list_[f];
    if (q == kOut) return;
    if (prev_[f] != kNone) next_[prev_[f]] = next_[f]; else head_[q] = next_[f];
    if (next_[f] != kNone) prev_[next_[f]] = prev_[f]; else tail_[q] = prev_[f];
    prev_[f] = next_[f] = kNone;
    list_[f] = kOut;
  }
  /// A queued low copy goes to the back of the high list; false if `f` is not queued low.
  bool promote(std::uint32_t f) noexcept {
    if (list_[f] != static_cast<std::uint8_t>(CopyPriority::low)) return false;
    remove(f);
    push_back(f, CopyPriority::high);
    return true;
  }
  /// The next copy to serve (taken out), or kNone.
  MOESCHED_HOT std::uint32_t pop() noexcept {
    const int q = head_[0] != kNone ? 0 : 1;
    const std::uint32_t f = head_[q];
    if (f != kNone) remove(f);
    return f;
  }
  void clear() noexcept {
    while (pop() != kNone) {
    }
  }

 private:
  static constexpr std::uint8_t kOut = 0xFF;

  std::vector<std::uint32_t> prev_;
  std::vector<std::uint32_t> next_;
  std::vector<std::uint8_t> list_;  // 0 high, 1 low, kOut
  std::uint32_t head_[2]{kNone, kNone};
  std::uint32_t tail_[2]{kNone, kNone};
};

}  // namespace moesched::runtime
