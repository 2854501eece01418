#pragma once
/// CutoffSolver: how deep SP-MoE (arXiv 2510.10302) should prefetch during drafting: the cutoff
/// layer L*, from the draft window, a latency model, the memory free for experts and the
/// predictor's expected experts per layer with their confidence.
///
///   moesched::policy::CutoffInputs in{.layers = 32, .tokens = 5,
///                                     .draft_window = moesched::Nanoseconds{3'600'000},
///                                     .experts_per_layer = 3.2,
///                                     .free_memory = moesched::Bytes{8'000'000'000}};
///   std::uint32_t closed = moesched::policy::closed_form_cutoff(model, in);
///   moesched::policy::CutoffChoice best = moesched::policy::CutoffSolver{}.solve(model, in);
///
/// Closed form (the guide's): L* = min(L, floor(T_draft / (k t_io)), floor(M_free / (k S_e))).
/// The solver instead minimises the modelled verification time V(c) over c = 0..memory cap, where
/// the first c layers are prefetched during drafting (k experts each, queued in layer order on the
/// one link from the draft window's start) and the rest fall back to layer-ahead prefetch during
/// verification. Verification starts at 0; layer l < c's copies land at
///   A_l = (l + 1) k t_io - T_draft                          (the link is serial, busy from -T_draft)
/// and it runs once they landed and the previous layer ended, a wrong prediction becoming a demand
/// copy:
///   E_l = max(E_{l-1}, A_l) + t_l + (1 - p_l) k t_io        (E_{-1} = 0)
/// Copies that do not fit the window overlap the verification of the layers before theirs (they
/// are not a serial prefix). The layers from c on then run behind the previous layer:
///   V(c) = E_{c-1} + sum_{l >= c} (t_l + max(0, k t_io - t_l))
/// with t_l = model.layer_time(tokens, ceil(k)) and p_l the confidence of layer l's predictions
/// (1 when none are given). Memory (memory_cutoff): the prefetched experts resident at once are
/// those landed when verification starts, min(c k, T_draft / t_io); later ones reuse the slots of
/// layers already run. One pass over the layers: O(L). Ties go to the shallower cutoff (less
/// memory, less link).
///
/// choose_cutoff(rule, ...) is what a policy calls per SD pass: the solver, the closed form, a
/// fixed depth, or every layer (no cutoff), each switchable for ablations.

#include "moesched/core/config.hpp"
#include "moesched/core/units.hpp"
#include "moesched/policy/latency_model.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>

