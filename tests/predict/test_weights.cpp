// The weight-file readers: every kind of bad file is refused with file, field and value.
#include "support/catch.hpp"
#include "support/temp_dir.hpp"
#include "predict/fixtures.hpp"

#include <moesched/predict/weights.hpp>

#include <limits>
#include <string>

using namespace moesched;

namespace {

test::GatesSpec good_gates() {
  test::GatesSpec g;
  g.layers = 2;
  g.weights = {{1, 0, 0, 1, 1, 1}, {0, 1, 1, 0, 1, 1}};
  return g;
}
std::string gates_error(const test::GatesSpec& g) {
  test::TempDir dir;
  const auto path = dir.path() / "gates.safetensors";
  test::write_gates_file(path, g);
  return test::thrown_message<ConfigError>([&] { (void)predict::read_gates(path); });
}
test::LearnedSpec good_learned() {
  test::LearnedSpec s;
  s.layers = 3;
  s.stride = 1;
  s.entries = {test::tiny_layer(1), test::tiny_layer(0)};
  return s;
}
std::string learned_error(const test::LearnedSpec& s) {
  test::TempDir dir;
  const auto path = dir.path() / "mlp.safetensors";
  test::write_learned_file(path, s);
  return test::thrown_message<ConfigError>([&] { (void)predict::read_learned(path); });
}
#define CHECK_MSG(msg, text) \
  do {                       \
    const std::string m_ = (msg); \
    INFO(m_);                \
    CHECK(test::contains(m_, text)); \
  } while (false)

}  // namespace

TEST_CASE("gates file: a good one reads") {
  test::TempDir dir;
  auto g = good_gates();
  g.bias = {{}, {1, 2, 3}};
  const auto path = dir.path() / "gates.safetensors";
  test::write_gates_file(path, g);
  const auto set = predict::read_gates(path);
  CHECK(set.model == "tiny");
  CHECK(set.moe_layers == 2);
  CHECK(set.experts == 3);
  CHECK(set.hidden_size == 2);
  CHECK(set.top_k == 2);
  CHECK(set.scoring == predict::GateScoring::softmax);
  CHECK(set.groups == 1);  // no group-limited routing unless the config says so
  CHECK(set.groups_kept == 1);
  CHECK(set.group_score == predict::GroupScore::max);
  REQUIRE(set.routers.size() == 2);
  CHECK(set.routers[0].bias.size() == 0);
  CHECK(set.routers[1].bias.size() == 3);
  CHECK(set.routers[1].weight(2, 0) == 1.0F);
  CHECK(set.routers[1].weight(0, 1) == 1.0F);
}

TEST_CASE("gates file: each defect named") {
  auto g = good_gates();
  g.format = "moesched-trace";
  CHECK_MSG(gates_error(g), "gates.safetensors: field '__metadata__.format' = \"moesched-trace\": not a gates file (expected \"moesched-gates\")");
  g = good_gates();
  g.config_patch = {{"hidden_size", 4}};
  CHECK_MSG(gates_error(g), "gates.safetensors: field 'l0.weight.shape' = [3, 2]: expected [3, 4] (experts x hidden_size from the config)");
  g = good_gates();
  g.config_patch = {{"moe_layers", 3}};
  CHECK_MSG(gates_error(g), "gates.safetensors: field 'l2.weight': required tensor is missing");
  g = good_gates();
  g.config_patch = {{"moe_layers", 1}};
  CHECK_MSG(gates_error(g), "gates.safetensors: field 'l1.weight': unknown tensor");
  g = good_gates();
  g.config_patch = {{"scoring", "relu"}};
  CHECK_MSG(gates_error(g), "field '__metadata__.config.scoring' = \"relu\": unknown value; expected one of: softmax, sigmoid");
  g = good_gates();
  g.config_patch = {{"top_k", 4}};
  CHECK_MSG(gates_error(g), "field '__metadata__.config.top_k' = 4");
  g = good_gates();
  g.config_patch = {{"experts", nullptr}};
  CHECK_MSG(gates_error(g), "field '__metadata__.config.experts': required field is missing");
  g = good_gates();
  g.score_bias = {{0, 0, 1}};
  CHECK_MSG(gates_error(g), "field 'l0.score_bias': only sigmoid scoring has a score bias");
  // Group-limited routing (n_group, topk_group, group_score) on the 3 experts of good_gates().
  g = good_gates();
  g.config_patch = {{"n_group", 2}};
  CHECK_MSG(gates_error(g), "field '__metadata__.config.n_group' = 2: must divide the expert count (3)");
  g = good_gates();
  g.config_patch = {{"n_group", 4}};
  CHECK_MSG(gates_error(g), "field '__metadata__.config.n_group' = 4: must be between 1 and 3");
  g = good_gates();
  g.config_patch = {{"n_group", 3}, {"topk_group", 1}};
  CHECK_MSG(gates_error(g), "field '__metadata__.config.topk_group' = 1: keeps 1 experts, fewer than top_k (2)");
  g = good_gates();
  g.config_patch = {{"n_group", 3}, {"topk_group", 4}};
  CHECK_MSG(gates_error(g), "field '__metadata__.config.topk_group' = 4: must be between 1 and 3");
  g = good_gates();
  g.config_patch = {{"n_group", 3}, {"group_score", "top2_sum"}};
  CHECK_MSG(gates_error(g), "field '__metadata__.config.group_score' = \"top2_sum\": needs at least two experts per group");
  g = good_gates();
  g.config_patch = {{"group_score", "mean"}};
  CHECK_MSG(gates_error(g), "field '__metadata__.config.group_score' = \"mean\": unknown value; expected one of: max, top2_sum");
  g = good_gates();
  g.weights[1][3] = std::numeric_limits<float>::infinity();
  CHECK_MSG(gates_error(g), "field 'l1.weight[3]' = inf: weights must be finite");
}

