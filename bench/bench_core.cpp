// Benchmarks of the core vocabulary: copy-time lookup (called per copy by the simulator and the
// prefetcher), expert-size arithmetic, and preset loading. Each has its simple baseline beside it:
// the affine link for the measured curve, a hand-written product for the derived sizes.
#include <moesched/io/presets.hpp>
#include <moesched/moesched.hpp>

#include <benchmark/benchmark.h>

#include <filesystem>
#include <random>
#include <vector>

namespace {

using namespace moesched;

const std::filesystem::path kPresets = std::filesystem::path(MOESCHED_SOURCE_DIR) / "presets";

std::vector<Bytes> random_sizes() {
  std::mt19937_64 rng(42);
  std::uniform_int_distribution<std::uint64_t> d(1, 1ULL << 30U);
  std::vector<Bytes> v(4096);
  for (auto& b : v) b = Bytes{d(rng)};
  return v;
}

void BM_CopyTime_Affine(benchmark::State& state) {
  const auto curve = TransferCurve::affine(gb_per_s(25.0), from_us(3.0));
  const auto sizes = random_sizes();
  std::size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(curve.time(sizes[i++ & 4095U]));
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_CopyTime_Affine);

void BM_CopyTime_MeasuredCurve(benchmark::State& state) {
  const auto curve = io::load_gpu_preset(kPresets / "gpus" / "h200.json").h2d;
  const auto sizes = random_sizes();
  std::size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(curve.time(sizes[i++ & 4095U]));
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_CopyTime_MeasuredCurve);

void BM_ExpertBytes_Baseline(benchmark::State& state) {
  // what a hand-written "3 * hidden * ffn * 2" costs: the floor for the derived version
  std::uint64_t hidden = 4096;
  std::uint64_t ffn = 14336;
  for (auto _ : state) {
    benchmark::DoNotOptimize(hidden);
    benchmark::DoNotOptimize(ffn);
    benchmark::DoNotOptimize(Bytes{3 * hidden * ffn * 2});
  }
}
BENCHMARK(BM_ExpertBytes_Baseline);

void BM_ExpertBytes_Derived(benchmark::State& state) {
  const ModelShape s = io::load_model_preset(kPresets / "models" / "mixtral-8x7b.json").shape;
  for (auto _ : state) {
    benchmark::DoNotOptimize(s.expert_bytes(DType::int4));
  }
}
BENCHMARK(BM_ExpertBytes_Derived);

void BM_NonExpertBytes(benchmark::State& state) {
  const ModelShape s = io::load_model_preset(kPresets / "models" / "qwen3-30b-a3b.json").shape;
  for (auto _ : state) {
    benchmark::DoNotOptimize(s.non_expert_bytes(DType::bf16));
  }
}
BENCHMARK(BM_NonExpertBytes);

void BM_LoadModelPreset(benchmark::State& state) {
  const auto path = kPresets / "models" / "deepseek-v2-lite.json";
  for (auto _ : state) {
    benchmark::DoNotOptimize(io::load_model_preset(path));
  }
}
BENCHMARK(BM_LoadModelPreset);

void BM_CatalogResolveByAlias(benchmark::State& state) {
  const io::PresetCatalog catalog({kPresets});
  for (auto _ : state) {
    benchmark::DoNotOptimize(catalog.model("mixtral"));  // alias: scans every model file
  }
}
BENCHMARK(BM_CatalogResolveByAlias);

}  // namespace

BENCHMARK_MAIN();
