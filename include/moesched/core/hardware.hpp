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
/// Copies per expert when the choice is automatic: 3 (one per matrix) when splitting a copy costs
/// at most 1/50 of a whole copy's link time (large experts on a bandwidth-bound link), else 1.
/// Splitting pays on every copy, demand copies included; it saves only where a demand copy finds a
/// speculative one on the link. `whole`: one copy of the expert; `thirds`: its three parts.
[[nodiscard]] constexpr std::uint32_t auto_copy_chunks(Nanoseconds whole, Nanoseconds thirds) noexcept {
  return (thirds - whole) * 50 <= whole ? 3U : 1U;
}

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
      throw ConfigError("", "per_copy_overhead_us", to_text(to_us(overhead)),
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
    std::vector<Knot> knots;
    for (std::size_t i = 0; i < points.size(); ++i) {
      const auto [size, rate] = points[i];
      try {
        check_rate("gbps", rate);
      } catch (const ConfigError& e) {
        throw e.under("points[" + std::to_string(i) + "]");
      }
      knots.push_back({size, transfer_time(size, rate)});
    }
    return build(std::move(knots), "gbps");
  }

  /// Through measured (size, copy time) knots, sizes strictly increasing and times not
  /// decreasing. Throws ConfigError naming `points[i]` otherwise.
  [[nodiscard]] static TransferCurve from_knots(std::vector<Knot> knots) {
    return build(std::move(knots), "us");
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
  /// Validates knots; `time_field` names the JSON field the times came from in errors.
  static TransferCurve build(std::vector<Knot> knots, const char* time_field) {
    if (knots.empty()) throw ConfigError("", "points", "[]", "needs at least one point");
    auto at = [](std::size_t i) { return "points[" + std::to_string(i) + "]"; };
    auto time_text = [&](std::size_t i) {
      return std::string(time_field) == "us" ? to_text(to_us(knots[i].time)) : std::string();
    };
    for (std::size_t i = 0; i < knots.size(); ++i) {
      if (knots[i].size.count == 0) throw ConfigError("", at(i) + ".bytes", "0", "must be positive");
      if (knots[i].time.count() <= 0) {
        throw ConfigError("", at(i) + "." + time_field, time_text(i), "must be positive");
      }
      if (i == 0) continue;
      const Knot& prev = knots[i - 1];
      if (knots[i].size <= prev.size) {
        throw ConfigError("", at(i) + ".bytes", std::to_string(knots[i].size.count),
                          "sizes must increase strictly (previous point has " +
                              std::to_string(prev.size.count) + ")");
      }
      if (knots[i].time < prev.time) {
        const std::string value =
            std::string(time_field) == "us"
                ? time_text(i)
                : to_text(static_cast<double>(knots[i].size.count) /
                          static_cast<double>(knots[i].time.count()));
        throw ConfigError("", at(i) + "." + time_field, value,
                          "implies a copy time (" + to_text(to_us(knots[i].time)) +
                              " us) shorter than the smaller copy before it (" +
                              to_text(to_us(prev.time)) + " us)");
      }
    }
    BytesPerSecond tail{};
    const Knot& b = knots.back();
    if (knots.size() == 1) {
      tail = {static_cast<double>(b.size.count) / static_cast<double>(b.time.count()) * 1e9};
    } else {
      const Knot& a = knots[knots.size() - 2];
      const auto dt = static_cast<double>((b.time - a.time).count());
      if (dt <= 0.0) {
        throw ConfigError("", at(knots.size() - 1) + "." + time_field, time_text(knots.size() - 1),
                          "the last two points must have different copy times, so the rate for "
                          "larger copies is defined");
      }
      tail = {static_cast<double>((b.size - a.size).count) / dt * 1e9};
    }
    TransferCurve c;  // validation is over: only now take the knots
    c.knots_ = std::move(knots);
    c.tail_rate_ = tail;
    return c;
  }

  static void check_rate(const char* field, BytesPerSecond rate) {
    if (!(rate.value > 0.0) || !std::isfinite(rate.value)) {
      throw ConfigError("", field, to_text(rate.gb_per_s()), "must be positive and finite");
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
        throw ConfigError("", f, to_text(v), "must be positive and finite");
      }
    };
    auto non_negative = [](const char* f, double v) {
      if (!(v >= 0.0) || !std::isfinite(v)) {
        throw ConfigError("", f, to_text(v), "must be zero or positive and finite");
      }
    };
    positive("bf16_tflops", bf16_tflops);
    non_negative("fp8_tflops", fp8_tflops);
    non_negative("int8_tops", int8_tops);
    non_negative("f32_tflops", f32_tflops);
    positive("memory_bandwidth_gbps", memory_bandwidth.gb_per_s());
    if (kernel_overhead.count() < 0) {
      throw ConfigError("", "kernel_overhead_us", to_text(to_us(kernel_overhead)),
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
                        to_text(bidirectional_total->gb_per_s()), "must be positive");
    }
    try {
      compute.validate();
    } catch (const ConfigError& e) {
      throw e.under("compute");
    }
  }
};

}  // namespace moesched
