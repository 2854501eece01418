// libFuzzer target: routing-dump bytes either import into a valid trace or throw ConfigError.
// Each input is tried as the importer meets files, by content (JSON, JSONL, CSV; gzip by magic
// bytes), and one more way chosen by its length: as CSV by name, under the strict options
// (--incomplete error, --records, a composite request key), or gzip-compressed (so the
// decompression path sees valid streams too).
#include <moesched/io/trace.hpp>
#include <moesched/trace/import.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

namespace {

void try_import(std::string_view text, const std::string& name, const moesched::trace::ImportOptions& opt) {
  try {
    auto [writer, report] = moesched::trace::import_routing_text(text, name, opt);
    // what the importer accepts must be a valid trace: the reader checks every value
    const auto bytes = writer.to_safetensors().serialize();
    try {
      (void)moesched::io::Trace::from_buffer(bytes.data(), bytes.size(), "fuzz");
    } catch (const moesched::ConfigError&) {
      std::abort();  // an imported trace the reader rejects: an importer bug
    }
    if (report.tokens != writer.token_count()) std::abort();
  } catch (const moesched::ConfigError&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try_import(text, "fuzz", {});
  // one more way per input, chosen by its length (deterministic; keeps the run within its time)
  switch (size % 3) {
    case 0: try_import(text, "fuzz.csv", {}); break;
    case 1: {
      moesched::trace::ImportOptions strict;
      strict.incomplete = moesched::trace::IncompleteTokens::error;
      strict.records_key = "routes";
      strict.fields.set("request", {"dataset", "problem_id"});
      try_import(text, "fuzz.jsonl", strict);
      break;
    }
    default:
      if (size <= 4096) try_import(moesched::trace::gzip(text, 1), "fuzz.gz", {});
      break;
  }
  return 0;
}
