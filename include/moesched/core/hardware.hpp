#pragma once
/// TransferCurve / ComputeSpec / HardwareDesc: what a GPU and its host link can do.
///
///   auto pcie4 = moesched::TransferCurve::affine(moesched::gb_per_s(24.5), moesched::from_us(3));
///   pcie4.time(moesched::Bytes::mib(1));        // ~45.8 us: 3 us fixed + 1 MiB at 24.5 GB/s
///
///   auto h200 = moesched::TransferCurve::measured({{moesched::Bytes::kib(4), moesched::gb_per_s(1.5)},
///                                                  {moesched::Bytes::mib(1), moesched::gb_per_s(48.6)},
///                                                  {moesched::Bytes::mib(16), moesched::gb_per_s(54.9)}});
///   h200.time(moesched::Bytes::mib(4));          // interpolated between the measured points
///
/// A copy's time is a piecewise-linear function of its size through measured (size, time) knots:
/// flat below the first knot (the fixed per-copy cost dominates), linear between knots, and at the
/// marginal rate of the last segment beyond the last knot. An affine link (fixed cost + size over
/// bandwidth) is the special case of one knot at size 0 plus its bandwidth.

#include "moesched/core/config.hpp"
#include "moesched/core/dtype.hpp"
#include "moesched/core/error.hpp"
#include "moesched/core/units.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace moesched {

/// Copy time as a function of copy size (host-to-device or device-to-host).
class TransferCurve {
 public:
  /// One knot: a copy of `size` takes `time`.
  struct Knot {
    Bytes size;
    Nanoseconds time;
    friend constexpr bool operator==(const Knot&, const Knot&) = default;
  };

  TransferCurve() = default;

  /// Fixed cost `overhead` per copy plus `size / bandwidth`. Throws ConfigError if the bandwidth
  /// is not positive and finite or the overhead is negative.
  [[nodiscard]] static TransferCurve affine(BytesPerSecond bandwidth, Nanoseconds overhead) {
    check_rate("bandwidth_gbps", bandwidth);
    if (overhead.count() < 0) {
      throw ConfigError("", "per_copy_overhead_us", std::to_string(to_us(overhead)),
                        "must not be negative");
    }
    TransferCurve c;
    c.knots_.push_back({Bytes{0}, overhead});
    c.tail_rate_ = bandwidth;
    return c;
  }

  /// Through measured (size, achieved bandwidth) points, sizes strictly increasing. Throws
  /// ConfigError naming `points[i]` if a size repeats or decreases, a bandwidth is not positive,
  /// or the implied copy time decreases with size.
  [[nodiscard]] static TransferCurve measured(
      const std::vector<std::pair<Bytes, BytesPerSecond>>& points) {
    if (points.empty()) throw ConfigError("", "points", "[]", "needs at least one point");
    TransferCurve c;
    for (std::size_t i = 0; i < points.size(); ++i) {
      const auto [size, rate] = points[i];
      const std::string at = "points[" + std::to_string(i) + "]";
      if (size.count == 0) throw ConfigError("", at + ".bytes", "0", "must be positive");
      try {
        check_rate("gbps", rate);
      } catch (const ConfigError& e) {
        throw e.under(at);
      }
      const Nanoseconds t = transfer_time(size, rate);
      if (!c.knots_.empty()) {
        const Knot& prev = c.knots_.back();
        if (size <= prev.size) {
          throw ConfigError("", at + ".bytes", std::to_string(size.count),
                            "sizes must increase strictly (previous point has " +
                                std::to_string(prev.size.count) + ")");
        }
        if (t < prev.time) {
          throw ConfigError("", at + ".gbps", std::to_string(rate.gb_per_s()),
                            "implies a copy time (" + std::to_string(to_us(t)) +
                                " us) shorter than the smaller copy before it (" +
                                std::to_string(to_us(prev.time)) + " us)");
        }
      }
      c.knots_.push_back({size, t});
    }
    if (c.knots_.size() == 1) {
      c.tail_rate_ = points.front().second;
    } else {
      const Knot& a = c.knots_[c.knots_.size() - 2];
      const Knot& b = c.knots_.back();
      const auto dt = static_cast<double>((b.time - a.time).count());
      if (dt <= 0.0) {
        throw ConfigError("", "points[" + std::to_string(points.size() - 1) + "]",
                          std::to_string(points.back().second.gb_per_s()),
                          "the last two points must have different copy times, so the rate for "
                          "larger copies is defined");
      }
      c.tail_rate_ = {static_cast<double>((b.size - a.size).count) / dt * 1e9};
    }
    return c;
  }

  /// Time for one copy of `size` bytes.
  [[nodiscard]] Nanoseconds time(Bytes size) const noexcept {
    if (knots_.empty()) return Nanoseconds{0};
    if (size <= knots_.front().size) return knots_.front().time;
    const Knot& last = knots_.back();
    if (size >= last.size) return last.time + transfer_time(size - last.size, tail_rate_);
    // First knot with knot.size >= size; knots are few (<= ~16), a linear scan is fastest.
    std::size_t i = 1;
    while (knots_[i].size < size) ++i;
    const Knot& a = knots_[i - 1];
    const Knot& b = knots_[i];
    const double frac = static_cast<double>((size - a.size).count) /
                        static_cast<double>((b.size - a.size).count);
    return a.time + ceil_ns(frac * static_cast<double>((b.time - a.time).count()));
  }

