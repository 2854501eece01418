// GPU test of moesched/cuda/backend.cuh (ctest label 'gpu'): the library's policies through the
// one layer driver on real streams, copies and cuBLAS kernels. Exits 77 (skipped) when no CUDA
// device is present, 1 on any failed check. A plain main() (no Catch2): the same file builds with
// Catch2 v2 and v3 machines. Host code (g++); tests/cuda/test_backend_kernels.cu holds the kernels.
#include "support/predictions.hpp"
#include "support/routing.hpp"

#include <moesched/cuda/backend.cuh>
#include <moesched/policy/baseline.hpp>
#include <moesched/policy/prediction_table.hpp>
#include <moesched/policy/prefetch.hpp>
#include <moesched/runtime/driver.hpp>
#include <moesched/sim/replay.hpp>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

using namespace moesched;
using cuda::CudaBackend;

static_assert(runtime::Backend<CudaBackend>);
static_assert(JobPolicy<policy::Prefetch, runtime::Machine<CudaBackend>>);

namespace {

int failures = 0;
void expect(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++failures;
}

/// Small real shapes: hidden 256, expert FFN 128 (192 KiB experts), GQA 4 x 64 heads.
CudaBackend::Config config(std::uint32_t layers, std::uint32_t experts, std::uint32_t slots, std::uint32_t chunks) {
  CudaBackend::Config c;
  c.layers = layers;
  c.experts = experts;
  c.slots = slots;
  c.chunks = chunks;
  c.cpu_workers = 2;
  c.max_tokens = 64;
  c.verify = true;
  c.shape = {.hidden = 256, .moe_ffn = 128, .q_out = 256, .kv_out = 64, .o_in = 256, .router_out = experts,
             .shared_ffn = 128, .dense_ffn = 0, .leading_dense_layers = 0, .dense_layers_between = 0, .vocab = 1024};
  c.expert_bytes = Bytes{3ULL * 256 * 128 * 2};
  return c;
}

/// A CUDA backend with its caller-owned device memory and host store.
struct Rig {
  CudaBackend::Config cfg;
  void* device = nullptr;
  std::vector<std::byte> store;
  CudaBackend* backend = nullptr;
  bool ok = false;
  explicit Rig(const CudaBackend::Config& c) : cfg(c) {
    const auto req = CudaBackend::requirements(c);
    store.resize(req.host_bytes);
    const std::size_t e = c.expert_bytes.count;
    for (std::size_t i = 0; i < store.size(); ++i) {
      const std::size_t f = i / e;
      store[i] = static_cast<std::byte>((f * 131 + (i % e) * 7 + ((i % e) >> 8)) & 0xFFU);
    }
    if (cudaMalloc(&device, req.device_bytes) != cudaSuccess) return;
    backend = new CudaBackend(c, device, req.device_bytes, store);
    const runtime::Status s = backend->initialize();
    if (!s) std::printf("initialize: %s\n", s.describe().c_str());
    ok = s.ok();
  }
  Rig(const Rig&) = delete;
  Rig& operator=(const Rig&) = delete;
  ~Rig() {
    if (backend != nullptr) {
      const runtime::Status s = backend->shutdown();
      if (!s) std::printf("FAIL shutdown: %s\n", s.describe().c_str());
      delete backend;  // before the memory it uses
    }
    if (device != nullptr) cudaFree(device);
  }
};


struct RunResult {
  bool ok = false;
  runtime::RunMetrics metrics;
};

template <class P>
RunResult run_gpu(const Workload& w, P& pol, std::uint32_t slots, std::uint32_t chunks, const std::string& label,
                  bool graphs = true) {
  RunResult out;
  CudaBackend::Config c = config(w.layers(), w.shape().experts, slots, chunks);
  c.graphs = graphs;
  Rig rig(c);
  expect(rig.ok, label + ": initialize");
  if (!rig.ok) return out;
  runtime::LayerDriver<CudaBackend> driver(w, *rig.backend, {.check_invariants = true, .compute_ahead = 4});
  rig.backend->reset_host_stats();
  const runtime::Status s = driver.run(pol);
  if (!s) std::printf("  %s / %s\n", driver.fault_text().c_str(), rig.backend->error().describe().c_str());
  expect(s.ok(), label + ": the driver's run succeeds");
  std::uint64_t mismatches = 0;
  std::uint64_t checked = 0;
  expect(rig.backend->verify_counts(mismatches, checked).ok(), label + ": verify counters read back");
  expect(mismatches == 0, label + ": every expert kernel found its expert's bytes in its slot (" +
                              std::to_string(mismatches) + " mismatches)");
  expect(checked == w.all_uses().size(), label + ": one checked expert kernel per use (" + std::to_string(checked) +
                                             " of " + std::to_string(w.all_uses().size()) + ")");
  const auto& m = driver.metrics();
  expect(m.decode_tokens == w.decode_tokens(), label + ": decode tokens");
  expect(m.uses == w.all_uses().size(), label + ": uses");
  expect(m.passes == w.pass_count(), label + ": passes");
  expect(m.tpot_ms.mean > 0.0, label + ": TPOT positive (" + std::to_string(m.tpot_ms.mean) + " ms)");
  expect(m.peak_expert_memory <= rig.cfg.expert_bytes * slots, label + ": peak expert memory within the slots");
  // The driver thread's time as the backend saw it: every completion counted once, submit time
  // inside the busy time, and a positive time per completion (the driver does work on each).
  const auto& h = rig.backend->host_stats();
  expect(h.completions >= m.passes * (w.layers() + 1), label + ": host_stats counts the completions (" +
                                                             std::to_string(h.completions) + ")");
  expect(h.submitting.count() > 0 && h.submitting <= h.busy, label + ": submit time is part of the driver's busy time");
  expect(h.handle_ns() > 0.0 && h.waited > 0 && h.waited <= h.completions,
         label + ": handle " + std::to_string(h.handle_ns()) + " ns per completion, " + std::to_string(h.waited) + " waits");
  out.ok = s.ok();
  out.metrics = m;
  return out;
}

/// Copies expert (1, 2) into slot 1 and waits until it landed (the graph and span checks' setup).
bool land_expert_1_2(CudaBackend& b, const std::string& label) {
  runtime::Completion done;
  expect(b.submit_copy({ExpertId{1, 2}, 1, CopyPriority::high}).ok(), label + ": copy submitted");
  bool landed = false;
  while (!landed && b.wait(done)) landed = done.kind == runtime::CompletionKind::chunk && done.landed;
  expect(landed, label + ": the expert landed");
  return landed;
}

/// A compute order of `kind` for MoE layer `layer` over `tokens` tokens of `pass`; an expert order
/// is expert (1, 2) in slot 1 (land_expert_1_2).
runtime::ComputeOrder order_of(runtime::ComputeKind kind, std::uint32_t layer, std::uint32_t tokens, const Pass& pass) {
  runtime::ComputeOrder o{};
  o.kind = kind;
  o.layer = layer;
  o.tokens = tokens;
  o.pass = &pass;
  if (kind == runtime::ComputeKind::expert) {
    o.expert = ExpertId{1, 2};
    o.slot = 1;
  }
  return o;
}

/// CUDA graphs (Config::graphs): the same orders through graphs and launched one by one give the
/// same output bits; a graph is captured once per (order, slot or layer, tokens) and replayed;
/// prepare_graphs() captures every order up front.
void graph_checks() {
  auto run = [&](bool graphs, std::vector<std::byte>& out, std::size_t& built) {
    CudaBackend::Config c = config(2, 4, 2, 1);
    c.graphs = graphs;
    Rig rig(c);
    expect(rig.ok, std::string("graphs ") + (graphs ? "on" : "off") + ": initialize");
    if (!rig.ok) return;
    CudaBackend& b = *rig.backend;
    runtime::Completion done;
    land_expert_1_2(b, "graphs");
    Pass pass;
    pass.tokens = 3;
    pass.member_count = 1;
    auto order = [&](runtime::ComputeKind k, std::uint32_t layer, std::uint32_t tokens) { return order_of(k, layer, tokens, pass); };
    // Twice the same sequence (the second replays the graphs), then a new token count.
    for (int round = 0; round < 2; ++round) {
      for (const auto& o : {order(runtime::ComputeKind::dense, 1, 3), order(runtime::ComputeKind::expert, 1, 3),
                            order(runtime::ComputeKind::expert, 1, 2), order(runtime::ComputeKind::head, 0, 3)}) {
        expect(b.submit_compute(o).ok(), "graphs: order submitted");
      }
      if (round == 0) built = b.graphs_built();
    }
    int seen = 0;
    while (seen < 8 && b.wait(done)) seen += done.kind == runtime::CompletionKind::compute ? 1 : 0;
    expect(seen == 8, "graphs: every order completed");
    expect(b.graphs_built() == built, "graphs: a second round replays the graphs (" + std::to_string(b.graphs_built()) + ")");
    out.assign(std::size_t{c.max_tokens} * c.shape.hidden * 2, std::byte{0});
    expect(b.read_output(out).ok(), "graphs: output read back");
    if (graphs) {
      // prepare_graphs: every slot's FFN, every layer's dense part, the head, the draft step, per token count.
      expect(b.prepare_graphs(3, true).ok(), "graphs: prepare_graphs");
      expect(b.graphs_built() == 3 * (2 + 2 + 1 + 1), "graphs: prepare_graphs captured 3 x (2 slots + 2 layers + head + "
                                                       "draft) = 18 graphs (" + std::to_string(b.graphs_built()) + ")");
      expect(b.prepare_graphs(0, false).code == runtime::StatusCode::bad_argument, "graphs: prepare_graphs(0) refused");
    }
  };
  std::vector<std::byte> with, without;
  std::size_t built_with = 0, built_without = 0;
  run(true, with, built_with);
  run(false, without, built_without);
  expect(built_with == 4 && built_without == 0, "graphs: 4 distinct orders, 4 graphs (" + std::to_string(built_with) +
                                                    "); none without graphs (" + std::to_string(built_without) + ")");
  expect(!with.empty() && with == without, "graphs: the same output bits through graphs as launched one by one");
}

/// span_stats(): every compute order counted once under its kind and tokens; orders submitted
/// while the stream is held are queued behind the one ahead of them (the first has none ahead);
/// an order submitted after the stream ran dry counts as launched; reset_host_stats() clears.
void span_checks() {
  CudaBackend::Config c = config(2, 4, 2, 1);
  Rig rig(c);
  expect(rig.ok, "spans: initialize");
  if (!rig.ok) return;
  CudaBackend& b = *rig.backend;
  runtime::Completion done;
  land_expert_1_2(b, "spans");
  Pass pass;
  pass.tokens = 3;
  pass.member_count = 1;
  auto order = [&](runtime::ComputeKind k, std::uint32_t tokens) { return order_of(k, 1, tokens, pass); };
  auto finish = [&](int n) {
    int seen = 0;
    while (seen < n && b.wait(done)) seen += done.kind == runtime::CompletionKind::compute ? 1 : 0;
    return seen == n;
  };
  b.reset_host_stats();
  expect(b.span_stats().empty(), "spans: none after reset_host_stats()");
  expect(b.hold_compute_stream(Nanoseconds{20'000'000}).ok(), "spans: stream held");
  for (const auto& o : {order(runtime::ComputeKind::dense, 3), order(runtime::ComputeKind::expert, 3),
                        order(runtime::ComputeKind::expert, 2), order(runtime::ComputeKind::head, 3),
                        order(runtime::ComputeKind::dense, 3)}) {
    expect(b.submit_compute(o).ok(), "spans: order submitted");
  }
  expect(finish(5), "spans: the five held orders completed");
  // Every completion is out only after its record left the stream: the next order finds it empty.
  expect(b.submit_compute(order(runtime::ComputeKind::expert, 2)).ok() && finish(1), "spans: an order onto an idle stream");
  const auto rows = b.span_stats();
  auto find = [&](runtime::ComputeKind k, std::uint32_t t) -> CudaBackend::SpanStats {
    for (const auto& r : rows) {
      if (r.kind == k && r.tokens == t) return r.stats;
    }
    return {};
  };
  const auto dense = find(runtime::ComputeKind::dense, 3);
  const auto e3 = find(runtime::ComputeKind::expert, 3);
  const auto e2 = find(runtime::ComputeKind::expert, 2);
  const auto head = find(runtime::ComputeKind::head, 3);
  expect(rows.size() == 4, "spans: four (kind, tokens) rows (" + std::to_string(rows.size()) + ")");
  expect(dense.launched == 1 && dense.queued == 1, "spans: dense x3: the first order launched, the second queued (" +
                                                       std::to_string(dense.launched) + "/" + std::to_string(dense.queued) + ")");
  expect(e3.queued == 1 && e3.launched == 0 && head.queued == 1 && head.launched == 0,
         "spans: expert x3 and head x3 queued behind the order ahead");
  expect(e2.queued == 1 && e2.launched == 1, "spans: expert x2 once queued, once onto the idle stream (" +
                                                 std::to_string(e2.queued) + "/" + std::to_string(e2.launched) + ")");
  expect(dense.queued_mean_ns() > 0.0 && e3.queued_mean_ns() > 0.0 && head.queued_mean_ns() > 0.0,
         "spans: queued spans are positive device times");
  b.reset_host_stats();
  expect(b.span_stats().empty(), "spans: reset_host_stats() clears them");
}

/// A copy into a slot waits (on the GPU) for the kernel still reading it; bytes arrive intact;
/// a high copy overtakes a queued low one; cancel and drain.
void direct_checks() {
  auto cfg = config(1, 4, 2, 3);
  Rig rig(cfg);
  expect(rig.ok, "direct: initialize");
  if (!rig.ok) return;
  CudaBackend& b = *rig.backend;
  runtime::Completion c;
  bool landed = false;
  expect(b.submit_copy({{0, 0}, 0, CopyPriority::high}).ok(), "direct: submit_copy");
  while (b.wait(c)) landed = landed || (c.kind == runtime::CompletionKind::chunk && c.landed);
  expect(landed, "direct: the copy landed");
  std::vector<std::byte> back(cfg.expert_bytes.count);
  expect(b.read_slot(0, back).ok(), "direct: read_slot");
  expect(std::memcmp(back.data(), rig.store.data(), back.size()) == 0, "direct: slot 0 holds expert 0's bytes exactly");

  // A pass of 64 tokens makes the expert kernel long enough to matter; the copy into the same
  // slot is submitted at once and must start after it (stream order, no host wait).
  Pass pass;
  pass.tokens = 64;
  pass.member_count = 1;
  expect(b.submit_compute({runtime::ComputeKind::dense, 0, {}, 0, 0, 0, &pass}).ok(), "direct: dense kernel");
  expect(b.submit_compute({runtime::ComputeKind::expert, 0, {0, 0}, 0, 64, 0, &pass}).ok(), "direct: expert kernel");
  expect(b.submit_copy({{0, 1}, 0, CopyPriority::high}).ok(), "direct: copy into the slot being read");
  Nanoseconds kernel_end{};
  Nanoseconds copy_start{Nanoseconds::max()};
  std::uint32_t kernels = 0;
  while (b.wait(c)) {
    if (c.kind == runtime::CompletionKind::compute && ++kernels == 2) kernel_end = c.end;
    if (c.kind == runtime::CompletionKind::chunk) copy_start = std::min(copy_start, c.start);
  }
  expect(copy_start >= kernel_end, "direct: the copy started after the slot's reader ended (" +
                                       std::to_string(copy_start.count()) + " >= " + std::to_string(kernel_end.count()) + " ns)");
  std::uint64_t mismatches = 1;
  std::uint64_t checked = 0;
  expect(b.verify_counts(mismatches, checked).ok() && mismatches == 0 && checked == 1,
         "direct: the expert kernel read expert 0 intact before the slot was overwritten");
  expect(b.read_slot(0, back).ok() && std::memcmp(back.data(), rig.store.data() + cfg.expert_bytes.count, back.size()) == 0,
         "direct: slot 0 then holds expert 1's bytes exactly");

  // Priorities: a low copy into slot 0 held back on the GPU behind a long reader of the slot (40
  // dense kernels, then an expert kernel reading slot 0); a second low copy queued behind it is
  // cancelled (no byte moved) and resubmitted high: it overtakes the first at a chunk boundary and
  // lands first.
  for (int i = 0; i < 40; ++i) {
    if (!b.submit_compute({runtime::ComputeKind::dense, 0, {}, 0, 0, 0, &pass}).ok()) expect(false, "direct: dense kernel");
  }
  expect(b.submit_compute({runtime::ComputeKind::expert, 0, {0, 1}, 0, 64, 0, &pass}).ok(), "direct: second expert kernel");
  expect(b.submit_copy({{0, 2}, 0, CopyPriority::low}).ok(), "direct: low copy behind the reader");
  expect(b.submit_copy({{0, 3}, 1, CopyPriority::low}).ok(), "direct: second low copy");
  expect(b.cancel_copy({0, 3}), "direct: a queued copy that has not moved is cancelled");
  expect(b.submit_copy({{0, 3}, 1, CopyPriority::high}).ok(), "direct: high copy");
  std::vector<ExpertId> order;
  std::uint32_t low_chunks_before_high_landed = 0;
  while (b.wait(c)) {
    if (c.kind != runtime::CompletionKind::chunk) continue;
    if (c.expert == ExpertId{0, 2} && order.empty()) ++low_chunks_before_high_landed;
    if (c.landed) order.push_back(c.expert);
  }
  expect(order.size() == 2 && order[0] == ExpertId{0, 3} && order[1] == ExpertId{0, 2},
         "direct: the high copy landed before the low one it overtook");
  expect(low_chunks_before_high_landed <= cfg.copy_window,
         "direct: the high copy waited for at most copy_window chunks of the low one (" +
             std::to_string(low_chunks_before_high_landed) + ")");
  expect(b.verify_counts(mismatches, checked).ok() && mismatches == 0 && checked == 2,
         "direct: the second reader found expert 1 intact");
  expect(b.read_slot(0, back).ok() && std::memcmp(back.data(), rig.store.data() + 2 * cfg.expert_bytes.count, back.size()) == 0,
         "direct: slot 0 holds expert 2's bytes exactly");
  expect(b.read_slot(1, back).ok() && std::memcmp(back.data(), rig.store.data() + 3 * cfg.expert_bytes.count, back.size()) == 0,
         "direct: slot 1 holds expert 3's bytes exactly");
  expect(b.submit_copy({{0, 0}, 1, CopyPriority::low}).ok(), "direct: copy before drain");
  expect(b.drain().ok(), "direct: drain");
  expect(!b.poll(c), "direct: nothing left after drain");
  expect(b.submit_compute({runtime::ComputeKind::expert, 0, {0, 9}, 0, 1, 0, &pass}).code ==
             runtime::StatusCode::bad_argument,
         "direct: an out-of-range expert is a bad_argument status");
  Pass big;
  big.tokens = 1000;
  expect(b.submit_compute({runtime::ComputeKind::dense, 0, {}, 0, 0, 0, &big}).code == runtime::StatusCode::bad_argument,
         "direct: a pass above max_tokens is a bad_argument status");
}

/// Batched (cudaMemcpyBatchAsync) and looped (cudaMemcpyAsync) submission of the same copies, cut
/// into uneven pieces, deliver the same bytes: every slot's checksum equals its expert's on the
/// host in both modes, and the slots are byte-identical to the store.
void copy_submit_checks() {
  std::vector<cuda::CopySubmit> modes = {cuda::CopySubmit::loop};
  if (cuda::kHasBatchedCopy) modes.push_back(cuda::CopySubmit::batched);
  constexpr std::uint32_t kExperts = 6;
  std::vector<std::vector<std::uint32_t>> sums(modes.size());
  for (std::size_t m = 0; m < modes.size(); ++m) {
    const std::string name = std::string("copy submit ") + cuda::copy_submit_name(modes[m]);
    for (const std::uint64_t piece : {std::uint64_t{0}, std::uint64_t{4100}}) {
      auto cfg = config(1, kExperts, kExperts, 3);
      cfg.copy_submit = modes[m];
      cfg.copy_piece_bytes = piece;
      const std::string label = name + (piece == 0 ? " (one copy per chunk)" : " (4100-byte pieces)");
      Rig rig(cfg);
      expect(rig.ok, label + ": initialize");
      if (!rig.ok) continue;
      CudaBackend& b = *rig.backend;
      expect(b.batched_copies() == (modes[m] == cuda::CopySubmit::batched), label + ": the mode is the one asked for");
      for (std::uint32_t e = 0; e < kExperts; ++e) {
        if (!b.submit_copy({ExpertId::from_flat(e, kExperts), kExperts - 1 - e, e % 2 == 0 ? CopyPriority::high : CopyPriority::low}).ok()) {
          expect(false, label + ": submit_copy");
        }
      }
      runtime::Completion c;
      std::uint32_t landed = 0;
      while (b.wait(c)) landed += c.kind == runtime::CompletionKind::chunk && c.landed ? 1 : 0;
      expect(landed == kExperts && b.error().ok(), label + ": every copy landed (" + std::to_string(landed) + ")");
      const std::size_t bytes = cfg.expert_bytes.count;
      std::vector<std::byte> back(bytes);
      bool same = true;
      std::vector<std::uint32_t> got;
      for (std::uint32_t e = 0; e < kExperts; ++e) {
        same = same && b.read_slot(kExperts - 1 - e, back).ok();
        same = same && std::memcmp(back.data(), rig.store.data() + e * bytes, bytes) == 0;
        got.push_back(cuda::slot_checksum(back.data(), bytes));
        same = same && got.back() == cuda::slot_checksum(rig.store.data() + e * bytes, bytes);
      }
      expect(same, label + ": every slot holds its expert's bytes (checksums and bytes equal the host's)");
      if (piece != 0) sums[m] = got;
    }
  }
  if (modes.size() == 2) expect(sums[0] == sums[1], "copy submit: batched and looped copies give identical checksums");
  if (cuda::kHasBatchedCopy) {
    // Batched mode checks its memory like any other: a short host store is a bad_argument status.
    auto cfg = config(1, 2, 2, 1);
    cfg.copy_submit = cuda::CopySubmit::batched;
    std::vector<std::byte> store(CudaBackend::requirements(cfg).host_bytes);
    const auto req = CudaBackend::requirements(cfg);
    void* dev = nullptr;
    if (cudaMalloc(&dev, req.device_bytes) == cudaSuccess) {
      CudaBackend b(cfg, dev, req.device_bytes, std::span<const std::byte>(store.data(), store.size() / 2));
      const runtime::Status s = b.initialize();
      expect(s.code == runtime::StatusCode::bad_argument, "copy submit: a host store below requirements is refused: " + s.describe());
      cudaFree(dev);
    }
  }
}

void failure_checks() {
  // Too little device memory: a status, nothing started.
  auto cfg = config(1, 4, 2, 1);
  std::vector<std::byte> store(CudaBackend::requirements(cfg).host_bytes);
  void* dev = nullptr;
  if (cudaMalloc(&dev, 1 << 20) != cudaSuccess) {
    expect(false, "failure: cudaMalloc");
    return;
  }
  {
    CudaBackend b(cfg, dev, 1 << 20, store);
    const runtime::Status s = b.initialize();
    expect(s.code == runtime::StatusCode::bad_argument, "failure: device memory below requirements: " + s.describe());
  }
  {
    auto spin = cfg;
    spin.wait_spin_us = CudaBackend::kMaxWaitSpinUs + 1;
    CudaBackend b(spin, dev, 1 << 20, store);
    const runtime::Status s = b.initialize();
    expect(s.code == runtime::StatusCode::bad_argument && s.describe().find("wait_spin_us") != std::string::npos,
           "failure: a wait spin above the limit is named: " + s.describe());
  }
  cudaFree(dev);
}

}  // namespace

