// libFuzzer target: any byte string given to the trace reader either opens as a valid trace or
// throws ConfigError; anything else (a crash, a sanitizer report, another exception, a hang,
// an allocation past the RSS limit) is a bug. Valid inputs are then read completely.
#include <moesched/io/trace.hpp>
#include <moesched/trace/stats.hpp>

#include <cstddef>
#include <cstdint>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto t = moesched::io::Trace::from_buffer(reinterpret_cast<const std::byte*>(data), size, "fuzz");
    const auto& m = t.meta().model;
    std::uint64_t sum = 0;
    std::vector<std::uint16_t> row(m.top_k);
    for (moesched::StepInfo s : t.steps()) {
      for (std::uint64_t tok = s.first_token; tok < s.first_token + s.tokens; ++tok) {
        for (std::uint32_t l = 0; l < m.moe_layers; ++l) {
          t.experts(tok, l, row.data());
          for (auto e : row) sum += e;
        }
      }
    }
    if (t.token_count() * m.moe_layers * m.top_k < (1U << 16U)) (void)moesched::trace::compute_stats(t);
    return sum == 0xFFFFFFFFFFFFULL ? 1 : 0;  // keep the reads alive
  } catch (const moesched::ConfigError&) {
    return 0;
  }
}