  /// Achieved bandwidth for one copy of `size` bytes (size / time).
  [[nodiscard]] BytesPerSecond effective_bandwidth(Bytes size) const noexcept {
    const auto t = time(size);
    if (t.count() <= 0) return tail_rate_;
    return {static_cast<double>(size.count) / static_cast<double>(t.count()) * 1e9};
  }
  /// Marginal rate for large copies.
  [[nodiscard]] BytesPerSecond asymptotic_bandwidth() const noexcept { return tail_rate_; }
  /// The knots, smallest size first.
  [[nodiscard]] const std::vector<Knot>& knots() const noexcept { return knots_; }
  /// Whether this curve was built by affine() (one knot at size 0).
  [[nodiscard]] bool is_affine() const noexcept {
    return knots_.size() == 1 && knots_.front().size.count == 0;
  }

 private:
  static void check_rate(const char* field, BytesPerSecond rate) {
    if (!(rate.value > 0.0) || !std::isfinite(rate.value)) {
      throw ConfigError("", field, std::to_string(rate.gb_per_s()), "must be positive and finite");
    }
  }

  std::vector<Knot> knots_;
  BytesPerSecond tail_rate_{};
};

/// GPU compute throughput terms for a first-order matmul time estimate.
struct ComputeSpec {
  double bf16_tflops = 0.0;  ///< dense 16-bit tensor-core peak (FP32 accumulate)
  double fp8_tflops = 0.0;   ///< dense fp8 peak; 0 = no fp8 tensor cores
  double int8_tops = 0.0;    ///< dense int8 peak; 0 = not supported
  double f32_tflops = 0.0;   ///< non-tensor fp32 peak
  BytesPerSecond memory_bandwidth{};  ///< device memory (HBM/GDDR) bandwidth
  Nanoseconds kernel_overhead{};      ///< fixed cost per kernel (launch, tail, small-size inefficiency)

  /// Peak operations per second for `c`, falling back to the 16-bit rate when `c` has none.
  [[nodiscard]] double peak_ops(ComputeClass c) const noexcept {
    double tf = bf16_tflops;
    if (c == ComputeClass::fp8 && fp8_tflops > 0.0) tf = fp8_tflops;
    if (c == ComputeClass::int8 && int8_tops > 0.0) tf = int8_tops;
    if (c == ComputeClass::f32) tf = f32_tflops > 0.0 ? f32_tflops : bf16_tflops / 16.0;
    return tf * 1e12;
  }

  /// Roofline estimate of one matrix product: fixed kernel cost plus the larger of the
  /// arithmetic time and the time to stream `weight_bytes` from device memory.
  [[nodiscard]] Nanoseconds matmul_time(double flops, Bytes weight_bytes,
                                        ComputeClass c) const noexcept {
    const double compute_ns = flops / peak_ops(c) * 1e9;
    const double memory_ns =
        static_cast<double>(weight_bytes.count) / memory_bandwidth.value * 1e9;
    return kernel_overhead + ceil_ns(std::max(compute_ns, memory_ns));
  }

  /// Throws ConfigError naming the first bad field.
  void validate() const {
    auto positive = [](const char* f, double v) {
      if (!(v > 0.0) || !std::isfinite(v)) {
        throw ConfigError("", f, std::to_string(v), "must be positive and finite");
      }
    };
    auto non_negative = [](const char* f, double v) {
      if (!(v >= 0.0) || !std::isfinite(v)) {
        throw ConfigError("", f, std::to_string(v), "must be zero or positive and finite");
      }
    };
    positive("bf16_tflops", bf16_tflops);
    non_negative("fp8_tflops", fp8_tflops);
    non_negative("int8_tops", int8_tops);
    non_negative("f32_tflops", f32_tflops);
    positive("memory_bandwidth_gbps", memory_bandwidth.gb_per_s());
    if (kernel_overhead.count() < 0) {
      throw ConfigError("", "kernel_overhead_us", std::to_string(to_us(kernel_overhead)),
                        "must not be negative");
    }
  }
};

/// A GPU, its memory and its link to host memory.
struct HardwareDesc {
  std::string name;          ///< preset name, e.g. "rtx4090"
  std::string display_name;  ///< e.g. "NVIDIA GeForce RTX 4090"
  std::string source;        ///< where the numbers come from
  std::string notes;
  std::vector<std::string> aliases;
  std::string interconnect;  ///< e.g. "PCIe 4.0 x16"
  Bytes memory{};            ///< device memory as reported by the driver
  Bytes reserved{};          ///< taken by the CUDA context, allocator slack, libraries
  std::uint32_t copy_engines = 1;  ///< asynchronous copy engines (cudaDeviceProp::asyncEngineCount)
  TransferCurve h2d;         ///< host (pinned) to device
  TransferCurve d2h;         ///< device to host (pinned)
  std::optional<BytesPerSecond> bidirectional_total;  ///< both directions at once, summed
  ComputeSpec compute;

  /// Device memory left for model weights, KV cache and the expert cache.
  [[nodiscard]] Bytes usable_memory() const noexcept { return saturating_sub(memory, reserved); }

  /// Throws ConfigError naming the first bad field.
  void validate() const {
    if (memory.count == 0) throw ConfigError("", "memory_gib", "0", "must be positive");
    if (reserved >= memory) {
      throw ConfigError("", "reserved_mib", std::to_string(reserved.count >> 20U),
                        "must be below memory (" + std::to_string(memory.count >> 20U) + " MiB)");
    }
    if (copy_engines < 1 || copy_engines > 16) {
      throw ConfigError("", "copy_engines", std::to_string(copy_engines),
                        "must be between 1 and 16");
    }
    if (h2d.knots().empty()) throw ConfigError("", "h2d", "missing", "a host-to-device link is required");
    if (bidirectional_total && (!(bidirectional_total->value > 0.0))) {
      throw ConfigError("", "bidirectional_total_gbps",
                        std::to_string(bidirectional_total->gb_per_s()), "must be positive");
    }
    try {
      compute.validate();
    } catch (const ConfigError& e) {
      throw e.under("compute");
    }
  }
};

}  // namespace moesched