// Arguments name the groups to run (direct, failure, copy_submit, graphs, driver); none runs all.
// compute-sanitizer racecheck runs the first four: they hold the backend's one shared-memory
// kernel (the checksum) and its own kernels, while the driver runs' cuBLAS kernels take it
// beyond any time limit.
int main(int argc, char** argv) {
  const std::vector<std::string> known = {"direct", "failure", "copy_submit", "graphs", "driver"};
  std::vector<std::string> groups(argv + 1, argv + argc);
  for (const std::string& g : groups) {
    if (std::find(known.begin(), known.end(), g) == known.end()) {
      std::fprintf(stderr, "test_cuda_backend: unknown group '%s' (direct, failure, copy_submit, graphs, driver)\n", g.c_str());
      return 2;
    }
  }
  auto runs = [&](const char* g) { return groups.empty() || std::find(groups.begin(), groups.end(), g) != groups.end(); };
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::printf("no CUDA device: skipped\n");
    return 77;
  }
  if (runs("direct")) direct_checks();
  if (runs("failure")) failure_checks();
  if (runs("copy_submit")) copy_submit_checks();
  if (runs("graphs")) {
    graph_checks();
    span_checks();
  }
  if (!runs("driver")) {
    std::printf("%d failure(s)\n", failures);
    return failures == 0 ? 0 : 1;
  }

  const auto routing = test::random_routing(42, 4, 16, 2, 2, 4, 40, 0.6);
  const Workload w = build_workload(routing, {4, 16, 2}, {.batch = 2});
  const std::uint32_t slots = w.max_layer_union() + 6;
  const Bytes e{3ULL * 256 * 128 * 2};
  const sim::CostModel cost = sim::CostModel::fixed(
      {.dense = Nanoseconds{40}, .expert = Nanoseconds{25}, .head = Nanoseconds{15},
       .chunk_times = {Nanoseconds{100}, Nanoseconds{100}, Nanoseconds{100}}, .expert_bytes = e});
  // Demand policies decide the same on virtual and real time (every copy they make lands before
  // its layer's experts run): the same hits, misses, copies and evictions as the simulator.
  auto compare = [&](auto make, const char* name) {
    auto p1 = make();
    auto p2 = make();
    const auto s = sim::replay(w, cost, p1, {.budget = e * slots, .check_invariants = true});
    const RunResult g = run_gpu(w, p2, slots, 3, name);
    if (!g.ok) return;
    const auto& m = g.metrics;
    expect(m.cache_hits == s.cache_hits && m.misses == s.misses, std::string(name) + ": hits and misses equal the simulator's (" +
                                                                     std::to_string(m.cache_hits) + "/" + std::to_string(m.misses) +
                                                                     " vs " + std::to_string(s.cache_hits) + "/" +
                                                                     std::to_string(s.misses) + ")");
    expect(m.experts_copied == s.experts_copied && m.evictions == s.evictions,
           std::string(name) + ": copies and evictions equal the simulator's");
    bool layers = m.layers.size() == s.layers.size();
    for (std::size_t l = 0; layers && l < s.layers.size(); ++l) layers = m.layers[l].misses == s.layers[l].misses;
    expect(layers, std::string(name) + ": per-layer misses equal the simulator's");
    // Kernels launched one by one (no graphs): the same decisions.
    auto p3 = make();
    const RunResult d = run_gpu(w, p3, slots, 3, std::string(name) + " (no graphs)", false);
    expect(d.ok && d.metrics.cache_hits == s.cache_hits && d.metrics.misses == s.misses &&
               d.metrics.experts_copied == s.experts_copied,
           std::string(name) + " (no graphs): hits, misses and copies equal the simulator's");
  };
  compare([] { return policy::OnDemand{}; }, "on-demand");
  compare([] { return policy::LayerLru{}; }, "lru");

  // Prefetching with perfect predictions, CPU-worker and GPU-stream jobs; SD with drafting.
  for (const bool sd : {false, true}) {
    WorkloadOptions wo;
    if (sd) wo.sd = SdReplay{.gamma = 3, .acceptance = 0.6};
    const Workload ws = build_workload(routing, {4, 16, 2}, wo);
    const std::uint32_t s2 = ws.max_layer_union() + 5;
    const auto table = test::perfect_predictions(ws);
    policy::Prefetch cpu(table, Nanoseconds{0});
    const RunResult a = run_gpu(ws, cpu, s2, 1, sd ? "prefetch (cpu jobs, SD)" : "prefetch (cpu jobs)");
    expect(a.ok && a.metrics.cpu_jobs > 0 && a.metrics.cpu_jobs <= table.set_count(), "prefetch: CPU jobs ran");
    policy::Prefetch gpu(table, Nanoseconds{0}, 2, 0, runtime::JobResource::gpu_stream);
    const RunResult b = run_gpu(ws, gpu, s2, 3, sd ? "prefetch (stream jobs, SD)" : "prefetch (stream jobs)");
    expect(b.ok && b.metrics.gpu_jobs > 0 && b.metrics.cpu_jobs == 0, "prefetch: stream jobs ran");
    policy::LayerLru lru;
    const RunResult c = run_gpu(ws, lru, s2, 3, sd ? "lru (SD)" : "lru (no SD)");
    expect(c.ok && a.ok && a.metrics.misses <= c.metrics.misses, "prefetch: no more misses than lru");
  }
  std::printf("%d failure(s)\n", failures);
  return failures == 0 ? 0 : 1;
}
