// Uses the installed headers and the installed presets (found through the relocatable
// MOESCHED_PRESET_DIR of the exported moesched::io target).
#include <moesched/io/presets.hpp>
#include <moesched/moesched.hpp>

#include <cstdio>
#include <string>

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
  return m.expert_bytes().count == 352321536ULL && plan.total_experts == 256 ? 0 : 1;
}
