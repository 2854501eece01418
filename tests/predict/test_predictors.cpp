// GatePredictor and LearnedPredictor on hand-computed tiny cases (H=2, E=3): scores, ranks, ties.
#include "support/catch.hpp"
#include "support/temp_dir.hpp"
#include "predict/fixtures.hpp"

#include <moesched/predict/predictors.hpp>

#include <array>
#include <cmath>
#include <memory>
#include <vector>

using namespace moesched;
using predict::GatePredictor;
using predict::LearnedPredictor;
using runtime::ScoredExpert;

namespace {

std::shared_ptr<const predict::GateSet> gates_of(const test::TempDir& dir, const test::GatesSpec& g) {
  const auto path = dir.path() / "g.safetensors";
  test::write_gates_file(path, g);
  return std::make_shared<const predict::GateSet>(predict::read_gates(path));
}
std::shared_ptr<const predict::LearnedSet> learned_of(const test::TempDir& dir, const test::LearnedSpec& s) {
  const auto path = dir.path() / "p.safetensors";
  test::write_learned_file(path, s);
  return std::make_shared<const predict::LearnedSet>(predict::read_learned(path));
}

}  // namespace

TEST_CASE("softmax gate: scores and ranks by hand") {
  test::TempDir dir;
  test::GatesSpec g;
  g.layers = 2;
  g.weights = {{0, 0, 0, 0, 0, 0}, {1, 0, 0, 1, 1, 1}};  // router 1: logits of x = [x0, x1, x0 + x1]
  auto gates = gates_of(dir, g);
  auto p = GatePredictor::skip_gate(gates, 0);
  CHECK(p.predicts() == 1);
  CHECK(p.input().state == predict::HiddenState::moe_input);
  CHECK(p.input().layer == 0);
  CHECK(p.where() == runtime::JobResource::cpu_worker);
  CHECK(p.flops() == 2 * 3 * 2 + 4 * 3);
  const std::array<float, 2> x{1.0F, 2.0F};  // logits 1, 2, 3
  std::array<ScoredExpert, 3> out{};
  REQUIRE(p.rank(x, out) == 3);
  CHECK(out[0].expert == 2);
  CHECK(out[1].expert == 1);
  CHECK(out[2].expert == 0);
  CHECK(out[0].score == Approx(0.6652409557748219).epsilon(1e-6));
  CHECK(out[1].score == Approx(0.24472847105479767).epsilon(1e-6));
  CHECK(out[2].score == Approx(0.09003057317038046).epsilon(1e-6));
  // fewer slots: the best ones; more slots than experts: every expert once
  std::array<ScoredExpert, 1> one{};
  REQUIRE(p.rank(x, one) == 1);
  CHECK(one[0].expert == 2);
  std::array<ScoredExpert, 5> five{};
  CHECK(p.rank(x, five) == 3);
  // a hidden state of the wrong length writes nothing
  const std::array<float, 3> wrong{1, 2, 3};
  CHECK(p.rank(wrong, out) == 0);
}

TEST_CASE("ties go to the lower expert id") {
  test::TempDir dir;
  test::GatesSpec g;
  g.weights = {{0, 1, 0, 0, 0, 1}};  // logits x1, 0, x1: experts 0 and 2 tie
  auto gates = gates_of(dir, g);
  GatePredictor p(gates, 0, {predict::HiddenState::moe_input, 0});
  std::array<ScoredExpert, 3> out{};
  const std::array<float, 2> x{5.0F, 1.0F};
  REQUIRE(p.rank(x, out) == 3);
  CHECK(out[0].expert == 0);
  CHECK(out[1].expert == 2);
  CHECK(out[2].expert == 1);
  CHECK(out[0].score == out[1].score);
  // all equal: id order
  const std::array<float, 2> zero{0.0F, 0.0F};
  REQUIRE(p.rank(zero, out) == 3);
  CHECK(out[0].expert == 0);
  CHECK(out[1].expert == 1);
  CHECK(out[2].expert == 2);
  CHECK(out[0].score == Approx(1.0 / 3.0));
}

