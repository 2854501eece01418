#pragma once
/// RankAhead: a routing-only ExpertPredictor driven layer by layer: it observes each gate and ranks
/// the layers ahead, handing each ranking to the caller (a prefetch queue). The predictor source of
/// policy::Predictive and of the published policies' routing-only fallback (policy::Pipeline).
///
///   moesched::policy::RankAhead<moesched::policy::TransitionPredictor> feed(
///       moesched::policy::TransitionPredictor{2}, /*top=*/0);
///   feed.resize(layers, experts);                   // once
///   feed.begin_pass(pass);
///   feed.rank(/*first=*/0, /*count=*/2, sink);      // pass start: layers 0 and 1
///   feed.observe(layer, needed);                    // a layer's first gate
///   feed.rank(layer + 1, 2, sink);                  // the next two layers (count 0: every later one)
///   // sink(std::uint32_t layer, std::span<const moesched::runtime::ScoredExpert> ranked)
///
/// Candidates per ranking: `top`, or with top = 0 as many as that layer's gate asked for last time
/// (a verification pass of several tokens needs more than one token's top_k), at least 1. Runs
/// inline on the driver's thread; nothing allocates after resize().

#include "moesched/core/config.hpp"
#include "moesched/core/expert_id.hpp"
#include "moesched/policy/expert_predictor.hpp"
#include "moesched/runtime/executor.hpp"
#include "moesched/runtime/jobs.hpp"

#include <algorithm>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

namespace moesched::policy {

template <ExpertPredictor P>
class RankAhead {
 public:
  explicit RankAhead(P predictor = P{}, std::uint32_t top = 0) : predictor_(std::move(predictor)), top_(top) {}

  [[nodiscard]] const P& predictor() const noexcept { return predictor_; }
  [[nodiscard]] P& predictor() noexcept { return predictor_; }
  [[nodiscard]] std::uint32_t top() const noexcept { return top_; }
  /// Rankings made so far.
  [[nodiscard]] std::uint64_t rankings() const noexcept { return rankings_; }
  [[nodiscard]] bool sized() const noexcept { return !last_need_.empty(); }

  /// Sizes the predictor and the buffers (the first call only).
  void resize(std::uint32_t layers, std::uint32_t experts) {
    if (!last_need_.empty()) return;
    predictor_.resize(layers, experts);
    last_need_.assign(layers, 0);
    out_.assign(experts, {});
  }
  void begin_pass(const PassInfo& pass) { predictor_.begin_pass(pass); }
  /// `layer`'s gate asked for `needed` (its first call of the pass).
  void observe(std::uint32_t layer, std::span<const ExpertId> needed) {
    predictor_.observe(layer, needed);
    last_need_[layer] = static_cast<std::uint32_t>(needed.size());
  }
  /// Ranks layers first .. first + count - 1 (count 0: every layer from `first` on), each handed to
  /// sink(layer, ranked).
  template <class Sink>
  void rank(std::uint32_t first, std::uint32_t count, Sink&& sink) {
    const auto L = static_cast<std::uint32_t>(last_need_.size());
    const std::uint32_t end = count == 0 ? L : std::min<std::uint32_t>(L, first + count);
    const auto per = static_cast<std::uint32_t>(out_.size());
    for (std::uint32_t t = first; t < end; ++t) {
      std::uint32_t want = top_ != 0 ? top_ : last_need_[t];
      want = std::min(std::max<std::uint32_t>(want, 1), per);
      const std::uint32_t n = predictor_.predict(t, std::span<runtime::ScoredExpert>(out_.data(), want));
      ++rankings_;
      sink(t, std::span<const runtime::ScoredExpert>(out_.data(), n));
    }
  }

 private:
  P predictor_;
  std::uint32_t top_ = 0;
  std::vector<std::uint32_t> last_need_;    // per layer: experts its last gate asked for
  std::vector<runtime::ScoredExpert> out_;  // one ranking (experts_per_layer long)
  std::uint64_t rankings_ = 0;
};

}  // namespace moesched::policy