namespace moesched::policy {

/// What the cutoff depends on.
struct CutoffInputs {
  std::uint32_t layers = 0;              ///< L: MoE layers of the target
  std::uint32_t tokens = 1;              ///< tokens one verification runs (gamma + 1)
  Nanoseconds draft_window{};            ///< T_draft: time the draft model runs before verification
  double experts_per_layer = 1.0;        ///< k: expected distinct predicted experts per layer
  Bytes free_memory{};                   ///< M_free: memory for prefetched experts
  std::span<const double> confidence{};  ///< p_l per layer (empty = every prediction right)
};

/// A cutoff and its modelled verification time.
struct CutoffChoice {
  std::uint32_t cutoff = 0;
  Nanoseconds verify_time{};
};

/// The deepest cutoff whose prefetches resident at once fit `in.free_memory`: every layer when
/// the copies that land within the draft window (T_draft / t_io) fit, else floor(M_free / (k S_e))
/// (at most L). Copies landing after verification started reuse the slots of layers already run.
template <LatencyModel M>
[[nodiscard]] std::uint32_t memory_cutoff(const M& model, const CutoffInputs& in) noexcept {
  const double bytes = static_cast<double>(model.expert_bytes().count);
  const double per_layer = in.experts_per_layer * bytes;
  if (!(per_layer > 0.0)) return in.layers;
  const double free = static_cast<double>(in.free_memory.count);
  const auto io = static_cast<double>(model.expert_copy_time().count());
  if (io > 0.0 && static_cast<double>(in.draft_window.count()) / io * bytes <= free) return in.layers;
  return static_cast<std::uint32_t>(std::min<double>(in.layers, std::floor(free / per_layer)));
}

/// SP-MoE's closed form: min(L, floor(T_draft / (k t_io)), floor(M_free / (k S_e))).
template <LatencyModel M>
[[nodiscard]] std::uint32_t closed_form_cutoff(const M& model, const CutoffInputs& in) noexcept {
  const double per_layer = in.experts_per_layer * static_cast<double>(model.expert_copy_time().count());
  const double by_time = per_layer > 0.0 ? std::floor(static_cast<double>(in.draft_window.count()) / per_layer)
                                         : static_cast<double>(in.layers);
  return std::min(memory_cutoff(model, in), static_cast<std::uint32_t>(std::min<double>(in.layers, by_time)));
}

namespace cutoff_detail {
inline double confidence(const CutoffInputs& in, std::uint32_t l) noexcept {
  return l < in.confidence.size() ? std::clamp(in.confidence[l], 0.0, 1.0) : 1.0;
}
template <LatencyModel M>
double layer_ns(const M& model, const CutoffInputs& in) noexcept {
  const auto experts = static_cast<std::uint32_t>(std::ceil(std::max(in.experts_per_layer, 0.0)));
  return static_cast<double>(model.layer_time(in.tokens, experts).count());
}
}  // namespace cutoff_detail

/// V(c), the modelled verification time with cutoff c (see the header comment), in ns rounded up.
template <LatencyModel M>
[[nodiscard]] Nanoseconds modelled_verify_time(const M& model, const CutoffInputs& in, std::uint32_t cutoff) noexcept {
  const double io = in.experts_per_layer * static_cast<double>(model.expert_copy_time().count());
  const double t = cutoff_detail::layer_ns(model, in);
  const double window = static_cast<double>(in.draft_window.count());
  const std::uint32_t c = std::min(cutoff, in.layers);
  double end = 0.0;  // E_{l-1}
  for (std::uint32_t l = 0; l < c; ++l) {
    end = std::max(end, (l + 1) * io - window) + t + (1.0 - cutoff_detail::confidence(in, l)) * io;
  }
  return ceil_ns(end + (in.layers - c) * (t + std::max(0.0, io - t)));
}

/// Minimises modelled_verify_time over the cutoffs that fit memory, in one pass (E_{c-1} does not
/// depend on c, so each cutoff extends the previous one's prefix).
struct CutoffSolver {
  template <LatencyModel M>
  [[nodiscard]] CutoffChoice solve(const M& model, const CutoffInputs& in) const noexcept {
    const double io = in.experts_per_layer * static_cast<double>(model.expert_copy_time().count());
    const double t = cutoff_detail::layer_ns(model, in);
    const double ahead = t + std::max(0.0, io - t);  // a layer beyond the cutoff
    const double window = static_cast<double>(in.draft_window.count());
    const std::uint32_t cap = memory_cutoff(model, in);
    double end = 0.0;  // E_{c-1}: the prefetched layers' end
    CutoffChoice best{0, {}};
    double best_v = static_cast<double>(in.layers) * ahead;
    for (std::uint32_t c = 1; c <= cap; ++c) {
      end = std::max(end, c * io - window) + t + (1.0 - cutoff_detail::confidence(in, c - 1)) * io;
      const double v = end + static_cast<double>(in.layers - c) * ahead;
      if (v < best_v - 1e-9 * std::max(1.0, best_v)) {
        best_v = v;
        best.cutoff = c;
      }
    }
    best.verify_time = modelled_verify_time(model, in, best.cutoff);
    return best;
  }
};

/// How a policy picks its cutoff layer (SP-MoE's ablation axis).
enum class CutoffRule : std::uint8_t {
  solver,       ///< CutoffSolver: the modelled verification time's minimum
  closed_form,  ///< closed_form_cutoff (the guide's formula)
  fixed,        ///< a given depth, capped at L
  all,          ///< every layer (no cutoff)
};

/// The cutoff of one SD pass under `rule` (`fixed` is the depth for CutoffRule::fixed).
template <LatencyModel M>
[[nodiscard]] std::uint32_t choose_cutoff(CutoffRule rule, std::uint32_t fixed, const M& model, const CutoffInputs& in) noexcept {
  switch (rule) {
    case CutoffRule::solver: return CutoffSolver{}.solve(model, in).cutoff;
    case CutoffRule::closed_form: return closed_form_cutoff(model, in);
    case CutoffRule::fixed: return std::min(fixed, in.layers);
    case CutoffRule::all: break;
  }
  return in.layers;
}

}  // namespace moesched::policy
