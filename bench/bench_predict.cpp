// Hidden-state predictors (moesched/predict/) on the CPU: one rank() of one token at realistic
// sizes, beside the plain GEMV it is built on (the floor). Gate: H=4096, E=64 (one router; the
// skip gate and the draft gate cost the same); MLP: H=4096, D=512, E=64 (ProMoE's predictor);
// linear: the same without the GELU. Reports flop/s from the predictors' own flops().
// Separate from bench_policy: the predictors need Eigen (moesched::predict); bench_policy links
// moesched::io only.
#include <moesched/predict/predictors.hpp>

#include <benchmark/benchmark.h>

#include <array>
#include <cmath>
#include <memory>
#include <vector>

namespace {

using namespace moesched;

constexpr std::uint32_t kH = 4096, kD = 512, kE = 64, kTopK = 8;

void fill(float* p, std::size_t n, double phase) {
  for (std::size_t i = 0; i < n; ++i) p[i] = static_cast<float>(0.02 * std::sin(0.37 * static_cast<double>(i) + phase));
}

std::shared_ptr<const predict::GateSet> gates(predict::GateScoring scoring) {
  auto g = std::make_shared<predict::GateSet>();
  g->source = "bench";
  g->moe_layers = 2;
  g->experts = kE;
  g->hidden_size = kH;
  g->top_k = kTopK;
  g->scoring = scoring;
  for (int m = 0; m < 2; ++m) {
    predict::GateRouter r;
    r.weight.resize(kE, kH);
    fill(r.weight.data(), std::size_t{kE} * kH, m);
    if (scoring == predict::GateScoring::sigmoid) r.score_bias = Eigen::VectorXf::Constant(kE, 0.01F);
    g->routers.push_back(std::move(r));
  }
  return g;
}

std::shared_ptr<const predict::LearnedSet> learned(predict::LearnedKind kind) {
  auto s = std::make_shared<predict::LearnedSet>();
  s->source = "bench";
  s->kind = kind;
  s->stride = 1;
  s->hidden_state = kind == predict::LearnedKind::mlp ? predict::HiddenState::layer_output : predict::HiddenState::attn_input;
  s->hidden_size = kH;
  s->experts = kE;
  s->moe_layers = 2;
  s->hidden_dim = kD;
  predict::LearnedLayer l;
  l.source_layer = 0;
  l.target_layer = 1;
  l.mean = Eigen::VectorXf::Constant(kH, 0.01F);
  l.std = Eigen::VectorXf::Constant(kH, 1.5F);
  l.w1.resize(kD, kH);
  fill(l.w1.data(), std::size_t{kD} * kH, 1.0);
  l.b1 = Eigen::VectorXf::Zero(kD);
  l.w2.resize(kE, kD);
  fill(l.w2.data(), std::size_t{kE} * kD, 2.0);
  l.b2 = Eigen::VectorXf::Zero(kE);
  s->layers.push_back(std::move(l));
  return s;
}

std::vector<float> hidden() {
  std::vector<float> x(kH);
  fill(x.data(), x.size(), 3.0);
  return x;
}

template <class P>
void run(benchmark::State& state, P& p) {
  const auto x = hidden();
  std::array<runtime::ScoredExpert, kTopK> out{};
  for (auto _ : state) {
    benchmark::DoNotOptimize(p.rank(x, out));
    benchmark::ClobberMemory();
  }
  state.counters["flop/s"] = benchmark::Counter(static_cast<double>(p.flops()), benchmark::Counter::kIsIterationInvariantRate);
}

/// The floor: the router's GEMV alone (Eigen, the same matrix), no scoring or ranking.
void BM_GemvBaseline(benchmark::State& state) {
  const auto g = gates(predict::GateScoring::softmax);
  const auto x = hidden();
  Eigen::VectorXf y(kE);
  for (auto _ : state) {
    y.noalias() = g->routers[1].weight * Eigen::Map<const Eigen::VectorXf>(x.data(), kH);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
}
void BM_GatePredictorSoftmax(benchmark::State& state) {
  auto p = predict::GatePredictor::skip_gate(gates(predict::GateScoring::softmax), 0);
  run(state, p);
}
void BM_GatePredictorSigmoid(benchmark::State& state) {
  auto p = predict::GatePredictor::skip_gate(gates(predict::GateScoring::sigmoid), 0);
  run(state, p);
}
void BM_LearnedPredictorMlp(benchmark::State& state) {
  predict::LearnedPredictor p(learned(predict::LearnedKind::mlp), 0);
  run(state, p);
}
void BM_LearnedPredictorLinear(benchmark::State& state) {
  predict::LearnedPredictor p(learned(predict::LearnedKind::linear), 0);
  run(state, p);
}

}  // namespace

BENCHMARK(BM_GemvBaseline);
BENCHMARK(BM_GatePredictorSoftmax);
BENCHMARK(BM_GatePredictorSigmoid);
BENCHMARK(BM_LearnedPredictorMlp);
BENCHMARK(BM_LearnedPredictorLinear);
BENCHMARK_MAIN();
