#pragma once
/// write_file_atomically: a file is either fully written or not touched at all.
///
///   moesched::io::write_file_atomically("out.json", text.data(), text.size());
///
/// Writes `path.tmp`, flushes it, then renames it over `path`. On any failure the temporary is
/// removed, an existing `path` is left as it was, and ConfigError names the file.
///
///   moesched::io::check_writable_path("out.json", "--json");   // before any long work starts

#include "moesched/core/error.hpp"

#include <cstddef>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>

namespace moesched::io {

/// Refuse, before any work starts, an output path that cannot be written: its folder is missing
/// or not a folder, or the path itself is a folder. `option` names the option that gave it. It
/// creates nothing (a later failure, such as a full disk, is still reported by the write).
inline void check_writable_path(const std::filesystem::path& path, const std::string& option) {
  if (path.empty()) throw ConfigError("", option, "\"\"", "empty output path");
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    throw ConfigError("", option, path.string(), "is a folder, not a file");
  }
  std::filesystem::path folder = path.parent_path();
  if (folder.empty()) folder = ".";
  const auto st = std::filesystem::status(folder, ec);
  if (!std::filesystem::exists(st)) {
    throw ConfigError("", option, path.string(), "the folder " + folder.string() + " does not exist");
  }
  if (!std::filesystem::is_directory(st)) {
    throw ConfigError("", option, path.string(), folder.string() + " is not a folder");
  }
}

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
