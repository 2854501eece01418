// moesched-profile: measures, on the GPU, what the simulator's cost model and the latency model
// need for one model's shapes, through moesched::cuda::CudaBackend's own kernels (the very GEMMs
// moesched-replay runs), and writes a hardware profile (moesched/io/profile_json.hpp):
//
//   CudaBackend::enqueue_kernel --(device events, medians)--> expert FFN, dense, head, draft, router
//   cuda::profile_link ------------------------------------> host-to-device copy curve
//   empty kernels back to back, FFN beside a running copy ---> launch cost, GEMM slowdown
//   each kind of order alone through submit_compute ---------> host costs (submit, launch, notify)
//   a copy on an idle link, the layer driver running lru ----> copy launch, the driver's handle time
//   --> io::write_profile(-o FILE)      [--copy-csv: executor copies beside plain copies]
//
//   moesched-profile --model mixtral-8x7b -o h200-mixtral.profile.json
//
// Exit codes: 0 ok; 1 a CUDA failure (the message names the call) or no device; 2 bad input;
// 4 out of memory; 70 a bug (tools/common/main_guard.hpp).
#include "main_guard.hpp"
#include "output.hpp"
#include "presets_location.hpp"

#include <moesched/cuda/backend.cuh>
#include <moesched/cuda/link_profiler.cuh>
#include <moesched/io/atomic_file.hpp>
#include <moesched/io/profile_json.hpp>
#include <moesched/policy/baseline.hpp>
#include <moesched/runtime/driver.hpp>
#include <moesched/workload/workload.hpp>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

namespace moesched::tools {
namespace {

using cuda::CudaBackend;

struct ProfileOptions {
  std::string model = "mixtral-8x7b";
  std::vector<std::filesystem::path> preset_dirs;
  std::string out;
  std::string copy_csv;
  int device = 0;
  int repeats = 15;
  std::uint64_t max_copy_mib = 512;
  bool quick = false;
  bool graphs = true;
  std::uint32_t wait_spin_us = 50;
  bool cold_l2 = false;
};

/// A failed CUDA call: carried to main as exit code 1 with the call's name.
struct CudaFailure {
  std::string what;
};
void check(cudaError_t st, const char* call) {
  if (st != cudaSuccess) throw CudaFailure{std::string(call) + ": " + cudaGetErrorString(st)};
}
void check(const runtime::Status& s) {
  if (!s) throw CudaFailure{s.describe()};
}

void progress(const std::string& line) { std::fprintf(stderr, "moesched-profile: %s\n", line.c_str()); }

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/// Device events for `repeats` timed intervals on one stream, enqueued back to back (as the
/// driver's compute-ahead keeps the stream fed) and read after one synchronisation.
class Timer {
 public:
  explicit Timer(int repeats) : ev_(static_cast<std::size_t>(repeats) + 1, nullptr) {
    for (auto& e : ev_) check(cudaEventCreate(&e), "cudaEventCreate");
  }
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;
  ~Timer() {
    for (auto e : ev_) (void)cudaEventDestroy(e);
  }
  /// Median ns of `repeats` runs of `work` (after `warmup` untimed runs).
  template <class Work>
  double median_ns(cudaStream_t stream, Work&& work, int warmup = 3) {
    for (int i = 0; i < warmup; ++i) work();
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    const std::size_t n = ev_.size() - 1;
    check(cudaEventRecord(ev_[0], stream), "cudaEventRecord");
    for (std::size_t i = 0; i < n; ++i) {
      work();
      check(cudaEventRecord(ev_[i + 1], stream), "cudaEventRecord");
    }
    check(cudaEventSynchronize(ev_[n]), "cudaEventSynchronize");
    std::vector<double> t(n);
    for (std::size_t i = 0; i < n; ++i) {
      float ms = 0.0F;
      check(cudaEventElapsedTime(&ms, ev_[i], ev_[i + 1]), "cudaEventElapsedTime");
      t[i] = static_cast<double>(ms) * 1e6;
    }
    return median(t);
  }

 private:
  std::vector<cudaEvent_t> ev_;
};

/// Evicts the GPU's L2 cache from a stream: a memset of twice its size (its own buffer). In a
/// replay each expert, dense layer and the head read weights that the rest of the token's work
/// has since pushed out of L2 (a token's working set is many times L2), while the same order timed
/// over and over reads them from L2 when they fit (an expert of a few MB does): timing every order
/// after a flush measures what the replay sees. Off (`--cold-l2 false`) it does nothing.
class L2Flush {
 public:
  L2Flush(int device, bool on) {
    if (!on) return;
    int l2 = 0;
    check(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device), "cudaDeviceGetAttribute(L2CacheSize)");
    bytes_ = std::max<std::size_t>(std::size_t{2} * static_cast<std::size_t>(l2), std::size_t{8} << 20);
    check(cudaMalloc(&buf_, bytes_), "cudaMalloc (L2 flush buffer)");
  }
  L2Flush(const L2Flush&) = delete;
  L2Flush& operator=(const L2Flush&) = delete;
  ~L2Flush() {
    if (buf_ != nullptr) (void)cudaFree(buf_);
  }
  [[nodiscard]] bool on() const noexcept { return buf_ != nullptr; }
  [[nodiscard]] std::size_t bytes() const noexcept { return bytes_; }
  /// Enqueues the flush on `stream` (in order with the stream's other work).
  void operator()(cudaStream_t stream) {
    if (buf_ != nullptr) check(cudaMemsetAsync(buf_, ++value_ & 0xff, bytes_, stream), "cudaMemsetAsync (L2 flush)");
  }

