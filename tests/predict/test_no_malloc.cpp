// rank() allocates nothing: Eigen's own guard (EIGEN_RUNTIME_NO_MALLOC) aborts on any heap
// allocation Eigen makes while it is off; the predictors use no other container in rank().
// Own executable: the macro must be the same in every translation unit that includes Eigen.
#define EIGEN_RUNTIME_NO_MALLOC
#include "support/catch.hpp"
#include "support/temp_dir.hpp"
#include "predict/fixtures.hpp"

#include <moesched/predict/predictors.hpp>

#include <cmath>
#include <memory>
#include <vector>

using namespace moesched;

TEST_CASE("rank() does not allocate at realistic sizes (H=1024, D=256, E=64)") {
  test::TempDir dir;
  constexpr std::uint32_t H = 1024, D = 256, E = 64;
  test::GatesSpec g;
  g.layers = 2;
  g.experts = E;
  g.hidden = H;
  g.top_k = 8;
  g.scoring = "sigmoid";
  for (std::uint32_t m = 0; m < 2; ++m) {
    std::vector<float> w(E * H);
    for (std::size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(std::sin(0.01 * static_cast<double>(i)));
    g.weights.push_back(w);
    g.bias.push_back(std::vector<float>(E, 0.1F));
    g.score_bias.push_back(std::vector<float>(E, 0.01F));
  }
  test::write_gates_file(dir.path() / "g.safetensors", g);
  test::LearnedSpec s;
  s.experts = E;
  s.hidden = H;
  s.hidden_dim = D;
  s.layers = 2;
  s.stride = 1;
  test::LearnedLayerSpec e{0, std::vector<float>(H, 0.1F), std::vector<float>(H, 1.5F), std::vector<float>(D * H, 0.01F),
                           std::vector<float>(D, 0.0F), std::vector<float>(E * D, 0.02F), std::vector<float>(E, 0.0F)};
  for (std::size_t i = 0; i < e.w1.size(); ++i) e.w1[i] = static_cast<float>(std::cos(0.003 * static_cast<double>(i)));
  s.entries = {e};
  test::write_learned_file(dir.path() / "p.safetensors", s);

  auto gates = std::make_shared<const predict::GateSet>(predict::read_gates(dir.path() / "g.safetensors"));
  auto set = std::make_shared<const predict::LearnedSet>(predict::read_learned(dir.path() / "p.safetensors"));
  auto gate = predict::GatePredictor::skip_gate(gates, 0);
  predict::LearnedPredictor mlp(set, 0);
  std::vector<float> x(H);
  for (std::uint32_t i = 0; i < H; ++i) x[i] = static_cast<float>(std::sin(0.1 * i));
  std::vector<runtime::ScoredExpert> out(8);
  Eigen::internal::set_is_malloc_allowed(false);
  const std::uint32_t n1 = gate.rank(x, out);
  const std::uint32_t n2 = mlp.rank(x, out);
  Eigen::internal::set_is_malloc_allowed(true);
  CHECK(n1 == 8);
  CHECK(n2 == 8);
}
