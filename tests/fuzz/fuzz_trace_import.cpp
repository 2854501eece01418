// libFuzzer target: routing-dump text either imports or throws ConfigError.
#include <moesched/trace/import.hpp>

#include <cstddef>
#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const std::string text(reinterpret_cast<const char*>(data), size);
    auto [writer, report] = moesched::trace::import_routing_text(text, "fuzz", {});
    return writer.step_count() > 1000000 ? 1 : 0;
  } catch (const moesched::ConfigError&) {
    return 0;
  }
}
