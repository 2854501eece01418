#pragma once
/// LatencyModel: analytical per-layer times of a forward pass, what the cutoff solver (and a
/// policy planning copies) reasons with.
///
///   moesched::policy::AnalyticalLatency m{.copy_fixed = moesched::Nanoseconds{3'000},
///                                         .link_bytes_per_ns = 25.0,          // 25 GB/s
///                                         .expert = moesched::Bytes{17'300'000},
///                                         .dense = moesched::Nanoseconds{60'000},
///                                         .expert_ffn = moesched::Nanoseconds{35'000},
///                                         .draft_step = moesched::Nanoseconds{900'000}};
///   m.expert_copy_time();          // 3 us + 17.3 MB / 25 B/ns = 695 us
///   m.layer_time(/*tokens=*/5, /*experts=*/6);
///   m.draft_window_time(/*gamma=*/4);
///
/// Times: copy = copy_fixed + bytes / link rate (rounded up to a nanosecond); a layer of a pass
/// over `tokens` tokens running `experts` experts = dense + dense_per_token x tokens + experts x
/// expert_ffn + expert_per_token x (the tokens routed, tokens x top_k); a draft window = gamma x
/// draft_step. No stall: the model gives the parts a schedule overlaps or not. Std-only.

#include "moesched/core/config.hpp"
#include "moesched/core/units.hpp"

#include <concepts>
#include <cstdint>

namespace moesched::policy {

/// What an analytical latency model answers.
template <class M>
concept LatencyModel = requires(const M& m, std::uint32_t n) {
  { m.expert_copy_time() } -> std::same_as<Nanoseconds>;   ///< one routed expert host -> device
  { m.expert_bytes() } -> std::same_as<Bytes>;
  { m.layer_time(n, n) } -> std::same_as<Nanoseconds>;     ///< (tokens, experts run), no stall
  { m.draft_window_time(n) } -> std::same_as<Nanoseconds>; ///< gamma draft steps
};

/// The roofline-style model: fixed costs plus per-token and per-byte rates.
struct AnalyticalLatency {
  Nanoseconds copy_fixed{};            ///< per copy (submission, the small-copy floor)
  double link_bytes_per_ns = 25.0;     ///< host-to-device rate in bytes per ns (= GB/s)
  Bytes expert{};                      ///< one routed expert
  Nanoseconds dense{};                 ///< a layer's dense part (attention, router) per pass
  Nanoseconds dense_per_token{};
  Nanoseconds expert_ffn{};            ///< one expert's FFN per pass
  Nanoseconds expert_per_token{};      ///< per token routed to it
  std::uint32_t top_k = 1;
  Nanoseconds draft_step{};            ///< one draft-model step (SD)

  [[nodiscard]] Bytes expert_bytes() const noexcept { return expert; }
  [[nodiscard]] Nanoseconds expert_copy_time() const noexcept {
    return copy_fixed + ceil_ns(static_cast<double>(expert.count) / link_bytes_per_ns);
  }
  [[nodiscard]] Nanoseconds layer_time(std::uint32_t tokens, std::uint32_t experts) const noexcept {
    return dense + dense_per_token * tokens + expert_ffn * experts + expert_per_token * (std::int64_t{tokens} * top_k);
  }
  [[nodiscard]] Nanoseconds draft_window_time(std::uint32_t gamma) const noexcept { return draft_step * gamma; }
};

static_assert(LatencyModel<AnalyticalLatency>);

}  // namespace moesched::policy
