#pragma once
/// write_file_atomically: a file is either fully written or not touched at all.
///
///   moesched::io::write_file_atomically("out.json", text.data(), text.size());
///
/// Writes `path.tmp`, flushes it, then renames it over `path`. On any failure the temporary is
/// removed, an existing `path` is left as it was, and ConfigError names the file.

#include "moesched/core/error.hpp"

#include <cstddef>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>

namespace moesched::io {

inline void write_file_atomically(const std::filesystem::path& path, const void* data, std::size_t size) {
  const std::filesystem::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw ConfigError(path.string(), "", "", "cannot open for writing (does the folder exist?)");
    out.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
    out.flush();
    if (!out) {
      out.close();
      std::error_code ec;
      std::filesystem::remove(tmp, ec);
      throw ConfigError(path.string(), "", "", "write failed (disk full?)");
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    throw ConfigError(path.string(), "", "", "cannot replace the file: " + ec.message());
  }
}

}  // namespace moesched::io
