#pragma once
/// HardwareProfile / MeasuredCosts: what `moesched-profile` measured on one GPU for one model's
/// shapes, and the per-item time functions fitted to it, which the simulator's cost model and the
/// latency model use instead of roofline estimates.
///
///   moesched::profile::HardwareProfile p = moesched::io::read_profile("h200-mixtral.profile.json");
///   moesched::profile::MeasuredCosts m = moesched::fit::fit_profile(p);   // least squares (Eigen)
///   m.expert.at(4);                      // FFN of one routed expert over 4 tokens, ns
///   for (const auto& f : m.fits) std::puts(moesched::profile::describe(f).c_str());  // fit error
///
/// Samples are medians of repeated timings on the GPU. Each item is fitted as a linear function of
/// its drivers, coefficients kept non-negative (a time never falls as work grows):
/// - expert FFN of one routed expert (gate, up, SiLU x up, down) against tokens routed to it;
/// - dense part of one MoE decoder layer (attention projections, attention over the KV cache,
///   router, shared experts) against tokens, KV tokens read and query-key pairs;
/// - LM head against tokens; one draft-model step against the sequences drafting; one router GEMV
///   (a gate predictor on the compute stream) against tokens;
/// - host-to-device copies: (bytes, ns) knots of a TransferCurve (piecewise linear, as presets).
/// The kernel launch cost and a GEMM's slowdown while a copy runs are recorded beside them.
/// - host costs of the executor (HostCosts): the driver thread's time to submit each kind of order,
///   an idle stream's delay from a submission to its first kernel, and the delay from an item's end
///   on the GPU to the driver's thread receiving its completion. At batch 1 a layer's kernels take
///   tens of microseconds, so these decide TPOT as much as the kernels do; the simulator charges them
///   (sim/backend.hpp) when the profile has them.
/// Std-only: the fit itself (Eigen) is moesched/fit/latency_fit.hpp, the JSON io/profile_json.hpp.

#include "moesched/core/config.hpp"
#include "moesched/core/hardware.hpp"
#include "moesched/core/units.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace moesched::profile {

/// One timing: `ns` (median of the repeats) at the drivers' values.
struct TokenSample {
  std::uint32_t tokens = 0;
  double ns = 0.0;
};
/// One timing of the dense part: `tokens` in the pass over a KV cache of `context` tokens each.
struct DenseSample {
  std::uint32_t tokens = 0;
  std::uint64_t context = 0;  ///< KV tokens each token attends to (before its own)
  double ns = 0.0;
};
/// One host-to-device copy size: `ns` per copy (median).
struct CopySample {
  std::uint64_t bytes = 0;
  double ns = 0.0;
};

/// The executor's host-side costs, ns (medians). All zero: not measured (the simulator charges no
/// host time, as with roofline costs).
struct HostCosts {
  double submit_dense_ns = 0.0;   ///< one submit_compute of a dense order, on the driver's thread
  double submit_expert_ns = 0.0;  ///< ... of an expert order
  double submit_head_ns = 0.0;    ///< ... of the LM head
  double submit_draft_ns = 0.0;   ///< ... of one draft step
  double launch_ns = 0.0;         ///< an idle stream: submit_compute called -> the order's first kernel starts
  double notify_ns = 0.0;         ///< an item ends on the GPU -> the driver's wait() returns its completion
  /// The driver thread's own time per completion it receives (the layer driver's bookkeeping and
  /// the policy's hooks), beside its submit_compute calls; measured with `lru` (0: not measured).
  double handle_ns = 0.0;
  double copy_launch_ns = 0.0;    ///< an idle link: submit_copy called -> the copy's first chunk starts (0: not measured)
  [[nodiscard]] bool measured() const noexcept {
    return submit_dense_ns > 0 || submit_expert_ns > 0 || submit_head_ns > 0 || submit_draft_ns > 0 || launch_ns > 0 ||
           notify_ns > 0 || handle_ns > 0 || copy_launch_ns > 0;
  }
};

/// What moesched-profile measured (the JSON file's content, io/profile_json.hpp).
struct HardwareProfile {
  std::string source;         ///< the file it came from (for errors), empty when built in code
  std::string gpu;            ///< the device's name as the runtime reports it
  std::string model;          ///< the model preset whose shapes were timed
  std::string dtype = "bf16";
  std::vector<CopySample> copy_h2d;
  std::vector<TokenSample> expert_ffn;
  std::vector<DenseSample> dense;
  std::vector<TokenSample> head;
  std::vector<TokenSample> draft_step;
  std::vector<TokenSample> router;
  double kernel_launch_ns = 0.0;          ///< one empty kernel, launch to completion
  double gemm_slowdown_under_copy = 1.0;  ///< expert FFN time with a copy running / without
  HostCosts host{};                       ///< absent from the file: not measured (all zero)
};

/// A fitted time: ns = c[0] + c[1] x1 + c[2] x2 + c[3] x3 (unused terms 0), rounded to the
/// nearest ns (a fit's rounding noise must not add a ns), never below 1 ns.
struct LinearTime {
  std::array<double, 4> c{};
  [[nodiscard]] Nanoseconds at(double x1, double x2 = 0.0, double x3 = 0.0) const noexcept {
    const double v = std::min(c[0] + c[1] * x1 + c[2] * x2 + c[3] * x3, 1e15);  // ~11.6 days: no overflow
    return Nanoseconds{std::max<std::int64_t>(1, static_cast<std::int64_t>(std::llround(v)))};
  }
};

/// How well one item's fit matches its samples.
struct FitReport {
  std::string item;              ///< expert_ffn, dense, head, draft_step, router
  std::uint32_t samples = 0;
  double rms_relative_error = 0.0;  ///< sqrt(mean(((fit - sample) / sample)^2))
  double max_relative_error = 0.0;
  std::string terms;             ///< the fitted formula, in words and ns
};

[[nodiscard]] inline std::string describe(const FitReport& f) {
  char buf[96];
  std::snprintf(buf, sizeof buf, ": %u samples, error rms %.2f%% max %.2f%%; ", f.samples,
                100.0 * f.rms_relative_error, 100.0 * f.max_relative_error);
  return f.item + buf + f.terms;
}

/// The fitted per-item times of one (GPU, model), ready for sim::CostModel and the latency model.
struct MeasuredCosts {
  std::string source;     ///< the profile file
  std::string gpu;
  std::string model;
  LinearTime expert;      ///< (tokens routed to the expert)
  LinearTime dense;       ///< (tokens, KV tokens read, query-key pairs) of one MoE decoder layer
  LinearTime head;        ///< (tokens)
  LinearTime draft_step;  ///< (sequences drafting)
  LinearTime router;      ///< (tokens)
  TransferCurve copy_h2d; ///< measured copy curve
  double kernel_launch_ns = 0.0;
  double gemm_slowdown_under_copy = 1.0;
  HostCosts host{};       ///< the executor's host costs as measured (no fit: constants)
  std::vector<FitReport> fits;
};

}  // namespace moesched::profile
