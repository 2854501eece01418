// Writes the synthetic trace and weight files of tests/predict/synthetic.hpp into a folder, for
// the tool tests of `moesched-trace predict`:
//   predict_fixture_tool DIR   ->  DIR/t.trace.safetensors (all four hidden states),
//   DIR/plain/t.trace.safetensors (layer_output only), DIR/gates.safetensors, DIR/mlp.safetensors,
//   DIR/linear.safetensors, DIR/bad_gates.safetensors (a router of the wrong shape)
#include "predict/synthetic.hpp"

#include <cstdio>
#include <exception>
#include <filesystem>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: predict_fixture_tool DIR\n");
    return 2;
  }
  try {
    namespace syn = moesched::test::synthetic;
    const std::filesystem::path dir = argv[1];
    std::filesystem::create_directories(dir / "plain");
    syn::Fixture full({"moe_input", "layer_output", "attn_input", "draft_moe_input"}, dir);
    syn::Fixture plain({"layer_output"}, dir / "plain");
    moesched::test::GatesSpec bad;
    bad.layers = syn::L;
    bad.experts = syn::E;
    bad.hidden = syn::H;
    for (std::uint32_t m = 0; m < syn::L; ++m) bad.weights.push_back(std::vector<float>(syn::E * syn::H, 0.5F));
    bad.config_patch = {{"hidden_size", 4}};
    moesched::test::write_gates_file(dir / "bad_gates.safetensors", bad);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "predict_fixture_tool: %s\n", e.what());
    return 1;
  }
  return 0;
}
