#pragma once
/// Units: integer nanoseconds for time, integer bytes for sizes, bytes per second for rates.
///
///   using namespace std::chrono_literals;
///   moesched::Bytes expert = moesched::Bytes::mib(17);
///   moesched::Nanoseconds t = moesched::transfer_time(expert, moesched::gb_per_s(55.0));
///   // t == 324'065ns: 17 MiB at 55 GB/s (decimal gigabytes), rounded up to whole ns
///
/// Time is `std::chrono::nanoseconds` (a signed 64-bit count) everywhere in moesched, so durations
/// interoperate with <chrono> and never silently change unit. Sizes are `Bytes` (unsigned 64-bit).
/// Rates are `BytesPerSecond` (a double: rates come from measurements and are never summed into
/// time without being converted by transfer_time, which rounds up to whole nanoseconds).

#include "moesched/core/config.hpp"

#include <chrono>
#include <compare>
#include <cstdint>
#include <limits>
#include <optional>

namespace moesched {

/// Integer nanoseconds: the only time unit in moesched.
using Nanoseconds = std::chrono::nanoseconds;

/// A byte count. Strong type: it does not mix with plain integers by accident.
struct Bytes {
  std::uint64_t count = 0;

  [[nodiscard]] static constexpr Bytes kib(std::uint64_t n) noexcept { return {n << 10U}; }
  [[nodiscard]] static constexpr Bytes mib(std::uint64_t n) noexcept { return {n << 20U}; }
  [[nodiscard]] static constexpr Bytes gib(std::uint64_t n) noexcept { return {n << 30U}; }
  /// Decimal megabytes (10^6), the unit of model cards and the design guide's tables.
  [[nodiscard]] constexpr double megabytes() const noexcept {
    return static_cast<double>(count) / 1e6;
  }
  /// Decimal gigabytes (10^9).
  [[nodiscard]] constexpr double gigabytes() const noexcept {
    return static_cast<double>(count) / 1e9;
  }
  /// Binary gibibytes (2^30).
  [[nodiscard]] constexpr double gibibytes() const noexcept {
    return static_cast<double>(count) / static_cast<double>(1ULL << 30U);
  }

  friend constexpr auto operator<=>(Bytes, Bytes) noexcept = default;
  // Spelled out: nvcc 13 drops the == a defaulted <=> implies ("used but never defined").
  friend constexpr bool operator==(Bytes, Bytes) noexcept = default;
  friend constexpr Bytes operator+(Bytes a, Bytes b) noexcept { return {a.count + b.count}; }
  friend constexpr Bytes operator-(Bytes a, Bytes b) noexcept { return {a.count - b.count}; }
  friend constexpr Bytes operator*(Bytes a, std::uint64_t k) noexcept { return {a.count * k}; }
  friend constexpr Bytes operator*(std::uint64_t k, Bytes a) noexcept { return {a.count * k}; }
  constexpr Bytes& operator+=(Bytes b) noexcept {
    count += b.count;
    return *this;
  }
  constexpr Bytes& operator-=(Bytes b) noexcept {
    count -= b.count;
    return *this;
  }
};

/// Bytes `a - b`, or zero when `b > a` (memory budgets never go negative).
[[nodiscard]] constexpr Bytes saturating_sub(Bytes a, Bytes b) noexcept {
  return a.count > b.count ? Bytes{a.count - b.count} : Bytes{0};
}

/// `a * b` on unsigned 64-bit integers, or nullopt on overflow.
[[nodiscard]] constexpr std::optional<std::uint64_t> checked_mul(std::uint64_t a,
                                                                 std::uint64_t b) noexcept {
  if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a) return std::nullopt;
  return a * b;
}

/// A transfer or processing rate in bytes per second.
struct BytesPerSecond {
  double value = 0.0;
  friend constexpr auto operator<=>(BytesPerSecond, BytesPerSecond) noexcept = default;
  // Spelled out: nvcc 13 drops the == a defaulted <=> implies ("used but never defined").
  friend constexpr bool operator==(BytesPerSecond, BytesPerSecond) noexcept = default;
  /// The rate in decimal gigabytes per second (what PCIe and HBM figures are quoted in).
  [[nodiscard]] constexpr double gb_per_s() const noexcept { return value / 1e9; }
};

/// A rate given in decimal gigabytes per second (10^9 bytes/s).
[[nodiscard]] constexpr BytesPerSecond gb_per_s(double gbps) noexcept { return {gbps * 1e9}; }

/// Round a non-negative, finite number of nanoseconds up to a whole count.
[[nodiscard]] constexpr Nanoseconds ceil_ns(double ns) noexcept {
  if (!(ns > 0.0)) return Nanoseconds{0};
  if (ns >= 9.2e18) return Nanoseconds{std::numeric_limits<std::int64_t>::max()};
  auto whole = static_cast<std::int64_t>(ns);
  if (static_cast<double>(whole) < ns) ++whole;
  return Nanoseconds{whole};
}

/// Time to move `size` at `rate`, rounded up to whole nanoseconds. `rate` must be positive.
[[nodiscard]] constexpr Nanoseconds transfer_time(Bytes size, BytesPerSecond rate) noexcept {
  return ceil_ns(static_cast<double>(size.count) / rate.value * 1e9);
}

/// Microseconds as a double, for printing.
[[nodiscard]] constexpr double to_us(Nanoseconds t) noexcept {
  return static_cast<double>(t.count()) / 1e3;
}
/// Milliseconds as a double, for printing.
[[nodiscard]] constexpr double to_ms(Nanoseconds t) noexcept {
  return static_cast<double>(t.count()) / 1e6;
}
/// Microseconds (possibly fractional) to whole nanoseconds, rounded up.
[[nodiscard]] constexpr Nanoseconds from_us(double us) noexcept { return ceil_ns(us * 1e3); }

}  // namespace moesched
