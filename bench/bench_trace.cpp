// Trace reading throughput against a sequential memory scan (the baseline it should approach).
// A synthetic Qwen3-30B-A3B-shaped trace (48 MoE layers, 128 experts, top-8) of about 50 000
// tokens is written to a temporary file once; each benchmark reports tokens/s and bytes/s of the
// routing data (T x L x K bytes, U8 ids).
#include <moesched/io/trace.hpp>
#include <moesched/trace/synth.hpp>

#include <benchmark/benchmark.h>

#include <cstring>
#include <filesystem>
#include <memory>
#include <vector>

namespace {

using namespace moesched;

struct Fixture {
  std::filesystem::path path;
  std::uint64_t tokens = 0;
  std::uint64_t routing_bytes = 0;
  Fixture() {
    trace::SynthParams p;
    p.moe_layers = 48;
    p.experts = 128;
    p.top_k = 8;
    p.requests = 50;
    p.prompt_tokens = 200;
    p.decode_tokens = 800;
    p.sd_draft_len = 4;
    path = std::filesystem::temp_directory_path() / "moesched-bench-trace.safetensors";
    trace::synthesize(p).write(path);
    const auto t = io::Trace::open(path, {.validate_data = false});
    tokens = t.token_count();
    routing_bytes = t.container().tensor("routing_experts").bytes();
  }
  ~Fixture() {
    std::error_code ec;
    std::filesystem::remove(path, ec);
  }
};
Fixture& fixture() {
  static Fixture f;
  return f;
}

void report(benchmark::State& state, std::uint64_t tokens, std::uint64_t bytes) {
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * tokens));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * bytes));
}

// Baseline: sum every byte of the routing data, already in memory.
void BM_MemoryScan_Baseline(benchmark::State& state) {
  auto& f = fixture();
  const auto t = io::Trace::open(f.path, {.validate_data = false});
  const auto& info = t.container().tensor("routing_experts");
  std::vector<std::uint8_t> copy(info.bytes());
  std::memcpy(copy.data(), t.container().bytes(info), copy.size());
  for (auto _ : state) {
    std::uint64_t sum = 0;
    for (auto b : copy) sum += b;
    benchmark::DoNotOptimize(sum);
  }
  report(state, f.tokens, f.routing_bytes);
}
BENCHMARK(BM_MemoryScan_Baseline)->Unit(benchmark::kMillisecond);

// Iterate every step, token and layer of an open trace through Trace::experts (one row a call).
void BM_TraceIterate_Rows(benchmark::State& state) {
  auto& f = fixture();
  const auto t = io::Trace::open(f.path, {.validate_data = false});
  const std::uint32_t L = t.meta().model.moe_layers;
  std::vector<std::uint16_t> row(t.meta().model.top_k);
  for (auto _ : state) {
    std::uint64_t sum = 0;
    for (StepInfo s : t.steps()) {
      for (std::uint64_t tok = s.first_token; tok < s.first_token + s.tokens; ++tok) {
        for (std::uint32_t l = 0; l < L; ++l) {
          t.experts(tok, l, row.data());
          for (auto e : row) sum += e;
        }
      }
    }
    benchmark::DoNotOptimize(sum);
  }
  report(state, f.tokens, f.routing_bytes);
}
BENCHMARK(BM_TraceIterate_Rows)->Unit(benchmark::kMillisecond);

// Iterate every token through Trace::token_experts (all layers in one copy).
void BM_TraceIterate_Tokens(benchmark::State& state) {
  auto& f = fixture();
  const auto t = io::Trace::open(f.path, {.validate_data = false});
  std::vector<std::uint16_t> ids(std::size_t{t.meta().model.moe_layers} * t.meta().model.top_k);
  for (auto _ : state) {
    std::uint64_t sum = 0;
    for (std::uint64_t tok = 0; tok < t.token_count(); ++tok) {
      t.token_experts(tok, ids.data());
      for (auto e : ids) sum += e;
    }
    benchmark::DoNotOptimize(sum);
  }
  report(state, f.tokens, f.routing_bytes);
}
BENCHMARK(BM_TraceIterate_Tokens)->Unit(benchmark::kMillisecond);

// The same through the per-element accessor.
void BM_TraceIterate_Elements(benchmark::State& state) {
  auto& f = fixture();
  const auto t = io::Trace::open(f.path, {.validate_data = false});
  const std::uint32_t L = t.meta().model.moe_layers;
  const std::uint32_t K = t.meta().model.top_k;
  for (auto _ : state) {
    std::uint64_t sum = 0;
    for (std::uint64_t tok = 0; tok < t.token_count(); ++tok) {
      for (std::uint32_t l = 0; l < L; ++l) {
        for (std::uint32_t k = 0; k < K; ++k) sum += t.expert(tok, l, k);
      }
    }
    benchmark::DoNotOptimize(sum);
  }
  report(state, f.tokens, f.routing_bytes);
}
BENCHMARK(BM_TraceIterate_Elements)->Unit(benchmark::kMillisecond);

// Open with full validation (every id range-checked, duplicates searched): the cost of safety.
void BM_TraceOpen_Validated(benchmark::State& state) {
  auto& f = fixture();
  for (auto _ : state) benchmark::DoNotOptimize(io::Trace::open(f.path));
  report(state, f.tokens, f.routing_bytes);
}
BENCHMARK(BM_TraceOpen_Validated)->Unit(benchmark::kMillisecond);

// Open without the value scan (structure and shapes only).
void BM_TraceOpen_Structure(benchmark::State& state) {
  auto& f = fixture();
  for (auto _ : state) benchmark::DoNotOptimize(io::Trace::open(f.path, {.validate_data = false}));
  report(state, f.tokens, f.routing_bytes);
}
BENCHMARK(BM_TraceOpen_Structure)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
