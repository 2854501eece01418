#pragma once
// Output helpers shared by the command-line tools.
#include <moesched/core/error.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>

namespace moesched::tools {

/// Write `text` to `path` ("-" = stdout) through a temporary file and a rename, so a reader never
/// sees a half-written file and an existing file survives a failed write.
inline void write_text_file(const std::string& path, const std::string& text) {
  if (path == "-") {
    std::fwrite(text.data(), 1, text.size(), stdout);
    return;
  }
  const std::filesystem::path target(path);
  const std::filesystem::path tmp = target.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw ConfigError(path, "", "", "cannot open for writing (does the folder exist?)");
    out << text;
    out.flush();
    if (!out) {
      std::error_code ec;
      std::filesystem::remove(tmp, ec);
      throw ConfigError(path, "", "", "write failed (disk full?)");
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, target, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    throw ConfigError(path, "", "", "cannot replace the file: " + ec.message());
  }
}

}  // namespace moesched::tools
