#pragma once
/// ExpertId: which expert of which MoE layer.
///
///   moesched::ExpertId e{.layer = 3, .expert = 5};
///   std::uint32_t slot = e.flat(/*experts_per_layer=*/8);   // 29
///   auto back = moesched::ExpertId::from_flat(29, 8);         // {3, 5}
///
/// `layer` counts MoE layers only (0 is the first decoder layer that has experts); ModelShape maps
/// it to the decoder-layer index. Both fields are 16-bit, so an id packs into 32 bits and the
/// hot-path containers stay small.

#include "moesched/core/config.hpp"

#include <compare>
#include <cstddef>
#include <cstdint>
#include <functional>

namespace moesched {

/// Identity of one routed expert: (MoE layer ordinal, expert index within that layer).
struct ExpertId {
  std::uint16_t layer = 0;
  std::uint16_t expert = 0;

  /// Dense index `layer * experts_per_layer + expert`, for flat per-expert arrays.
  [[nodiscard]] MOESCHED_HOST_DEVICE constexpr std::uint32_t flat(
      std::uint32_t experts_per_layer) const noexcept {
    return static_cast<std::uint32_t>(layer) * experts_per_layer + expert;
  }
  /// Inverse of flat().
  [[nodiscard]] MOESCHED_HOST_DEVICE static constexpr ExpertId from_flat(
      std::uint32_t index, std::uint32_t experts_per_layer) noexcept {
    return {static_cast<std::uint16_t>(index / experts_per_layer),
            static_cast<std::uint16_t>(index % experts_per_layer)};
  }
  /// 32-bit key (layer in the high half), unique for every id.
  [[nodiscard]] MOESCHED_HOST_DEVICE constexpr std::uint32_t key() const noexcept {
    return (static_cast<std::uint32_t>(layer) << 16U) | expert;
  }

  friend constexpr auto operator<=>(ExpertId, ExpertId) noexcept = default;
  // Spelled out: nvcc 13 drops the == a defaulted <=> implies ("used but never defined").
  friend constexpr bool operator==(ExpertId, ExpertId) noexcept = default;
};

}  // namespace moesched

template <>
struct std::hash<moesched::ExpertId> {
  std::size_t operator()(moesched::ExpertId id) const noexcept {
    return std::hash<std::uint32_t>{}(id.key());
  }
};
