#include "support/catch.hpp"

#include <moesched/core/units.hpp>

#include <limits>

using namespace moesched;

static_assert(Bytes::mib(1).count == 1048576U);
static_assert(transfer_time(Bytes{55}, gb_per_s(55.0)) == Nanoseconds{1});
static_assert(saturating_sub(Bytes{3}, Bytes{5}) == Bytes{0});

TEST_CASE("Bytes arithmetic and unit conversions", "[core][units]") {
  CHECK(Bytes::kib(4).count == 4096U);
  CHECK(Bytes::gib(2).count == 2147483648ULL);
  CHECK((Bytes{10} + Bytes{5}).count == 15U);
  CHECK((Bytes{10} - Bytes{4}).count == 6U);
  CHECK((Bytes{10} * 3U).count == 30U);
  CHECK((3U * Bytes{10}).count == 30U);
  Bytes b{7};
  b += Bytes{3};
  CHECK(b.count == 10U);
  b -= Bytes{4};
  CHECK(b.count == 6U);
  CHECK(Bytes{352321536}.megabytes() == Approx(352.321536));
  CHECK(Bytes::gib(1).gibibytes() == Approx(1.0));
  CHECK(Bytes{1500000000}.gigabytes() == Approx(1.5));
  CHECK(Bytes{1} < Bytes{2});
  CHECK(saturating_sub(Bytes{9}, Bytes{4}) == Bytes{5});
  CHECK(saturating_sub(Bytes{4}, Bytes{9}) == Bytes{0});
}

TEST_CASE("checked_mul detects 64-bit overflow", "[core][units]") {
  CHECK(checked_mul(0, std::numeric_limits<std::uint64_t>::max()) == 0U);
  CHECK(checked_mul(1ULL << 32U, 1ULL << 31U) == (1ULL << 63U));
  CHECK_FALSE(checked_mul(1ULL << 32U, 1ULL << 32U).has_value());
}

TEST_CASE("transfer_time rounds up to whole nanoseconds", "[core][units]") {
  // 1 MiB at 55 GB/s = 1048576 / 55 ns = 19065.018... ns
  CHECK(transfer_time(Bytes::mib(1), gb_per_s(55.0)) == Nanoseconds{19066});
  // exact: 1000 bytes at 1 GB/s = 1000 ns
  CHECK(transfer_time(Bytes{1000}, gb_per_s(1.0)) == Nanoseconds{1000});
  CHECK(transfer_time(Bytes{0}, gb_per_s(1.0)) == Nanoseconds{0});
}

TEST_CASE("ceil_ns handles zero, negatives, NaN and huge values", "[core][units]") {
  CHECK(ceil_ns(0.0) == Nanoseconds{0});
  CHECK(ceil_ns(-5.0) == Nanoseconds{0});
  CHECK(ceil_ns(std::numeric_limits<double>::quiet_NaN()) == Nanoseconds{0});
  CHECK(ceil_ns(0.1) == Nanoseconds{1});
  CHECK(ceil_ns(2.0) == Nanoseconds{2});
  CHECK(ceil_ns(1e30) == Nanoseconds{std::numeric_limits<std::int64_t>::max()});
  CHECK(from_us(2.6) == Nanoseconds{2600});
  CHECK(to_us(Nanoseconds{2500}) == Approx(2.5));
  CHECK(to_ms(Nanoseconds{6400000}) == Approx(6.4));
  CHECK(gb_per_s(24.5).gb_per_s() == Approx(24.5));
}
