// Replay throughput of the discrete-event simulator, in routed expert activations (token x MoE
// layer x top_k) per second on one core, for each policy; beside it the simple baseline: a bare
// global-LRU loop over the same activations with no event engine (what cache bookkeeping alone
// costs). Also: building the workload from a trace, and the lower bound.
// Traces: synthetic Mixtral-8x7B-shaped (32 x 8, top-2) and Qwen3-30B-A3B-shaped (48 x 128, top-8),
// plain decoding, generated once into a temporary file; costs from the rtx4090 preset; expert
// budget = a quarter of all experts.
#include <moesched/io/presets.hpp>
#include <moesched/io/trace.hpp>
#include <moesched/policy/recency_list.hpp>
#include <moesched/sim/lower_bound.hpp>
#include "registry.hpp"  // moesched-sim's policy registry (sim/src)
#include <moesched/trace/synth.hpp>

#include <benchmark/benchmark.h>

#include <filesystem>
#include <memory>
#include <string>

namespace {

using namespace moesched;

struct Setup {
  std::shared_ptr<io::Trace> trace;
  std::unique_ptr<Workload> workload;
  std::unique_ptr<sim::CostModel> cost;
  Bytes budget{};
  Setup(const char* model_name, std::uint32_t layers, std::uint32_t experts, std::uint32_t top_k,
        std::uint32_t requests) {
    trace::SynthParams p;
    p.model_name = model_name;
    p.moe_layers = layers;
    p.experts = experts;
    p.top_k = top_k;
    p.requests = requests;
    p.prompt_tokens = 32;
    p.decode_tokens = 1000;
    // (paths joined with operator/: GCC 12 at -O3 warns falsely on string + string, bug 105329)
    auto path = std::filesystem::temp_directory_path() / "moesched-bench-sim-";
    path += model_name;
    path += ".safetensors";
    trace::synthesize(p).write(path);
    trace = std::make_shared<io::Trace>(io::Trace::open(path));
    std::filesystem::remove(path);
    const std::filesystem::path presets = std::filesystem::path(MOESCHED_SOURCE_DIR) / "presets";
    auto model_file = presets / "models" / model_name;
    model_file += ".json";
    const auto model = io::load_model_preset(model_file);
    const auto gpu = io::load_gpu_preset(presets / "gpus" / "rtx4090.json");
    workload = std::make_unique<Workload>(build_workload(*trace, {layers, experts, top_k}));
    cost = std::make_unique<sim::CostModel>(model, gpu);
    budget = model.expert_bytes() * (std::uint64_t{layers} * experts / 4);
  }
};

Setup& mixtral() {
  static Setup s("mixtral-8x7b", 32, 8, 2, 40);
  return s;
}
Setup& qwen3() {
  static Setup s("qwen3-30b-a3b", 48, 128, 8, 8);
  return s;
}
Setup& pick(std::int64_t which) { return which == 0 ? mixtral() : qwen3(); }

void replay(benchmark::State& state, const char* policy) {
  Setup& s = pick(state.range(0));
  sim::SimOptions o;
  o.budget = s.budget;
  o.check_invariants = false;
  for (auto _ : state) {
    auto m = tools::run_policy(policy, *s.workload, *s.cost, o);
    benchmark::DoNotOptimize(m.total_time);
  }
  state.counters["activations/s"] = benchmark::Counter(static_cast<double>(s.workload->activations()),
                                                       benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(state.range(0) == 0 ? "mixtral-shaped" : "qwen3-shaped");
}
void BM_ReplayOnDemand(benchmark::State& st) { replay(st, "on-demand"); }
void BM_ReplayLru(benchmark::State& st) { replay(st, "lru"); }
void BM_ReplayLfu(benchmark::State& st) { replay(st, "lfu"); }
void BM_ReplayStatic(benchmark::State& st) { replay(st, "static"); }
void BM_ReplayOracle(benchmark::State& st) { replay(st, "oracle"); }

/// Baseline: a global LRU over the same uses, no events, no timing.
void BM_BaselineBareLru(benchmark::State& state) {
  Setup& s = pick(state.range(0));
  const auto& w = *s.workload;
  const std::uint32_t per = w.shape().experts;
  const auto slots = static_cast<std::uint32_t>(s.budget.count / s.cost->expert_bytes().count);
  for (auto _ : state) {
    policy::RecencyList lru(w.layers() * per);
    std::uint64_t misses = 0;
    for (std::uint64_t g = 0; g < w.group_count(); ++g) {
      const std::uint32_t base = static_cast<std::uint32_t>(g % w.layers()) * per;
      for (const auto& u : w.group_uses(g)) {
        const std::uint32_t f = base + u.expert;
        if (!lru.contains(f)) {
          ++misses;
          if (lru.size() >= slots) lru.remove(lru.oldest());
        }
        lru.touch(f);
      }
    }
    benchmark::DoNotOptimize(misses);
  }
  state.counters["activations/s"] = benchmark::Counter(static_cast<double>(w.activations()),
                                                       benchmark::Counter::kIsIterationInvariantRate);
}

void BM_BuildWorkload(benchmark::State& state) {
  Setup& s = pick(state.range(0));
  const auto& m = s.trace->meta().model;
  for (auto _ : state) {
    auto w = build_workload(*s.trace, {m.moe_layers, m.experts_per_layer, m.top_k});
    benchmark::DoNotOptimize(w.pass_count());
  }
  state.counters["activations/s"] = benchmark::Counter(static_cast<double>(s.workload->activations()),
                                                       benchmark::Counter::kIsIterationInvariantRate);
}

void BM_LowerBound(benchmark::State& state) {
  Setup& s = pick(state.range(0));
  const auto slots = static_cast<std::uint32_t>(s.budget.count / s.cost->expert_bytes().count);
  for (auto _ : state) benchmark::DoNotOptimize(sim::tpot_lower_bound(*s.workload, *s.cost, slots).tpot_ms);
  state.counters["activations/s"] = benchmark::Counter(static_cast<double>(s.workload->activations()),
                                                       benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

BENCHMARK(BM_ReplayOnDemand)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ReplayLru)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ReplayLfu)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ReplayStatic)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ReplayOracle)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_BaselineBareLru)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_BuildWorkload)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_LowerBound)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);
BENCHMARK_MAIN();
