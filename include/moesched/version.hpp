#pragma once
/// moesched version. CMake reads these three lines, so this header is the single source of truth.
#define MOESCHED_VERSION_MAJOR 0
#define MOESCHED_VERSION_MINOR 1
#define MOESCHED_VERSION_PATCH 0

namespace moesched {
/// The library version as "major.minor.patch".
inline constexpr const char* version_string = "0.1.0";
}  // namespace moesched
