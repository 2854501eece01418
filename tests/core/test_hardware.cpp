#include "support/catch.hpp"

#include <moesched/core/hardware.hpp>

#include <algorithm>
#include <random>
#include <vector>

using namespace moesched;
using moesched::test::contains;
using moesched::test::thrown_message;

namespace {
TransferCurve three_point_curve() {
  // knots: 1000 B in 1000 ns, 10000 B in 2000 ns, 100000 B in 10000 ns
  return TransferCurve::measured({{Bytes{1000}, gb_per_s(1.0)},
                                  {Bytes{10000}, gb_per_s(5.0)},
                                  {Bytes{100000}, gb_per_s(10.0)}});
}
}  // namespace

TEST_CASE("affine link: fixed cost plus size over bandwidth", "[core][hardware]") {
  const auto c = TransferCurve::affine(gb_per_s(25.0), from_us(3.0));
  CHECK(c.is_affine());
  CHECK(c.time(Bytes{0}) == Nanoseconds{3000});
  CHECK(c.time(Bytes{1}) == Nanoseconds{3001});
  CHECK(c.time(Bytes{1000000}) == Nanoseconds{3000 + 40000});
  CHECK(c.asymptotic_bandwidth().gb_per_s() == Approx(25.0));
  CHECK(c.effective_bandwidth(Bytes{1000000}).gb_per_s() == Approx(1e6 / 43000.0));
}

TEST_CASE("measured link: flat below, interpolated between, marginal rate beyond",
          "[core][hardware]") {
  const auto c = three_point_curve();
  CHECK_FALSE(c.is_affine());
  REQUIRE(c.knots().size() == 3U);
  CHECK(c.time(Bytes{1}) == Nanoseconds{1000});
  CHECK(c.time(Bytes{1000}) == Nanoseconds{1000});
  CHECK(c.time(Bytes{5500}) == Nanoseconds{1500});
  CHECK(c.time(Bytes{10000}) == Nanoseconds{2000});
  CHECK(c.time(Bytes{55000}) == Nanoseconds{6000});
  CHECK(c.time(Bytes{100000}) == Nanoseconds{10000});
  // last segment: 90000 B in 8000 ns = 11.25 GB/s
  CHECK(c.asymptotic_bandwidth().gb_per_s() == Approx(11.25));
  CHECK(c.time(Bytes{190000}) == Nanoseconds{18000});
}

TEST_CASE("a single measured point extrapolates at its own bandwidth", "[core][hardware]") {
  const auto c = TransferCurve::measured({{Bytes{1000}, gb_per_s(2.0)}});
  CHECK(c.time(Bytes{1000}) == Nanoseconds{500});
  CHECK(c.time(Bytes{3000}) == Nanoseconds{1500});
}

TEST_CASE("copy time never decreases with size on the H200 curve", "[core][hardware][invariant]") {
  const auto c = TransferCurve::measured({{Bytes{4096}, gb_per_s(1.5)},
                                          {Bytes{262144}, gb_per_s(35.7)},
                                          {Bytes{1048576}, gb_per_s(48.6)},
                                          {Bytes{16777216}, gb_per_s(54.9)},
                                          {Bytes{268435456}, gb_per_s(55.0)},
                                          {Bytes{1073741824}, gb_per_s(55.3)}});
  std::mt19937_64 rng(7);
  std::uniform_int_distribution<std::uint64_t> size(1, 1ULL << 32U);
  std::vector<std::uint64_t> sizes(5000);
  for (auto& s : sizes) s = size(rng);
  std::sort(sizes.begin(), sizes.end());
  Nanoseconds prev{0};
  for (auto s : sizes) {
    const auto t = c.time(Bytes{s});
    CHECK(t >= prev);
    prev = t;
  }
  // the guide's 16 MiB row: 305 us
  CHECK(to_us(c.time(Bytes::mib(16))) == Approx(305.6).epsilon(0.01));
  // a Mixtral expert (352 MB) takes the guide's 6.4 ms
  CHECK(to_ms(c.time(Bytes{352321536})) == Approx(6.4).epsilon(0.01));
}

TEST_CASE("bad link descriptions name the point and the field", "[core][hardware]") {
  auto m = thrown_message<ConfigError>([] {
    (void)TransferCurve::measured({{Bytes{1000}, gb_per_s(1.0)}, {Bytes{1000}, gb_per_s(2.0)}});
  });
  CHECK(contains(m, "field 'points[1].bytes' = 1000: sizes must increase strictly"));
  m = thrown_message<ConfigError>([] {
    (void)TransferCurve::measured({{Bytes{1000}, gb_per_s(1.0)}, {Bytes{2000}, gb_per_s(4.0)}});
  });
  CHECK(contains(m, "field 'points[1].gbps'"));
  CHECK(contains(m, "shorter than the smaller copy before it"));
  m = thrown_message<ConfigError>([] { (void)TransferCurve::measured({{Bytes{1000}, gb_per_s(0.0)}}); });
  CHECK(contains(m, "field 'points[0].gbps' = 0"));
  m = thrown_message<ConfigError>([] { (void)TransferCurve::measured({{Bytes{0}, gb_per_s(1.0)}}); });
  CHECK(contains(m, "field 'points[0].bytes' = 0"));
  m = thrown_message<ConfigError>([] { (void)TransferCurve::measured({}); });
  CHECK(contains(m, "needs at least one point"));
  m = thrown_message<ConfigError>([] { (void)TransferCurve::affine(gb_per_s(0.0), Nanoseconds{0}); });
  CHECK(contains(m, "field 'bandwidth_gbps' = 0"));
  m = thrown_message<ConfigError>([] { (void)TransferCurve::affine(gb_per_s(1.0), Nanoseconds{-1}); });
  CHECK(contains(m, "field 'per_copy_overhead_us'"));
}

