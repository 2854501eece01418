#pragma once
// The one way the command-line tools end on an exception: a message on stderr naming the tool,
// and an exit code, never std::terminate.
//
//   int main(int argc, char** argv) {
//     ...parse...
//     return moesched::tools::guarded_main("moesched-trace", [&] { return run(...); });
//   }
//
// Exit codes: what `body` returns; 2 for bad input (ConfigError: file, field and value); 4 when
// memory ran out; 70 (EX_SOFTWARE) for anything else, which is a bug in moesched: the message
// says so and names the exception.
#include <moesched/core/error.hpp>

#include <cstdio>
#include <exception>
#include <new>
#include <stdexcept>
#include <typeinfo>

namespace moesched::tools {

template <class Body>
int guarded_main(const char* tool, Body&& body) noexcept {
  try {
    return body();
  } catch (const ConfigError& e) {
    std::fprintf(stderr, "%s: error: %s\n", tool, e.what());
    return 2;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "%s: error: out of memory\n", tool);
    return 4;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: internal error (%s): %s\n(this is a bug in moesched; please report it with the command line)\n",
                 tool, typeid(e).name(), e.what());
    return 70;
  } catch (...) {
    std::fprintf(stderr, "%s: internal error: an unknown exception\n", tool);
    return 70;
  }
}

}  // namespace moesched::tools