TEST_CASE("gates file: wrong dtype, missing or broken config") {
  test::TempDir dir;
  const auto path = dir.path() / "gates.safetensors";
  {
    io::SafetensorsWriter w;
    w.metadata("format", "moesched-gates");
    w.metadata("config", R"({"moe_layers": 1, "experts": 3, "hidden_size": 2, "top_k": 2})");
    w.add_values("l0.weight", io::TensorDType::f16, {3, 2}, std::vector<std::uint16_t>(6, 0));
    w.write(path);
    CHECK_MSG(test::thrown_message<ConfigError>([&] { (void)predict::read_gates(path); }),
              "gates.safetensors: field 'l0.weight.dtype' = F16: expected F32");
  }
  {
    io::SafetensorsWriter w;
    w.metadata("format", "moesched-gates");
    w.write(path);
    CHECK_MSG(test::thrown_message<ConfigError>([&] { (void)predict::read_gates(path); }),
              "gates.safetensors: field '__metadata__.config': required metadata is missing");
  }
  {
    io::SafetensorsWriter w;
    w.metadata("format", "moesched-gates");
    w.metadata("config", "{not json");
    w.write(path);
    CHECK_MSG(test::thrown_message<ConfigError>([&] { (void)predict::read_gates(path); }),
              "gates.safetensors: field '__metadata__.config': not valid JSON");
  }
  CHECK_MSG(test::thrown_message<ConfigError>([&] { (void)predict::read_gates(dir.path() / "none.safetensors"); }), "none.safetensors");
}

TEST_CASE("learned file: a good one reads, sorted by target layer") {
  test::TempDir dir;
  const auto path = dir.path() / "mlp.safetensors";
  test::write_learned_file(path, good_learned());
  const auto s = predict::read_learned(path);
  CHECK(s.kind == predict::LearnedKind::mlp);
  CHECK(s.hidden_state == predict::HiddenState::layer_output);
  CHECK(s.stride == 1);
  CHECK(s.hidden_dim == 2);
  REQUIRE(s.layers.size() == 2);
  CHECK(s.layers[0].source_layer == 0);
  CHECK(s.layers[0].target_layer == 1);
  CHECK(s.layers[1].source_layer == 1);
  CHECK(s.layers[1].target_layer == 2);
  CHECK(s.layers[1].w2(2, 1) == 1.0F);
  CHECK(s.config.at("per_layer").is_array());  // other fields are kept, not refused
}

TEST_CASE("learned file: each defect named") {
  auto s = good_learned();
  s.config_patch = {{"kind", "transformer"}};
  CHECK_MSG(learned_error(s), "mlp.safetensors: field '__metadata__.config.kind' = \"transformer\": unknown value; expected one of: mlp, linear");
  s = good_learned();
  s.config_patch = {{"hidden_state", "attn_input"}};
  CHECK_MSG(learned_error(s), "field '__metadata__.config.hidden_state' = \"attn_input\": kind \"mlp\" reads \"layer_output\"");
  s = good_learned();
  s.config_patch = {{"stride", 2}};
  CHECK_MSG(learned_error(s), "field '__metadata__.config.source_layers[0]' = 1: predicts MoE layer 3 (source + stride 2), but the model has 3");
  s = good_learned();
  s.config_patch = {{"hidden_dim", 5}};
  CHECK_MSG(learned_error(s), "mlp.safetensors: field 'l1.w1.shape' = [2, 2]: expected [5, 2] (hidden_dim x hidden_size from the config)");
  s = good_learned();
  s.config_patch = {{"experts", 4}};
  CHECK_MSG(learned_error(s), "field 'l1.w2.shape' = [3, 2]: expected [4, 2] (experts x hidden_dim from the config)");
  s = good_learned();
  s.entries[0].std = {1.0F, 0.0F};
  CHECK_MSG(learned_error(s), "field 'l1.std[1]' = 0: a standard deviation must not be zero");
  s = good_learned();
  s.config_patch = {{"source_layers", {1, 0, 2}}};
  s.config_patch["stride"] = 0;
  CHECK_MSG(learned_error(s), "field 'l2.mean': required tensor is missing");
  s = good_learned();
  s.config_patch = {{"source_layers", {1}}};
  CHECK_MSG(learned_error(s), "unknown tensor");
  s = good_learned();
  s.config_patch = {{"source_layers", {1, 1}}};
  CHECK_MSG(learned_error(s), "field '__metadata__.config.source_layers[1]' = 1: source layer listed twice");
  s = good_learned();
  s.config_patch = {{"source_layers", nlohmann::json::array()}};
  CHECK_MSG(learned_error(s), "field '__metadata__.config.source_layers' = []: expected a non-empty list");
  s = good_learned();
  s.config_patch = {{"stride", nullptr}};
  CHECK_MSG(learned_error(s), "field '__metadata__.config.stride': required field is missing");
}
