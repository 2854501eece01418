#include "support/catch.hpp"

#include <moesched/core/dtype.hpp>

using namespace moesched;

static_assert(matrix_bytes(DType::bf16, 14336, 4096) == Bytes{2ULL * 14336 * 4096});
static_assert(parse_dtype("bfloat16") == DType::bf16);

TEST_CASE("every dtype's canonical name parses back to it", "[core][dtype]") {
  for (const auto& info : kDTypes) {
    CHECK(dtype_info(info.dtype).name == info.name);
    CHECK(parse_dtype(info.name) == info.dtype);
    CHECK_FALSE(info.layout.empty());
  }
  CHECK(parse_dtype("float16") == DType::f16);
  CHECK(parse_dtype("half") == DType::f16);
  CHECK(parse_dtype("float32") == DType::f32);
  CHECK_FALSE(parse_dtype("int3").has_value());
  CHECK_FALSE(parse_dtype("").has_value());
  CHECK_FALSE(parse_dtype("BF16").has_value());  // names are case-sensitive, as in configs
}

TEST_CASE("matrix_bytes counts weights and scales, hand-computed", "[core][dtype]") {
  // 16-bit: 2 bytes per weight
  CHECK(matrix_bytes(DType::bf16, 3, 5).count == 30U);
  CHECK(matrix_bytes(DType::f16, 3, 5).count == 30U);
  CHECK(matrix_bytes(DType::f32, 3, 5).count == 60U);
  // fp8: 1 byte per weight + one fp32 scale per matrix
  CHECK(matrix_bytes(DType::fp8_e4m3, 100, 200).count == 20000U + 4U);
  // int8: 1 byte per weight + one fp16 scale per output row
  CHECK(matrix_bytes(DType::int8, 100, 200).count == 20000U + 200U);
  // int4 on Mixtral's gate: 14336*4096/2 bytes + 14336 rows * 32 groups * 4 bytes
  CHECK(matrix_bytes(DType::int4, 14336, 4096).count == 29360128U + 1835008U);
  // int4 with a partial group: 3 rows x 100 cols -> 1 group per row: 3*(400+32) bits = 162 bytes
  CHECK(matrix_bytes(DType::int4, 3, 100).count == 162U);
  // rounding up to whole bytes: 1x1 int4 = 4 + 32 bits = 36 bits -> 5 bytes
  CHECK(matrix_bytes(DType::int4, 1, 1).count == 5U);
  // MXFP4 on GPT-OSS's down projection: 2880*2880/2 + 2880 rows * 90 blocks * 1 byte
  CHECK(matrix_bytes(DType::mxfp4, 2880, 2880).count == 4147200U + 259200U);
}

TEST_CASE("vectors and unquantised matrices stay 16-bit (32-bit for f32)", "[core][dtype]") {
  CHECK(vector_bytes(DType::int4, 10).count == 20U);
  CHECK(vector_bytes(DType::bf16, 10).count == 20U);
  CHECK(vector_bytes(DType::f32, 10).count == 40U);
  CHECK(unquantized_matrix_bytes(DType::mxfp4, 4, 8).count == 64U);
}

TEST_CASE("quantised formats are smaller than bf16 for realistic shapes", "[core][dtype]") {
  const auto bf16 = matrix_bytes(DType::bf16, 1408, 2048);
  CHECK(matrix_bytes(DType::fp8_e4m3, 1408, 2048) < bf16);
  CHECK(matrix_bytes(DType::int4, 1408, 2048) < matrix_bytes(DType::int8, 1408, 2048));
  // int4 at group 128 with 32 scale bits costs 4.25 bits per weight
  CHECK(static_cast<double>(matrix_bytes(DType::int4, 1408, 2048).count) * 8.0 / (1408.0 * 2048.0) ==
        Approx(4.25));
}
