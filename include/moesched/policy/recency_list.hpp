#pragma once
/// RecencyList: an intrusive least-recently-used order over flat expert ids (O(1) touch, insert,
/// remove; no allocation after construction).
///
///   moesched::policy::RecencyList lru(/*ids=*/64);
///   lru.touch(3); lru.touch(9); lru.touch(3);
///   lru.oldest();                           // 9
///   for (auto id = lru.oldest(); id != lru.none(); id = lru.newer(id)) ...

#include "moesched/core/config.hpp"

#include <cstdint>
#include <limits>
#include <vector>

namespace moesched::policy {

class RecencyList {
 public:
  static constexpr std::uint32_t kNone = std::numeric_limits<std::uint32_t>::max();

  RecencyList() = default;
  explicit RecencyList(std::uint32_t ids) : prev_(ids, kNone), next_(ids, kNone), in_(ids, 0) {}

  [[nodiscard]] static constexpr std::uint32_t none() noexcept { return kNone; }
  [[nodiscard]] bool contains(std::uint32_t id) const noexcept { return in_[id] != 0; }
  [[nodiscard]] std::uint32_t size() const noexcept { return size_; }
  [[nodiscard]] std::uint32_t oldest() const noexcept { return tail_; }
  [[nodiscard]] std::uint32_t newest() const noexcept { return head_; }
  /// The next more recently used id, or none().
  [[nodiscard]] std::uint32_t newer(std::uint32_t id) const noexcept { return prev_[id]; }

  /// Makes `id` the most recently used (inserting it if absent).
  void touch(std::uint32_t id) noexcept {
    if (in_[id] != 0) {
      if (head_ == id) return;
      unlink(id);
    } else {
      in_[id] = 1;
      ++size_;
    }
    prev_[id] = kNone;
    next_[id] = head_;
    if (head_ != kNone) prev_[head_] = id;
    head_ = id;
    if (tail_ == kNone) tail_ = id;
  }
  void remove(std::uint32_t id) noexcept {
    if (in_[id] == 0) return;
    unlink(id);
    in_[id] = 0;
    --size_;
  }

 private:
  void unlink(std::uint32_t id) noexcept {
    if (prev_[id] != kNone) next_[prev_[id]] = next_[id]; else head_ = next_[id];
    if (next_[id] != kNone) prev_[next_[id]] = prev_[id]; else tail_ = prev_[id];
  }

  std::vector<std::uint32_t> prev_;  // towards the newest
  std::vector<std::uint32_t> next_;  // towards the oldest
  std::vector<std::uint8_t> in_;
  std::uint32_t head_ = kNone;
  std::uint32_t tail_ = kNone;
  std::uint32_t size_ = 0;
};

}  // namespace moesched::policy
