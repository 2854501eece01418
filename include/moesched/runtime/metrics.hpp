#pragma once
/// RunMetrics: what one run measured, with the design guide's section-6 definitions. The layer
/// driver (moesched/runtime/driver.hpp) computes them the same way on every backend, from the
/// completions the backend reports (each with its start and end on the backend's clock).
///
/// Definitions (ARCHITECTURE.md repeats them):
/// - TTFT: from the moment a request's group starts to the end of its last prefill pass.
/// - TPOT: a decode or verify pass of duration d emits e_m tokens for member m; each output token
///   is one sample of d / e_m (token-weighted). Mean = sum of d over (pass, member) / tokens
///   emitted; p50 and p99 of the samples. For one request at a time: decode time / tokens emitted.
///   A pass lasts from the end of the previous pass (its drafting included) to its LM head's end.
/// - tokens/s: decode tokens / decode time (passes back to back).
/// - Stall: time the compute stream waits for an expert it needs, per layer.
/// - Uses: (pass, layer, expert) triples of the workload (the union over the pass's tokens).
///   At the gate each use is a cache hit (resident, already used since it was copied), a
///   prefetch hit (resident, brought by a low-priority copy, first use), late (a copy is queued or
///   moving) or a miss (absent). Hit rate = (cache + prefetch hits) / uses.
/// - Prefetch precision = prefetch copies whose expert was used before eviction / prefetch copies;
///   recall = prefetch hits / (prefetch hits + late + misses); GoodPred = prefetch hits / prefetch
///   copies (ProMoE's accuracy x fetch rate: predicted, used, and there in time).
/// - Wasted bytes: bytes of copies evicted before any use.
/// - Link busy share: time the host-to-device link moves bytes / total time. Total time ends with
///   the last pass's LM head; bytes, chunks and link time count only chunks landed by then (the
///   driver stops there and drains the backend: later copies serve no token).
/// - Predictor: jobs on CPU workers (count, busy time, time queued for a worker after their input
///   existed), jobs on the GPU stream (count, stream time), and predictions that ended after the
///   gate of the layer they predicted (too late to help).

#include "moesched/core/units.hpp"

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace moesched::runtime {

struct LayerMetrics {
  Nanoseconds stall{};
  std::uint64_t uses = 0;
  std::uint64_t cache_hits = 0;
  std::uint64_t prefetch_hits = 0;
  std::uint64_t late = 0;
  std::uint64_t misses = 0;
  friend bool operator==(const LayerMetrics&, const LayerMetrics&) = default;
};

struct Distribution {
  double mean = 0.0;
  double p50 = 0.0;
  double p99 = 0.0;
  friend bool operator==(const Distribution&, const Distribution&) = default;
};

/// Token-weighted percentile of (value, weight) samples (sorts `v`).
inline double weighted_percentile(std::vector<std::pair<double, std::uint32_t>>& v, double q) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  std::uint64_t total = 0;
  for (const auto& s : v) total += s.second;
  const double target = q * static_cast<double>(total);
  std::uint64_t acc = 0;
  for (const auto& s : v) {
    acc += s.second;
    if (static_cast<double>(acc) >= target) return s.first;
  }
  return v.back().first;
}

/// Weighted mean, p50 and p99 of (value, weight) samples (sorts `v`).
inline Distribution summarize(std::vector<std::pair<double, std::uint32_t>>& v) {
  Distribution d;
  std::uint64_t w = 0;
  double sum = 0.0;
  for (const auto& s : v) {
    sum += s.first * s.second;
    w += s.second;
  }
  d.mean = w == 0 ? 0.0 : sum / static_cast<double>(w);
  d.p50 = weighted_percentile(v, 0.5);
  d.p99 = weighted_percentile(v, 0.99);
  return d;
}

struct RunMetrics {
  std::string policy;
  std::uint64_t passes = 0;
  std::uint64_t decode_passes = 0;
  std::uint64_t requests = 0;
  std::uint64_t decode_tokens = 0;
  std::uint64_t activations = 0;     ///< routed expert activations replayed
  Nanoseconds total_time{};
  Nanoseconds prefill_time{};
  Nanoseconds decode_time{};
  Distribution ttft_ms;
  Distribution tpot_ms;
  double tokens_per_s = 0.0;
  Nanoseconds compute_busy{};        ///< the compute stream ran kernels
  Nanoseconds stall{};               ///< all stalls
  Nanoseconds decode_stall{};        ///< stalls inside decode passes
  Nanoseconds link_busy{};
  double link_busy_share = 0.0;
  Bytes bytes_copied{};
  std::uint64_t chunks_copied = 0;
  std::uint64_t experts_copied = 0;  ///< whole experts landed
  std::uint64_t uses = 0;
  std::uint64_t cache_hits = 0;
  std::uint64_t prefetch_hits = 0;
  std::uint64_t late = 0;
  std::uint64_t misses = 0;
  std::uint64_t prefetch_copies = 0;  ///< low-priority copies submitted
  std::uint64_t prefetch_used = 0;    ///< of those, used before eviction
  std::uint64_t evictions = 0;
  std::uint64_t cancelled = 0;
  Bytes wasted_bytes{};
  Bytes budget{};
  Bytes peak_expert_memory{};
  std::uint32_t capacity_slots = 0;
  std::uint64_t cpu_jobs = 0;        ///< predictor jobs run on CPU workers
  Nanoseconds cpu_busy{};            ///< their total duration
  Nanoseconds cpu_wait{};            ///< time jobs waited for a free worker after their input existed
  std::uint64_t gpu_jobs = 0;        ///< predictor jobs run on the compute stream
  Nanoseconds gpu_job_busy{};        ///< their stream time
  std::uint64_t predictions_late = 0;///< predictions that ended after their layer's gate (unused)
  std::vector<LayerMetrics> layers;

  friend bool operator==(const RunMetrics&, const RunMetrics&) = default;

  [[nodiscard]] double hit_rate() const noexcept {
    return uses == 0 ? 0.0 : static_cast<double>(cache_hits + prefetch_hits) / static_cast<double>(uses);
  }
  [[nodiscard]] double prefetch_precision() const noexcept {
    return prefetch_copies == 0 ? 0.0 : static_cast<double>(prefetch_used) / static_cast<double>(prefetch_copies);
  }
  [[nodiscard]] double prefetch_recall() const noexcept {
    const auto d = prefetch_hits + late + misses;
    return d == 0 ? 0.0 : static_cast<double>(prefetch_hits) / static_cast<double>(d);
  }
  [[nodiscard]] double goodpred() const noexcept {
    return prefetch_copies == 0 ? 0.0 : static_cast<double>(prefetch_hits) / static_cast<double>(prefetch_copies);
  }
};

}  // namespace moesched::runtime
