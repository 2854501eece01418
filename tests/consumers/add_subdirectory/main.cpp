// Loads the shipped presets from moesched's source tree (the BUILD_INTERFACE preset directory).
#include <moesched/io/presets.hpp>
#include <moesched/moesched.hpp>

#include <cstdio>

int main() {
  const auto catalog = moesched::io::PresetCatalog::from_environment();
  const moesched::ModelDesc m = catalog.model("olmoe");
  const moesched::HardwareDesc g = catalog.gpu("h200");
  std::printf("%s: %.2f ms per expert copy on %s\n", m.display_name.c_str(),
              moesched::to_ms(moesched::expert_copy_time(m, g)), g.display_name.c_str());
  return m.expert_bytes().count == 12582912ULL ? 0 : 1;
}
