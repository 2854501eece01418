#pragma once
/// A provable lower bound on decode time (and so on mean TPOT) for a workload, cost model and
/// expert budget: no schedule, however clairvoyant, can do better on the simulated machine.
///
///   auto lb = moesched::sim::tpot_lower_bound(workload, cost, /*slots=*/40);
///   lb.tpot_ms;      // mean TPOT no policy can beat
///
/// Derivation (also in ARCHITECTURE.md). Cut each maximal run of consecutive decode/verify passes
/// into windows of consecutive groups (a group = one MoE layer of one pass, with the pass's
/// drafting counted in its first layer and the LM head in its last). For a window w:
///  1. The compute stream runs every kernel of w inside w's span, one at a time:
///     span(w) >= C(w), the sum of those kernel times.
///  2. At the instant w starts, at most k experts hold a slot (k = budget / expert size; a copy
///     holds its slot from submission; k = 0 for a window starting the run, when nothing is held). So at least D(w) - k of the D(w) distinct experts w uses
///     start their whole copy after w starts and finish it before their use, before w ends. The
///     link moves one chunk at a time, so span(w) >= (D(w) - k) x t_min, t_min being the least
///     link time of one expert copy over every chunking the simulator supports.
///  3. Each of those copies is followed by compute that needs it: an expert X first used in group
///     j of w cannot run before its copy lands, and the groups after j run after X's FFN (a pass's
///     layers, and successive passes, are sequential). So span(w) >= land(X) + R(X), R(X) = X's
///     FFN time in group j + the compute of w's groups after j. The best any schedule can do is
///     hold the k experts with the largest R and copy the rest in decreasing R (the m-th copy lands
///     no earlier than m x t_min after w starts): with R sorted in decreasing order,
///     span(w) >= max over m = 1..D(w) - k of (m x t_min + R_(k + m)) (an exchange argument: any
///     other held set leaves an elementwise larger copied list).
///  4. Windows are disjoint in time and lie inside decode time. A pass's duration counts once per
///     member in the TPOT sum, so  sum(d_p x m_p) >= sum_w m_min(w) x max(C(w), the copy bound of 3),
///     m_min(w) being the fewest members among the passes w touches.
/// Any cut gives a valid bound; we take the best of several greedy cuts (close a window when it
/// has seen k + delta distinct experts, for several deltas) and of the pure compute bound. The bound
/// uses no intra-layer order, so it holds for reordered inference too (a Belady miss count would
/// not: it depends on the order in which a layer's experts are visited).

#include "moesched/core/config.hpp"
#include "moesched/core/units.hpp"
#include "moesched/sim/cost_model.hpp"
#include "moesched/workload/workload.hpp"

#include <algorithm>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace moesched::sim {

struct LowerBound {
  double weighted_decode_ns = 0.0;   ///< bound on sum over decode passes of duration x members
  double compute_only_ns = 0.0;      ///< the same from compute alone
  double tpot_ms = 0.0;              ///< bound on mean TPOT
  double compute_tpot_ms = 0.0;      ///< compute-only TPOT (no copies at all)
  std::uint64_t forced_copies = 0;   ///< copies the chosen cut proves unavoidable in decode
  std::uint32_t delta = 0;           ///< the cut that gave the bound (0 = compute alone)
};

