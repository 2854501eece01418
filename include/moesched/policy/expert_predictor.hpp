#pragma once
/// ExpertPredictor: the contract of a routing-only expert predictor, and the helpers its models
/// share (ranking, warming from a training Workload).
///
///   moesched::policy::TransitionPredictor p;             // any ExpertPredictor
///   p.resize(/*layers=*/32, /*experts=*/8);              // sizes its state (the only allocation)
///   p.begin_pass(pass);
///   p.observe(/*layer=*/3, needed);                      // layer 3's gate asked for `needed`
///   std::array<moesched::runtime::ScoredExpert, 2> out;
///   std::uint32_t n = p.predict(/*layer=*/4, out);       // out[0..n): layer 4's likeliest experts
///
/// Input: routing only, the experts each gate asked for (a pass's union over its tokens), in the
/// order the layer driver gates them; public routing dumps (vLLM or transformers hooks) have no
/// hidden states, and these predictors need none. Where it runs: inline on the driver's thread,
/// inside a policy hook (no job, no other thread ever reads its state). Cost: observe() and
/// predict() are O(experts x candidates) or less and allocate nothing (each model's comment
/// gives its exact cost; bench/bench_policy.cpp measures them).
///
/// predict(layer, out) ranks `layer`'s experts for that layer's next gate (in this pass if it has
/// not run yet, else in the next pass), best first, with scores (higher = likelier); it writes at
/// most out.size() candidates and returns how many. Ties go to the lower expert id, so every model
/// is deterministic.

#include "moesched/core/config.hpp"
#include "moesched/core/expert_id.hpp"
#include "moesched/runtime/executor.hpp"
#include "moesched/runtime/jobs.hpp"
#include "moesched/workload/workload.hpp"

#include <concepts>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace moesched::policy {

/// A predictor that learns from the gates it observes and ranks the experts a later layer needs.
template <class P>
concept ExpertPredictor = requires(P& p, const P& cp, std::uint32_t n, const PassInfo& pass,
                                   std::span<const ExpertId> needed, std::span<runtime::ScoredExpert> out) {
  { P::name() } -> std::convertible_to<std::string_view>;
  p.resize(n, n);                 ///< (layers, experts): sizes the state; a no-op for the same shape
  p.begin_pass(pass);
  p.observe(n, needed);           ///< layer n's gate asked for `needed` (its whole set)
  { cp.predict(n, out) } -> std::same_as<std::uint32_t>;
};

namespace predictor_detail {

/// Keeps out[0..n) sorted best first while candidates are offered, by score (higher first), then
/// the lower id: O(out.size()) per offer, no allocation.
inline void offer_scored(std::span<runtime::ScoredExpert> out, std::uint32_t& n, std::uint16_t expert,
                         float score) noexcept {
  const auto cap = static_cast<std::uint32_t>(out.size());
  auto before = [&](const runtime::ScoredExpert& o) { return score > o.score || (score == o.score && expert < o.expert); };
  if (cap == 0 || (n == cap && !before(out[n - 1]))) return;
  std::uint32_t i = n < cap ? n++ : cap - 1;
  while (i > 0 && before(out[i - 1])) {
    out[i] = out[i - 1];
    --i;
  }
  out[i] = {expert, score};
}

}  // namespace predictor_detail

/// Teaches `p` a training split: every pass of `w` in order, each layer's needs observed as the
/// layer driver would present them. Sizes `p` for `w`'s shape first.
///
///   moesched::policy::TransitionPredictor p;
///   moesched::policy::warm(p, training_workload);   // then run the policy on the test split
template <ExpertPredictor P>
void warm(P& p, const Workload& w) {
  p.resize(w.layers(), w.shape().experts);
  std::vector<ExpertId> needed;
  needed.reserve(w.shape().experts);
  for (std::uint64_t i = 0; i < w.pass_count(); ++i) {
    const Pass& pass = w.pass(i);
    p.begin_pass(PassInfo{i, pass.phase, pass.tokens, pass.member_count, pass.draft_len});
    for (std::uint32_t l = 0; l < w.layers(); ++l) {
      needed.clear();
      for (const ExpertUse& u : w.uses(i, l)) needed.push_back({static_cast<std::uint16_t>(l), u.expert});
      p.observe(l, std::span<const ExpertId>(needed));
    }
  }
}

}  // namespace moesched::policy
