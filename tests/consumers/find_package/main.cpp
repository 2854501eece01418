// Uses the installed headers and the installed presets (found through the relocatable
// MOESCHED_PRESET_DIR of the exported moesched::io target), and the importer's gzip reader (zlib
// comes through moesched::io's find_dependency(ZLIB), nothing linked by hand).
#include <moesched/io/presets.hpp>
#include <moesched/moesched.hpp>
#include <moesched/trace/import_gzip.hpp>

#include <cstdio>
#include <string>
#include <string_view>

int main() {
  const std::string dir = MOESCHED_PRESET_DIR;
  if (dir != MOESCHED_EXPECTED_PRESET_DIR) {
    std::printf("MOESCHED_PRESET_DIR is %s, expected %s\n", dir.c_str(), MOESCHED_EXPECTED_PRESET_DIR);
    return 1;
  }
  const auto catalog = moesched::io::PresetCatalog({dir});
  const moesched::ModelDesc m = catalog.model("mixtral-8x7b");
  const moesched::HardwareDesc g = catalog.gpu("rtx4090");
  const auto plan = moesched::plan_memory(m, g);
  std::printf("%s on %s: %.1f MB per expert, %llu of %llu experts fit\n", m.display_name.c_str(),
              g.display_name.c_str(), m.expert_bytes().megabytes(),
              static_cast<unsigned long long>(plan.experts_fit),
              static_cast<unsigned long long>(plan.total_experts));
  // gzip.compress(b"moesched", mtime=0)
  static const unsigned char gz[] = {0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x03,
                                     0xcb, 0xcd, 0x4f, 0x2d, 0x4e, 0xce, 0x48, 0x4d, 0x01, 0x00,
                                     0x2f, 0xaa, 0x7b, 0x88, 0x08, 0x00, 0x00, 0x00};
  const std::string_view bytes(reinterpret_cast<const char*>(gz), sizeof gz);
  if (!moesched::trace::is_gzip(bytes) || moesched::trace::gunzip(bytes, "consumer").text != "moesched") {
    std::printf("gunzip through the installed moesched::io failed\n");
    return 1;
  }
  return m.expert_bytes().count == 352321536ULL && plan.total_experts == 256 ? 0 : 1;
}
