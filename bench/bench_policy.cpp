// Policy components: the per-decision cost of each routing-only expert predictor (one observe()
// of a layer's gate set, one predict() of a layer's ranking) beside the simple baseline, a bare
// popularity-table lookup (top candidates of one layer's use counts, no decay, no bookkeeping);
// and replay throughput of the predictive policies beside per-layer LRU.
// Shapes (layers x experts, top_k): Mixtral-8x7B 32 x 8, 2; DeepSeek-V2-Lite-like 26 x 64, 6;
// Qwen3-30B-A3B 48 x 128, 8 (the benchmark argument: 0, 1, 2). Predictors are warmed on 256
// random passes (popularity-skewed routing, a fixed seed) first; a ranking asks for top_k
// candidates. Replays: traces/real/mix-code-plain and mix-prose-sd4 at 0.15 GB on rtx4090.
// BM_LayerDecision_Moesched: one whole per-layer decision of the `moesched` policy (its default
// options, routing-only transitions) against runtime::ArchetypeExecutor (copies land at once, no time):
// on_gate with the layer's gate set, the landed copies' on_copy_done, on_expert_done per expert
// and on_layer_done; the pass start (on_pass_begin) is amortised over the layers. Shapes 1 and 2
// (DeepSeek-V2-Lite-like 26 x 64, Qwen3-30B-A3B 48 x 128), a third of the experts as slots,
// warmed on 256 passes; 9 repetitions, the median reported (the target: about 1 us for
// 64-expert models).
#include <moesched/core/random.hpp>
#include <moesched/io/presets.hpp>
#include <moesched/io/trace.hpp>
#include <moesched/policy/moesched_policy.hpp>
#include <moesched/policy/predictive.hpp>
#include <moesched/runtime/archetype.hpp>
#include "registry.hpp"  // moesched-sim's policy registry (sim/src)

#include <benchmark/benchmark.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace {

using namespace moesched;

struct Shape {
  std::uint32_t layers, experts, top_k;
};
constexpr std::array<Shape, 3> kShapes{{{32, 8, 2}, {26, 64, 6}, {48, 128, 8}}};

/// Random gate sets: per pass and layer, top_k distinct experts drawn with a Zipf-like skew.
struct History {
  Shape shape;
  std::vector<std::vector<ExpertId>> sets;  // [pass * layers + layer]
  explicit History(Shape s, std::uint32_t passes = 512) : shape(s) {
    Rng rng(2026);
    std::vector<double> cdf(s.experts);
    double acc = 0.0;
    for (std::uint32_t e = 0; e < s.experts; ++e) cdf[e] = acc += 1.0 / std::pow(double(e + 1), 0.8);
    for (double& c : cdf) c /= acc;
    for (std::uint32_t p = 0; p < passes; ++p) {
      for (std::uint32_t l = 0; l < s.layers; ++l) {
        std::vector<ExpertId> v;
        while (v.size() < s.top_k) {
          const double u = rng.uniform();
          std::uint32_t e = 0;
          while (e + 1 < s.experts && cdf[e] < u) ++e;
          // a per-layer permutation, so layers differ
          const auto id = static_cast<std::uint16_t>((e * 7 + l * 3) % s.experts);
          bool dup = false;
          for (ExpertId x : v) dup = dup || x.expert == id;
          if (!dup) v.push_back({static_cast<std::uint16_t>(l), id});
        }
        sets.push_back(std::move(v));
      }
    }
  }
  [[nodiscard]] std::span<const ExpertId> at(std::uint64_t i) const { return sets[i % sets.size()]; }
};

History& history(std::size_t i) {
  static std::array<std::unique_ptr<History>, kShapes.size()> h;
  if (!h[i]) h[i] = std::make_unique<History>(kShapes[i]);
  return *h[i];
}

template <class P>
P warmed(const History& h, P p) {
  p.resize(h.shape.layers, h.shape.experts);
  for (std::uint64_t i = 0; i < 256ULL * h.shape.layers; ++i) {
    if (i % h.shape.layers == 0) p.begin_pass(PassInfo{i / h.shape.layers, StepPhase::decode, 1, 1, 0});
    p.observe(static_cast<std::uint32_t>(i % h.shape.layers), h.at(i));
  }
  return p;
}

