#pragma once
/// Status: what a hot-path call returns instead of throwing (FlashInfer's and CUTLASS's habit).
///
///   moesched::runtime::Status s = exec.copy(id, moesched::CopyPriority::high);
///   if (s.code == moesched::runtime::StatusCode::no_free_slot) { /* evict first */ }
///   if (!s) std::fprintf(stderr, "%s\n", s.describe().c_str());
///   // "copy of L3/E5: no free slot"
///
/// A status names the call that failed, the expert it concerned (when one did) and, for a backend
/// failure, the backend's own text (a CUDA error string, an errno message) as a pointer to static
/// storage, so building one never allocates. Exceptions stay for configuration (ConfigError).

#include "moesched/core/config.hpp"
#include "moesched/core/expert_id.hpp"

#include <cstdint>
#include <string>

namespace moesched::runtime {

enum class StatusCode : std::uint8_t {
  ok = 0,
  no_free_slot,   ///< copy: every slot is taken (evict first); not a fault
  not_absent,     ///< copy of an expert that is queued, copying or resident (a policy bug)
  not_resident,   ///< evict of an expert that is not resident (a policy bug)
  pinned,         ///< evict of an expert the running layer still needs (a policy bug)
  unmet_need,     ///< the pass waits for an expert nobody copies (a policy bug)
  bad_argument,   ///< an id, slot or option out of range
  backend_error,  ///< the backend failed (CUDA error, allocation, thread start)
  shut_down,      ///< the backend no longer accepts work
};

/// Name of a status code ("no_free_slot").
[[nodiscard]] constexpr const char* status_name(StatusCode c) noexcept {
  switch (c) {
    case StatusCode::ok: return "ok";
    case StatusCode::no_free_slot: return "no free slot";
    case StatusCode::not_absent: return "the expert is not absent";
    case StatusCode::not_resident: return "the expert is not resident";
    case StatusCode::pinned: return "the expert is pinned by the running layer";
    case StatusCode::unmet_need: return "a needed expert is absent with nothing in flight";
    case StatusCode::bad_argument: return "bad argument";
    case StatusCode::backend_error: return "backend error";
    case StatusCode::shut_down: return "the backend is shut down";
  }
  return "?";
}

/// "L3/E5".
[[nodiscard]] inline std::string expert_text(ExpertId id) {
  // Appended piece by piece: GCC 12 at -O3 warns falsely (-Wrestrict) on "L" + to_string(...).
  std::string s = "L";
  s += std::to_string(id.layer);
  s += "/E";
  s += std::to_string(id.expert);
  return s;
}

/// The result of a hot-path call. Cheap to copy; `call` and `detail` point to static strings.
struct [[nodiscard]] Status {
  StatusCode code = StatusCode::ok;
  const char* call = "";      ///< the operation that failed: "copy", "evict", "cudaMemcpyAsync", ...
  bool has_expert = false;
  ExpertId expert{};          ///< the expert it concerned, when has_expert
  const char* detail = "";    ///< backend text (cudaGetErrorString, strerror), or ""

  [[nodiscard]] constexpr bool ok() const noexcept { return code == StatusCode::ok; }
  constexpr explicit operator bool() const noexcept { return ok(); }

  [[nodiscard]] static constexpr Status success() noexcept { return {}; }
  [[nodiscard]] static constexpr Status fail(StatusCode c, const char* call) noexcept { return {c, call, false, {}, ""}; }
  [[nodiscard]] static constexpr Status fail(StatusCode c, const char* call, ExpertId id) noexcept {
    return {c, call, true, id, ""};
  }
  [[nodiscard]] static constexpr Status backend(const char* call, const char* detail) noexcept {
    return {StatusCode::backend_error, call, false, {}, detail};
  }

  /// "copy of L3/E5: no free slot", "cudaMemcpyAsync: backend error (invalid argument)".
  [[nodiscard]] std::string describe() const {
    std::string s = call;
    if (has_expert) s += " of " + expert_text(expert);
    s += ": ";
    s += status_name(code);
    if (detail != nullptr && *detail != '\0') {
      s += " (";
      s += detail;
      s += ")";
    }
    return s;
  }
};

}  // namespace moesched::runtime