 private:
  void* buf_ = nullptr;
  std::size_t bytes_ = 0;
  int value_ = 0;
};

/// Median ns of `repeats` orders of `order` submitted back to back through submit_compute() (the
/// driver's path: the backend's events, its poller, its kernels), each timed by the completion's
/// own span, after 3 untimed ones. The orders queue behind a kernel that holds the stream until
/// all are submitted, so each span is the device's time alone: at batch 1 the host's submit time
/// per order can exceed its kernels' (tiny experts), and a span measured as they are launched
/// would also hold the host's gaps between kernels, which the profile's host costs (submit,
/// launch) already charge. The hold doubles until it outlasts the submissions (at most 4 tries).
/// With a `flush`, L2 is flushed before each order (outside its span: the flush runs between the
/// previous order's end event and this one's start event).
double submitted_ns(CudaBackend& b, const runtime::ComputeOrder& order, int repeats, L2Flush* flush = nullptr) {
  const int n = repeats + 3;
  Nanoseconds hold{20'000'000};
  for (int attempt = 0;; ++attempt) {
    check(b.hold_compute_stream(hold));
    const Nanoseconds t0 = b.now();
    for (int i = 0; i < n; ++i) {
      if (flush != nullptr) (*flush)(b.compute_stream());
      check(b.submit_compute(order));
    }
    const Nanoseconds submitted = b.now() - t0;
    std::vector<double> t;
    runtime::Completion done;
    int seen = 0;
    while (seen < n && b.wait(done)) {
      if (done.kind != runtime::CompletionKind::compute) continue;
      if (seen++ >= 3) t.push_back(static_cast<double>((done.end - done.start).count()));
    }
    check(b.error());
    if (seen != n) throw CudaFailure{"submit_compute: completions missing"};
    if (submitted * 10 < hold * 9 || attempt == 3) return median(t);
    hold = hold * 2 + submitted;
  }
}

/// The executor's host costs for one order kind. Each order alone on an idle stream (the previous
/// one's completion received first): the driver thread's time inside submit_compute, the delay from
/// submit_compute's call to the order's kernels starting, and the delay from the order's end event
/// to wait() returning its completion on this thread. Then bursts of kHostBurst orders submitted
/// back to back (as the driver does when it runs ahead): the submit time per order there. Medians
/// after 3 untimed.
/// The kernels' start is the end event's time less the order's device time (`device_ns`, timed
/// queued): the start event runs as soon as submit_compute records it on the idle stream, before
/// the kernels (or the graph) are even launched, so "start event - call" (launch_event_ns, kept
/// for the notes) reads only the event's own latency.
struct HostSample {
  double submit_ns = 0.0;        ///< back to back (the steady state the profile keeps)
  double submit_idle_ns = 0.0;   ///< alone, after the previous completion
  double launch_ns = 0.0;        ///< call -> kernels start (end event - device time)
  double launch_event_ns = 0.0;  ///< call -> start event
  double notify_ns = 0.0;
};
constexpr int kHostBurst = 8;
HostSample idle_host_costs(CudaBackend& b, const runtime::ComputeOrder& order, double device_ns, int repeats,
                           L2Flush* flush = nullptr) {
  // Launch and notify compare host times with event times: pair the clocks afresh (they drift by
  // tens of microseconds over the seconds the device timings took).
  check(b.reanchor());
  std::vector<double> submit;
  std::vector<double> launch;
  std::vector<double> launch_event;
  std::vector<double> notify;
  for (int i = 0; i < repeats + 3; ++i) {
    if (flush != nullptr) {  // flushed and idle again before the call: device_ns was timed cold
      (*flush)(b.compute_stream());
      check(cudaStreamSynchronize(b.compute_stream()), "cudaStreamSynchronize");
    }
    const Nanoseconds t0 = b.now();
    check(b.submit_compute(order));
    const Nanoseconds t1 = b.now();
    runtime::Completion done;
    bool got = false;
    while (!got && b.wait(done)) got = done.kind == runtime::CompletionKind::compute;
    const Nanoseconds t2 = b.now();
    check(b.error());
    if (!got) throw CudaFailure{"submit_compute: completion missing"};
    if (i < 3) continue;
    submit.push_back(static_cast<double>((t1 - t0).count()));
    launch_event.push_back(static_cast<double>(std::max(Nanoseconds{0}, done.start - t0).count()));
    launch.push_back(std::max(0.0, static_cast<double>((done.end - t0).count()) - device_ns));
    notify.push_back(static_cast<double>(std::max(Nanoseconds{0}, t2 - done.end).count()));
  }
  std::vector<double> burst;
  for (int i = 0; i < repeats / 2 + 3; ++i) {
    const Nanoseconds t0 = b.now();
    for (int k = 0; k < kHostBurst; ++k) check(b.submit_compute(order));
    const Nanoseconds t1 = b.now();
    runtime::Completion done;
    int got = 0;
    while (got < kHostBurst && b.wait(done)) got += done.kind == runtime::CompletionKind::compute ? 1 : 0;
    check(b.error());
    if (got != kHostBurst) throw CudaFailure{"submit_compute: completions missing"};
    if (i >= 3) burst.push_back(static_cast<double>((t1 - t0).count()) / kHostBurst);
  }
  return {median(burst), median(submit), median(launch), median(launch_event), median(notify)};
}

/// Caller-owned memory for one backend (device allocation and host store), freed in order.
struct BackendRig {
  void* device = nullptr;
  std::unique_ptr<std::byte[]> store;
  std::unique_ptr<CudaBackend> backend;
  /// fill 0: random bf16 (as moesched-replay's store); else that byte everywhere.
  BackendRig(const CudaBackend::Config& cfg, std::byte fill) {
    const auto req = CudaBackend::requirements(cfg);
    check(cudaMalloc(&device, req.device_bytes), "cudaMalloc");
    store.reset(new std::byte[req.host_bytes]);
    if (fill == std::byte{0}) {
      cuda::fill_host_random_bf16(store.get(), req.host_bytes);
    } else {
      std::fill_n(store.get(), req.host_bytes, fill);
    }
    backend = std::make_unique<CudaBackend>(cfg, device, req.device_bytes,
                                            std::span<const std::byte>(store.get(), req.host_bytes));
    check(backend->initialize());
  }
  BackendRig(const BackendRig&) = delete;
  BackendRig& operator=(const BackendRig&) = delete;
  ~BackendRig() {
    if (backend) (void)backend->shutdown();
    backend.reset();
    if (device != nullptr) (void)cudaFree(device);
  }
};

/// The executor's copy throughput: `count` experts of `bytes` copied back to back into distinct
/// slots by a CudaBackend (its copy thread, chunks, events), GB/s from the first chunk's start to
/// the last chunk's end on the device clock; median of `rounds`.
double executor_gbps(std::uint64_t bytes, std::uint32_t count, std::uint32_t chunks, int rounds, int device,
                     cuda::CopySubmit submit, std::uint64_t piece_bytes, std::uint32_t copy_window = 2) {
  CudaBackend::Config c;
  c.layers = 1;
  c.experts = count;
  c.slots = count;
  c.chunks = chunks;
  c.cpu_workers = 0;
  c.max_tokens = 1;
  c.device = device;
  c.copy_submit = submit;
  c.copy_piece_bytes = piece_bytes;
  c.copy_window = copy_window;
  c.expert_bytes = Bytes{(bytes + 3) / 4 * 4};
  c.shape = {.hidden = 64, .moe_ffn = 16, .q_out = 64, .kv_out = 64, .o_in = 64, .router_out = count, .vocab = 64};
  BackendRig rig(c, std::byte{0x3c});
  std::vector<double> gbps;
  for (int r = 0; r < rounds + 1; ++r) {
    for (std::uint32_t e = 0; e < count; ++e) check(rig.backend->submit_copy({ExpertId::from_flat(e, count), e, CopyPriority::high}));
    runtime::Completion done;
    Nanoseconds first{std::numeric_limits<std::int64_t>::max()};
    Nanoseconds last{0};
    std::uint32_t landed = 0;
    while (landed < count && rig.backend->wait(done)) {
      if (done.kind != runtime::CompletionKind::chunk) continue;
      first = std::min(first, done.start);
      last = std::max(last, done.end);
      if (done.landed) ++landed;
    }
    check(rig.backend->error());
    if (landed != count) throw CudaFailure{"executor copy benchmark: copies did not land"};
    if (r == 0) continue;  // warm-up round
    const double ns = static_cast<double>((last - first).count());
    gbps.push_back(ns > 0 ? static_cast<double>(c.expert_bytes.count) * count / ns : 0.0);
  }
  return median(gbps);
}

/// The best plain pinned cudaMemcpyAsync throughput at `bytes`: the larger of one copy alone and
/// `count` copies back to back on one stream (medians of `rounds`).
double plain_gbps(void* host, void* dev, std::uint64_t bytes, std::uint32_t count, int rounds, cudaStream_t stream) {
  double best = 0.0;
  {
    cuda::CopySample one{};
    const std::uint64_t sizes[] = {bytes};
    check(cuda::profile_link(host, dev, sizes, std::max(rounds, 5), cuda::Direction::host_to_device, stream, &one),
          "profile_link");
    best = one.gb_per_s();
  }
  Timer timer(rounds);
  const double ns = timer.median_ns(stream, [&] {
    for (std::uint32_t i = 0; i < count; ++i) {
      check(cudaMemcpyAsync(static_cast<std::byte*>(dev) + (i % 2) * bytes, host, bytes, cudaMemcpyHostToDevice, stream),
            "cudaMemcpyAsync");
    }
  }, 1);
  if (ns > 0) best = std::max(best, static_cast<double>(bytes) * count / ns);
  return best;
}

/// The layer driver's own time per completion it receives (HostCosts::handle_ns): the shared
/// driver runs `lru` on a CudaBackend of the model's shapes (its first `layers` MoE layers: the
/// time per completion does not depend on the depth) over `passes` decode tokens that all route
/// to experts 0..top_k-1, so that after the first pass's copies every expert is resident, as in a
/// run whose experts fit; compute_ahead 8, as moesched-replay's default. The backend's
/// host_stats() split the driver thread's time outside wait() into submit_compute (the profile's
/// submit costs) and the rest: the driver's bookkeeping and the policy's hooks.
struct DriverHandle {
  double handle_ns = 0.0;
  double notify_ns = 0.0;  ///< mean item end -> wait() return, over the waits that blocked
  std::uint64_t completions = 0;
};
DriverHandle driver_handle(const ModelDesc& model, const ProfileOptions& o, std::uint32_t layers, std::uint32_t passes) {
  const std::uint32_t top_k = model.shape.top_k;
  auto cfg = CudaBackend::from_model(model, layers * top_k, 1);
  cfg.layers = layers;
  cfg.host_experts = top_k;  // the store holds what the run copies; the rest alias onto it
  cfg.cpu_workers = 0;
  cfg.device = o.device;
  cfg.graphs = o.graphs;
  cfg.wait_spin_us = o.wait_spin_us;
  Workload w(RoutingShape{layers, cfg.experts, top_k});
  std::vector<ExpertUse> uses;
  for (std::uint32_t e = 0; e < top_k; ++e) uses.push_back({static_cast<std::uint16_t>(e), 1});
  for (std::uint32_t i = 0; i < passes; ++i) {
    const PassMember m{.request = 0, .emitted = 1, .step = i};
    w.begin_pass(Pass{.phase = StepPhase::decode, .tokens = 1, .kv_tokens = 512 + i, .attention_pairs = 512 + i},
                 std::span<const PassMember>(&m, 1));
    for (std::uint32_t l = 0; l < layers; ++l) w.add_layer(uses);
  }
  w.set_request_count(1);
  BackendRig rig(cfg, std::byte{0});
  CudaBackend& b = *rig.backend;
  check(b.prepare_graphs(1, false));
  b.reset_host_stats();
  policy::LayerLru lru;
  runtime::LayerDriver<CudaBackend> driver(w, b, {.check_invariants = false, .compute_ahead = 8});
  if (auto st = driver.run(lru); !st) throw CudaFailure{st.describe() + " " + driver.fault_text()};
  check(b.error());
  const auto& h = b.host_stats();
  return {h.handle_ns(), h.notify_ns(), h.completions};
}

int run_profile(const ProfileOptions& o) {
  check_output_path(o.out, "-o");
  if (!o.copy_csv.empty()) check_output_path(o.copy_csv, "--copy-csv");
  if (o.repeats < 3 || o.repeats > 1000) throw ConfigError("", "repeats", std::to_string(o.repeats), "must be 3..1000");
  if (o.max_copy_mib < 1 || o.max_copy_mib > 4096) {
    throw ConfigError("", "max_copy_mib", std::to_string(o.max_copy_mib), "must be 1..4096");
  }
  const ModelDesc model = preset_catalog(o.preset_dirs).model(o.model);
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::fprintf(stderr, "moesched-profile: error: no CUDA device\n");
    return 1;
  }
  if (o.device < 0 || o.device >= count) throw ConfigError("", "device", std::to_string(o.device), "no such CUDA device");
  check(cudaSetDevice(o.device), "cudaSetDevice");
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, o.device), "cudaGetDeviceProperties");
  const auto t_start = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  };

  profile::HardwareProfile p;
  p.gpu = prop.name;
  p.model = model.name;
  // The model's dtype: its copies move the expert as the model stores it; CudaBackend's GEMMs
  // are bf16 whatever the dtype (what moesched-replay runs), which the notes say.
  p.dtype = std::string(dtype_name(model.dtype));
  std::vector<std::string> notes;
  if (model.dtype != DType::bf16) {
    notes.push_back("compute: CudaBackend's bf16 GEMMs (moesched-replay's); copies: the model's " + p.dtype +
                    " expert bytes");
  }
  const int reps = o.quick ? 5 : o.repeats;
  notes.push_back(o.graphs ? "compute orders: one CUDA graph launch each (CudaBackend::Config::graphs, moesched-replay's "
                            "default); their submit costs are the graph launches'"
                          : "compute orders: kernels launched one by one (--graphs false)");
  notes.push_back(o.wait_spin_us == 0 ? std::string("wait(): blocks at once (--wait-spin-us 0)")
                                      : fmt::format("wait(): polls {} us before it blocks (--wait-spin-us)", o.wait_spin_us));

  // ---- compute: the backend's own kernels ----
  constexpr std::uint32_t kMaxTokens = 64;
  auto cfg = CudaBackend::from_model(model, /*slots=*/1, kMaxTokens);
  cfg.host_experts = 1;
  cfg.cpu_workers = 0;
  cfg.device = o.device;
  cfg.graphs = o.graphs;
  cfg.wait_spin_us = o.wait_spin_us;
  progress(fmt::format("{} on {}: {} MoE layers, {} experts of {:.1f} MB, hidden {}, expert ffn {}", model.name, p.gpu,
                       cfg.layers, cfg.experts, static_cast<double>(cfg.expert_bytes.count) / 1e6, cfg.shape.hidden,
                       cfg.shape.moe_ffn));
  {
    BackendRig rig(cfg, std::byte{0});
    CudaBackend& b = *rig.backend;
    cudaStream_t s = b.compute_stream();
    L2Flush flush(o.device, o.cold_l2);
    notes.push_back(flush.on() ? fmt::format("expert, dense and head orders timed with a cold L2 (a {:.0f} MB memset before "
                                             "each); draft steps warm (a step rereads the draft model's weights)",
                                             static_cast<double>(flush.bytes()) / 1e6)
                               : std::string("every order timed back to back with whatever L2 holds (--cold-l2 false)"));
    Timer timer(reps);
    auto time = [&](CudaBackend::Kernel k, std::uint32_t tokens, std::uint32_t layer = 0) {
      return timer.median_ns(s, [&] { check(b.enqueue_kernel(k, tokens, layer)); });
    };
    // Expert 0 (random bf16, as moesched-replay's store) into slot 0: expert kernels read it.
    {
      check(b.submit_copy({ExpertId{0, 0}, 0, CopyPriority::high}));
      runtime::Completion done;
      bool landed = false;
      while (!landed && b.wait(done)) landed = done.kind == runtime::CompletionKind::chunk && done.landed;
      check(b.error());
      if (!landed) throw CudaFailure{"profile: the expert copy did not land"};
    }
    // Orders as the driver submits them (submit_compute): the backend's events and poller included.
    Pass pass;
    auto order = [&](runtime::ComputeKind k, std::uint32_t t, std::uint32_t layer) {
      pass.tokens = t;
      pass.member_count = t;
      runtime::ComputeOrder ord{};
      ord.kind = k;
      ord.layer = layer;
      ord.tokens = t;
      ord.pass = &pass;
      return submitted_ns(b, ord, reps, &flush);
    };
    const std::uint32_t last = cfg.layers - 1;  // the cost model scales the last MoE layer's dense part
    const std::vector<std::uint32_t> tokens = {1, 2, 4, 8, 16, 32, 64};
    for (std::uint32_t t : tokens) p.expert_ffn.push_back({t, order(runtime::ComputeKind::expert, t, 0)});
    progress(fmt::format("expert FFN: {:.1f} us at 1 token, {:.1f} us at 64 ({:.1f} s)", p.expert_ffn.front().ns / 1e3,
                         p.expert_ffn.back().ns / 1e3, elapsed()));
    for (std::uint32_t t : tokens) p.dense.push_back({t, 0, order(runtime::ComputeKind::dense, t, last)});
    // The backend runs no attention over a KV cache (replay has none): its dense part does not
    // depend on the context. The context samples are timed all the same, so that the profile is
    // honest about what the executor runs and the fit sees the (absent) context dependence.
    for (std::uint64_t ctx : {512U, 2048U, 8192U}) {
      for (std::uint32_t t : {1U, 8U}) p.dense.push_back({t, ctx, order(runtime::ComputeKind::dense, t, last)});
    }
    notes.push_back("dense: CudaBackend runs the attention projections, router and shared experts; it runs no "
                    "attention over a KV cache, so the context samples time the same kernels");
    progress(fmt::format("dense layer: {:.1f} us at 1 token, {:.1f} us at 64 ({:.1f} s)", p.dense.front().ns / 1e3,
                         p.dense[tokens.size() - 1].ns / 1e3, elapsed()));
    for (std::uint32_t t : tokens) p.head.push_back({t, order(runtime::ComputeKind::head, t, 0)});
    for (std::uint32_t t : tokens) p.router.push_back({t, time(CudaBackend::Kernel::router, t, last)});
    {
      const int few = std::max(3, reps / 3);  // a draft step is a whole forward: fewer repeats
      for (std::uint32_t t : {1U, 2U, 4U, 8U}) {
        pass.tokens = t;
        pass.member_count = t;
        runtime::ComputeOrder ord{};
        ord.kind = runtime::ComputeKind::draft_step;
        ord.step = 1;
        ord.pass = &pass;
        p.draft_step.push_back({t, submitted_ns(b, ord, few)});
      }
    }
    // Host costs: each kind of order alone on an idle stream, as the driver submits it after a
    // completion (the gate, the end of a layer) at batch 1.
    {
      auto idle = [&](runtime::ComputeKind k, std::uint32_t layer, double device_ns) {
        pass.tokens = 1;
        pass.member_count = 1;
        runtime::ComputeOrder ord{};
        ord.kind = k;
        ord.layer = layer;
        ord.tokens = 1;
        ord.step = k == runtime::ComputeKind::draft_step ? 1 : 0;
        ord.pass = &pass;
        const bool draft = k == runtime::ComputeKind::draft_step;
        return idle_host_costs(b, ord, device_ns, draft ? std::max(3, reps / 3) : reps, draft ? nullptr : &flush);
      };
      // Device times at 1 token, timed queued above (dense: the last MoE layer at context 0).
      const HostSample dense = idle(runtime::ComputeKind::dense, last, p.dense.front().ns);
      const HostSample expert = idle(runtime::ComputeKind::expert, 0, p.expert_ffn.front().ns);
      const HostSample head = idle(runtime::ComputeKind::head, 0, p.head.front().ns);
      const HostSample draft = idle(runtime::ComputeKind::draft_step, 0, p.draft_step.front().ns);
      p.host.submit_dense_ns = dense.submit_ns;
      p.host.submit_expert_ns = expert.submit_ns;
      p.host.submit_head_ns = head.submit_ns;
      p.host.submit_draft_ns = draft.submit_ns;
      // One launch and one notify delay for every kind: the medians over the four kinds' medians
      // (they are the same stream and the same poller; the kinds differ in their kernels only).
      p.host.launch_ns = median({dense.launch_ns, expert.launch_ns, head.launch_ns, draft.launch_ns});
      p.host.notify_ns = median({dense.notify_ns, expert.notify_ns, head.notify_ns, draft.notify_ns});
      // Copy launch: with the link and the copy thread idle, submit_copy's call -> the copy's first
      // chunk starting on the copy stream (its start event): the copy thread's wake-up and its
      // first copy call, which the copy curve (event to event) does not hold.
      {
        check(b.reanchor());
        std::vector<double> launch;
        for (int i = 0; i < reps + 3; ++i) {
          const Nanoseconds t0 = b.now();
          check(b.submit_copy({ExpertId{0, 0}, 0, CopyPriority::high}));
          runtime::Completion done;
          Nanoseconds first{-1};
          bool landed = false;
          while (!landed && b.wait(done)) {
            if (done.kind != runtime::CompletionKind::chunk) continue;
            if (done.chunk == 0) first = done.start;
            landed = done.landed;
          }
          check(b.error());
          if (!landed || first.count() < 0) throw CudaFailure{"profile: the copy-launch copy did not land"};
          if (i >= 3) launch.push_back(static_cast<double>(std::max(Nanoseconds{0}, first - t0).count()));
        }
        p.host.copy_launch_ns = median(launch);
        notes.push_back(fmt::format("host: copy launch (idle link: submit_copy -> first chunk starts) {:.1f} us, median of {}",
                                    p.host.copy_launch_ns / 1e3, reps));
      }
      notes.push_back(fmt::format(
          "host: submit_compute on the calling thread per order at 1 token, {} back to back (kept): dense {:.1f} us, "
          "expert {:.1f}, head {:.1f}, draft step {:.1f}; alone on an idle stream: dense {:.1f}, expert {:.1f}, head {:.1f}, "
          "draft step {:.1f}; alone, submit call -> kernels start (end event less the device time, kept): dense {:.1f}, "
          "expert {:.1f}, head {:.1f}, draft {:.1f}; submit call -> start event: dense {:.1f}, expert {:.1f}, head {:.1f}, "
          "draft {:.1f}; end event -> wait() returns: dense {:.1f}, expert {:.1f}, head {:.1f}, draft {:.1f}",
          kHostBurst, dense.submit_ns / 1e3, expert.submit_ns / 1e3, head.submit_ns / 1e3, draft.submit_ns / 1e3,
          dense.submit_idle_ns / 1e3, expert.submit_idle_ns / 1e3, head.submit_idle_ns / 1e3, draft.submit_idle_ns / 1e3,
          dense.launch_ns / 1e3, expert.launch_ns / 1e3, head.launch_ns / 1e3, draft.launch_ns / 1e3,
          dense.launch_event_ns / 1e3, expert.launch_event_ns / 1e3, head.launch_event_ns / 1e3,
          draft.launch_event_ns / 1e3, dense.notify_ns / 1e3, expert.notify_ns / 1e3, head.notify_ns / 1e3,
          draft.notify_ns / 1e3));
      progress(fmt::format("host: submit dense {:.1f} us, expert {:.1f} us back to back ({:.1f}, {:.1f} alone); launch "
                           "{:.1f} us; notify {:.1f} us; copy launch {:.1f} us ({:.1f} s)",
                           dense.submit_ns / 1e3, expert.submit_ns / 1e3, dense.submit_idle_ns / 1e3,
                           expert.submit_idle_ns / 1e3, p.host.launch_ns / 1e3, p.host.notify_ns / 1e3,
                           p.host.copy_launch_ns / 1e3, elapsed()));
    }
    notes.push_back("expert_ffn, dense, head, draft_step: orders submitted back to back through "
                    "CudaBackend::submit_compute (the driver's path) behind a kernel holding the stream until all "
                    "are submitted, each timed by its completion's events: the device's time without the host's "
                    "launch gaps (those are the host costs)");
    progress(fmt::format("head {:.1f} us, router {:.1f} us, draft step {:.1f} us at 1 token ({:.1f} s)",
                         p.head.front().ns / 1e3, p.router.front().ns / 1e3, p.draft_step.front().ns / 1e3, elapsed()));
    // Launch cost: empty kernels back to back; the spacing the device sees is the host's launch rate.
    {
      constexpr int kBurst = 200;
      p.kernel_launch_ns = timer.median_ns(s, [&] {
        for (int i = 0; i < kBurst; ++i) check(b.enqueue_kernel(CudaBackend::Kernel::empty, 1));
      }) / kBurst;
    }
    notes.push_back("kernel_launch_ns: 200 empty kernels launched back to back, device time per kernel");
    // GEMM slowdown: the expert FFN at 16 tokens alone and while a large host-to-device copy runs.
    {
      const std::uint64_t copy_bytes = std::uint64_t{256} << 20;
      void* host = nullptr;
      void* dev = nullptr;
      cudaStream_t cs = nullptr;
      check(cudaHostAlloc(&host, copy_bytes, cudaHostAllocDefault), "cudaHostAlloc");
      std::unique_ptr<void, decltype(&cudaFreeHost)> host_owner(host, &cudaFreeHost);
      check(cudaMalloc(&dev, copy_bytes), "cudaMalloc");
      std::unique_ptr<void, decltype(&cudaFree)> dev_owner(dev, &cudaFree);
      check(cudaStreamCreateWithFlags(&cs, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
      std::unique_ptr<CUstream_st, decltype(&cudaStreamDestroy)> cs_owner(cs, &cudaStreamDestroy);
      std::memset(host, 1, copy_bytes);
      const std::uint32_t t = 16;
      const auto wall_start = std::chrono::steady_clock::now();
      const double alone = order(runtime::ComputeKind::expert, t, 0);
      const double alone_wall_ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - wall_start).count();
      // The copy must outlast the whole timed measurement, which holds the stream while it submits
      // (its wall time, not its kernels' time): about 5 ms per 256 MiB at 55 GB/s. Sized from the
      // wall time of the run alone, and doubled (up to three times) while the copy still ends first.
      int copies = static_cast<int>(std::clamp(2.0 * alone_wall_ns / 4e6 + 2, 2.0, 256.0));
      double busy = alone;
      bool still_copying = false;
      for (int attempt = 0; attempt < 4 && !still_copying; ++attempt, copies = std::min(copies * 2, 1024)) {
        for (int i = 0; i < copies; ++i) check(cudaMemcpyAsync(dev, host, copy_bytes, cudaMemcpyHostToDevice, cs), "cudaMemcpyAsync");
        busy = order(runtime::ComputeKind::expert, t, 0);
        still_copying = cudaStreamQuery(cs) == cudaErrorNotReady;
        check(cudaStreamSynchronize(cs), "cudaStreamSynchronize");
      }
      p.gemm_slowdown_under_copy = alone > 0 ? std::max(1.0, busy / alone) : 1.0;
      notes.push_back(fmt::format("gemm_slowdown_under_copy: expert FFN at {} tokens, {:.1f} us alone, {:.1f} us beside "
                                  "a host-to-device copy{}",
                                  t, alone / 1e3, busy / 1e3, still_copying ? "" : " (the copy ended first)"));
    }
    progress(fmt::format("launch {:.2f} us per kernel; FFN slowdown under a copy x{:.3f} ({:.1f} s)",
                         p.kernel_launch_ns / 1e3, p.gemm_slowdown_under_copy, elapsed()));
  }
  // ---- the driver's own time per completion (a backend with every used expert resident) ----
  {
    const std::uint32_t layers = std::min<std::uint32_t>(cfg.layers, 8);
    const std::uint32_t passes = o.quick ? 16 : 48;
    const DriverHandle h = driver_handle(model, o, layers, passes);
    p.host.handle_ns = h.handle_ns;
    notes.push_back(fmt::format("host: handle {:.2f} us per completion: the layer driver running lru on {} MoE layers x {} "
                                "decode tokens, every used expert resident after the first; {} completions; notify seen "
                                "there {:.1f} us",
                                h.handle_ns / 1e3, layers, passes, h.completions, h.notify_ns / 1e3));
    progress(fmt::format("driver: handle {:.2f} us per completion over {} completions; notify {:.1f} us ({:.1f} s)",
                         h.handle_ns / 1e3, h.completions, h.notify_ns / 1e3, elapsed()));
  }

  // ---- the host-to-device copy curve (cuda/link_profiler.cuh) ----
  const std::uint64_t max_bytes = o.max_copy_mib << 20;
  std::vector<std::uint64_t> sizes = cuda::default_profile_sizes(max_bytes);
  if (sizes.empty() || sizes.back() != max_bytes) sizes.push_back(max_bytes);
  const std::uint64_t matrix = std::uint64_t{cfg.shape.hidden} * cfg.shape.moe_ffn * 2;
  const std::uint64_t expert = cfg.expert_bytes.count;
  for (std::uint64_t v : {matrix, expert, expert / 3, std::uint64_t{64} << 10, std::uint64_t{1} << 20, std::uint64_t{16} << 20}) {
    if (v >= 4096 && v <= max_bytes) sizes.push_back(v);
  }
  std::sort(sizes.begin(), sizes.end());
  sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
  {
    const std::uint64_t need = cuda::link_profile_workspace_bytes(sizes);
    void* host = nullptr;
    void* dev = nullptr;
    cudaStream_t cs = nullptr;
    check(cudaHostAlloc(&host, need, cudaHostAllocDefault), "cudaHostAlloc");
    std::unique_ptr<void, decltype(&cudaFreeHost)> host_owner(host, &cudaFreeHost);
    check(cudaMalloc(&dev, 2 * need), "cudaMalloc");
    std::unique_ptr<void, decltype(&cudaFree)> dev_owner(dev, &cudaFree);
    check(cudaStreamCreateWithFlags(&cs, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    std::unique_ptr<CUstream_st, decltype(&cudaStreamDestroy)> cs_owner(cs, &cudaStreamDestroy);
    std::memset(host, 0x5a, need);
    std::vector<cuda::CopySample> samples(sizes.size());
    check(cuda::profile_link(host, dev, sizes, reps, cuda::Direction::host_to_device, cs, samples.data()), "profile_link");
    double floor = 0.0;  // copy time never falls as size grows (cuda::curve_knots' rule)
    for (const auto& c : samples) {
      floor = std::max(floor, c.median_us * 1e3);
      p.copy_h2d.push_back({c.bytes, floor});
    }
    const auto at = [&](std::uint64_t bytes) {
      for (const auto& c : samples) if (c.bytes == bytes) return c.gb_per_s();
      return 0.0;
    };
    progress(fmt::format("copy curve: {} sizes, {:.1f} GB/s at 64 KiB, {:.1f} GB/s at one expert ({:.1f} MB), {:.1f} GB/s "
                         "at {} MiB ({:.1f} s)",
                         sizes.size(), at(std::uint64_t{64} << 10), at(expert), static_cast<double>(expert) / 1e6,
                         at(max_bytes), o.max_copy_mib, elapsed()));
    notes.push_back(fmt::format("copy_h2d: pinned cudaMemcpyAsync, each copy alone between device events, median of {}; "
                                "a running maximum keeps the times monotone",
                                reps));

    // ---- --copy-csv: the executor's copies beside plain copies ----
    if (!o.copy_csv.empty()) {
      std::string csv = "bytes,plain_gbps,executor_gbps\n";
      // Back to back: as many experts as fit in about 2 GB (4..64), chunked as moesched-replay chunks
      // them by default (--chunks 0: auto_copy_chunks on this measured curve, as the simulator decides).
      const auto curve_ns = [&](std::uint64_t bytes) {
        for (const auto& c : p.copy_h2d) if (c.bytes == bytes) return c.ns;
        return 0.0;
      };
      const double whole_ns = curve_ns(expert);
      const double third_ns = curve_ns(expert / 3);
      const std::uint32_t chunks =
          whole_ns > 0.0 && third_ns > 0.0
              ? auto_copy_chunks(Nanoseconds{static_cast<std::int64_t>(whole_ns)}, Nanoseconds{static_cast<std::int64_t>(3.0 * third_ns)})
              : 3U;
      notes.push_back(fmt::format("copy csv: executor copies in {} chunk(s) per expert (auto: a whole copy {:.1f} us, three "
                                  "thirds {:.1f} us)", chunks, whole_ns / 1e3, 3.0 * third_ns / 1e3));
      const std::uint32_t n = static_cast<std::uint32_t>(std::clamp<std::uint64_t>((std::uint64_t{2} << 30) / expert, 4, 64));
      for (std::uint64_t bytes : {expert}) {
        const std::uint64_t need_plain = 2 * bytes;
        double plain = 0.0;
        if (need_plain <= 2 * need && bytes <= need) {
          plain = plain_gbps(host, dev, bytes, n, std::max(3, reps / 3), cs);
        } else {
          void* h2 = nullptr;
          void* d2 = nullptr;
          check(cudaHostAlloc(&h2, bytes, cudaHostAllocDefault), "cudaHostAlloc");
          std::unique_ptr<void, decltype(&cudaFreeHost)> h2_owner(h2, &cudaFreeHost);
          check(cudaMalloc(&d2, need_plain), "cudaMalloc");
          std::unique_ptr<void, decltype(&cudaFree)> d2_owner(d2, &cudaFree);
          std::memset(h2, 0x5a, bytes);
          plain = plain_gbps(h2, d2, bytes, n, std::max(3, reps / 3), cs);
        }
        const double exec = executor_gbps(bytes, n, chunks, 3, o.device, cuda::CopySubmit::automatic, 0);
        csv += fmt::format("{},{:.2f},{:.2f}\n", bytes, plain, exec);
        progress(fmt::format("copies of {:.1f} MB x {}: plain {:.2f} GB/s, executor {:.2f} GB/s in {} chunk(s) ({:.1f}%) "
                             "({:.1f} s)",
                             static_cast<double>(bytes) / 1e6, n, plain, exec, chunks, plain > 0 ? 100.0 * exec / plain : 0.0,
                             elapsed()));
      }
      // Chunking and the copy window, for experts small enough that per-chunk costs show.
      if (expert < (std::uint64_t{64} << 20)) {
        std::string grid = "executor GB/s by (chunks, copy_window):";
        for (const auto& [ch, win] : {std::pair{3U, 2U}, std::pair{3U, 4U}, std::pair{3U, 8U}, std::pair{1U, 2U}, std::pair{1U, 4U}}) {
          grid += fmt::format(" ({}, {}) {:.2f}", ch, win, executor_gbps(expert, n, ch, 3, o.device, cuda::CopySubmit::automatic, 0, win));
        }
        notes.push_back(grid);
        progress(grid);
      }
      // Batched against looped submission where it matters: many small copies (64 KiB pieces).
      if (cuda::kHasBatchedCopy) {
        const std::uint64_t piece = std::uint64_t{64} << 10;
        const std::uint64_t small = std::min<std::uint64_t>(expert, std::uint64_t{8} << 20);
        const double batched = executor_gbps(small, 8, 1, 3, o.device, cuda::CopySubmit::batched, piece);
        const double looped = executor_gbps(small, 8, 1, 3, o.device, cuda::CopySubmit::loop, piece);
        notes.push_back(fmt::format("executor, {:.1f} MB experts as 64 KiB pieces: batched {:.2f} GB/s, looped {:.2f} GB/s",
                                    static_cast<double>(small) / 1e6, batched, looped));
        progress(notes.back());
      }
      io::write_file_atomically(o.copy_csv, csv.data(), csv.size());
    }
  }

  notes.push_back(fmt::format("moesched-profile, {} repeats (medians after warm-up), {:.1f} s", reps, elapsed()));
  io::write_profile(p, o.out, notes);
  (void)io::read_profile(o.out);  // what was written must load
  progress(fmt::format("wrote {} ({:.1f} s)", o.out, elapsed()));
  return 0;
}

}  // namespace
}  // namespace moesched::tools