/// The baseline: top_k of a plain use-count table of one layer (what a static popularity policy
/// looks up), with the same selection routine.
struct CountTable {
  std::uint32_t experts = 0;
  std::vector<std::uint64_t> count;
  std::uint32_t predict(std::uint32_t layer, std::span<runtime::ScoredExpert> out) const noexcept {
    const std::uint64_t* c = count.data() + std::size_t{layer} * experts;
    std::uint32_t n = 0;
    for (std::uint32_t e = 0; e < experts; ++e) {
      policy::predictor_detail::offer_scored(out, n, static_cast<std::uint16_t>(e), static_cast<float>(c[e]));
    }
    return n;
  }
};

void BM_PredictBaselineCountTable(benchmark::State& st) {
  const History& h = history(static_cast<std::size_t>(st.range(0)));
  CountTable t{h.shape.experts, std::vector<std::uint64_t>(std::size_t{h.shape.layers} * h.shape.experts, 0)};
  for (std::uint64_t i = 0; i < 256ULL * h.shape.layers; ++i) {
    for (ExpertId id : h.at(i)) ++t.count[std::size_t{id.layer} * h.shape.experts + id.expert];
  }
  std::vector<runtime::ScoredExpert> out(h.shape.top_k);
  std::uint32_t layer = 0;
  for (auto _ : st) {
    benchmark::DoNotOptimize(t.predict(layer, out));
    benchmark::ClobberMemory();
    layer = layer + 1 == h.shape.layers ? 0 : layer + 1;
  }
}

template <class P>
void predict_bench(benchmark::State& st, P proto) {
  const History& h = history(static_cast<std::size_t>(st.range(0)));
  const P p = warmed(h, std::move(proto));
  std::vector<runtime::ScoredExpert> out(h.shape.top_k);
  std::uint32_t layer = 0;
  for (auto _ : st) {
    benchmark::DoNotOptimize(p.predict(layer, out));
    benchmark::ClobberMemory();
    layer = layer + 1 == h.shape.layers ? 0 : layer + 1;
  }
}
template <class P>
void observe_bench(benchmark::State& st, P proto) {
  const History& h = history(static_cast<std::size_t>(st.range(0)));
  P p = warmed(h, std::move(proto));
  std::uint64_t i = 0;
  for (auto _ : st) {
    p.observe(static_cast<std::uint32_t>(i % h.shape.layers), h.at(i));
    benchmark::ClobberMemory();
    ++i;
  }
}

void BM_PredictPopularity(benchmark::State& st) { predict_bench(st, policy::PopularityPredictor{0.9}); }
void BM_PredictTransition(benchmark::State& st) { predict_bench(st, policy::TransitionPredictor{2}); }
void BM_PredictActivationMatrix(benchmark::State& st) { predict_bench(st, policy::ActivationMatrixPredictor{64}); }
void BM_ObservePopularity(benchmark::State& st) { observe_bench(st, policy::PopularityPredictor{0.9}); }
void BM_ObserveTransition(benchmark::State& st) { observe_bench(st, policy::TransitionPredictor{2}); }
void BM_ObserveActivationMatrix(benchmark::State& st) {
  // with 64 matrices stored: a request every 32 passes during warming (65 of them: 64 stored)
  const History& h = history(static_cast<std::size_t>(st.range(0)));
  policy::ActivationMatrixPredictor p(64);
  p.resize(h.shape.layers, h.shape.experts);
  for (std::uint64_t i = 0; i < (65ULL * 32 + 1) * h.shape.layers; ++i) {
    const std::uint64_t pass = i / h.shape.layers;
    if (i % h.shape.layers == 0) {
      p.begin_pass(PassInfo{pass, pass % 32 == 0 ? StepPhase::prefill : StepPhase::decode, 1, 1, 0});
    }
    p.observe(static_cast<std::uint32_t>(i % h.shape.layers), h.at(i));
  }
  if (p.stored() != 64) st.SkipWithError("warming stored fewer than 64 matrices");
  std::uint64_t i = 0;
  for (auto _ : st) {
    p.observe(static_cast<std::uint32_t>(i % h.shape.layers), h.at(i));
    benchmark::ClobberMemory();
    ++i;
  }
}

// ---- one per-layer decision of moesched ----