TEST_CASE("sigmoid gate: bias before, score bias after the sigmoid") {
  test::TempDir dir;
  test::GatesSpec g;
  g.scoring = "sigmoid";
  g.weights = {{1, 0, 0, 1, 0, 0}};
  g.bias = {{0, 0, 1}};
  g.score_bias = {{0, 0.5F, 0}};
  auto gates = gates_of(dir, g);
  auto p = GatePredictor::draft_gate(gates, 0);
  CHECK(p.input().state == predict::HiddenState::draft_moe_input);
  CHECK(p.predicts() == 0);
  const std::array<float, 2> x{0.0F, 0.0F};  // logits 0, 0, 1 -> sigmoid .5, .5, .731 -> + bias .5, 1, .731
  std::array<ScoredExpert, 3> out{};
  REQUIRE(p.rank(x, out) == 3);
  CHECK(out[0].expert == 1);
  CHECK(out[0].score == Approx(1.0));
  CHECK(out[1].expert == 2);
  CHECK(out[1].score == Approx(0.7310585786300049).epsilon(1e-6));
  CHECK(out[2].expert == 0);
  CHECK(out[2].score == Approx(0.5));
}

TEST_CASE("learned mlp: standardise, exact GELU, sigmoid scores") {
  test::TempDir dir;
  test::LearnedSpec s;
  s.layers = 3;
  s.stride = 2;
  s.entries = {test::tiny_layer(0)};
  auto set = learned_of(dir, s);
  LearnedPredictor p(set, 0);
  CHECK(p.kind() == predict::LearnedKind::mlp);
  CHECK(p.input().state == predict::HiddenState::layer_output);
  CHECK(p.input().layer == 0);
  CHECK(p.predicts() == 2);
  CHECK(p.flops() == 2 * 2 + 2 * 2 * 2 + 2 * 3 * 2 + 2 + 3 + 8 * 2 + 4 * 3);
  // z = ([3, -1] - 1) / 2 = [1, -1]; h = gelu(z) = [0.8413, -0.1587]; logits [0.8413, -0.1587, 1.1827]
  const std::array<float, 2> x{3.0F, -1.0F};
  std::array<ScoredExpert, 3> out{};
  REQUIRE(p.rank(x, out) == 3);
  CHECK(out[0].expert == 2);
  CHECK(out[0].score == Approx(0.7654310369762994).epsilon(1e-6));
  CHECK(out[1].expert == 0);
  CHECK(out[1].score == Approx(0.6987483594576991).epsilon(1e-6));
  CHECK(out[2].expert == 1);
  CHECK(out[2].score == Approx(0.4604191773953729).epsilon(1e-6));
}

TEST_CASE("learned linear: no GELU; reads attn_input") {
  test::TempDir dir;
  test::LearnedSpec s;
  s.kind = "linear";
  s.layers = 2;
  s.entries = {test::tiny_layer(1)};
  auto set = learned_of(dir, s);
  LearnedPredictor p(set, 0);
  CHECK(p.kind() == predict::LearnedKind::linear);
  CHECK(p.input().state == predict::HiddenState::attn_input);
  CHECK(p.input().layer == 1);
  CHECK(p.predicts() == 1);
  const std::array<float, 2> x{3.0F, -1.0F};  // h = [1, -1]; logits [1, -1, 0.5]
  std::array<ScoredExpert, 2> out{};
  REQUIRE(p.rank(x, out) == 2);
  CHECK(out[0].expert == 0);
  CHECK(out[0].score == Approx(0.7310585786300049).epsilon(1e-6));
  CHECK(out[1].expert == 2);
  CHECK(out[1].score == Approx(0.6224593312018546).epsilon(1e-6));
}

TEST_CASE("learned predictor: ranks by logit where sigmoids saturate") {
  test::TempDir dir;
  test::LearnedSpec s;
  s.kind = "linear";
  auto layer = test::tiny_layer(0);
  layer.b2 = {40.0F, 50.0F, 0.0F};  // sigmoid(40.8) == sigmoid(50.x) == 1 in float; the logits differ
  s.entries = {layer};
  auto set = learned_of(dir, s);
  LearnedPredictor p(set, 0);
  const std::array<float, 2> x{3.0F, -1.0F};
  std::array<ScoredExpert, 3> out{};
  REQUIRE(p.rank(x, out) == 3);
  CHECK(out[0].expert == 1);
  CHECK(out[1].expert == 0);
  CHECK(out[0].score == out[1].score);
}

TEST_CASE("predictor constructors refuse layers the files lack") {
  test::TempDir dir;
  test::GatesSpec g;
  g.weights = {{1, 0, 0, 1, 1, 1}};
  auto gates = gates_of(dir, g);
  const auto m1 = test::thrown_message<ConfigError>([&] { (void)GatePredictor::skip_gate(gates, 0); });
  INFO(m1);
  CHECK(test::contains(m1, "router layer' = 1: no such MoE layer"));
  test::LearnedSpec s;
  s.entries = {test::tiny_layer(0)};
  auto set = learned_of(dir, s);
  const auto m2 = test::thrown_message<ConfigError>([&] { LearnedPredictor bad(set, 1); });
  INFO(m2);
  CHECK(test::contains(m2, "no such entry (1 source layers)"));
}

