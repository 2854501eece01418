#pragma once
/// Prediction tables from a trace's prediction channel, aligned with a workload's passes (a
/// policy input: what a recorded predictor said, replayed by PredictionTable::predict).
///
///   auto w = moesched::build_workload(trace, shape);
///   auto table = moesched::policy::build_predictions(trace, trace.channel_index("skip_gate"), w,
///                                                 {.max_candidates = 4, .top = 2});
///   moesched::policy::Prefetch pol(table, moesched::Nanoseconds{20'000});
///
/// Rules (ARCHITECTURE.md, "Predictions", repeats them):
/// - Pass p's sets come from the predictions of the trace steps its members replay; predictions
///   of the same (available after, draft tokens, layer) are merged into one set (one predictor
///   call over the batch's tokens), candidates ordered by their best rank, each at most once.
/// - Each prediction keeps its first `top` candidates (0 = all recorded).
/// - `available_after = l` >= 0: usable once MoE layer l of the pass ran; predictions of a layer
///   <= l are dropped (they could not be used before their own gate).
/// - `available_after = -1`: usable before the target's first layer. In an SD verify step it is
///   taken to come from drafting (SP-MoE's draft gate): a prediction for token t of the step
///   (token 0 is the last accepted token, 1..g the drafts) exists once the draft has run t + 1 of
///   its g forwards, a whole-step prediction once drafting is done. Elsewhere: at the pass start.
/// - Passes SD replay re-cut (--gamma) run trace tokens in new windows. A per-token prediction
///   follows its token (`Workload::member_tokens`): it says what the token's own hidden state
///   predicted, which does not depend on the window. Layer-timed ones (`available_after = l`)
///   keep their layer; drafting-timed ones (-1 on a recorded verify step) exist once the new
///   window's draft has run the token's position + 1 forwards, and not at all for a position the
///   new draft does not run (the last draft, a window without drafts); other -1 ones (from the
///   previous token's forward) once the draft has run the token's position forwards (position 0:
///   the pass start).
///   Whole-step predictions (token -1) cannot be split among windows: ConfigError.

