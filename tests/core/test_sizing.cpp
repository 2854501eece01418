#include "support/catch.hpp"
#include "support/shapes.hpp"

#include <moesched/core/sizing.hpp>

using namespace moesched;

namespace {
HardwareDesc toy_gpu(Bytes memory) {
  HardwareDesc h;
  h.name = "toy";
  h.memory = memory;
  h.reserved = Bytes{100};
  h.h2d = TransferCurve::affine(gb_per_s(1.0), Nanoseconds{10});  // 1 byte per ns
  h.compute.bf16_tflops = 1e-3;                                   // 1e9 FLOP/s
  h.compute.memory_bandwidth = gb_per_s(1.0);
  h.compute.kernel_overhead = Nanoseconds{7};
  return h;
}
ModelDesc tiny_model() {
  ModelDesc m;
  m.name = "tiny";
  m.shape = test::tiny_shape();
  return m;
}
}  // namespace

TEST_CASE("memory plan: what is left after resident weights, KV cache and workspace",
          "[core][sizing]") {
  const ModelDesc m = tiny_model();  // non-expert 296 B, expert 48 B, 2 experts, KV 8 B/token
  MemoryPlanOptions opt;
  opt.context_tokens = 10;
  opt.batch = 2;
  opt.workspace = Bytes{50};
  // usable = 1000 - 100 = 900; taken = 296 + 160 + 50 = 506; left 394 -> 8 experts would fit, 2 exist
  auto p = plan_memory(m, toy_gpu(Bytes{1000}), opt);
  CHECK(p.usable.count == 900U);
  CHECK(p.non_expert.count == 296U);
  CHECK(p.kv_cache.count == 160U);
  CHECK(p.expert_cache.count == 394U);
  CHECK(p.experts_fit == 2U);
  CHECK(p.fits_entirely);
  CHECK(p.cached_fraction() == Approx(1.0));

  // usable = 560; left 54 -> one expert
  p = plan_memory(m, toy_gpu(Bytes{660}), opt);
  CHECK(p.expert_cache.count == 54U);
  CHECK(p.experts_fit == 1U);
  CHECK_FALSE(p.fits_entirely);
  CHECK(p.cached_fraction() == Approx(0.5));

  // resident part does not fit: nothing left for experts, and it says so
  p = plan_memory(m, toy_gpu(Bytes{500}), opt);
  CHECK_FALSE(p.fits_without_experts);
  CHECK(p.expert_cache.count == 0U);
  CHECK(p.experts_fit == 0U);

  // a draft model takes its share too
  opt.extra_resident = Bytes{54};
  p = plan_memory(m, toy_gpu(Bytes{660}), opt);
  CHECK(p.experts_fit == 0U);
}

TEST_CASE("expert copy time in one copy, per matrix, or in n chunks", "[core][sizing]") {
  const ModelDesc m = tiny_model();  // 48 B: gate 16, up 16, down 16
  const HardwareDesc g = toy_gpu(Bytes{1000});
  CHECK(expert_copy_time(m, g) == Nanoseconds{10 + 48});
  CHECK(expert_copy_time(m, g, 3) == Nanoseconds{3 * 10 + 48});
  // 5 chunks of ceil(48/5)=10: 10,10,10,10,8 -> 5 overheads + 48
  CHECK(expert_copy_time(m, g, 5) == Nanoseconds{5 * 10 + 48});
}

TEST_CASE("expert FFN time: three roofline GEMMs", "[core][sizing]") {
  const ModelDesc m = tiny_model();  // each matrix 2*4*2 = 16 FLOP per token, 16 B
  const HardwareDesc g = toy_gpu(Bytes{1000});
  // per matrix: 7 + max(16 FLOP / 1 GFLOP/s = 16 ns, 16 B / 1 GB/s = 16 ns) = 23
  CHECK(expert_ffn_time(m, g, 1) == Nanoseconds{3 * 23});
  // 4 tokens: compute 64 ns dominates
  CHECK(expert_ffn_time(m, g, 4) == Nanoseconds{3 * (7 + 64)});
}