TEST_CASE("group-limited gate (DeepSeek): only the best groups' experts are candidates") {
  // E = 6 experts in 3 groups of 2 ({0, 1}, {2, 3}, {4, 5}); router = identity, so logits = x.
  test::TempDir dir;
  test::GatesSpec g;
  g.experts = 6;
  g.hidden = 6;
  g.weights = {std::vector<float>(36, 0.0F)};
  for (std::size_t i = 0; i < 6; ++i) g.weights[0][i * 6 + i] = 1.0F;
  std::array<ScoredExpert, 6> out{};
  // The experts of the first n candidates, in rank order.
  auto ranked = [&](std::uint32_t n) {
    std::vector<int> ids;
    for (std::uint32_t i = 0; i < n; ++i) ids.push_back(out[i].expert);
    return ids;
  };
  SECTION("softmax, group score = the group's best (V2)") {
    g.config_patch = {{"n_group", 3}, {"topk_group", 1}};
    auto p = GatePredictor(gates_of(dir, g), 0, {predict::HiddenState::moe_input, 0});
    // Plain top-2 would be 0 (5.0) and 2 (4.9); the best group is {0, 1} (5.0 > 4.9 > 0).
    const std::array<float, 6> x{5.0F, 0.0F, 4.9F, 4.8F, 0.0F, 0.0F};
    REQUIRE(p.rank(x, out) == 2);
    CHECK(ranked(2) == std::vector<int>{0, 1});
    // Scores stay the softmax over all experts.
    const double z = std::exp(5.0) + std::exp(4.9) + std::exp(4.8) + 3.0;
    CHECK(out[0].score == Approx(std::exp(5.0) / z).epsilon(1e-5));
    CHECK(out[1].score == Approx(1.0 / z).epsilon(1e-5));
    // Two groups kept: {0, 1} and {2, 3}, ranked by score.
    g.config_patch = {{"n_group", 3}, {"topk_group", 2}};
    auto q = GatePredictor(gates_of(dir, g), 0, {predict::HiddenState::moe_input, 0});
    REQUIRE(q.rank(x, out) == 4);
    CHECK(ranked(4) == std::vector<int>{0, 2, 3, 1});
  }
  SECTION("sigmoid, group score = the sum of the group's two best (V3)") {
    g.scoring = "sigmoid";
    g.config_patch = {{"n_group", 3}, {"topk_group", 1}};
    // sigmoid: .953 .047 | .881 .881 | .5 .5 -> sums 1.0, 1.762, 1.0: group {2, 3} wins, though
    // expert 0 has the best score (and its group the best maximum).
    const std::array<float, 6> x{3.0F, -3.0F, 2.0F, 2.0F, 0.0F, 0.0F};
    auto p = GatePredictor(gates_of(dir, g), 0, {predict::HiddenState::moe_input, 0});
    REQUIRE(p.rank(x, out) == 2);
    CHECK(ranked(2) == std::vector<int>{2, 3});
    CHECK(out[0].score == Approx(0.8807970779778823).epsilon(1e-6));
    // Groups {0, 1} and {4, 5} tie at 1.0: with two kept, the lower one joins {2, 3}.
    g.config_patch = {{"n_group", 3}, {"topk_group", 2}};
    auto q = GatePredictor(gates_of(dir, g), 0, {predict::HiddenState::moe_input, 0});
    REQUIRE(q.rank(x, out) == 4);
    CHECK(ranked(4) == std::vector<int>{0, 2, 3, 1});
    // The same file with "max" group scores keeps {0, 1}.
    g.config_patch = {{"n_group", 3}, {"topk_group", 1}, {"group_score", "max"}};
    auto r = GatePredictor(gates_of(dir, g), 0, {predict::HiddenState::moe_input, 0});
    REQUIRE(r.rank(x, out) == 2);
    CHECK(ranked(2) == std::vector<int>{0, 1});
  }
  SECTION("one group kept of one: the plain ranking") {
    g.config_patch = {{"n_group", 1}};
    auto p = GatePredictor(gates_of(dir, g), 0, {predict::HiddenState::moe_input, 0});
    const std::array<float, 6> x{5.0F, 0.0F, 4.9F, 4.8F, 0.0F, 0.0F};
    REQUIRE(p.rank(x, out) == 6);
    CHECK(ranked(3) == std::vector<int>{0, 2, 3});
  }
}