void BM_LayerDecision_Moesched(benchmark::State& st) {
  const History& h = history(static_cast<std::size_t>(st.range(0)));
  const std::uint32_t L = h.shape.layers;
  runtime::ArchetypeExecutor e(L, h.shape.experts, L * h.shape.experts / 3);
  const policy::AnalyticalLatency lat{.copy_fixed = Nanoseconds{3'000}, .link_bytes_per_ns = 25.0, .expert = Bytes{17'300'000},
                                      .dense = Nanoseconds{60'000}, .expert_ffn = Nanoseconds{35'000},
                                      .top_k = h.shape.top_k, .draft_step = Nanoseconds{900'000}};
  policy::Moesched p({}, policy::TransitionPredictor{2}, lat);
  using Control = runtime::ArchetypeExecutor::Control;
  auto land_all = [&] { Control::land_all(e, [&](ExpertId id) { p.on_copy_done(e, id); }); };
  std::uint64_t i = 0;
  std::uint64_t pass = 0;
  auto decide = [&] {
    const auto layer = static_cast<std::uint32_t>(i % L);
    if (layer == 0) p.on_pass_begin(e, PassInfo{pass++, StepPhase::decode, 1, 1, 0});
    const auto need = h.at(i);
    p.on_gate(e, layer, need);
    land_all();
    for (ExpertId id : need) p.on_expert_done(e, id);
    p.on_layer_done(e, layer);
    land_all();
    ++i;
  };
  while (i < 256ULL * L) decide();  // warm: the predictor and the reuse model have seen 256 passes
  for (auto _ : st) {
    decide();
    benchmark::ClobberMemory();
  }
  st.counters["layers"] = L;
  st.counters["experts"] = h.shape.experts;
}

// ---- replay throughput ----

struct Replay {
  std::unique_ptr<io::Trace> trace;
  std::unique_ptr<Workload> workload;
  std::unique_ptr<sim::CostModel> cost;
  Bytes budget{};
  explicit Replay(const char* name) {
    const std::filesystem::path root(MOESCHED_SOURCE_DIR);
    auto file = root / "traces" / "real" / name;
    file += ".trace.safetensors";
    trace = std::make_unique<io::Trace>(io::Trace::open(file));
    const auto& m = trace->meta().model;
    auto model_file = root / "presets" / "models" / m.name;
    model_file += ".json";
    const auto model = io::load_model_preset(model_file);
    const auto gpu = io::load_gpu_preset(root / "presets" / "gpus" / "rtx4090.json");
    workload = std::make_unique<Workload>(build_workload(*trace, {m.moe_layers, m.experts_per_layer, m.top_k}));
    cost = std::make_unique<sim::CostModel>(model, gpu);
    budget = Bytes{150'000'000};
  }
};

Replay& replay_setup(std::int64_t i) {
  static std::unique_ptr<Replay> plain, sd;
  auto& r = i == 0 ? plain : sd;
  if (!r) r = std::make_unique<Replay>(i == 0 ? "mix-code-plain" : "mix-prose-sd4");
  return *r;
}

void replay_bench(benchmark::State& st, const char* policy) {
  Replay& r = replay_setup(st.range(0));
  sim::SimOptions o;
  o.budget = r.budget;
  o.check_invariants = false;
  for (auto _ : st) {
    auto m = tools::run_policy(policy, *r.workload, *r.cost, o);
    benchmark::DoNotOptimize(m.tpot_ms.mean);
  }
  st.counters["activations_per_s"] =
      benchmark::Counter(static_cast<double>(r.workload->activations()), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_ReplayLru(benchmark::State& st) { replay_bench(st, "lru"); }
void BM_ReplayPredictPopularity(benchmark::State& st) { replay_bench(st, "predict:popularity"); }
void BM_ReplayPredictTransition(benchmark::State& st) { replay_bench(st, "predict:transition"); }
void BM_ReplayMoeInfinity(benchmark::State& st) { replay_bench(st, "moe-infinity"); }

}  // namespace

BENCHMARK(BM_PredictBaselineCountTable)->DenseRange(0, 2);
BENCHMARK(BM_PredictPopularity)->DenseRange(0, 2);
BENCHMARK(BM_PredictTransition)->DenseRange(0, 2);
BENCHMARK(BM_PredictActivationMatrix)->DenseRange(0, 2);
BENCHMARK(BM_ObservePopularity)->DenseRange(0, 2);
BENCHMARK(BM_ObserveTransition)->DenseRange(0, 2);
BENCHMARK(BM_ObserveActivationMatrix)->DenseRange(0, 2);
BENCHMARK(BM_LayerDecision_Moesched)->DenseRange(1, 2)->Repetitions(9)->ReportAggregatesOnly(true);
BENCHMARK(BM_ReplayLru)->DenseRange(0, 1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ReplayPredictPopularity)->DenseRange(0, 1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ReplayPredictTransition)->DenseRange(0, 1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ReplayMoeInfinity)->DenseRange(0, 1)->Unit(benchmark::kMillisecond);
BENCHMARK_MAIN();
