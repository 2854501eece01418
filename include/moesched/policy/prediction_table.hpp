#pragma once
/// PredictionTable: what a predictor said for each forward pass, and from when it could be used.
///
///   moesched::policy::PredictionTable t("skip_gate");
///   t.begin_pass();                                    // pass 0
///   t.add({.layer = 3, .after = 2}, std::array<std::uint16_t, 2>{5, 1});
///   for (const auto& s : t.of_pass(0))                 // sorted by (after, draft_tokens, layer)
///     for (std::uint16_t e : t.candidates(s)) ...
///
/// A predictive policy replays it: a set becomes usable once MoE layer `after` of its pass has run
/// (-1: from the pass's start) and, in an SD pass, once `draft_tokens` draft tokens were drafted;
/// then the policy's predictor job runs (PredictionTable::predict is its function: the table is
/// one predictor among others) and the candidates can be prefetched.
/// The simulator builds one from a trace's prediction channel (moesched/policy/trace_predictions.hpp); a
/// test or a user can build one by hand. Std-only.

#include "moesched/core/config.hpp"
#include "moesched/runtime/jobs.hpp"

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace moesched::policy {

/// One prediction: ranked candidate experts of one MoE layer of the pass.
struct PredictedSet {
  std::uint16_t layer = 0;         ///< MoE layer predicted
  std::int16_t after = -1;         ///< usable once this MoE layer of the pass ran; -1 = from its start
  std::uint16_t draft_tokens = 0;  ///< SD: and once this many draft tokens exist (0 = no wait)
  std::uint32_t first = 0;         ///< candidates [first, first + count) in the table
  std::uint32_t count = 0;
};

class PredictionTable {
 public:
  PredictionTable() = default;
  explicit PredictionTable(std::string channel) : channel_(std::move(channel)) {}

  /// Name of the predictor or channel the table replays.
  [[nodiscard]] const std::string& channel() const noexcept { return channel_; }
  [[nodiscard]] std::uint64_t pass_count() const noexcept { return starts_.size(); }
  [[nodiscard]] std::uint64_t set_count() const noexcept { return sets_.size(); }
  /// Sets of pass p are [pass_begin(p), pass_end(p)); global indices for set().
  [[nodiscard]] std::uint64_t pass_begin(std::uint64_t p) const noexcept { return starts_[p]; }
  [[nodiscard]] std::uint64_t pass_end(std::uint64_t p) const noexcept {
    return p + 1 < starts_.size() ? starts_[p + 1] : sets_.size();
  }
  [[nodiscard]] std::span<const PredictedSet> of_pass(std::uint64_t p) const noexcept {
    if (p >= pass_count()) return {};
    return {sets_.data() + starts_[p], pass_end(p) - starts_[p]};
  }
  [[nodiscard]] const PredictedSet& set(std::uint64_t i) const noexcept { return sets_[i]; }
  [[nodiscard]] std::span<const std::uint16_t> candidates(const PredictedSet& s) const noexcept {
    return {candidates_.data() + s.first, s.count};
  }

  /// A runtime::PredictFn over a table: `input.key` is a set index; writes its candidates in rank
  /// order (score = -rank). Reads the table only, so it may run on any thread.
  static std::uint32_t predict(const void* table, const runtime::JobInput& input,
                               std::span<runtime::ScoredExpert> out) noexcept {
    const auto* t = static_cast<const PredictionTable*>(table);
    if (input.key >= t->set_count()) return 0;
    const auto c = t->candidates(t->set(input.key));
    const auto n = static_cast<std::uint32_t>(std::min(c.size(), out.size()));
    for (std::uint32_t r = 0; r < n; ++r) out[r] = {c[r], -static_cast<float>(r)};
    return n;
  }

  /// Starts the next pass (passes in replay order; a pass may have no sets).
  void begin_pass() { starts_.push_back(sets_.size()); }
  /// Adds a set to the pass begun last, keeping the pass sorted by (after, draft_tokens, layer).
  /// Precondition: begin_pass() was called.
  void add(PredictedSet s, std::span<const std::uint16_t> experts) {
    s.first = static_cast<std::uint32_t>(candidates_.size());
    s.count = static_cast<std::uint32_t>(experts.size());
    candidates_.insert(candidates_.end(), experts.begin(), experts.end());
    auto less = [](const PredictedSet& x, const PredictedSet& y) {
      return std::tie(x.after, x.draft_tokens, x.layer) < std::tie(y.after, y.draft_tokens, y.layer);
    };
    sets_.insert(std::upper_bound(sets_.begin() + static_cast<std::ptrdiff_t>(starts_.back()), sets_.end(), s, less), s);
  }

 private:
  std::string channel_;
  std::vector<std::uint64_t> starts_;
  std::vector<PredictedSet> sets_;
  std::vector<std::uint16_t> candidates_;
};

}  // namespace moesched::policy