int main(int argc, char** argv) {
  using namespace moesched::tools;
  CLI::App app{
      "moesched-profile: measure one model's kernels and the host-to-device link on this GPU and write a hardware "
      "profile.\n"
      "Every compute time is timed through moesched::cuda::CudaBackend's own kernels (what moesched-replay runs), "
      "between device events, as the median of --repeats after warm-up:\n"
      "  expert FFN (gate, up, SiLU x up, down) at 1..64 tokens; the dense part of one MoE decoder layer at 1..64 "
      "tokens and contexts 0..8192 (the backend runs no KV attention: context does not change it); LM head; one "
      "draft step at 1..8 sequences; one router GEMV; an empty kernel's launch cost; the expert FFN's slowdown while a "
      "host-to-device copy runs; the executor's host costs (submit time per order kind, the idle stream's launch delay, "
      "the completion's delay to the driver's thread); and pinned host-to-device copies from 4 KiB to --max-copy-mib, with the model's "
      "matrix, chunk and expert sizes.\n"
      "Load it with `moesched-sim --profile FILE` or `moesched-replay --profile FILE`. Progress goes to stderr."};
  ProfileOptions o;
  app.add_option("--model", o.model, "model preset name or JSON file whose shapes are timed")->capture_default_str();
  app.add_option("--presets", o.preset_dirs, "extra preset directories");
  app.add_option("-o,--output", o.out, "the profile JSON to write (checked writable before any work)")->required();
  app.add_option("--device", o.device, "CUDA device ordinal")->capture_default_str();
  app.add_option("--repeats", o.repeats, "timed repeats per sample (medians), 3..1000")->capture_default_str();
  app.add_option("--max-copy-mib", o.max_copy_mib, "largest copy size of the copy curve, MiB")->capture_default_str();
  app.add_option("--copy-csv", o.copy_csv,
                 "also write bytes,plain_gbps,executor_gbps: the executor's copy throughput at this model's expert size "
                 "beside the best plain pinned cudaMemcpyAsync of the same size");
  app.add_flag("--quick", o.quick, "5 repeats per sample (tests)");
  app.add_option("--graphs", o.graphs,
                 "time compute orders as CUDA graph launches, as moesched-replay submits them by default (true or false; "
                 "profile with the setting the replay will use)")
      ->capture_default_str();
  app.add_option("--cold-l2", o.cold_l2,
                 "time expert, dense and head orders after evicting L2 (true or false): a replay's orders read weights "
                 "that the rest of the token pushed out of L2, while an order timed over and over reads them from L2 when "
                 "they fit (off by default until a GPU run shows which matches replays: bench/README.md)")
      ->capture_default_str();
  app.add_option("--wait-spin-us", o.wait_spin_us,
                 "the driver thread polls for a completion this many microseconds before it blocks, as moesched-replay's "
                 "option of the same name (0..100000): it sets the notify delay the profile measures")
      ->capture_default_str()
      ->check(CLI::Range(0U, CudaBackend::kMaxWaitSpinUs));
  CLI11_PARSE(app, argc, argv);
  return guarded_main("moesched-profile", [&] {
    try {
      return run_profile(o);
    } catch (const CudaFailure& f) {
      std::fprintf(stderr, "moesched-profile: error: %s\n", f.what.c_str());
      return 1;
    }
  });
}
