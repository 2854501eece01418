#pragma once
// Output helpers shared by the command-line tools.
#include <moesched/io/atomic_file.hpp>

#include <cstdio>
#include <string>

namespace moesched::tools {

/// Write `text` to `path` ("-" = stdout); files are written atomically (temp file + rename).
inline void write_text_file(const std::string& path, const std::string& text) {
  if (path == "-") {
    std::fwrite(text.data(), 1, text.size(), stdout);
    return;
  }
  io::write_file_atomically(path, text.data(), text.size());
}

/// Refuse an unwritable output path ("-" = stdout is always fine) before the work starts.
inline void check_output_path(const std::string& path, const std::string& option) {
  if (path == "-") return;
  io::check_writable_path(path, option);
}

}  // namespace moesched::tools
