#pragma once
// Weight files and traces for the predictor tests, written with the library's own writers.
#include <moesched/io/safetensors.hpp>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace moesched::test {

/// A gates file: `weights[m]` is [E x H] row-major; `bias`/`score_bias` per layer or empty.
struct GatesSpec {
  std::uint32_t layers = 1, experts = 3, hidden = 2, top_k = 2;
  std::string scoring = "softmax";
  std::vector<std::vector<float>> weights, bias, score_bias;
  nlohmann::json config_patch = nlohmann::json::object();  // merged into the config
  std::string format = "moesched-gates";
};
inline void write_gates_file(const std::filesystem::path& path, const GatesSpec& g) {
  io::SafetensorsWriter w;
  nlohmann::json c = {{"model", "tiny"}, {"moe_layers", g.layers}, {"experts", g.experts}, {"hidden_size", g.hidden},
                      {"top_k", g.top_k}, {"scoring", g.scoring}, {"source", {{"class", "test"}}}};
  c.merge_patch(g.config_patch);
  w.metadata("format", g.format);
  w.metadata("config", c.dump());
  for (std::size_t m = 0; m < g.weights.size(); ++m) {
    const std::string p = "l" + std::to_string(m) + ".";
    w.add_values(p + "weight", io::TensorDType::f32, {g.experts, g.hidden}, g.weights[m]);
    if (m < g.bias.size() && !g.bias[m].empty()) w.add_values(p + "bias", io::TensorDType::f32, {g.experts}, g.bias[m]);
    if (m < g.score_bias.size() && !g.score_bias[m].empty()) w.add_values(p + "score_bias", io::TensorDType::f32, {g.experts}, g.score_bias[m]);
  }
  w.write(path);
}

/// One source layer of a learned file.
struct LearnedLayerSpec {
  std::uint32_t source = 0;
  std::vector<float> mean, std, w1, b1, w2, b2;
};
struct LearnedSpec {
  std::string kind = "mlp";
  std::uint32_t stride = 0, layers = 1, experts = 3, hidden = 2, hidden_dim = 2;
  std::vector<LearnedLayerSpec> entries;
  nlohmann::json config_patch = nlohmann::json::object();
};
inline void write_learned_file(const std::filesystem::path& path, const LearnedSpec& s) {
  io::SafetensorsWriter w;
  nlohmann::json src = nlohmann::json::array();
  for (const auto& e : s.entries) src.push_back(e.source);
  nlohmann::json c = {{"kind", s.kind}, {"stride", s.stride}, {"source_layers", src},
                      {"hidden_state", s.kind == "mlp" ? "layer_output" : "attn_input"}, {"hidden_size", s.hidden},
                      {"experts", s.experts}, {"top_k", 2}, {"moe_layers", s.layers}, {"hidden_dim", s.hidden_dim},
                      {"per_layer", nlohmann::json::array()}};
  c.merge_patch(s.config_patch);
  w.metadata("format", "moesched-mlp-predictor");
  w.metadata("config", c.dump());
  for (const auto& e : s.entries) {
    const std::string p = "l" + std::to_string(e.source) + ".";
    w.add_values(p + "mean", io::TensorDType::f32, {s.hidden}, e.mean);
    w.add_values(p + "std", io::TensorDType::f32, {s.hidden}, e.std);
    w.add_values(p + "w1", io::TensorDType::f32, {s.hidden_dim, s.hidden}, e.w1);
    w.add_values(p + "b1", io::TensorDType::f32, {s.hidden_dim}, e.b1);
    w.add_values(p + "w2", io::TensorDType::f32, {s.experts, s.hidden_dim}, e.w2);
    w.add_values(p + "b2", io::TensorDType::f32, {s.experts}, e.b2);
  }
  w.write(path);
}

/// The hand-computed H=2, D=2, E=3 network of the tests: mean 1, std 2, w1 = I, b1 = 0,
/// w2 = [[1,0],[0,1],[1,1]], b2 = [0,0,0.5].
inline LearnedLayerSpec tiny_layer(std::uint32_t source) {
  return {source, {1, 1}, {2, 2}, {1, 0, 0, 1}, {0, 0}, {1, 0, 0, 1, 1, 1}, {0, 0, 0.5F}};
}

}  // namespace moesched::test
