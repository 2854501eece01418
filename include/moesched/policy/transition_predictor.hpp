#pragma once
/// Cross-layer transitions: layer l's experts predict layer l+d's (an ExpertPredictor; routing
/// only), learned online and optionally warmed from a training split (policy::warm).
///
///   moesched::policy::TransitionCounts c(/*experts=*/8);     // one (source, destination) pair
///   c.add(std::array<std::uint16_t, 2>{1, 4}, std::array<std::uint16_t, 2>{0, 7});
///   c.rank(std::array<std::uint16_t, 1>{4}, out);            // out[0] = 0, out[1] = 7 (ties: lower id)
///
///   moesched::policy::TransitionPredictor p(/*max_distance=*/2);
///   p.resize(32, 8);
///   p.observe(3, needed);            // learns 2 -> 3 and 1 -> 3 from the latest sets of layers 1, 2
///   p.predict(5, out);               // layer 5 from layer 3's set (distance 2)
///
/// TransitionCounts is the one implementation of "rank the next layer's experts by co-occurrence"
/// in moesched: trace::compute_stats's next-layer hit rate uses it too.

#include "moesched/core/config.hpp"
#include "moesched/core/error.hpp"
#include "moesched/core/expert_id.hpp"
#include "moesched/policy/expert_predictor.hpp"
#include "moesched/runtime/executor.hpp"
#include "moesched/runtime/jobs.hpp"

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace moesched::policy {

/// Co-occurrence counts from one layer's experts to another's: count(x, y) = how often expert x
/// of the source and expert y of the destination were asked for together, and to_count(y) = how
/// often y was asked for at the destination.
///
///   TransitionCounts c(4);  c.add(from, to);  c.rank(from_now, out);
class TransitionCounts {
 public:
  TransitionCounts() = default;
  explicit TransitionCounts(std::uint32_t experts)
      : experts_(experts), co_(std::size_t{experts} * experts, 0U), to_(experts, 0U) {}

  [[nodiscard]] std::uint32_t experts() const noexcept { return experts_; }
  [[nodiscard]] std::uint32_t count(std::uint16_t from, std::uint16_t to) const noexcept {
    return co_[std::size_t{from} * experts_ + to];
  }
  [[nodiscard]] std::uint64_t to_count(std::uint16_t to) const noexcept { return to_[to]; }

  /// One observation: the source asked for `from`, the destination for `to` (distinct ids each).
  void add(std::span<const std::uint16_t> from, std::span<const std::uint16_t> to) noexcept {
    std::uint32_t top = max_co_;
    for (std::uint16_t x : from) {
      std::uint32_t* row = co_.data() + std::size_t{x} * experts_;
      for (std::uint16_t y : to) top = std::max(top, ++row[y]);
    }
    max_co_ = top;
    for (std::uint16_t y : to) max_to_ = std::max(max_to_, ++to_[y]);
  }
  void clear() noexcept {
    std::fill(co_.begin(), co_.end(), 0U);
    std::fill(to_.begin(), to_.end(), 0U);
    max_co_ = 0;
    max_to_ = 0;
  }

  /// Ranks the destination's experts given the source asked for `from`: by sum over x in `from`
  /// of count(x, y), ties by to_count(y), then the lower id. Writes the best out.size() (score =
  /// that sum, or to_count when `from` is empty) and returns how many. O(experts x (|from| +
  /// out.size())), no allocation. While every sum and to_count fits 32 bits (the largest count
  /// times |from|, checked), the sums are 32-bit and a candidate is one 64-bit key (sum, to_count);
  /// else rank_reference(), whose result it always equals.
  std::uint32_t rank(std::span<const std::uint16_t> from, std::span<runtime::ScoredExpert> out) const noexcept {
    const std::uint64_t most = std::uint64_t{max_co_} * (from.empty() ? 1U : from.size());
    if (most > 0xffffffffULL || max_to_ > 0xffffffffULL) return rank_reference(from, out);
    const auto cap = static_cast<std::uint32_t>(out.size());
    const std::uint32_t limit = cap < kMaxKept ? cap : kMaxKept;
    if (limit == 0) return 0;
    // Key (sum << 32 | to_count): larger is better; candidates come in id order, so an equal key
    // (a higher id) never passes one already kept.
    std::uint64_t kept[kMaxKept];
    std::uint32_t n = 0;
    std::uint32_t sums[kBlock];
    for (std::uint32_t y0 = 0; y0 < experts_; y0 += kBlock) {
      const std::uint32_t m = experts_ - y0 < kBlock ? experts_ - y0 : kBlock;
      for (std::uint32_t c = 0; c < m; ++c) sums[c] = 0;
#if defined(__GNUC__) || defined(__clang__)
      for (std::uint16_t x : from) {
        const std::uint32_t* row = co_.data() + std::size_t{x} * experts_ + y0;
        for (std::uint32_t c = 0; c < m; c += 16) __builtin_prefetch(row + c);
      }
#endif
      // Four rows at a time: one pass over sums[] each (a partial sum is at most the whole one).
      std::size_t r = 0;
      auto row = [&](std::size_t i) { return co_.data() + std::size_t{from[i]} * experts_ + y0; };
      for (; r + 4 <= from.size(); r += 4) {
        const std::uint32_t* p0 = row(r);
        const std::uint32_t* p1 = row(r + 1);
        const std::uint32_t* p2 = row(r + 2);
        const std::uint32_t* p3 = row(r + 3);
        for (std::uint32_t c = 0; c < m; ++c) sums[c] += (p0[c] + p1[c]) + (p2[c] + p3[c]);
      }
      for (; r < from.size(); ++r) {
        const std::uint32_t* p0 = row(r);
        for (std::uint32_t c = 0; c < m; ++c) sums[c] += p0[c];
      }
      const std::uint64_t* to = to_.data() + y0;
      for (std::uint32_t c = 0; c < m; ++c) {
        const std::uint64_t key = (std::uint64_t{sums[c]} << 32U) | to[c];
        if (n == limit && key <= kept[n - 1]) continue;
        std::uint32_t i = n < limit ? n++ : limit - 1;
        while (i > 0 && key > kept[i - 1]) {
          out[i] = out[i - 1];
          kept[i] = kept[i - 1];
          --i;
        }
        out[i] = {static_cast<std::uint16_t>(y0 + c), static_cast<float>(from.empty() ? to[c] : sums[c])};
        kept[i] = key;
      }
    }
    return n;
  }
  /// rank() with 64-bit sums and the three-way comparison, whatever the counts (the reference
  /// the tests compare rank() with).
  std::uint32_t rank_reference(std::span<const std::uint16_t> from, std::span<runtime::ScoredExpert> out) const noexcept {
    std::uint32_t n = 0;
    auto better_key = [&](std::uint64_t sa, std::uint16_t a, std::uint64_t sb, std::uint16_t b) {
      if (sa != sb) return sa > sb;
      if (to_[a] != to_[b]) return to_[a] > to_[b];
      return a < b;
    };
    const auto cap = static_cast<std::uint32_t>(out.size());
    // out[i].score holds the exact sum only as a float; keep exact sums beside it.
    std::uint64_t kept[kMaxKept];
    const std::uint32_t limit = cap < kMaxKept ? cap : kMaxKept;
    if (limit == 0) return 0;
    // The sums of a block of candidates, row by row (contiguous, so it vectorises), then the
    // block's candidates offered in id order.
    std::uint64_t sums[kBlock];
    for (std::uint32_t y0 = 0; y0 < experts_; y0 += kBlock) {
      const std::uint32_t m = experts_ - y0 < kBlock ? experts_ - y0 : kBlock;
      for (std::uint32_t c = 0; c < m; ++c) sums[c] = 0;
#if defined(__GNUC__) || defined(__clang__)
      for (std::uint16_t x : from) {  // the rows lie far apart in a large table: ask for all at once
        const std::uint32_t* row = co_.data() + std::size_t{x} * experts_ + y0;
        for (std::uint32_t c = 0; c < m; c += 16) __builtin_prefetch(row + c);
      }
#endif
      for (std::uint16_t x : from) {
        const std::uint32_t* row = co_.data() + std::size_t{x} * experts_ + y0;
        for (std::uint32_t c = 0; c < m; ++c) sums[c] += row[c];
      }
      for (std::uint32_t c = 0; c < m; ++c) {
        const std::uint32_t y = y0 + c;
        const auto ey = static_cast<std::uint16_t>(y);
        const std::uint64_t s = sums[c];
        if (n == limit && !better_key(s, ey, kept[n - 1], out[n - 1].expert)) continue;
        std::uint32_t i = n < limit ? n++ : limit - 1;
        while (i > 0 && better_key(s, ey, kept[i - 1], out[i - 1].expert)) {
          out[i] = out[i - 1];
          kept[i] = kept[i - 1];
          --i;
        }
        out[i] = {ey, static_cast<float>(from.empty() ? to_[y] : s)};
        kept[i] = s;
      }
    }
    return n;
  }

  /// Most candidates rank() writes.
  static constexpr std::uint32_t kMaxKept = 1024;
  /// Candidates whose sums rank() computes at once.
  static constexpr std::uint32_t kBlock = 256;

 private:
  std::uint32_t experts_ = 0;
  std::vector<std::uint32_t> co_;  // [from * experts + to]
  std::vector<std::uint64_t> to_;
  std::uint32_t max_co_ = 0;       // the largest count
  std::uint64_t max_to_ = 0;       // the largest to_count
};

/// Layer l's latest set predicts layer l+d's, d = 1..max_distance, cyclically (the last layers
/// of a pass predict the first ones of the next). Learned online from every observe(): the set of
/// layer (l - d) mod L seen last is the source of layer l's set, for each d.
/// predict(t): from the layer observed last, c, at distance d = (t - c) mod L (L when 0); beyond
/// max_distance, or before anything was observed, by how often each expert of t was asked for;
/// experts never asked for at t are not ranked.
/// Cost: observe() O(max_distance x |source| x |needed|); predict() O(experts x (|source| +
/// out.size())); state max_distance x layers x experts^2 x 4 bytes, sized by resize().
class TransitionPredictor {
 public:
  [[nodiscard]] static constexpr std::string_view name() noexcept { return "transition"; }

  explicit TransitionPredictor(std::uint32_t max_distance = 2) : max_distance_(max_distance < 1 ? 1 : max_distance) {}

  [[nodiscard]] std::uint32_t max_distance() const noexcept { return max_distance_; }
  /// Counts from layer (to - distance) mod L to layer `to`.
  [[nodiscard]] const TransitionCounts& counts(std::uint32_t distance, std::uint32_t to) const noexcept {
    return counts_[std::size_t{distance - 1} * layers_ + to];
  }

  /// Throws ConfigError when the tables would exceed 2 GiB.
  void resize(std::uint32_t layers, std::uint32_t experts) {
    if (layers == layers_ && experts == experts_) return;
    const std::uint32_t d = std::min(max_distance_, std::max<std::uint32_t>(layers, 1));
    const std::uint64_t bytes = std::uint64_t{d} * layers * experts * experts * 4;
    if (bytes > (std::uint64_t{2} << 30U)) {
      throw ConfigError("", "predictor", "transition",
                        "needs " + std::to_string(bytes >> 20U) + " MiB of tables for " + std::to_string(layers) +
                            " layers x " + std::to_string(experts) + " experts; lower max_distance");
    }
    layers_ = layers;
    experts_ = experts;
    distance_ = d;
    counts_.assign(std::size_t{d} * layers, TransitionCounts(experts));
    sets_.assign(std::size_t{layers} * experts, 0);
    set_size_.assign(layers, 0);
    seen_.assign(layers, 0);
    scratch_.assign(experts, 0);
    current_ = kNone;
  }
  void begin_pass(const PassInfo&) noexcept {}
  void observe(std::uint32_t layer, std::span<const ExpertId> needed) noexcept {
    std::uint32_t n = 0;
    for (ExpertId id : needed) {
      if (n < experts_) scratch_[n++] = id.expert;
    }
    const std::span<const std::uint16_t> now(scratch_.data(), n);
    for (std::uint32_t d = 1; d <= distance_; ++d) {
      const std::uint32_t s = (layer + layers_ - d % layers_) % layers_;
      if (seen_[s] != 0) counts_[std::size_t{d - 1} * layers_ + layer].add(set(s), now);
    }
    std::copy(now.begin(), now.end(), sets_.begin() + static_cast<std::ptrdiff_t>(std::size_t{layer} * experts_));
    set_size_[layer] = n;
    seen_[layer] = 1;
    current_ = layer;
  }
  /// Only experts seen at `layer` are ranked (a cold predictor returns none).
  [[nodiscard]] std::uint32_t predict(std::uint32_t layer, std::span<runtime::ScoredExpert> out) const noexcept {
    std::uint32_t d = distance_;
    std::span<const std::uint16_t> from;
    if (current_ != kNone) {
      d = (layer + layers_ - current_) % layers_;
      if (d == 0) d = layers_;
      if (d <= distance_) {
        from = set(current_);
      } else {
        d = distance_;
      }
    }
    const TransitionCounts& c = counts_[std::size_t{d - 1} * layers_ + layer];
    std::uint32_t n = c.rank(from, out);
    while (n > 0 && c.to_count(out[n - 1].expert) == 0) --n;  // no evidence at all
    return n;
  }

 private:
  static constexpr std::uint32_t kNone = ~std::uint32_t{0};
  [[nodiscard]] std::span<const std::uint16_t> set(std::uint32_t layer) const noexcept {
    return {sets_.data() + std::size_t{layer} * experts_, set_size_[layer]};
  }

  std::uint32_t max_distance_;
  std::uint32_t distance_ = 1;  // max_distance_, at most the layer count
  std::uint32_t layers_ = 0;
  std::uint32_t experts_ = 0;
  std::vector<TransitionCounts> counts_;  // [(distance - 1) * layers + to]
  std::vector<std::uint16_t> sets_;       // [layer * experts + i]: the layer's latest set
  std::vector<std::uint32_t> set_size_;
  std::vector<std::uint8_t> seen_;
  std::vector<std::uint16_t> scratch_;
  std::uint32_t current_ = kNone;         // layer observed last
};

static_assert(ExpertPredictor<TransitionPredictor>);

}  // namespace moesched::policy