#include "moesched/core/error.hpp"
#include "moesched/core/routing.hpp"
#include "moesched/policy/prediction_table.hpp"
#include "moesched/workload/workload.hpp"

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <limits>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace moesched::policy {

/// What build_predictions reads: io::Trace models it.
template <class S>
concept PredictionSource = RoutingSource<S> && requires(const S& s, std::uint32_t c, std::uint64_t i, std::uint16_t* out) {
  { s.predictions_of_step(c, i) } -> std::same_as<std::pair<std::uint64_t, std::uint64_t>>;
  { s.prediction(c, i).layer } -> std::convertible_to<std::uint32_t>;
  { s.prediction(c, i).token } -> std::convertible_to<std::int64_t>;
  { s.prediction(c, i).available_after } -> std::convertible_to<std::int64_t>;
  { s.candidates(c, i, out) } -> std::convertible_to<std::uint32_t>;
};

struct PredictionOptions {
  std::string name;                ///< channel name (errors and the table's label)
  std::uint32_t max_candidates = 0;///< the channel's candidates per prediction (buffer size)
  std::uint32_t top = 0;           ///< candidates kept per prediction; 0 = all
};

/// Builds the table of channel `c` of `src` for the passes of `w` (see the header comment).
template <PredictionSource S>
[[nodiscard]] PredictionTable build_predictions(const S& src, std::uint32_t c, const Workload& w,
                                                        const PredictionOptions& opt) {
  PredictionTable t(opt.name);
  std::vector<std::uint16_t> buf(std::max<std::uint32_t>(opt.max_candidates, 1));
  struct Item {
    std::int16_t after;
    std::uint16_t draft_tokens;
    std::uint16_t layer;
    std::uint32_t rank;
    std::uint32_t seq;
    std::uint16_t expert;
  };
  std::vector<Item> items;
  std::vector<std::uint16_t> merged;
  std::vector<std::uint64_t> seen(std::size_t{w.layers()} * w.shape().experts, 0);
  std::uint64_t stamp = 0;
  // Prediction i, usable after `after` (-1: before the pass) once the draft ran `draft` forwards.
  auto take = [&](std::uint64_t i, std::int64_t after, std::uint32_t layer, std::uint16_t draft) {
    if (layer >= w.layers() || after >= static_cast<std::int64_t>(w.layers())) {
      throw ConfigError("", "channel '" + opt.name + "' prediction " + std::to_string(i),
                        "layer " + std::to_string(layer) + ", available_after " + std::to_string(after),
                        "outside the model's " + std::to_string(w.layers()) + " MoE layers");
    }
    if (after >= 0 && layer <= static_cast<std::uint64_t>(after)) return;
    std::uint32_t n = src.candidates(c, i, buf.data());
    if (opt.top > 0) n = std::min(n, opt.top);
    for (std::uint32_t r = 0; r < n; ++r) {
      if (buf[r] >= w.shape().experts) {
        throw ConfigError("", "channel '" + opt.name + "' prediction " + std::to_string(i), std::to_string(buf[r]),
                          "candidate expert is not below experts_per_layer (" + std::to_string(w.shape().experts) + ")");
      }
      items.push_back({static_cast<std::int16_t>(after), draft, static_cast<std::uint16_t>(layer), r,
                       static_cast<std::uint32_t>(items.size()), buf[r]});
    }
  };
  // The recorded step that holds trace token `tok` (steps own consecutive token rows).
  const std::uint64_t steps = src.step_count();
  auto step_of = [&](std::uint64_t tok) {
    std::uint64_t lo = 0, hi = steps;
    while (hi - lo > 1) {
      const std::uint64_t mid = lo + (hi - lo) / 2;
      (src.step(mid).first_token <= tok ? lo : hi) = mid;
    }
    return lo;
  };
  for (std::uint64_t p = 0; p < w.pass_count(); ++p) {
    t.begin_pass();
    items.clear();
    for (const PassMember& m : w.members(w.pass(p))) {
      if (m.step == kNoStep) {
        // A re-cut window: each token's own predictions, timed by its position in the window.
        const auto toks = w.member_tokens(m);
        const auto g = static_cast<std::uint16_t>(toks.empty() ? 0 : toks.size() - 1);
        for (std::size_t pos = 0; pos < toks.size(); ++pos) {
          const std::uint64_t s = step_of(toks[pos]);
          const StepInfo st = src.step(s);
          const std::uint64_t offset = toks[pos] - st.first_token;
          const auto [first, last] = src.predictions_of_step(c, s);
          for (std::uint64_t i = first; i < last; ++i) {
            const auto pr = src.prediction(c, i);
            const auto token = static_cast<std::int64_t>(pr.token);
            if (token < 0) {
              throw ConfigError("", "channel '" + opt.name + "' prediction " + std::to_string(i), "token -1",
                                "a whole-step prediction cannot follow its tokens into the windows SD replay "
                                "(--gamma) re-cuts; leave --gamma at 0 for this channel");
            }
            if (static_cast<std::uint64_t>(token) != offset) continue;
            const auto after = static_cast<std::int64_t>(pr.available_after);
            if (after < 0 && st.phase == StepPhase::verify) {
              // Computed while drafting: the new window's draft runs positions 0..g-1 only.
              if (pos < g) take(i, after, static_cast<std::uint32_t>(pr.layer), static_cast<std::uint16_t>(pos + 1));
            } else if (after < 0) {
              // Before its step (from the previous token's forward): a draft at position pos
              // exists once the new window's draft has run pos forwards.
              take(i, after, static_cast<std::uint32_t>(pr.layer), static_cast<std::uint16_t>(pos));
            } else {
              take(i, after, static_cast<std::uint32_t>(pr.layer), 0);
            }
          }
        }
        continue;
      }
      const StepInfo st = src.step(m.step);
      const auto [first, last] = src.predictions_of_step(c, m.step);
      for (std::uint64_t i = first; i < last; ++i) {
        const auto pr = src.prediction(c, i);
        const auto after = static_cast<std::int64_t>(pr.available_after);
        std::uint16_t draft = 0;
        if (after < 0 && st.phase == StepPhase::verify && st.draft_len > 0) {
          const auto token = static_cast<std::int64_t>(pr.token);
          draft = token < 0 ? st.draft_len
                            : static_cast<std::uint16_t>(std::min<std::int64_t>(token + 1, st.draft_len));
        }
        take(i, after, static_cast<std::uint32_t>(pr.layer), draft);
      }
    }
    std::sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
      return std::tie(a.after, a.draft_tokens, a.layer, a.rank, a.seq) <
             std::tie(b.after, b.draft_tokens, b.layer, b.rank, b.seq);
    });
    for (std::size_t i = 0; i < items.size();) {
      const Item& head = items[i];
      ++stamp;
      merged.clear();
      std::size_t j = i;
      for (; j < items.size() && items[j].after == head.after && items[j].draft_tokens == head.draft_tokens &&
             items[j].layer == head.layer;
           ++j) {
        auto& s = seen[std::size_t{items[j].layer} * w.shape().experts + items[j].expert];
        if (s == stamp) continue;
        s = stamp;
        merged.push_back(items[j].expert);
      }
      t.add({head.layer, head.after, head.draft_tokens, 0, 0}, merged);
      i = j;
    }
  }
  if (t.set_count() > std::numeric_limits<std::uint32_t>::max()) {
    throw ConfigError("", "channel", opt.name, "more than 2^32 prediction sets; replay fewer requests (--max-requests)");
  }
  return t;
}

}  // namespace moesched::policy
