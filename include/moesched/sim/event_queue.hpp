#pragma once
/// EventQueue: the discrete-event core. Events are ordered by (time, sequence number), so two
/// events at the same nanosecond leave in the order they were scheduled and a run is
/// bit-for-bit deterministic.
///
///   moesched::sim::EventQueue<int> q;
///   q.push(Nanoseconds{50}, 1);
///   q.push(Nanoseconds{20}, 2);
///   q.push(Nanoseconds{20}, 3);
///   q.pop().payload;   // 2, then 3 (same time: scheduling order), then 1
///
/// A binary heap over a vector the caller may reserve(); no allocation once it has grown, no
/// global state. Time never goes back: push() rejects an event earlier than the last one popped.

#include "moesched/core/config.hpp"
#include "moesched/core/units.hpp"

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace moesched::sim {

/// One scheduled event.
template <class Payload>
struct Event {
  Nanoseconds time{};
  std::uint64_t sequence = 0;
  Payload payload{};
};

/// Min-queue of events by (time, sequence).
template <class Payload>
class EventQueue {
 public:
  /// Schedules `payload` at `time`. Throws std::logic_error if `time` is before the time of the
  /// last popped event (the clock would go back).
  void push(Nanoseconds time, Payload payload) {
    if (time < now_) {
      throw std::logic_error("event scheduled at " + std::to_string(time.count()) +
                             " ns, before the current time " + std::to_string(now_.count()) + " ns");
    }
    heap_.push_back({time, next_sequence_++, std::move(payload)});
    sift_up(heap_.size() - 1);
  }
  /// Removes and returns the earliest event; the queue must not be empty.
  MOESCHED_HOT Event<Payload> pop() {
    Event<Payload> top = std::move(heap_.front());
    heap_.front() = std::move(heap_.back());
    heap_.pop_back();
    if (!heap_.empty()) sift_down(0);
    now_ = top.time;
    return top;
  }
  [[nodiscard]] const Event<Payload>& top() const noexcept { return heap_.front(); }
  [[nodiscard]] bool empty() const noexcept { return heap_.empty(); }
  [[nodiscard]] std::size_t size() const noexcept { return heap_.size(); }
  /// Time of the last popped event (the simulation clock).
  [[nodiscard]] Nanoseconds now() const noexcept { return now_; }
  void reserve(std::size_t n) { heap_.reserve(n); }

 private:
  static bool before(const Event<Payload>& a, const Event<Payload>& b) noexcept {
    return a.time != b.time ? a.time < b.time : a.sequence < b.sequence;
  }
  void sift_up(std::size_t i) noexcept {
    while (i > 0) {
      const std::size_t parent = (i - 1) / 2;
      if (!before(heap_[i], heap_[parent])) break;
      std::swap(heap_[i], heap_[parent]);
      i = parent;
    }
  }
  MOESCHED_HOT void sift_down(std::size_t i) noexcept {
    const std::size_t n = heap_.size();
    for (;;) {
      const std::size_t l = 2 * i + 1;
      if (l >= n) break;
      std::size_t m = l;
      if (l + 1 < n && before(heap_[l + 1], heap_[l])) m = l + 1;
      if (!before(heap_[m], heap_[i])) break;
      std::swap(heap_[i], heap_[m]);
      i = m;
    }
  }

  std::vector<Event<Payload>> heap_;
  std::uint64_t next_sequence_ = 0;
  Nanoseconds now_{0};
};

}  // namespace moesched::sim
