#pragma once
/// Fit the synthetic generator to a trace, so that large synthetic traces look like a small real
/// one.
///
///   auto target = moesched::trace::compute_stats(real_trace);
///   moesched::trace::SynthParams p;
///   p.requests = 1000;                                  // the size you want
///   p = moesched::trace::fit_synth_params(target, p);   // shape, lengths, skew, reuse, ...
///   moesched::trace::synthesize(p).write("big.trace.safetensors");
///
/// Taken from the target directly: the routing shape, mean prompt and output lengths, the mean
/// draft length, and each channel's recall as its accuracy (a channel whose name contains "skip"
/// or "draft"). Solved in closed form, then calibrated: the per-token acceptance probability
/// (from the acceptance rate and the draft length), and a first guess of the Zipf exponent (the
/// Gini of a Zipf distribution), reuse and cross-layer probability. The closed forms ignore how
/// distinct top-k draws, reuse and the cross-layer map interact, so 8 rounds of "generate a
/// pilot trace with the target's request count, measure, correct" adjust zipf (by the Gini
/// ratio), reuse (by the next-token-reuse gap) and cross_layer (by the next-layer-hit gap).
/// FitLocks keeps parameters the caller set explicitly.

#include "moesched/io/trace.hpp"
#include "moesched/trace/stats.hpp"
#include "moesched/trace/synth.hpp"
#include "moesched/workload/workload.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace moesched::trace {

/// Parameters fit_synth_params must leave as given.
struct FitLocks {
  bool prompt_tokens = false, decode_tokens = false, zipf = false, reuse = false, cross_layer = false;
  bool draft_len = false, acceptance = false, skip_gate_accuracy = false, draft_gate_accuracy = false;
};

namespace fit_detail {
/// Gini coefficient of Zipf(experts, s) popularity.
inline double zipf_gini(std::uint32_t experts, double s) {
  std::vector<double> p(experts);
  double total = 0.0;
  for (std::uint32_t r = 0; r < experts; ++r) total += p[r] = std::pow(static_cast<double>(r + 1), -s);
  std::sort(p.begin(), p.end());
  double weighted = 0.0;
  for (std::uint32_t i = 0; i < experts; ++i) weighted += static_cast<double>(i + 1) * p[i] / total;
  const double n = experts;
  return 2.0 * weighted / n - (n + 1.0) / n;
}
/// Expected share of top_k overlap between two independent tokens under Zipf(s).
inline double zipf_overlap(std::uint32_t experts, std::uint32_t k, double s) {
  double total = 0.0;
  std::vector<double> p(experts);
  for (std::uint32_t r = 0; r < experts; ++r) total += p[r] = std::pow(static_cast<double>(r + 1), -s);
  double o = 0.0;
  for (double x : p) {
    const double in = std::min(1.0, k * x / total);
    o += in * in;
  }
  return o / k;
}
/// x in [lo, hi] with f(x) = target, for increasing f.
template <class F>
double bisect(F f, double lo, double hi, double target) {
  for (int i = 0; i < 60; ++i) {
    const double mid = 0.5 * (lo + hi);
    (f(mid) < target ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}
}  // namespace fit_detail

/// `start` with every unlocked parameter fitted to `target` (see the file comment).
[[nodiscard]] inline SynthParams fit_synth_params(const TraceStats& s, SynthParams p, const FitLocks& lock = {}) {
  p.model_name = s.model.name;
  p.moe_layers = s.model.moe_layers;
  p.experts = s.model.experts_per_layer;
  p.top_k = s.model.top_k;
  if (!lock.prompt_tokens && s.requests > 0) p.prompt_tokens = std::max<std::uint32_t>(1, static_cast<std::uint32_t>(s.prefill_tokens / s.requests));
  if (!lock.decode_tokens && s.requests > 0) p.decode_tokens = std::max<std::uint32_t>(1, static_cast<std::uint32_t>(s.emitted_tokens / s.requests));
  if (!lock.zipf) p.zipf = fit_detail::bisect([&](double z) { return fit_detail::zipf_gini(p.experts, z); }, 0.0, 10.0, s.gini);
  const double base = fit_detail::zipf_overlap(p.experts, p.top_k, p.zipf);
  if (!lock.reuse && base < 1.0) p.reuse = std::clamp((s.next_token_reuse - base) / (1.0 - base), 0.0, 1.0);
  if (!lock.cross_layer && s.next_layer_hit && s.next_layer_baseline && *s.next_layer_baseline < 1.0) {
    p.cross_layer = std::clamp((*s.next_layer_hit - *s.next_layer_baseline) / (1.0 - *s.next_layer_baseline), 0.0, 1.0);
  }
  if (s.verify_steps > 0) {
    if (!lock.draft_len) {
      p.sd_draft_len = static_cast<std::uint32_t>(std::lround(static_cast<double>(s.drafted) / static_cast<double>(s.verify_steps)));
    }
    const std::uint32_t g = p.sd_draft_len;
    if (!lock.acceptance && g > 0) {
      p.sd_acceptance = per_token_acceptance(s.acceptance_rate(), g);
    }
  }
  for (const auto& c : s.channels) {
    if (c.name.find("skip") != std::string::npos && !lock.skip_gate_accuracy) p.skip_gate_accuracy = c.recall;
    if (c.name.find("draft") != std::string::npos && !lock.draft_gate_accuracy && p.sd_draft_len > 0) p.draft_gate_accuracy = c.recall;
  }
  // calibrate on pilot traces the size of the target
  SynthParams pilot = p;
  pilot.requests = static_cast<std::uint32_t>(std::max<std::uint64_t>(1, s.requests));
  pilot.skip_gate_accuracy = pilot.draft_gate_accuracy = -1.0;
  for (int round = 0; round < 8; ++round) {
    const auto bytes = synthesize(pilot).to_safetensors().serialize();
    const auto pt = io::Trace::from_buffer(bytes.data(), bytes.size(), "pilot", {.validate_data = false});
    const auto got = compute_stats(pt);
    if (!lock.zipf && got.gini > 0.0) pilot.zipf = std::clamp(pilot.zipf * (s.gini / got.gini), 0.0, 10.0);
    if (!lock.reuse) pilot.reuse = std::clamp(pilot.reuse + (s.next_token_reuse - got.next_token_reuse), 0.0, 1.0);
    if (!lock.cross_layer && s.next_layer_hit && got.next_layer_hit) {
      pilot.cross_layer = std::clamp(pilot.cross_layer + (*s.next_layer_hit - *got.next_layer_hit), 0.0, 1.0);
    }
  }
  p.zipf = pilot.zipf;
  p.reuse = pilot.reuse;
  p.cross_layer = pilot.cross_layer;
  return p;
}

}  // namespace moesched::trace
