#pragma once
/// Rng: a small deterministic generator (xoshiro256**, seeded through splitmix64).
///
///   moesched::Rng rng(42);
///   double u = rng.uniform();            // [0, 1)
///   std::uint64_t i = rng.below(10);     // 0..9
///
/// Used instead of <random>'s distributions, whose output differs between standard libraries:
/// moesched promises the same output for the same seed on every platform.

#include "moesched/core/config.hpp"

#include <cstdint>

namespace moesched {

class Rng {
 public:
  explicit constexpr Rng(std::uint64_t seed) noexcept {
    for (auto& w : s_) w = splitmix(seed);
  }
  /// Next 64 random bits.
  constexpr std::uint64_t next() noexcept {
    const std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const std::uint64_t t = s_[1] << 17U;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }
  /// Uniform in [0, 1), 53 bits.
  constexpr double uniform() noexcept { return static_cast<double>(next() >> 11U) * 0x1.0p-53; }
  /// Uniform integer in [0, n); n must be positive. Modulo bias is below n / 2^64.
  constexpr std::uint64_t below(std::uint64_t n) noexcept { return next() % n; }
  /// True with probability p.
  constexpr bool chance(double p) noexcept { return uniform() < p; }

 private:
  static constexpr std::uint64_t rotl(std::uint64_t x, int k) noexcept {
    return (x << static_cast<unsigned>(k)) | (x >> static_cast<unsigned>(64 - k));
  }
  static constexpr std::uint64_t splitmix(std::uint64_t& x) noexcept {
    std::uint64_t z = (x += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30U)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27U)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31U);
  }
  std::uint64_t s_[4]{};
};

}  // namespace moesched