/// The bound for `w` on `cost` with `slots` experts of memory.
[[nodiscard]] inline LowerBound tpot_lower_bound(const Workload& w, const CostModel& cost, std::uint32_t slots) {
  const std::uint32_t L = w.layers();
  const std::uint64_t groups = w.group_count();
  // Compute time of every group.
  std::vector<double> c(groups, 0.0);
  for (std::uint64_t p = 0; p < w.pass_count(); ++p) {
    const Pass& pass = w.pass(p);
    for (std::uint32_t l = 0; l < L; ++l) {
      const std::uint64_t g = w.group(p, l);
      Nanoseconds t = cost.dense_time(l, pass);
      if (l == 0) t += cost.draft_time(pass);
      if (l + 1 == L) t += cost.head_time(pass);
      for (const ExpertUse& u : w.group_uses(g)) t += cost.expert_time(u.tokens);
      c[g] = static_cast<double>(t.count());
    }
  }
  LowerBound lb;
  for (std::uint64_t p = 0; p < w.pass_count(); ++p) {
    const Pass& pass = w.pass(p);
    if (pass.phase == StepPhase::prefill) continue;
    for (std::uint32_t l = 0; l < L; ++l) lb.compute_only_ns += c[w.group(p, l)] * pass.member_count;
  }
  lb.weighted_decode_ns = lb.compute_only_ns;
  const double t_min = static_cast<double>(cost.min_expert_copy_time().count());
  const std::uint32_t per = w.shape().experts;
  std::vector<std::uint64_t> stamp(std::size_t{L} * per, 0);
  std::vector<double> tail;  // per distinct expert of a window: its FFN + the compute after its first group

  std::vector<std::uint32_t> deltas{1, 4, 16};
  for (std::uint32_t f : {8U, 4U, 2U}) deltas.push_back(std::max(1U, slots / f));
  for (std::uint32_t m : {1U, 2U, 4U}) deltas.push_back(std::max(1U, slots * m));
  std::sort(deltas.begin(), deltas.end());
  deltas.erase(std::unique(deltas.begin(), deltas.end()), deltas.end());

  std::uint64_t window_id = 0;
  for (std::uint32_t delta : deltas) {
    double total = 0.0;
    std::uint64_t forced = 0;
    std::uint64_t p = 0;
    while (p < w.pass_count()) {
      if (w.pass(p).phase == StepPhase::prefill) {
        ++p;
        continue;
      }
      // A decode run: passes p..q-1.
      std::uint64_t q = p;
      while (q < w.pass_count() && w.pass(q).phase != StepPhase::prefill) ++q;
      const std::uint64_t g_end = w.group(q, 0);
      std::uint64_t g = w.group(p, 0);
      while (g < g_end) {
        ++window_id;
        // The run starts with nothing held: the first window at time 0 must copy everything.
        const std::uint64_t held = g == 0 ? 0 : slots;
        std::uint64_t distinct = 0;
        double comp = 0.0;
        std::uint32_t members = w.pass(g / L).member_count;
        tail.clear();  // first holds (FFN time - compute up to and including the first group)
        for (; g < g_end; ++g) {
          members = std::min(members, w.pass(g / L).member_count);
          comp += c[g];
          const auto layer = static_cast<std::uint32_t>(g % L);
          for (const ExpertUse& u : w.group_uses(g)) {
            const std::size_t f = std::size_t{layer} * per + u.expert;
            if (stamp[f] != window_id) {
              stamp[f] = window_id;
              ++distinct;
              tail.push_back(static_cast<double>(cost.expert_time(u.tokens).count()) - comp);
            }
          }
          if (distinct >= held + delta) {
            ++g;
            break;
          }
        }
        const std::uint64_t must = distinct > held ? distinct - held : 0;
        forced += must;
        double copies = 0.0;
        if (must > 0) {
          for (double& r : tail) r += comp;  // FFN + the window's compute after the first group
          std::sort(tail.begin(), tail.end(), std::greater<>());
          for (std::uint64_t m = 1; m <= must; ++m) {
            copies = std::max(copies, static_cast<double>(m) * t_min + tail[held + m - 1]);
          }
        }
        total += members * std::max(comp, copies);
      }
      p = q;
    }
    if (total > lb.weighted_decode_ns) {
      lb.weighted_decode_ns = total;
      lb.delta = delta;
      lb.forced_copies = forced;
    }
  }
  const auto tokens = static_cast<double>(w.decode_tokens());
  if (tokens > 0) {
    lb.tpot_ms = lb.weighted_decode_ns / tokens / 1e6;
    lb.compute_tpot_ms = lb.compute_only_ns / tokens / 1e6;
  }
  return lb;
}

}  // namespace moesched::sim
