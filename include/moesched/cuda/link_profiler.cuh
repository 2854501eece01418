#pragma once
/// Link profiler: measures the copy time of the host<->GPU link against copy size, the curve a
/// GPU preset's `h2d` / `d2h` section holds (and the latency model and simulator consume).
///
///   std::vector<std::uint64_t> sizes = moesched::cuda::default_profile_sizes(256 << 20);
///   std::uint64_t need = moesched::cuda::link_profile_workspace_bytes(sizes);
///   void* host; cudaHostAlloc(&host, need, cudaHostAllocDefault);    // caller owns memory
///   void* dev;  cudaMalloc(&dev, need);
///   std::vector<moesched::cuda::CopySample> out(sizes.size());
///   cudaError_t st = moesched::cuda::profile_link(host, dev, sizes, /*repeats=*/20,
///                        moesched::cuda::Direction::host_to_device, stream, out.data());
///   auto curve = moesched::TransferCurve::from_knots(moesched::cuda::curve_knots(out));
///
/// Each size is copied `repeats` times with cudaMemcpyAsync on the caller's stream, each copy
/// timed alone between two device events after one untimed warm-up copy; the median is kept.
/// One copy alone is what a prefetch of one expert (or chunk) sees, fixed costs included.

#include "moesched/core/config.hpp"
#include "moesched/core/hardware.hpp"
#include "moesched/core/units.hpp"
#include "moesched/cuda/status.cuh"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

namespace moesched::cuda {

/// Which way the copies go.
enum class Direction { host_to_device, device_to_host };

/// The measured time of one copy size.
struct CopySample {
  std::uint64_t bytes = 0;
  double median_us = 0.0;
  double p10_us = 0.0;  ///< 10th percentile over the repeats
  double p90_us = 0.0;  ///< 90th percentile over the repeats
  /// Achieved bandwidth of the median copy, GB/s (10^9 bytes per second).
  [[nodiscard]] double gb_per_s() const noexcept {
    return median_us > 0.0 ? static_cast<double>(bytes) / median_us / 1e3 : 0.0;
  }
};

/// Powers of 4 from 4 KiB up to `max_bytes` (inclusive when it is one of them).
[[nodiscard]] inline std::vector<std::uint64_t> default_profile_sizes(std::uint64_t max_bytes) {
  std::vector<std::uint64_t> sizes;
  for (std::uint64_t s = 4096; s <= max_bytes; s *= 4) sizes.push_back(s);
  return sizes;
}

/// Bytes of pinned host memory and of device memory profile_link needs for `sizes` (each).
[[nodiscard]] inline std::uint64_t link_profile_workspace_bytes(std::span<const std::uint64_t> sizes) {
  return sizes.empty() ? 0 : *std::max_element(sizes.begin(), sizes.end());
}

/// Measure each size; `out` has one element per size. `pinned_host` must come from
/// cudaHostAlloc/cudaHostRegister (pageable memory measures a different, slower path) and both
/// buffers must hold link_profile_workspace_bytes(sizes). Returns the first failing status.
[[nodiscard]] inline cudaError_t profile_link(void* pinned_host, void* device,
                                              std::span<const std::uint64_t> sizes, int repeats,
                                              Direction dir, cudaStream_t stream,
                                              CopySample* out) {
  if (repeats < 1 || pinned_host == nullptr || device == nullptr || out == nullptr) {
    return cudaErrorInvalidValue;
  }
  EventPair events;
  MOESCHED_CUDA_RETURN_IF(events.init());
  std::vector<double> times(static_cast<std::size_t>(repeats));
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    const std::uint64_t n = sizes[i];
    void* dst = dir == Direction::host_to_device ? device : pinned_host;
    const void* src = dir == Direction::host_to_device ? pinned_host : device;
    const cudaMemcpyKind kind =
        dir == Direction::host_to_device ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost;
    MOESCHED_CUDA_RETURN_IF(cudaMemcpyAsync(dst, src, n, kind, stream));  // warm-up
    MOESCHED_CUDA_RETURN_IF(cudaStreamSynchronize(stream));
    for (int r = 0; r < repeats; ++r) {
      MOESCHED_CUDA_RETURN_IF(events.record_start(stream));
      MOESCHED_CUDA_RETURN_IF(cudaMemcpyAsync(dst, src, n, kind, stream));
      MOESCHED_CUDA_RETURN_IF(events.record_stop(stream));
      float ms = 0.0F;
      MOESCHED_CUDA_RETURN_IF(events.elapsed_ms(&ms));
      times[static_cast<std::size_t>(r)] = static_cast<double>(ms) * 1e3;
    }
    std::sort(times.begin(), times.end());
    auto pct = [&](double q) {
      return times[static_cast<std::size_t>(q * static_cast<double>(times.size() - 1) + 0.5)];
    };
    out[i] = CopySample{n, pct(0.5), pct(0.1), pct(0.9)};
  }
  return cudaSuccess;
}

/// Turn samples into TransferCurve knots (whole nanoseconds). Copy time must not fall as size
/// grows; where measurement noise makes a larger copy's median faster than a smaller one's, the
/// smaller copy's time is kept (a running maximum), so the curve stays physically sensible.
[[nodiscard]] inline std::vector<TransferCurve::Knot> curve_knots(std::span<const CopySample> samples) {
  std::vector<TransferCurve::Knot> knots;
  Nanoseconds floor{0};
  for (const auto& s : samples) {
    if (s.bytes == 0 || !(s.median_us > 0.0)) continue;
    floor = std::max(from_us(s.median_us), floor);
    knots.push_back({Bytes{s.bytes}, floor});
  }
  return knots;
}

}  // namespace moesched::cuda
