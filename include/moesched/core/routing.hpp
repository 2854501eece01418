#pragma once
/// Routing vocabulary shared by traces, the simulator and policies: forward-step phases and
/// what one step of a request did.
///
///   moesched::StepInfo s{.request = 0, .phase = moesched::StepPhase::verify, .tokens = 5,
///                        .draft_len = 4, .accepted = 2};
///   s.emitted_tokens();   // 3: the accepted drafts plus the target's own next token
///
/// A prefill step runs the prompt (many tokens) and emits the first output token; a decode step
/// runs one token and emits one; an SD verification step runs the last accepted token plus
/// `draft_len` draft tokens (so tokens == draft_len + 1) and emits accepted + 1.

#include "moesched/core/config.hpp"

#include <cstdint>
#include <optional>
#include <string_view>

namespace moesched {

/// Kind of forward step.
enum class StepPhase : std::uint8_t { prefill = 0, decode = 1, verify = 2 };

[[nodiscard]] constexpr std::string_view phase_name(StepPhase p) noexcept {
  switch (p) {
    case StepPhase::prefill: return "prefill";
    case StepPhase::decode: return "decode";
    case StepPhase::verify: return "verify";
  }
  return "?";
}
[[nodiscard]] constexpr std::optional<StepPhase> parse_phase(std::string_view s) noexcept {
  if (s == "prefill") return StepPhase::prefill;
  if (s == "decode") return StepPhase::decode;
  if (s == "verify" || s == "sd_verify" || s == "verification") return StepPhase::verify;
  return std::nullopt;
}

/// One forward step of one request.
struct StepInfo {
  std::uint32_t request = 0;
  StepPhase phase = StepPhase::decode;
  std::uint32_t tokens = 1;      ///< tokens run through the target model in this step
  std::uint16_t draft_len = 0;   ///< SD: draft tokens proposed (verify steps only)
  std::uint16_t accepted = 0;    ///< SD: draft tokens accepted (<= draft_len)
  std::uint64_t first_token = 0; ///< index of the step's first token in the trace's token axis

  /// Output tokens this step produces.
  [[nodiscard]] constexpr std::uint32_t emitted_tokens() const noexcept {
    return phase == StepPhase::verify ? std::uint32_t{accepted} + 1U : 1U;
  }
  /// Why this step is inconsistent, or nullptr if it is consistent.
  [[nodiscard]] constexpr const char* defect() const noexcept {
    if (tokens == 0) return "a step must run at least one token";
    if (phase == StepPhase::verify) {
      if (draft_len == 0) return "a verify step needs draft_len >= 1";
      if (tokens != std::uint32_t{draft_len} + 1U) return "a verify step runs draft_len + 1 tokens";
      if (accepted > draft_len) return "accepted exceeds draft_len";
    } else {
      if (draft_len != 0 || accepted != 0) return "only verify steps have draft_len or accepted";
      if (phase == StepPhase::decode && tokens != 1) return "a decode step runs exactly one token";
    }
    return nullptr;
  }
};

}  // namespace moesched