TEST_CASE("roofline matmul time, hand-computed", "[core][hardware]") {
  ComputeSpec c;
  c.bf16_tflops = 100.0;
  c.memory_bandwidth = gb_per_s(1000.0);
  c.kernel_overhead = from_us(5.0);
  REQUIRE_NOTHROW(c.validate());
  // compute-bound: 1e9 FLOP at 100 TFLOP/s = 10 us; 1 MB at 1 TB/s = 1 us
  CHECK(c.matmul_time(1e9, Bytes{1000000}, ComputeClass::bf16) == Nanoseconds{15000});
  // memory-bound: 100 MB at 1 TB/s = 100 us
  CHECK(c.matmul_time(1e6, Bytes{100000000}, ComputeClass::bf16) == Nanoseconds{105000});
  // no fp8 units: fp8 runs at the 16-bit rate; f32 without a figure at 1/16 of it
  CHECK(c.peak_ops(ComputeClass::fp8) == Approx(100e12));
  CHECK(c.peak_ops(ComputeClass::f32) == Approx(100e12 / 16.0));
  c.fp8_tflops = 200.0;
  CHECK(c.peak_ops(ComputeClass::fp8) == Approx(200e12));
}

TEST_CASE("HardwareDesc::validate names the bad field", "[core][hardware]") {
  HardwareDesc h;
  h.memory = Bytes::gib(24);
  h.reserved = Bytes::mib(600);
  h.h2d = TransferCurve::affine(gb_per_s(25.0), from_us(3.0));
  h.compute.bf16_tflops = 165.2;
  h.compute.memory_bandwidth = gb_per_s(1008.0);
  REQUIRE_NOTHROW(h.validate());
  CHECK(h.usable_memory() == Bytes::gib(24) - Bytes::mib(600));

  auto bad = h;
  bad.reserved = Bytes::gib(30);
  CHECK(contains(thrown_message<ConfigError>([&] { bad.validate(); }), "field 'reserved_mib' = 30720"));
  bad = h;
  bad.memory = Bytes{0};
  CHECK(contains(thrown_message<ConfigError>([&] { bad.validate(); }), "field 'memory_gib' = 0"));
  bad = h;
  bad.copy_engines = 0;
  CHECK(contains(thrown_message<ConfigError>([&] { bad.validate(); }), "field 'copy_engines' = 0"));
  bad = h;
  bad.compute.bf16_tflops = -1.0;
  CHECK(contains(thrown_message<ConfigError>([&] { bad.validate(); }), "field 'compute.bf16_tflops'"));
  bad = h;
  bad.h2d = TransferCurve{};
  CHECK(contains(thrown_message<ConfigError>([&] { bad.validate(); }), "field 'h2d'"));
}

TEST_CASE("knots given as (size, time) build the same curve as (size, bandwidth)", "[core][hardware]") {
  const auto by_rate = three_point_curve();
  const auto by_time = TransferCurve::from_knots(
      {{Bytes{1000}, Nanoseconds{1000}}, {Bytes{10000}, Nanoseconds{2000}}, {Bytes{100000}, Nanoseconds{10000}}});
  CHECK(by_time.knots() == by_rate.knots());
  CHECK(by_time.time(Bytes{5500}) == by_rate.time(Bytes{5500}));
  CHECK(by_time.asymptotic_bandwidth().gb_per_s() == Approx(11.25));
  // equal times are allowed (a flat, overhead-bound start) except for the last two
  CHECK_NOTHROW(TransferCurve::from_knots(
      {{Bytes{4096}, Nanoseconds{2700}}, {Bytes{16384}, Nanoseconds{2700}}, {Bytes{65536}, Nanoseconds{4000}}}));
  auto m = thrown_message<ConfigError>([] {
    (void)TransferCurve::from_knots({{Bytes{1000}, Nanoseconds{900}}, {Bytes{2000}, Nanoseconds{900}}});
  });
  CHECK(contains(m, "field 'points[1].us' = 0.9"));
  CHECK(contains(m, "the last two points must have different copy times"));
  m = thrown_message<ConfigError>([] {
    (void)TransferCurve::from_knots({{Bytes{1000}, Nanoseconds{900}}, {Bytes{2000}, Nanoseconds{800}}});
  });
  CHECK(contains(m, "field 'points[1].us' = 0.8"));
  CHECK(contains(m, "shorter than the smaller copy before it"));
  m = thrown_message<ConfigError>([] { (void)TransferCurve::from_knots({{Bytes{1000}, Nanoseconds{0}}}); });
  CHECK(contains(m, "field 'points[0].us'"));
  CHECK(contains(m, "must be positive"));
}
