#pragma once
/// One include for Catch2 v2 (Debian 12: 2.13) and v3 (Ubuntu 24.04: 3.4).
///
///   #include "support/catch.hpp"
///   TEST_CASE("bytes add", "[core][units]") { CHECK(Approx(1.0) == 1.0); }
///
/// Tests use only the macros common to both versions plus `Approx` and the helpers below.

#include <string>
#include <utility>

#if defined(MOESCHED_CATCH2_V3)
#include <catch2/catch_approx.hpp>
#include <catch2/catch_test_macros.hpp>
using Catch::Approx;
#else
#include <catch2/catch.hpp>
#endif

namespace moesched::test {

/// The what() of the exception of type E thrown by `fn`, or "<no exception>" if none was thrown.
/// Other exception types propagate, which fails the test.
template <class E, class Fn>
std::string thrown_message(Fn&& fn) {
  try {
    std::forward<Fn>(fn)();
  } catch (const E& e) {
    return e.what();
  }
  return "<no exception>";
}

/// Whether `haystack` contains `needle` (for readable CHECK failures on error messages).
inline bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

}  // namespace moesched::test
