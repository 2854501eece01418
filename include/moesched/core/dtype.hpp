#pragma once
/// DType: how weight matrices are stored, and what that costs in bytes.
///
///   auto b = moesched::matrix_bytes(moesched::DType::int4, /*rows=*/14336, /*cols=*/4096);
///   // 4 bits per weight + one fp16 scale and one fp16 zero point per group of 128 inputs
///   auto d = moesched::parse_dtype("bf16");   // std::optional<DType>{DType::bf16}
///
/// Quantised formats carry scales. The layout assumed for each format is written in its
/// description (dtype_info(d).layout); it matches the common public checkpoints (GPTQ/AWQ int4,
/// OCP microscaling MXFP4, per-channel int8, per-tensor fp8). Vectors (norms, biases) and the
/// router, embedding and LM-head matrices stay in 16-bit in every format, as those checkpoints do.

#include "moesched/core/config.hpp"
#include "moesched/core/units.hpp"

#include <array>
#include <cstdint>
#include <optional>
#include <string_view>

namespace moesched {

/// Storage format of the weight matrices.
enum class DType : std::uint8_t { f32, bf16, f16, fp8_e4m3, int8, int4, mxfp4 };

/// Which peak throughput a format's matrix products run at (weight-only formats dequantise
/// to 16-bit and run at the 16-bit rate).
enum class ComputeClass : std::uint8_t { f32, bf16, fp8, int8 };

/// How a quantised format's scales are shared.
enum class ScaleGranularity : std::uint8_t { none, per_tensor, per_row, per_group };

/// Static facts about one DType.
struct DTypeInfo {
  DType dtype;
  std::string_view name;   ///< canonical name used in presets and on the command line
  std::uint32_t bits;      ///< bits per stored weight
  ScaleGranularity scales; ///< how scales are shared
  std::uint32_t group;     ///< weights per scale group along the input dimension (per_group only)
  std::uint32_t scale_bits_per_group;  ///< scale (+ zero point) bits per group / row / tensor
  ComputeClass compute;    ///< which peak throughput applies
  std::string_view layout; ///< human-readable description of the assumed layout
};

inline constexpr std::array<DTypeInfo, 7> kDTypes{{
    {DType::f32, "f32", 32, ScaleGranularity::none, 0, 0, ComputeClass::f32, "IEEE float32"},
    {DType::bf16, "bf16", 16, ScaleGranularity::none, 0, 0, ComputeClass::bf16, "bfloat16"},
    {DType::f16, "fp16", 16, ScaleGranularity::none, 0, 0, ComputeClass::bf16, "IEEE float16"},
    {DType::fp8_e4m3, "fp8", 8, ScaleGranularity::per_tensor, 0, 32, ComputeClass::fp8,
     "fp8 e4m3 with one fp32 scale per matrix"},
    {DType::int8, "int8", 8, ScaleGranularity::per_row, 0, 16, ComputeClass::int8,
     "int8 with one fp16 scale per output channel"},
    {DType::int4, "int4", 4, ScaleGranularity::per_group, 128, 32, ComputeClass::bf16,
     "int4 weight-only, groups of 128 inputs, fp16 scale + fp16 zero point per group (GPTQ/AWQ)"},
    {DType::mxfp4, "mxfp4", 4, ScaleGranularity::per_group, 32, 8, ComputeClass::bf16,
     "OCP MXFP4: fp4 e2m1, blocks of 32 with one e8m0 scale"},
}};

/// Facts about `d`.
[[nodiscard]] constexpr const DTypeInfo& dtype_info(DType d) noexcept {
  return kDTypes[static_cast<std::size_t>(d)];
}

/// The canonical name of `d` ("bf16", "int4", ...).
[[nodiscard]] constexpr std::string_view dtype_name(DType d) noexcept { return dtype_info(d).name; }

/// Parse a canonical name; also accepts "float32", "bfloat16", "float16", "f16".
[[nodiscard]] constexpr std::optional<DType> parse_dtype(std::string_view s) noexcept {
  for (const auto& info : kDTypes) {
    if (info.name == s) return info.dtype;
  }
  if (s == "float32" || s == "fp32") return DType::f32;
  if (s == "bfloat16") return DType::bf16;
  if (s == "float16" || s == "f16" || s == "half") return DType::f16;
  if (s == "fp8_e4m3" || s == "float8_e4m3fn") return DType::fp8_e4m3;
  return std::nullopt;
}

/// Bytes of a `rows x cols` weight matrix (rows = outputs, cols = inputs) stored as `d`,
/// scales included. Bit counts are rounded up to whole bytes per matrix.
[[nodiscard]] constexpr Bytes matrix_bytes(DType d, std::uint64_t rows, std::uint64_t cols) noexcept {
  const auto& info = dtype_info(d);
  std::uint64_t bits = rows * cols * info.bits;
  switch (info.scales) {
    case ScaleGranularity::none: break;
    case ScaleGranularity::per_tensor: bits += info.scale_bits_per_group; break;
    case ScaleGranularity::per_row: bits += rows * info.scale_bits_per_group; break;
    case ScaleGranularity::per_group:
      bits += rows * ((cols + info.group - 1) / info.group) * info.scale_bits_per_group;
      break;
  }
  return Bytes{(bits + 7) / 8};
}

/// Bytes of a vector (norm weights, biases) of `n` elements: 16-bit, or 32-bit for f32 models.
[[nodiscard]] constexpr Bytes vector_bytes(DType d, std::uint64_t n) noexcept {
  return Bytes{n * (d == DType::f32 ? 4U : 2U)};
}

/// Bytes of a matrix kept in 16-bit whatever the model's format (router, embeddings, LM head),
/// or in 32-bit for f32 models.
[[nodiscard]] constexpr Bytes unquantized_matrix_bytes(DType d, std::uint64_t rows,
                                                       std::uint64_t cols) noexcept {
  return vector_bytes(d, rows * cols);
}

}  // namespace moesched
