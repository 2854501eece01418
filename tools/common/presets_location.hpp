#pragma once
// Where an installed or build-tree tool finds the shipped presets.
#include <moesched/io/presets.hpp>

#include <filesystem>
#include <system_error>
#include <vector>

namespace moesched::tools {

/// The catalog a tool uses: --presets directories, then MOESCHED_PRESET_PATH, then the presets
/// installed beside the executable (<prefix>/bin/../share/moesched/presets), then the directory
/// compiled in (the source tree for a build-tree binary).
inline io::PresetCatalog preset_catalog(std::vector<std::filesystem::path> user_dirs) {
  auto catalog = io::PresetCatalog::from_environment(std::move(user_dirs));
  std::vector<std::filesystem::path> dirs = catalog.directories();
  std::error_code ec;
  const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const auto installed = exe.parent_path().parent_path() / "share" / "moesched" / "presets";
    if (std::filesystem::is_directory(installed, ec)) {
      dirs.insert(dirs.end() - (dirs.empty() ? 0 : 1), installed);
    }
  }
  return io::PresetCatalog(std::move(dirs));
}

}  // namespace moesched::tools
