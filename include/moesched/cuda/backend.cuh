#pragma once
/// CudaBackend: the real GPU backend of the layer driver (moesched/runtime/driver.hpp). Real
/// host-to-device copies of expert weights into a slot pool, real cuBLAS bf16 GEMMs of the model's
/// shapes on one compute stream, CUDA events reporting completions to the driver's thread.
///
///   auto cfg = moesched::cuda::CudaBackend::from_model(model, /*slots=*/40, /*max_tokens=*/8);
///   const auto req = moesched::cuda::CudaBackend::requirements(cfg);
///   void* device = nullptr;  cudaMalloc(&device, req.device_bytes);          // caller-owned
///   std::vector<std::byte> store(req.host_bytes);                             // caller-owned
///   moesched::cuda::CudaBackend backend(cfg, device, req.device_bytes, store);
///   if (auto s = backend.initialize(); !s) std::puts(s.describe().c_str());  // pins, streams, threads
///   moesched::runtime::LayerDriver driver(workload, backend, {.compute_ahead = 8});
///   driver.run(policy);                                  // drain() at the end of run()
///   backend.shutdown();                                  // joins, frees what it created
///
/// How each Backend operation runs (ARCHITECTURE.md, "CUDA backend"):
/// - submit_compute (driver thread): records a start event, launches the order's GEMMs with cuBLAS
///   on the compute stream (dense: q/k/v, o, router, shared experts and the dense FFN layers that
///   belong to the MoE layer; expert: gate, up, SiLU(gate) x up, down reading the slot; head: LM
///   head; draft_step: the default draft of sim/cost_model.hpp), records an end event; an expert
///   kernel also records its slot's "free" event after itself (stream-order slot reuse). With
///   Config::graphs (the default) the order's kernels are one CUDA graph launch: captured once
///   per (expert slot | dense layer | head | draft step, token count), on first use or by
///   prepare_graphs(), then replayed; at batch 1 this cuts the driver thread's submit time, which
///   otherwise decides TPOT (tens of launches per layer against tens of microseconds of kernels).
/// - submit_copy / cancel_copy / promote_copy / copy_started: a copy thread owns the copy stream;
///   high copies first; each chunk is cudaEventRecord(start), its copies, cudaEventRecord(end). A
///   chunk's copies (one, or pieces of copy_piece_bytes) go out as one cudaMemcpyBatchAsync where
///   the runtime has it (CUDA 12.8+; Config::copy_submit), else as a loop of cudaMemcpyAsync.
///   At most `copy_window` chunks are on the stream at once, so a high copy overtakes a low one at
///   the next chunk boundary after those. Before a copy's first chunk the copy stream waits
///   (cudaStreamWaitEvent, no host sync) on the slot's free event: the slot's last reader.
/// - completions: one poller thread queries (cudaEventQuery) the end events in order, kernels in
///   stream order and chunks in link order, turns event times (cudaEventElapsedTime against an
///   anchor event) into runtime::Completion and pushes them into a CompletionQueue that wait() and
///   poll() drain on the driver's thread. No CUDA call runs inside a host callback.
/// - submit_job: cpu_worker jobs run `predict` on CPU worker threads (as the host backend does);
///   gpu_stream jobs record an event on the compute stream and the poller runs `predict` on the
///   host once the stream has reached it: the job's place in stream order is real, the predictor
///   itself runs on the CPU (a router GEMV kernel would need the live hidden state, which replay
///   does not have).
/// - drain: drops queued copies and jobs, lets what is on the streams finish, discards completions.
///
/// - profiling: enqueue_kernel() runs the same kernels outside the driver, for moesched-profile;
///   host_stats() splits the driver thread's time outside wait() into submit_compute and the rest
///   (the driver's bookkeeping and the policy's hooks), per completion: moesched-replay reports it
///   for every run, and moesched-profile measures the simulator's HostCosts::handle_ns with it.
///
/// Kernels: the backend's small kernels (SiLU x up, random fill, slot checksum, empty) are defined in
/// moesched/cuda/backend_kernels.cuh; include that in exactly one .cu file of the program. This
/// header itself is host code (g++ or nvcc).
///
/// Memory: the caller allocates requirements().device_bytes (slot pool first, then the cuBLAS
/// workspace, activations and the dense/head/draft weights) and the host store of every expert
/// (requirements().host_bytes). initialize() pins the store with cudaHostRegister (unless it is
/// already pinned) and unregisters it at shutdown. Weights outside the slots are random bf16
/// (timing does not depend on values); the expert GEMMs read the slot. With `verify`, each expert
/// kernel also checksums its slot against the host store's expert and counts mismatches on the
/// device (verify_counts()).
///
/// Every CUDA and cuBLAS call is checked; failures are runtime::Status naming the call with the
/// runtime's static error text. A failure on a worker thread is kept (error()) and ends wait().
/// Times are host steady_clock nanoseconds since construction; event times are mapped onto that
/// clock through an anchor event and clamped to now() when taken. A span's length (a kernel's, a
/// chunk's) is measured between its own two events, so it is exact to the events' resolution
/// however far the anchor drifts over a long run; only where the span sits on the host clock
/// carries the anchor's error (float milliseconds: about 1 us over tens of seconds, plus drift).

#include "moesched/core/config.hpp"
#include "moesched/core/expert_id.hpp"
#include "moesched/core/model.hpp"
#include "moesched/core/units.hpp"
#include "moesched/cuda/status.cuh"
#include "moesched/runtime/backend.hpp"
#include "moesched/runtime/completion_queue.hpp"
#include "moesched/runtime/copy_queue.hpp"
#include "moesched/runtime/job_workers.hpp"
#include "moesched/runtime/jobs.hpp"
#include "moesched/runtime/status.hpp"
#include "moesched/workload/workload.hpp"

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <limits>
#include <mutex>
#include <span>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

// Returns a failed runtime::Status from the enclosing function (undefined at the end of the file).
#define MOESCHED_CUDA_BACKEND_RETURN_IF_(expr)                        \
  do {                                                         \
    const ::moesched::runtime::Status moesched_st_ = (expr);   \
    if (!moesched_st_.ok()) return moesched_st_;               \
  } while (0)

namespace moesched::cuda {

namespace detail {

// The backend's own small kernels. Declared here, defined in moesched/cuda/backend_kernels.cuh,
// which exactly one CUDA translation unit of the program includes: the rest of the backend is
// host code that g++ compiles (nvcc 13 drops the implicit operator== of the core's defaulted
// operator<=>, so the policies and the driver are best compiled by the host compiler).

/// h = SiLU(g) x u over n bf16 values, in place in g, on `stream`.
cudaError_t launch_silu_mul(__nv_bfloat16* g, const __nv_bfloat16* u, std::size_t n, cudaStream_t stream);
/// Small pseudo-random bf16 values in [-1/64, 1/64) over n values.
cudaError_t launch_fill_random(__nv_bfloat16* p, std::size_t n, std::uint32_t seed, cudaStream_t stream);
/// One empty kernel (<<<1, 1>>>): the launch cost alone.
cudaError_t launch_empty(cudaStream_t stream);
cudaError_t launch_spin(std::uint64_t ns, cudaStream_t stream);
/// Checksums `words` (slot_checksum()); counters[0] += (sum != expected[flat]), counters[1] += 1.
cudaError_t launch_checksum(const std::uint32_t* words, std::size_t n, const std::uint32_t* expected,
                            std::uint32_t flat, std::uint32_t* counters, cudaStream_t stream);

}  // namespace detail

/// Host mirror of the device checksum of one expert's bytes (whole 32-bit words).
[[nodiscard]] inline std::uint32_t slot_checksum(const std::byte* p, std::size_t bytes) noexcept {
  std::uint32_t s = 0;
  for (std::size_t i = 0; i < bytes / 4; ++i) {
    std::uint32_t w = 0;
    for (std::size_t b = 0; b < 4; ++b) w |= static_cast<std::uint32_t>(p[i * 4 + b]) << (8U * b);
    s += w * static_cast<std::uint32_t>(2 * i + 1);
  }
  return s;
}

/// Fills a host expert store with small pseudo-random bf16 values in [-1/64, 1/64), as the backend
/// fills its other weights: expert GEMMs then read real-looking values (a GEMM over zeros can run
/// faster). A 1 MiB pattern repeated: about memcpy speed.
inline void fill_host_random_bf16(std::byte* p, std::size_t bytes) {
  constexpr std::size_t kPattern = std::size_t{1} << 20;
  std::vector<std::byte> pattern(kPattern);
  std::uint32_t x = 0x9E3779B9U;
  for (std::size_t i = 0; i + 1 < kPattern; i += 2) {
    x ^= x << 13U;
    x ^= x >> 17U;
    x ^= x << 5U;
    const float v = (static_cast<float>(x & 0xFFFFU) / 65536.0f - 0.5f) / 32.0f;
    std::uint32_t bits = 0;
    std::memcpy(&bits, &v, sizeof bits);
    pattern[i] = static_cast<std::byte>((bits >> 16U) & 0xFFU);  // bf16 = the float's upper half, little-endian
    pattern[i + 1] = static_cast<std::byte>((bits >> 24U) & 0xFFU);
  }
  for (std::size_t o = 0; o < bytes; o += kPattern) std::memcpy(p + o, pattern.data(), std::min(kPattern, bytes - o));
}

/// The shapes of the model the kernels compute (bf16). from_model() derives them from a ModelDesc.
///
///   moesched::cuda::DenseShape s{.hidden = 4096, .moe_ffn = 14336, .q_out = 4096, .kv_out = 1024,
///                                .o_in = 4096, .router_out = 8, .vocab = 32000};
struct DenseShape {
  std::uint32_t hidden = 0;
  std::uint32_t moe_ffn = 0;        ///< one routed expert's intermediate size
  std::uint32_t q_out = 0;          ///< query projection outputs (heads x head dim)
  std::uint32_t kv_out = 0;         ///< key and value projection outputs each (MLA: the compressed kv)
  std::uint32_t o_in = 0;           ///< output projection inputs
  std::uint32_t router_out = 0;     ///< routed experts
  std::uint32_t shared_ffn = 0;     ///< shared experts' intermediate size (all of them), 0 = none
  std::uint32_t dense_ffn = 0;      ///< FFN of the dense decoder layers
  std::uint32_t leading_dense_layers = 0;  ///< dense decoder layers before MoE layer 0 (DeepSeek: 1)
  std::uint32_t dense_layers_between = 0;  ///< dense decoder layers before every other MoE layer
  std::uint32_t vocab = 0;
};

/// How the copy thread submits the copies of one chunk (Config::copy_submit).
/// - batched: one cudaMemcpyBatchAsync per chunk holding all its pieces (CUDA 12.8+: submission
///   costs about 1 us per copy against 2.5-3 us, and small copies run up to twice as fast);
/// - loop: one cudaMemcpyAsync per piece;
/// - automatic: batched where the runtime has it (kHasBatchedCopy), else loop.
enum class CopySubmit { automatic, batched, loop };

/// Whether this build's CUDA runtime has cudaMemcpyBatchAsync (CUDA 12.8 and later).
#if defined(CUDART_VERSION) && CUDART_VERSION >= 12080
inline constexpr bool kHasBatchedCopy = true;
#else
inline constexpr bool kHasBatchedCopy = false;
#endif

[[nodiscard]] inline const char* copy_submit_name(CopySubmit c) noexcept {
  switch (c) {
    case CopySubmit::batched: return "batched";
    case CopySubmit::loop: return "loop";
    case CopySubmit::automatic: break;
  }
  return "automatic";
}
/// Parses "automatic", "batched" or "loop"; false for anything else.
[[nodiscard]] inline bool parse_copy_submit(std::string_view name, CopySubmit& out) noexcept {
  for (CopySubmit c : {CopySubmit::automatic, CopySubmit::batched, CopySubmit::loop}) {
    if (name == copy_submit_name(c)) {
      out = c;
      return true;
    }
  }
  return false;
}

/// A real GPU backend of the layer driver (see the header comment).
class CudaBackend {
 public:
  static constexpr std::uint32_t kNone = std::numeric_limits<std::uint32_t>::max();
  static constexpr std::size_t kCublasWorkspaceBytes = std::size_t{32} << 20U;  // Hopper's advice

  struct Config {
    std::uint32_t layers = 0;        ///< MoE layers
    std::uint32_t experts = 0;       ///< routed experts per layer
    Bytes expert_bytes{};            ///< one expert as copied; holds gate, up, down (hidden x moe_ffn bf16 each) first
    std::uint32_t slots = 0;         ///< expert slots in device memory
    std::uint32_t chunks = 3;        ///< copies per expert, equal parts (3 = one per matrix), 1..64
    std::uint32_t copy_window = 2;   ///< chunks on the copy stream at once, 1..16
    std::uint32_t cpu_workers = 1;   ///< predictor threads
    std::uint32_t max_tokens = 64;   ///< most tokens of one pass (sizes the activations)
    DenseShape shape{};
    std::uint32_t host_experts = 0;  ///< experts held in host memory, 0 = all; fewer aliases expert f to
                                     ///< f mod host_experts (times a model larger than host memory)
    bool verify = false;             ///< checksum every expert kernel's slot (a test mode: slower)
    int device = 0;                  ///< CUDA device ordinal
    CopySubmit copy_submit = CopySubmit::automatic;  ///< how a chunk's copies are submitted
    /// Split each chunk into copies of at most this many bytes (0 = one copy per chunk): an
    /// engine whose gate, up and down (or their shards) lie apart in host memory copies them one
    /// by one; batched submission then hands the pieces to the runtime in one call. At most
    /// kMaxPieces pieces per chunk.
    std::uint64_t copy_piece_bytes = 0;
    /// Submit each compute order as one CUDA graph launch: the order's kernels (cuBLAS GEMMs and
    /// the SiLU kernel) are captured once per kind, layer or slot, and token count (on first use,
    /// or all at once by prepare_graphs()), then replayed; false launches them one by one.
    bool graphs = true;
    /// wait(): poll for a completion this many microseconds before blocking (0: block at once).
    /// The driver thread then burns its core while it waits for the GPU, and a completion that
    /// lands within the spin skips the condition variable's wake-up (the notify delay).
    std::uint32_t wait_spin_us = 50;
  };
  /// Most copies in one chunk (Config::copy_piece_bytes).
  static constexpr std::uint64_t kMaxPieces = 4096;
  /// Longest wait() spin (Config::wait_spin_us): 0.1 s.
  static constexpr std::uint32_t kMaxWaitSpinUs = 100000;

  /// A configuration with the real shapes of `m` (bf16 GEMMs; expert_bytes = the model's expert size).
  [[nodiscard]] static Config from_model(const ModelDesc& m, std::uint32_t slots, std::uint32_t max_tokens) {
    const ModelShape& s = m.shape;
    Config c;
    c.layers = s.moe_layers();
    c.experts = s.experts_per_layer;
    c.slots = slots;
    c.max_tokens = max_tokens;
    // Copies move the expert as the model stores it (m.expert_bytes(): its dtype, biases); the GEMMs
    // read the slot's first 3 x hidden x moe_ffn bf16 values (compute is bf16 whatever the dtype).
    const std::uint64_t bf16 = std::uint64_t{3} * s.hidden * s.moe_ffn * 2;
    c.expert_bytes = Bytes{(std::max(bf16, m.expert_bytes().count) + 3) / 4 * 4};
    DenseShape& d = c.shape;
    d.hidden = s.hidden;
    d.moe_ffn = s.moe_ffn;
    const AttentionShape& a = s.attention;
    if (a.kind == AttentionKind::gqa) {
      d.q_out = a.heads * a.head_dim;
      d.kv_out = a.kv_heads * a.head_dim;
      d.o_in = a.heads * a.head_dim;
    } else {  // MLA: q (or its low-rank pair folded into one), the compressed kv pair, the output
      d.q_out = a.heads * (a.qk_nope_head_dim + a.qk_rope_head_dim);
      d.kv_out = a.kv_lora_rank + a.qk_rope_head_dim;
      d.o_in = a.heads * a.v_head_dim;
    }
    d.router_out = s.experts_per_layer;
    d.shared_ffn = s.shared_experts * s.shared_expert_ffn;
    d.dense_ffn = s.dense_ffn;
    d.leading_dense_layers = s.first_dense_layers;
    d.dense_layers_between = s.moe_layer_interval > 0 ? s.moe_layer_interval - 1 : 0;
    d.vocab = s.vocab;
    return c;
  }

  /// Memory the caller allocates: device = slots, cuBLAS workspace, activations and weights;
  /// host = every expert.
  [[nodiscard]] static runtime::Requirements requirements(const Config& c) noexcept {
    runtime::Requirements r;
    r.device_bytes = Layout(c).total;
    r.host_bytes = std::size_t{host_expert_count(c)} * c.expert_bytes.count;
    return r;
  }

  /// Experts the host store holds for `c`.
  [[nodiscard]] static std::uint32_t host_expert_count(const Config& c) noexcept {
    const std::uint32_t all = c.layers * c.experts;
    return c.host_experts == 0 ? all : std::min(c.host_experts, all);
  }

  /// Keeps the pointers (caller-owned); nothing runs until initialize().
  CudaBackend(const Config& cfg, void* device, std::size_t device_bytes, std::span<const std::byte> host_store)
      : cfg_(cfg), layout_(cfg), device_(static_cast<std::byte*>(device)), device_bytes_(device_bytes),
        store_(host_store), epoch_(std::chrono::steady_clock::now()) {}
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;
  ~CudaBackend() { (void)shutdown(); }

  /// Checks the configuration and memory, pins the host store, creates the streams, events and
  /// cuBLAS handle, fills the weights, starts the threads.
  runtime::Status initialize() {
    using runtime::Status;
    using runtime::StatusCode;
    if (running_ || created_ || shut_) {
      return Status::fail(StatusCode::bad_argument, "CudaBackend::initialize (already initialised or shut down)");
    }
    const auto req = requirements(cfg_);
    const DenseShape& d = cfg_.shape;
    if (cfg_.layers == 0 || cfg_.experts == 0 || cfg_.slots == 0 || d.hidden == 0 || d.moe_ffn == 0 ||
        cfg_.max_tokens == 0) {
      return Status::fail(StatusCode::bad_argument,
                          "CudaBackend::initialize (layers, experts, slots, hidden, moe_ffn and max_tokens must be positive)");
    }
    if (cfg_.expert_bytes.count < expert_matrix_bytes() || cfg_.expert_bytes.count % 4 != 0) {
      return Status::fail(StatusCode::bad_argument,
                          "CudaBackend::initialize (expert_bytes must hold 3 x hidden x moe_ffn bf16 and be a multiple of 4)");
    }
    if (cfg_.chunks < 1 || cfg_.chunks > 64 || cfg_.copy_window < 1 || cfg_.copy_window > 16) {
      return Status::fail(StatusCode::bad_argument, "CudaBackend::initialize (chunks must be 1..64, copy_window 1..16)");
    }
    if (cfg_.wait_spin_us > kMaxWaitSpinUs) {
      return Status::fail(StatusCode::bad_argument, "CudaBackend::initialize (wait_spin_us must be 0..100000)");
    }
    if (cfg_.copy_submit == CopySubmit::batched && !kHasBatchedCopy) {
      return Status::fail(StatusCode::bad_argument,
                          "CudaBackend::initialize (copy_submit batched needs cudaMemcpyBatchAsync, CUDA 12.8+)");
    }
    if (cfg_.copy_piece_bytes != 0 &&
        (cfg_.expert_bytes.count / cfg_.chunks + cfg_.copy_piece_bytes) / cfg_.copy_piece_bytes > kMaxPieces) {
      return Status::fail(StatusCode::bad_argument, "CudaBackend::initialize (copy_piece_bytes gives over kMaxPieces copies per chunk)");
    }
    batched_ = cfg_.copy_submit == CopySubmit::batched || (cfg_.copy_submit == CopySubmit::automatic && kHasBatchedCopy);
    if (device_ == nullptr || device_bytes_ < req.device_bytes) {
      return Status::fail(StatusCode::bad_argument, "CudaBackend::initialize (device memory below requirements().device_bytes)");
    }
    if (reinterpret_cast<std::uintptr_t>(device_) % 256 != 0) {
      return Status::fail(StatusCode::bad_argument, "CudaBackend::initialize (device memory not 256-byte aligned)");
    }
    if (store_.size() < req.host_bytes) {
      return Status::fail(StatusCode::bad_argument, "CudaBackend::initialize (host store below requirements().host_bytes)");
    }
    created_ = true;  // from here on shutdown() releases what exists
    if (auto s = create(req.host_bytes); !s) {
      (void)shutdown();
      return s;
    }
    copies_.assign(std::size_t{cfg_.layers} * cfg_.experts, Copy{});
    waiting_ = runtime::CopyQueue(cfg_.layers * cfg_.experts);
    const std::uint64_t e = cfg_.expert_bytes.count;
    static_assert(static_cast<int>(runtime::ComputeKind::head) == 3, "span_stats(): four compute kinds");
    spans_.assign(4 * (std::size_t{cfg_.max_tokens} + 1), SpanStats{});
    chunk_offset_.clear();
    for (std::uint32_t c = 0; c < cfg_.chunks; ++c) chunk_offset_.push_back(e * c / cfg_.chunks);
    chunk_offset_.push_back(e);
    {  // the pieces of the largest chunk: no allocation on the copy thread's path
      std::uint64_t largest = 0;
      for (std::uint32_t c = 0; c < cfg_.chunks; ++c) largest = std::max(largest, chunk_offset_[c + 1] - chunk_offset_[c]);
      const std::uint64_t pieces = cfg_.copy_piece_bytes == 0 ? 1 : (largest + cfg_.copy_piece_bytes - 1) / cfg_.copy_piece_bytes;
      piece_dst_.reserve(pieces);
      piece_src_.reserve(pieces);
      piece_size_.reserve(pieces);
    }
    stop_ = false;
    try {
      threads_.emplace_back([this] { copy_loop(); });
      threads_.emplace_back([this] { poll_loop(); });
    } catch (const std::system_error&) {
      (void)shutdown();
      return Status::backend("std::thread", "could not start a thread");
    }
    if (const Status w = workers_.start(cfg_.cpu_workers, done_, epoch_); !w) {
      (void)shutdown();
      return w;
    }
    running_ = true;
    return Status::success();
  }

  /// Stops and joins the threads, waits for the streams, frees what initialize() created and
  /// unregisters the host store. Idempotent; returns the first failure.
  runtime::Status shutdown() noexcept {
    {
      std::lock_guard<std::mutex> lock(m_);
      stop_ = true;
    }
    copy_cv_.notify_all();
    poll_cv_.notify_all();
    idle_cv_.notify_all();
    workers_.stop();
    done_.close();
    shut_ = true;
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
    threads_.clear();
    running_ = false;
    runtime::Status first = runtime::Status::success();
    auto keep = [&](cudaError_t st, const char* call) {
      if (st != cudaSuccess && first.ok()) first = runtime::Status::backend(call, cudaGetErrorString(st));
    };
    if (!created_) return first;
    if (copy_stream_ != nullptr) keep(cudaStreamSynchronize(copy_stream_), "cudaStreamSynchronize");
    if (compute_stream_ != nullptr) keep(cudaStreamSynchronize(compute_stream_), "cudaStreamSynchronize");
    for (cudaGraphExec_t& g : graphs_) {
      if (g != nullptr) keep(cudaGraphExecDestroy(g), "cudaGraphExecDestroy");
      g = nullptr;
    }
    graphs_built_ = 0;
    for (cudaEvent_t ev : all_events_) keep(cudaEventDestroy(ev), "cudaEventDestroy");
    all_events_.clear();
    free_events_.clear();
    for (cudaEvent_t ev : slot_free_) keep(cudaEventDestroy(ev), "cudaEventDestroy");
    slot_free_.clear();
    if (anchor_ != nullptr) keep(cudaEventDestroy(anchor_), "cudaEventDestroy");
    anchor_ = nullptr;
    if (cublas_ != nullptr) {
      const cublasStatus_t cs = cublasDestroy(cublas_);
      if (cs != CUBLAS_STATUS_SUCCESS && first.ok()) first = runtime::Status::backend("cublasDestroy", cublasGetStatusString(cs));
      cublas_ = nullptr;
    }
    if (copy_stream_ != nullptr) keep(cudaStreamDestroy(copy_stream_), "cudaStreamDestroy");
    if (compute_stream_ != nullptr) keep(cudaStreamDestroy(compute_stream_), "cudaStreamDestroy");
    copy_stream_ = compute_stream_ = nullptr;
    if (registered_) keep(cudaHostUnregister(const_cast<std::byte*>(store_.data())), "cudaHostUnregister");
    registered_ = false;
    created_ = false;
    return first;
  }

  // ---- Backend ----
  [[nodiscard]] Nanoseconds now() const noexcept {
    return std::chrono::duration_cast<Nanoseconds>(std::chrono::steady_clock::now() - epoch_);
  }
  [[nodiscard]] std::uint32_t layers() const noexcept { return cfg_.layers; }
  [[nodiscard]] std::uint32_t experts_per_layer() const noexcept { return cfg_.experts; }
  [[nodiscard]] std::uint32_t slot_count() const noexcept { return cfg_.slots; }
  [[nodiscard]] Bytes expert_bytes() const noexcept { return cfg_.expert_bytes; }
  [[nodiscard]] DeviceAddress slot_address(runtime::SlotIndex s) const noexcept {
    return {reinterpret_cast<std::uintptr_t>(slot_ptr(s))};
  }
  [[nodiscard]] std::uint32_t cpu_workers() const noexcept { return cfg_.cpu_workers; }
  /// No host-visible activations: predictors see a null state.
  [[nodiscard]] std::span<const std::byte> activation(runtime::InputSource, std::uint32_t) const noexcept { return {}; }

  runtime::Status submit_compute(const runtime::ComputeOrder& k) {
    const Nanoseconds t0 = now();
    runtime::Status st = submit_compute_timed(k);
    host_stats_.submitting += now() - t0;
    return st;
  }

 private:
  /// submit_compute's work (submit_compute times it for host_stats()).
  runtime::Status submit_compute_timed(const runtime::ComputeOrder& k) {
    using runtime::ComputeKind;
    using runtime::Status;
    using runtime::StatusCode;
    if (!running_) return Status::fail(StatusCode::shut_down, "submit_compute");
    if (auto e = error(); !e) return e;
    if (k.kind == ComputeKind::expert && (k.slot >= cfg_.slots || !valid(k.expert))) {
      return Status::fail(StatusCode::bad_argument, "submit_compute", k.expert);
    }
    if (k.kind != ComputeKind::expert && k.pass == nullptr) {
      return Status::fail(StatusCode::bad_argument, "submit_compute (no pass)");
    }
    if ((k.kind == ComputeKind::dense || k.kind == ComputeKind::expert) && k.layer >= cfg_.layers) {
      return Status::fail(StatusCode::bad_argument, "submit_compute (layer out of range)");
    }
    std::uint32_t tokens = 0;
    switch (k.kind) {
      case ComputeKind::expert: tokens = k.tokens; break;
      case ComputeKind::draft_step: tokens = std::max<std::uint32_t>(1, k.pass->member_count); break;
      case ComputeKind::dense:
      case ComputeKind::head: tokens = k.pass->tokens; break;
    }
    if (tokens == 0 || tokens > cfg_.max_tokens) {
      return Status::fail(StatusCode::bad_argument, "submit_compute (tokens must be 1..max_tokens)");
    }
    StreamRecord rec;
    rec.order = k;
    rec.tokens = tokens;
    if (auto s = take_event(rec.start); !s) return s;
    if (auto s = take_event(rec.end); !s) return s;
    MOESCHED_CUDA_BACKEND_RETURN_IF_(cuda_status(cudaEventRecord(rec.start, compute_stream_), "cudaEventRecord"));
    MOESCHED_CUDA_BACKEND_RETURN_IF_(order_kernels(k.kind, k.kind == ComputeKind::expert ? k.slot : k.layer, tokens));
    if (k.kind == ComputeKind::expert) {
      if (cfg_.verify) MOESCHED_CUDA_BACKEND_RETURN_IF_(checksum(k.slot, k.expert.flat(cfg_.experts)));
      MOESCHED_CUDA_BACKEND_RETURN_IF_(cuda_status(cudaEventRecord(slot_free_[k.slot], compute_stream_), "cudaEventRecord"));
    }
    MOESCHED_CUDA_BACKEND_RETURN_IF_(cuda_status(cudaEventRecord(rec.end, compute_stream_), "cudaEventRecord"));
    {
      std::lock_guard<std::mutex> lock(m_);
      stream_.push_back(rec);
    }
    ++outstanding_;
    poll_cv_.notify_one();
    return Status::success();
  }

 public:
  runtime::Status submit_copy(const runtime::CopyOrder& c) {
    using runtime::Status;
    using runtime::StatusCode;
    if (!running_) return Status::fail(StatusCode::shut_down, "submit_copy");
    if (auto e = error(); !e) return e;
    if (c.slot >= cfg_.slots || !valid(c.expert)) return Status::fail(StatusCode::bad_argument, "submit_copy", c.expert);
    const std::uint32_t f = c.expert.flat(cfg_.experts);
    {
      std::lock_guard<std::mutex> lock(m_);
      Copy& s = copies_[f];
      if (s.in_flight) return Status::fail(StatusCode::not_absent, "submit_copy", c.expert);
      s = Copy{true, false, c.priority, 0, c.slot};
      waiting_.push_back(f, c.priority);
    }
    ++outstanding_;
    copy_cv_.notify_one();
    return Status::success();
  }
  bool cancel_copy(ExpertId id) {
    if (!valid(id)) return false;
    const std::uint32_t f = id.flat(cfg_.experts);
    std::lock_guard<std::mutex> lock(m_);
    Copy& s = copies_[f];
    if (!s.in_flight || s.started || f == current_) return false;
    waiting_.remove(f);
    s.in_flight = false;
    --outstanding_;
    return true;
  }
  void promote_copy(ExpertId id) {
    if (!valid(id)) return;
    const std::uint32_t f = id.flat(cfg_.experts);
    std::lock_guard<std::mutex> lock(m_);
    Copy& s = copies_[f];
    if (!s.in_flight || s.priority == CopyPriority::high) return;
    if (f != current_ && s.submitted < cfg_.chunks) {
      (void)waiting_.promote(f);
    }
    s.priority = CopyPriority::high;
  }
  [[nodiscard]] bool copy_started(ExpertId id) const {
    if (!valid(id)) return false;
    std::lock_guard<std::mutex> lock(m_);
    const Copy& s = copies_[id.flat(cfg_.experts)];
    return s.in_flight && s.started;
  }

  runtime::Status submit_job(const runtime::PredictorJob& j) {
    using runtime::Status;
    using runtime::StatusCode;
    if (!running_) return Status::fail(StatusCode::shut_down, "submit_job");
    if (auto e = error(); !e) return e;
    if (j.predict == nullptr) return Status::fail(StatusCode::bad_argument, "submit_job (no predict function)");
    if (j.where == runtime::JobResource::cpu_worker && cfg_.cpu_workers == 0) {
      return Status::fail(StatusCode::bad_argument, "submit_job (no CPU workers)");
    }
    if (j.where == runtime::JobResource::gpu_stream) {
      // Its place in stream order: an event after the kernels submitted so far; the poller runs
      // `predict` on the host once the stream has passed it.
      StreamRecord rec;
      rec.job = true;
      rec.job_item = j;
      rec.queued = now();
      if (auto s = take_event(rec.start); !s) return s;
      rec.end = rec.start;
      MOESCHED_CUDA_BACKEND_RETURN_IF_(cuda_status(cudaEventRecord(rec.start, compute_stream_), "cudaEventRecord"));
      {
        std::lock_guard<std::mutex> lock(m_);
        stream_.push_back(rec);
      }
      ++outstanding_;
      poll_cv_.notify_one();
      return Status::success();
    }
    ++outstanding_;
    workers_.submit(j, now());
    return Status::success();
  }

  bool wait(runtime::Completion& out) {
    if (outstanding_ == 0 || !error().ok()) return false;
    const Nanoseconds in = now();
    if (last_return_.count() >= 0) host_stats_.busy += in - last_return_;
    last_return_ = Nanoseconds{-1};
    const bool ready = done_.try_pop(out);
    if (!ready && !done_.pop_wait(out, std::chrono::microseconds{cfg_.wait_spin_us})) return false;
    account(out);
    last_return_ = now();
    ++host_stats_.completions;
    if (!ready) {
      ++host_stats_.waited;
      host_stats_.notify += std::max(Nanoseconds{0}, last_return_ - out.end);
    }
    return true;
  }
  bool poll(runtime::Completion& out) {
    if (outstanding_ == 0 || !done_.try_pop(out)) return false;
    account(out);
    ++host_stats_.completions;
    return true;
  }

  /// The driver thread's time, as the backend sees it from its calls (driver thread only).
  struct HostStats {
    std::uint64_t completions = 0;  ///< handed to the driver by wait() and poll()
    Nanoseconds busy{};             ///< outside wait(): from each wait()'s return to the next wait() call
    Nanoseconds submitting{};       ///< of that, inside submit_compute
    std::uint64_t waited = 0;       ///< wait() calls that found no completion ready and blocked
    Nanoseconds notify{};           ///< over those: the item's end (its event) -> wait() returned it
    /// The driver's own time per completion: its bookkeeping and the policy's hooks (what the
    /// simulator charges as HostTimes::handle).
    [[nodiscard]] double handle_ns() const noexcept {
      return completions == 0 ? 0.0 : static_cast<double>((busy - submitting).count()) / static_cast<double>(completions);
    }
    [[nodiscard]] double notify_ns() const noexcept {
      return waited == 0 ? 0.0 : static_cast<double>(notify.count()) / static_cast<double>(waited);
    }
  };
  /// Counted since the last reset_host_stats() (busy: from it), or since initialize() (busy: from
  /// the first wait()'s return).
  [[nodiscard]] const HostStats& host_stats() const noexcept { return host_stats_; }
  /// Zeroes host_stats() and span_stats(); the driver's busy time counts from now (call it right
  /// before a run).
  void reset_host_stats() {
    host_stats_ = {};
    last_return_ = now();
    std::lock_guard<std::mutex> lock(m_);
    std::fill(spans_.begin(), spans_.end(), SpanStats{});
  }

  /// The compute orders' spans (start event to end event) as the run gave them, per order kind and
  /// tokens. `queued`: the order was already on the stream when the poller saw the order ahead of
  /// it finish, so its kernels were enqueued and its span is their device time alone, in the run's
  /// own conditions (L2 contents, clocks, copies beside it): what the profile's device times
  /// stand for. `launched`: the stream had run dry, so the span also holds the launch (its start
  /// event runs before the kernels are launched). An order submitted within the poller's own
  /// delay (about a microsecond) after its predecessor ended counts as queued.
  struct SpanStats {
    std::uint64_t queued = 0;
    Nanoseconds queued_total{};
    std::uint64_t launched = 0;
    Nanoseconds launched_total{};
    [[nodiscard]] double queued_mean_ns() const noexcept {
      return queued == 0 ? 0.0 : static_cast<double>(queued_total.count()) / static_cast<double>(queued);
    }
    [[nodiscard]] double launched_mean_ns() const noexcept {
      return launched == 0 ? 0.0 : static_cast<double>(launched_total.count()) / static_cast<double>(launched);
    }
  };
  struct SpanRow {
    runtime::ComputeKind kind{};
    std::uint32_t tokens = 0;
    SpanStats stats{};
  };
  /// The non-empty (kind, tokens) rows since initialize() or reset_host_stats(), by kind, then tokens.
  [[nodiscard]] std::vector<SpanRow> span_stats() const {
    std::vector<SpanRow> out;
    std::lock_guard<std::mutex> lock(m_);
    for (std::size_t i = 0; i < spans_.size(); ++i) {
      const SpanStats& st = spans_[i];
      if (st.queued + st.launched == 0) continue;
      const std::size_t per = std::size_t{cfg_.max_tokens} + 1;
      out.push_back({static_cast<runtime::ComputeKind>(i / per), static_cast<std::uint32_t>(i % per), st});
    }
    return out;
  }
  /// Drops queued copies and jobs, lets what is on the streams finish, discards completions.
  runtime::Status drain() {
    workers_.drain();
    std::unique_lock<std::mutex> lock(m_);
    waiting_.clear();
    draining_ = true;
    copy_cv_.notify_all();
    poll_cv_.notify_all();
    idle_cv_.wait(lock, [&] {
      return stop_ || (current_ == kNone && !copy_busy_ && chunks_.empty() && stream_.empty());
    });
    for (Copy& c : copies_) c.in_flight = false;
    draining_ = false;
    done_.clear();
    outstanding_ = 0;
    return error_;
  }

  // ---- checks and extras ----
  /// The first failure of a worker thread (a CUDA call on the copy or poller thread), or ok.
  [[nodiscard]] runtime::Status error() const {
    std::lock_guard<std::mutex> lock(m_);
    return error_;
  }
  /// verify mode: expert kernels whose slot did not hold their expert, and expert kernels checked.
  /// Waits for the compute stream.
  runtime::Status verify_counts(std::uint64_t& mismatches, std::uint64_t& checked) const {
    mismatches = checked = 0;
    if (compute_stream_ == nullptr) return runtime::Status::fail(runtime::StatusCode::shut_down, "verify_counts");
    std::uint32_t host[2] = {0, 0};
    MOESCHED_CUDA_BACKEND_RETURN_IF_(cuda_status(cudaMemcpyAsync(host, device_ + layout_.counters, sizeof host,
                                                          cudaMemcpyDeviceToHost, compute_stream_), "cudaMemcpyAsync"));
    MOESCHED_CUDA_BACKEND_RETURN_IF_(cuda_status(cudaStreamSynchronize(compute_stream_), "cudaStreamSynchronize"));
    mismatches = host[0];
    checked = host[1];
    return runtime::Status::success();
  }
  /// Copies slot `s` back to the host (synchronous; for tests).
  runtime::Status read_slot(runtime::SlotIndex s, std::span<std::byte> out) const {
    if (s >= cfg_.slots || out.size() < cfg_.expert_bytes.count) {
      return runtime::Status::fail(runtime::StatusCode::bad_argument, "read_slot");
    }
    return cuda_status(cudaMemcpy(out.data(), slot_ptr(s), cfg_.expert_bytes.count, cudaMemcpyDeviceToHost), "cudaMemcpy");
  }
  /// Copies the layer output activations (max_tokens x hidden bf16: where attention projections
  /// write and expert FFNs add) back to the host; waits for the compute stream (for tests).
  runtime::Status read_output(std::span<std::byte> out) const {
    const std::size_t n = std::size_t{cfg_.max_tokens} * cfg_.shape.hidden * 2;
    if (out.size() < n || compute_stream_ == nullptr) return runtime::Status::fail(runtime::StatusCode::bad_argument, "read_output");
    MOESCHED_CUDA_BACKEND_RETURN_IF_(cuda_status(cudaStreamSynchronize(compute_stream_), "cudaStreamSynchronize"));
    return cuda_status(cudaMemcpy(out.data(), device_ + layout_.y, n, cudaMemcpyDeviceToHost), "cudaMemcpy");
  }
  [[nodiscard]] const Config& config() const noexcept { return cfg_; }
  /// Whether chunks go out through cudaMemcpyBatchAsync (copy_submit resolved by initialize()).
  [[nodiscard]] bool batched_copies() const noexcept { return batched_; }
  /// Config::graphs: captures now the graph of every order the driver can submit with at most
  /// `tokens` tokens (each slot's expert FFN, each layer's dense part, the head, and with `draft`
  /// the draft step), so that no capture falls inside a timed run. Between initialize() and
  /// shutdown(), on the driving thread, while no driver run is in flight. Nothing without graphs.
  runtime::Status prepare_graphs(std::uint32_t tokens, bool draft) {
    if (!running_) return runtime::Status::fail(runtime::StatusCode::shut_down, "prepare_graphs");
    if (tokens == 0 || tokens > cfg_.max_tokens) {
      return runtime::Status::fail(runtime::StatusCode::bad_argument, "prepare_graphs (tokens must be 1..max_tokens)");
    }
    if (!cfg_.graphs) return runtime::Status::success();
    for (std::uint32_t t = 1; t <= tokens; ++t) {
      for (std::uint32_t s = 0; s < cfg_.slots; ++s) MOESCHED_CUDA_BACKEND_RETURN_IF_(graph_for(runtime::ComputeKind::expert, s, t));
      for (std::uint32_t l = 0; l < cfg_.layers; ++l) MOESCHED_CUDA_BACKEND_RETURN_IF_(graph_for(runtime::ComputeKind::dense, l, t));
      MOESCHED_CUDA_BACKEND_RETURN_IF_(graph_for(runtime::ComputeKind::head, 0, t));
      if (draft) MOESCHED_CUDA_BACKEND_RETURN_IF_(graph_for(runtime::ComputeKind::draft_step, 0, t));
    }
    return runtime::Status::success();
  }
  /// Graphs captured so far (Config::graphs).
  [[nodiscard]] std::size_t graphs_built() const noexcept { return graphs_built_; }

  // ---- profiling (moesched-profile) ----
  /// The work enqueue_kernel() runs: exactly the kernels submit_compute() launches for a dense,
  /// expert, head or draft_step order, plus the router GEMV alone and one empty kernel.
  enum class Kernel { dense, expert, head, draft_step, router, empty };
  /// Enqueues on compute_stream() the kernels of `k` over `tokens` tokens (dense: those of MoE
  /// layer `layer`; expert: one routed expert's FFN over a fixed random weight set, as the draft's
  /// FFN; draft_step: `tokens` sequences), with no events and no completion: the caller times it
  /// with its own events on compute_stream(). Between initialize() and shutdown(), on the thread
  /// that would drive, while no driver run is in flight.
  runtime::Status enqueue_kernel(Kernel k, std::uint32_t tokens, std::uint32_t layer = 0) {
    using runtime::Status;
    using runtime::StatusCode;
    if (!running_) return Status::fail(StatusCode::shut_down, "enqueue_kernel");
    if (tokens == 0 || tokens > cfg_.max_tokens) return Status::fail(StatusCode::bad_argument, "enqueue_kernel (tokens must be 1..max_tokens)");
    if (layer >= cfg_.layers) return Status::fail(StatusCode::bad_argument, "enqueue_kernel (layer out of range)");
    switch (k) {
      case Kernel::dense: return dense(layer, tokens);
      case Kernel::expert: return expert_ffn(bf16_at(layout_.draft_ffn), tokens);
      case Kernel::head: return head(tokens);
      case Kernel::draft_step: return draft_step(tokens);
      case Kernel::router:
        return gemm(device_ + layout_.weights + std::size_t{layer} * layout_.layer_weights +
                        (std::size_t{cfg_.shape.dense_layers_between} * (Layout::attention_params(cfg_.shape) +
                                                                          3 * std::size_t{cfg_.shape.hidden} * cfg_.shape.dense_ffn) +
                         Layout::attention_params(cfg_.shape)) * 2,
                    cfg_.shape.router_out, cfg_.shape.hidden, bf16_at(layout_.x), bf16_at(layout_.wide_b), tokens);
      case Kernel::empty: return cuda_status(detail::launch_empty(compute_stream_), "empty_kernel");
    }
    return Status::success();
  }
  /// Enqueues on compute_stream() one kernel that keeps it busy for about `t` (profiling: orders
  /// submitted behind it wait in the queue, so their events time the device alone, without the
  /// host's launch gaps). Same threading rules as enqueue_kernel().
  runtime::Status hold_compute_stream(Nanoseconds t) {
    if (!running_) return runtime::Status::fail(runtime::StatusCode::shut_down, "hold_compute_stream");
    return cuda_status(detail::launch_spin(static_cast<std::uint64_t>(std::max<std::int64_t>(t.count(), 0)), compute_stream_),
                       "spin_kernel");
  }
  /// Pairs the device clock with the host clock again (the anchor event that maps event times to
  /// now()'s clock). The two clocks drift apart, tens of microseconds over a few seconds: a caller
  /// that times host-side delays against event times (moesched-profile's launch and notify
  /// delays) re-anchors right before. Precondition: nothing submitted is in flight (every
  /// completion received); on the driving thread.
  runtime::Status reanchor() {
    if (!running_) return runtime::Status::fail(runtime::StatusCode::shut_down, "reanchor");
    MOESCHED_CUDA_BACKEND_RETURN_IF_(cuda_status(cudaStreamSynchronize(compute_stream_), "cudaStreamSynchronize"));
    return set_anchor();
  }
  /// The compute stream (null before initialize()); for profiling with enqueue_kernel().
  [[nodiscard]] cudaStream_t compute_stream() const noexcept { return compute_stream_; }

 private:
  /// Offsets into the caller's device memory (256-byte aligned pieces).
  struct Layout {
    std::size_t slots = 0, cublas = 0, x = 0, y = 0, wide_a = 0, wide_b = 0, weights = 0, layer_weights = 0,
                lead_weights = 0, head = 0, draft_ffn = 0, expected = 0, counters = 0, total = 0;
    std::size_t wide = 0;  ///< columns of the wide activation buffers
    explicit Layout(const Config& c) {
      const DenseShape& d = c.shape;
      const std::size_t h = d.hidden;
      auto align = [](std::size_t v) { return (v + 255) / 256 * 256; };
      std::size_t at = 0;
      auto take = [&](std::size_t bytes) {
        const std::size_t o = at;
        at = align(at + bytes);
        return o;
      };
      wide = std::max<std::size_t>({h, std::size_t{d.q_out} + 2 * std::size_t{d.kv_out}, d.o_in, d.moe_ffn,
                                    d.shared_ffn, d.dense_ffn, d.router_out, d.vocab});
      const std::size_t t = c.max_tokens;
      slots = take(std::size_t{c.slots} * c.expert_bytes.count);
      cublas = take(kCublasWorkspaceBytes);
      x = take(t * h * 2);
      y = take(t * h * 2);
      wide_a = take(t * wide * 2);
      wide_b = take(t * wide * 2);
      layer_weights = attention_params(d) + h * d.router_out + 3 * h * d.shared_ffn +
                      std::size_t{d.dense_layers_between} * (attention_params(d) + 3 * h * d.dense_ffn);
      layer_weights *= 2;
      const std::size_t lead = std::size_t{d.leading_dense_layers} * (attention_params(d) + 3 * h * d.dense_ffn) * 2;
      weights = take(layer_weights * c.layers);
      lead_weights = take(lead);
      head = take(std::size_t{d.vocab} * h * 2);
      draft_ffn = take(3 * h * d.moe_ffn * 2);
      expected = take(std::size_t{c.layers} * c.experts * 4);
      counters = take(8);
      total = at;
    }
    static std::size_t attention_params(const DenseShape& d) {
      return std::size_t{d.hidden} * (std::size_t{d.q_out} + 2 * std::size_t{d.kv_out}) + std::size_t{d.hidden} * d.o_in;
    }
  };

  struct Copy {
    bool in_flight = false;
    bool started = false;
    CopyPriority priority = CopyPriority::high;
    std::uint32_t submitted = 0;  ///< chunks on the copy stream
    runtime::SlotIndex slot = 0;
  };
  struct ChunkRecord {
    std::uint32_t flat = 0;
    std::uint32_t chunk = 0;
    bool high = false;
    std::uint64_t bytes = 0;
    cudaEvent_t start = nullptr;
    cudaEvent_t end = nullptr;
  };
  struct StreamRecord {
    runtime::ComputeOrder order{};
    std::uint32_t tokens = 0;  ///< compute: the tokens its kernels ran over
    bool behind = false;       ///< submitted before the poller saw the record ahead of it finish
    bool job = false;
    runtime::PredictorJob job_item{};
    Nanoseconds queued{};
    cudaEvent_t start = nullptr;
    cudaEvent_t end = nullptr;
  };

  static runtime::Status cuda_status(cudaError_t st, const char* call) noexcept {
    return st == cudaSuccess ? runtime::Status::success() : runtime::Status::backend(call, cudaGetErrorString(st));
  }
  static runtime::Status cublas_status(cublasStatus_t st, const char* call) noexcept {
    return st == CUBLAS_STATUS_SUCCESS ? runtime::Status::success() : runtime::Status::backend(call, cublasGetStatusString(st));
  }

  [[nodiscard]] bool valid(ExpertId id) const noexcept { return id.layer < cfg_.layers && id.expert < cfg_.experts; }
  [[nodiscard]] std::byte* slot_ptr(runtime::SlotIndex s) const noexcept {
    return device_ + layout_.slots + std::size_t{s} * cfg_.expert_bytes.count;
  }
  [[nodiscard]] std::uint64_t expert_matrix_bytes() const noexcept {
    return std::uint64_t{3} * cfg_.shape.hidden * cfg_.shape.moe_ffn * 2;
  }
  [[nodiscard]] __nv_bfloat16* bf16_at(std::size_t offset) const noexcept {
    return reinterpret_cast<__nv_bfloat16*>(device_ + offset);
  }
  void account(const runtime::Completion& c) {
    if (c.kind != runtime::CompletionKind::chunk || c.landed) --outstanding_;
  }
  /// Keeps the first failure of a worker thread and wakes the driver (wait() then returns false).
  void fail_async(const runtime::Status& s) {
    {
      std::lock_guard<std::mutex> lock(m_);
      if (error_.ok()) error_ = s;
    }
    done_.close();
  }

  // ---- initialisation ----
  runtime::Status create(std::size_t host_bytes) {
    MOESCHED_CUDA_BACKEND_RETURN_IF_(cuda_status(cudaSetDevice(cfg_.device), "cudaSetDevice"));
    // Pin the caller's store unless it is pinned already (cudaHostAlloc'd or registered by the caller).
    cudaPointerAttributes attr{};
    const cudaError_t pa = cudaPointerGetAttributes(&attr, store_.data());
    if (pa != cudaSuccess) (void)cudaGetLastError();
    if (pa != cudaSuccess || attr.type != cudaMemoryTypeHost) {
      MOESCHED_CUDA_BACKEND_RETURN_IF_(cuda_status(
          cudaHostRegister(const_cast<std::byte*>(store_.data()), host_bytes, cudaHostRegisterDefault), "cudaHostRegister"));
      registered_ = true;
    }
    MOESCHED_CUDA_BACKEND_RETURN_IF_(cuda_status(cudaStreamCreateWithFlags(&compute_stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags"));
    MOESCHED_CUDA_BACKEND_RETURN_IF_(cuda_status(cudaStreamCreateWithFlags(&copy_stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags"));
    MOESCHED_CUDA_BACKEND_RETURN_IF_(cublas_status(cublasCreate(&cublas_), "cublasCreate"));
    MOESCHED_CUDA_BACKEND_RETURN_IF_(cublas_status(cublasSetStream(cublas_, compute_stream_), "cublasSetStream"));
    MOESCHED_CUDA_BACKEND_RETURN_IF_(cublas_status(cublasSetWorkspace(cublas_, device_ + layout_.cublas, kCublasWorkspaceBytes), "cublasSetWorkspace"));
    for (std::uint32_t s = 0; s < cfg_.slots; ++s) {
      cudaEvent_t ev = nullptr;
      MOESCHED_CUDA_BACKEND_RETURN_IF_(cuda_status(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "cudaEventCreateWithFlags"));
      slot_free_.push_back(ev);
    }
    for (int i = 0; i < 256; ++i) {
      cudaEvent_t ev = nullptr;
      MOESCHED_CUDA_BACKEND_RETURN_IF_(cuda_status(cudaEventCreate(&ev), "cudaEventCreate"));
      all_events_.push_back(ev);
      free_events_.push_back(ev);
    }
    // Random bf16 weights and activations everywhere but the slots.
    const std::size_t first = layout_.x;
    const std::size_t n = (layout_.expected - first) / 2;
    MOESCHED_CUDA_BACKEND_RETURN_IF_(cuda_status(detail::launch_fill_random(bf16_at(first), n, 0x9E3779B9U, compute_stream_),
                                                 "fill_random_kernel"));
    MOESCHED_CUDA_BACKEND_RETURN_IF_(cuda_status(cudaMemsetAsync(device_ + layout_.counters, 0, 8, compute_stream_), "cudaMemsetAsync"));
    if (cfg_.verify) {
      const std::size_t e = cfg_.expert_bytes.count;
      expected_.resize(std::size_t{cfg_.layers} * cfg_.experts);
      const std::size_t held = host_expert_count(cfg_);
      for (std::size_t f = 0; f < expected_.size(); ++f) expected_[f] = slot_checksum(store_.data() + (f % held) * e, e);
      MOESCHED_CUDA_BACKEND_RETURN_IF_(cuda_status(cudaMemcpyAsync(device_ + layout_.expected, expected_.data(), expected_.size() * 4,
                                                            cudaMemcpyHostToDevice, compute_stream_), "cudaMemcpyAsync"));
    }
    // Warm-up: the first cuBLAS calls pick kernels and load modules; keep that off the hot path.
    MOESCHED_CUDA_BACKEND_RETURN_IF_(dense(0, 1));
    MOESCHED_CUDA_BACKEND_RETURN_IF_(expert_ffn(bf16_at(layout_.draft_ffn), 1));
    MOESCHED_CUDA_BACKEND_RETURN_IF_(head(1));
    MOESCHED_CUDA_BACKEND_RETURN_IF_(cuda_status(cudaStreamSynchronize(compute_stream_), "cudaStreamSynchronize"));
    MOESCHED_CUDA_BACKEND_RETURN_IF_(cuda_status(cudaEventCreate(&anchor_), "cudaEventCreate"));
    return set_anchor();
  }
  /// Records the anchor on the idle compute stream and pairs it with now().
  runtime::Status set_anchor() {
    MOESCHED_CUDA_BACKEND_RETURN_IF_(cuda_status(cudaEventRecord(anchor_, compute_stream_), "cudaEventRecord"));
    MOESCHED_CUDA_BACKEND_RETURN_IF_(cuda_status(cudaEventSynchronize(anchor_), "cudaEventSynchronize"));
    anchor_host_ = now();
    return runtime::Status::success();
  }

  // ---- CUDA graphs (Config::graphs; driver thread) ----
  /// The kernels of one order: `index` is the slot of an expert order, the layer of a dense one.
  /// With Config::graphs, one launch of the order's graph (captured first if it is new).
  runtime::Status order_kernels(runtime::ComputeKind kind, std::uint32_t index, std::uint32_t t) {
    if (!cfg_.graphs) return direct_kernels(kind, index, t);
    MOESCHED_CUDA_BACKEND_RETURN_IF_(graph_for(kind, index, t));
    return cuda_status(cudaGraphLaunch(graphs_[graph_index(kind, index, t)], compute_stream_), "cudaGraphLaunch");
  }
  runtime::Status direct_kernels(runtime::ComputeKind kind, std::uint32_t index, std::uint32_t t) {
    switch (kind) {
      case runtime::ComputeKind::dense: return dense(index, t);
      case runtime::ComputeKind::expert: return expert_ffn(slot_ptr(index), t);
      case runtime::ComputeKind::head: return head(t);
      case runtime::ComputeKind::draft_step: return draft_step(t);
    }
    return runtime::Status::success();
  }
  /// graphs_ holds, per token count 1..max_tokens: each slot's expert FFN, each layer's dense part,
  /// the head, the draft step.
  [[nodiscard]] std::size_t graph_index(runtime::ComputeKind kind, std::uint32_t index, std::uint32_t t) const noexcept {
    const std::size_t per_t = std::size_t{cfg_.slots} + cfg_.layers + 2;
    std::size_t i = 0;
    switch (kind) {
      case runtime::ComputeKind::expert: i = index; break;
      case runtime::ComputeKind::dense: i = std::size_t{cfg_.slots} + index; break;
      case runtime::ComputeKind::head: i = std::size_t{cfg_.slots} + cfg_.layers; break;
      case runtime::ComputeKind::draft_step: i = std::size_t{cfg_.slots} + cfg_.layers + 1; break;
    }
    return std::size_t{t - 1} * per_t + i;
  }
  /// Captures the order's graph unless it exists: its kernels recorded on the compute stream
  /// (thread-local capture: the copy and poller threads go on), instantiated, the graph freed.
  runtime::Status graph_for(runtime::ComputeKind kind, std::uint32_t index, std::uint32_t t) {
    if (graphs_.empty()) graphs_.assign((std::size_t{cfg_.slots} + cfg_.layers + 2) * cfg_.max_tokens, nullptr);
    cudaGraphExec_t& exec = graphs_[graph_index(kind, index, t)];
    if (exec != nullptr) return runtime::Status::success();
    MOESCHED_CUDA_BACKEND_RETURN_IF_(
        cuda_status(cudaStreamBeginCapture(compute_stream_, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture"));
    const runtime::Status work = direct_kernels(kind, index, t);
    cudaGraph_t graph = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(compute_stream_, &graph);  // always: the stream leaves capture
    if (!work.ok() || ended != cudaSuccess) {
      if (graph != nullptr) (void)cudaGraphDestroy(graph);
      return !work.ok() ? work : cuda_status(ended, "cudaStreamEndCapture");
    }
    const cudaError_t made = cudaGraphInstantiate(&exec, graph, 0);
    (void)cudaGraphDestroy(graph);
    if (made != cudaSuccess) {
      exec = nullptr;
      return cuda_status(made, "cudaGraphInstantiate");
    }
    ++graphs_built_;
    return runtime::Status::success();
  }

  // ---- compute (driver thread) ----
  /// y[t x out] = x[t x in] . W^T, W row-major [out x in], bf16 in and out, fp32 accumulation.
  runtime::Status gemm(const void* w, std::uint32_t out, std::uint32_t in, const void* x, void* y, std::uint32_t t,
                       float beta = 0.0f) {
    if (out == 0 || in == 0) return runtime::Status::success();
    const float alpha = 1.0f;
    return cublas_status(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(out), static_cast<int>(t),
                                      static_cast<int>(in), &alpha, w, CUDA_R_16BF, static_cast<int>(in), x, CUDA_R_16BF,
                                      static_cast<int>(in), &beta, y, CUDA_R_16BF, static_cast<int>(out),
                                      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                         "cublasGemmEx");
  }
  /// Attention projections of one decoder layer starting at weight offset `w`; returns the next offset.
  /// The attention itself (scores over the KV cache) is not run: replay has no KV cache, and at
  /// decode its cost is small beside the projections; the simulator's cost model charges it.
  runtime::Status attention(std::size_t& w, std::uint32_t t) {
    const DenseShape& d = cfg_.shape;
    const std::uint32_t qkv = d.q_out + 2 * d.kv_out;
    MOESCHED_CUDA_BACKEND_RETURN_IF_(gemm(device_ + w, qkv, d.hidden, bf16_at(layout_.x), bf16_at(layout_.wide_a), t));
    w += std::size_t{qkv} * d.hidden * 2;
    MOESCHED_CUDA_BACKEND_RETURN_IF_(gemm(device_ + w, d.hidden, d.o_in, bf16_at(layout_.wide_a), bf16_at(layout_.y), t));
    w += std::size_t{d.hidden} * d.o_in * 2;
    return runtime::Status::success();
  }
  /// A dense FFN (gate, up, SiLU x up, down) of intermediate size `ffn` with weights at `w`.
  runtime::Status ffn(const std::byte* w, std::uint32_t ffn_size, std::uint32_t t, float beta) {
    if (ffn_size == 0) return runtime::Status::success();
    const std::uint32_t h = cfg_.shape.hidden;
    const std::size_t m = std::size_t{h} * ffn_size * 2;
    MOESCHED_CUDA_BACKEND_RETURN_IF_(gemm(w, ffn_size, h, bf16_at(layout_.x), bf16_at(layout_.wide_a), t));
    MOESCHED_CUDA_BACKEND_RETURN_IF_(gemm(w + m, ffn_size, h, bf16_at(layout_.x), bf16_at(layout_.wide_b), t));
    const std::size_t n = std::size_t{t} * ffn_size;
    MOESCHED_CUDA_BACKEND_RETURN_IF_(cuda_status(
        detail::launch_silu_mul(bf16_at(layout_.wide_a), bf16_at(layout_.wide_b), n, compute_stream_), "silu_mul_kernel"));
    return gemm(w + 2 * m, h, ffn_size, bf16_at(layout_.wide_a), bf16_at(layout_.y), t, beta);
  }
  runtime::Status expert_ffn(const void* weights, std::uint32_t t) {
    return ffn(static_cast<const std::byte*>(weights), cfg_.shape.moe_ffn, t, 1.0f);  // outputs are summed
  }
  /// Dense part of MoE layer `layer`: its leading or in-between dense decoder layers (attention
  /// projections and dense FFN), then its own attention projections, router and shared experts.
  runtime::Status dense(std::uint32_t layer, std::uint32_t t) {
    const DenseShape& d = cfg_.shape;
    const std::size_t dense_layer_bytes = (Layout::attention_params(d) + 3 * std::size_t{d.hidden} * d.dense_ffn) * 2;
    std::size_t w = layout_.lead_weights;
    const std::uint32_t before = layer == 0 ? d.leading_dense_layers : 0;
    for (std::uint32_t i = 0; i < before; ++i) {
      MOESCHED_CUDA_BACKEND_RETURN_IF_(attention(w, t));
      MOESCHED_CUDA_BACKEND_RETURN_IF_(ffn(device_ + w, d.dense_ffn, t, 0.0f));
      w += 3 * std::size_t{d.hidden} * d.dense_ffn * 2;
    }
    w = layout_.weights + std::size_t{layer} * layout_.layer_weights;
    for (std::uint32_t i = 0; i < (layer == 0 ? 0 : d.dense_layers_between); ++i) {
      std::size_t a = w + std::size_t{i} * dense_layer_bytes;
      MOESCHED_CUDA_BACKEND_RETURN_IF_(attention(a, t));
      MOESCHED_CUDA_BACKEND_RETURN_IF_(ffn(device_ + a, d.dense_ffn, t, 0.0f));
    }
    w += std::size_t{d.dense_layers_between} * dense_layer_bytes;
    MOESCHED_CUDA_BACKEND_RETURN_IF_(attention(w, t));
    MOESCHED_CUDA_BACKEND_RETURN_IF_(gemm(device_ + w, d.router_out, d.hidden, bf16_at(layout_.x), bf16_at(layout_.wide_b), t));
    w += std::size_t{d.router_out} * d.hidden * 2;
    return ffn(device_ + w, d.shared_ffn, t, 1.0f);
  }
  runtime::Status head(std::uint32_t t) {
    const DenseShape& d = cfg_.shape;
    return gemm(device_ + layout_.head, d.vocab, d.hidden, bf16_at(layout_.x), bf16_at(layout_.wide_a), t);
  }
  /// One step of the default draft (sim/cost_model.hpp): every MoE layer's dense part plus one
  /// routed-expert-sized FFN, then the head. It reuses the target's dense weights and one FFN
  /// weight set (the draft's own weights would cost their size in memory, not in time).
  runtime::Status draft_step(std::uint32_t t) {
    for (std::uint32_t l = 0; l < cfg_.layers; ++l) {
      MOESCHED_CUDA_BACKEND_RETURN_IF_(dense(l, t));
      MOESCHED_CUDA_BACKEND_RETURN_IF_(expert_ffn(bf16_at(layout_.draft_ffn), t));
    }
    return head(t);
  }
  runtime::Status checksum(runtime::SlotIndex s, std::uint32_t flat) {
    const auto* words = reinterpret_cast<const std::uint32_t*>(slot_ptr(s));
    return cuda_status(detail::launch_checksum(words, cfg_.expert_bytes.count / 4,
                                               reinterpret_cast<const std::uint32_t*>(device_ + layout_.expected), flat,
                                               reinterpret_cast<std::uint32_t*>(device_ + layout_.counters), compute_stream_),
                       "checksum_kernel");
  }

  /// An event from the pool (any thread); the pool grows when empty (rare: work in flight is bounded).
  runtime::Status take_event(cudaEvent_t& ev) {
    {
      std::lock_guard<std::mutex> lock(m_);
      if (!free_events_.empty()) {
        ev = free_events_.back();
        free_events_.pop_back();
        return runtime::Status::success();
      }
    }
    MOESCHED_CUDA_BACKEND_RETURN_IF_(cuda_status(cudaEventCreate(&ev), "cudaEventCreate"));
    std::lock_guard<std::mutex> lock(m_);
    all_events_.push_back(ev);
    return runtime::Status::success();
  }
  /// Host-clock time of a completed event.
  runtime::Status event_time(cudaEvent_t ev, Nanoseconds& t) const {
    float ms = 0.0f;
    MOESCHED_CUDA_BACKEND_RETURN_IF_(cuda_status(cudaEventElapsedTime(&ms, anchor_, ev), "cudaEventElapsedTime"));
    t = anchor_host_ + Nanoseconds{static_cast<std::int64_t>(static_cast<double>(ms) * 1e6)};
    return runtime::Status::success();
  }
  /// Host-clock span of two completed events: the end mapped through the anchor and clamped to
  /// now(), the length measured between the two events themselves (exact however the anchor drifts).
  runtime::Status event_span(cudaEvent_t first, cudaEvent_t last, Nanoseconds& start, Nanoseconds& end) const {
    float ms = 0.0f;
    MOESCHED_CUDA_BACKEND_RETURN_IF_(cuda_status(cudaEventElapsedTime(&ms, first, last), "cudaEventElapsedTime"));
    MOESCHED_CUDA_BACKEND_RETURN_IF_(event_time(last, end));
    end = std::min(end, now());
    const Nanoseconds length{static_cast<std::int64_t>(std::max(0.0, static_cast<double>(ms)) * 1e6)};
    start = std::max(Nanoseconds{0}, end - length);
    return runtime::Status::success();
  }

  // ---- threads ----
  void copy_loop() {
    std::unique_lock<std::mutex> lock(m_);
    for (;;) {
      copy_cv_.wait(lock, [&] {
        return stop_ || (draining_ && current_ != kNone) ||
               (!draining_ && chunks_.size() < cfg_.copy_window && (current_ != kNone || !waiting_.empty()));
      });
      if (stop_) return;
      if (draining_) {  // a partly submitted copy is abandoned: drain discards it
        current_ = kNone;
        idle_cv_.notify_all();
        continue;
      }
      if (current_ != kNone && copies_[current_].priority == CopyPriority::low && waiting_.high_waiting()) {
        waiting_.push_front(current_, CopyPriority::low);  // a high copy overtakes a low one at a chunk boundary
        current_ = kNone;
      }
      if (current_ == kNone) current_ = waiting_.pop();
      const std::uint32_t f = current_;
      Copy& c = copies_[f];
      const std::uint32_t chunk = c.submitted;
      c.started = true;
      copy_busy_ = true;
      const runtime::SlotIndex slot = c.slot;
      const bool high = c.priority == CopyPriority::high;
      lock.unlock();
      ChunkRecord rec;
      rec.flat = f;
      rec.chunk = chunk;
      rec.high = high;
      const std::uint64_t off = chunk_offset_[chunk];
      rec.bytes = chunk_offset_[chunk + 1] - off;
      runtime::Status s = take_event(rec.start);
      if (s) s = take_event(rec.end);
      // Stream order: the slot's last submitted reader finishes before a byte lands in it.
      if (s && chunk == 0) s = cuda_status(cudaStreamWaitEvent(copy_stream_, slot_free_[slot], 0), "cudaStreamWaitEvent");
      if (s) s = cuda_status(cudaEventRecord(rec.start, copy_stream_), "cudaEventRecord");
      // The chunk's copies (one, or its pieces), then its event.
      if (s) {
        s = submit_pieces(slot_ptr(slot) + off,
                          store_.data() + std::size_t{f % host_expert_count(cfg_)} * cfg_.expert_bytes.count + off, rec.bytes);
      }
      if (s) s = cuda_status(cudaEventRecord(rec.end, copy_stream_), "cudaEventRecord");
      lock.lock();
      copy_busy_ = false;
      if (!s) {
        lock.unlock();
        fail_async(s);
        lock.lock();
        current_ = kNone;
        idle_cv_.notify_all();
        continue;
      }
      chunks_.push_back(rec);
      c.submitted = chunk + 1;
      if (c.submitted == cfg_.chunks) current_ = kNone;
      poll_cv_.notify_one();
      idle_cv_.notify_all();
    }
  }

  /// Copies `bytes` host-to-device on the copy stream as one copy or as pieces of
  /// copy_piece_bytes, batched (one cudaMemcpyBatchAsync) or in a loop of cudaMemcpyAsync.
  /// Copy thread only (it owns the piece vectors).
  runtime::Status submit_pieces(std::byte* dst, const std::byte* src, std::uint64_t bytes) {
    const std::uint64_t piece = cfg_.copy_piece_bytes == 0 ? std::max<std::uint64_t>(bytes, 1) : cfg_.copy_piece_bytes;
    if (!batched_) {
      for (std::uint64_t o = 0; o < bytes; o += piece) {
        MOESCHED_CUDA_BACKEND_RETURN_IF_(cuda_status(
            cudaMemcpyAsync(dst + o, src + o, std::min(piece, bytes - o), cudaMemcpyHostToDevice, copy_stream_), "cudaMemcpyAsync"));
      }
      return runtime::Status::success();
    }
#if defined(CUDART_VERSION) && CUDART_VERSION >= 12080
    piece_dst_.clear();
    piece_src_.clear();
    piece_size_.clear();
    for (std::uint64_t o = 0; o < bytes; o += piece) {
      piece_dst_.push_back(dst + o);
      piece_src_.push_back(src + o);
      piece_size_.push_back(static_cast<std::size_t>(std::min(piece, bytes - o)));
    }
    if (piece_dst_.empty()) return runtime::Status::success();
    cudaMemcpyAttributes attr{};
    attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;  // the slot-free wait before it must hold
    attr.srcLocHint.type = cudaMemLocationTypeHost;         // hints; ignored for pinned and device memory
    attr.dstLocHint.type = cudaMemLocationTypeDevice;
    attr.dstLocHint.id = cfg_.device;
    attr.flags = 0;
    std::size_t attr_index = 0;
#if CUDART_VERSION >= 13000
    // CUDA 13: no failIdx argument.
    return cuda_status(cudaMemcpyBatchAsync(piece_dst_.data(), piece_src_.data(), piece_size_.data(), piece_dst_.size(),
                                            &attr, &attr_index, 1, copy_stream_),
                       "cudaMemcpyBatchAsync");
#else
    std::size_t fail_index = 0;  // CUDA 12.8-12.9: the failing copy's index comes back here
    return cuda_status(cudaMemcpyBatchAsync(piece_dst_.data(), piece_src_.data(), piece_size_.data(), piece_dst_.size(),
                                            &attr, &attr_index, 1, &fail_index, copy_stream_),
                       "cudaMemcpyBatchAsync");
#endif
#else
    (void)dst;
    (void)src;
    return runtime::Status::fail(runtime::StatusCode::bad_argument, "cudaMemcpyBatchAsync (not in this CUDA runtime)");
#endif
  }

  /// Queries the oldest kernel and the oldest chunk; spins (yielding) while work is in flight.
  void poll_loop() {
    std::unique_lock<std::mutex> lock(m_);
    for (;;) {
      poll_cv_.wait(lock, [&] { return stop_ || !stream_.empty() || !chunks_.empty(); });
      if (stop_) return;
      const bool has_k = !stream_.empty();
      const bool has_c = !chunks_.empty();
      StreamRecord k = has_k ? stream_.front() : StreamRecord{};
      ChunkRecord c = has_c ? chunks_.front() : ChunkRecord{};
      lock.unlock();
      bool progressed = false;
      runtime::Status failed = runtime::Status::success();
      if (has_k) {
        const cudaError_t q = cudaEventQuery(k.end);
        if (q == cudaSuccess) {
          progressed = true;
          runtime::Completion done;
          failed = finish_kernel(k, done);
          lock.lock();
          if (!k.job && failed) record_span(k, done.start, done.end);
          // The record behind it was already on the stream when this one finished: its kernels
          // were queued, and its span will be their device time alone. (Popped before the
          // completion goes out, so nothing the driver submits in answer to it counts as behind.)
          if (stream_.size() > 1) stream_[1].behind = true;
          stream_.pop_front();
          free_events_.push_back(k.start);
          if (!k.job) free_events_.push_back(k.end);
          const bool deliver = failed.ok() && !draining_;
          lock.unlock();
          if (deliver) done_.push(done);
        } else if (q != cudaErrorNotReady) {
          failed = cuda_status(q, "cudaEventQuery");
        }
      }
      if (has_c && failed) {
        const cudaError_t q = cudaEventQuery(c.end);
        if (q == cudaSuccess) {
          progressed = true;
          failed = finish_chunk(c);
        } else if (q != cudaErrorNotReady) {
          failed = cuda_status(q, "cudaEventQuery");
        }
      }
      if (!failed) fail_async(failed);
      if (!progressed) std::this_thread::yield();
      lock.lock();
      if (!failed) {  // nothing more will complete reliably: drop what is pending
        stream_.clear();
        chunks_.clear();
      }
      idle_cv_.notify_all();
    }
  }
  /// The completion of a finished stream record (the poller delivers it); a job's predictor runs here.
  runtime::Status finish_kernel(const StreamRecord& k, runtime::Completion& done) {
    MOESCHED_CUDA_BACKEND_RETURN_IF_(event_time(k.start, done.start));
    if (k.job) {
      // The stream reached the job's place: run the predictor here, on the host.
      done.kind = runtime::CompletionKind::job;
      done.tag = k.job_item.tag;
      done.where = runtime::JobResource::gpu_stream;
      done.queued = k.queued;
      done.start = std::min(done.start, now());
      done.count = k.job_item.predict(k.job_item.predictor, k.job_item.input, k.job_item.out);
      done.end = now();
    } else {
      done.kind = runtime::CompletionKind::compute;
      MOESCHED_CUDA_BACKEND_RETURN_IF_(event_span(k.start, k.end, done.start, done.end));
    }
    return runtime::Status::success();
  }
  runtime::Status finish_chunk(const ChunkRecord& c) {
    runtime::Completion done;
    done.kind = runtime::CompletionKind::chunk;
    done.expert = ExpertId::from_flat(c.flat, cfg_.experts);
    done.chunk = c.chunk;
    done.chunks = cfg_.chunks;
    done.bytes = Bytes{c.bytes};
    done.high = c.high;
    const runtime::Status s = event_span(c.start, c.end, done.start, done.end);
    std::lock_guard<std::mutex> lock(m_);
    chunks_.pop_front();
    free_events_.push_back(c.start);
    free_events_.push_back(c.end);
    done.landed = c.chunk + 1 == cfg_.chunks;
    if (done.landed) copies_[c.flat].in_flight = false;
    if (!draining_ && s) done_.push(done);
    copy_cv_.notify_one();
    return s;
  }
  /// span_stats()'s counts for one finished compute record (poller thread, under m_).
  void record_span(const StreamRecord& k, Nanoseconds began, Nanoseconds ended) {
    const std::size_t i = span_index(k.order.kind, k.tokens);
    if (i >= spans_.size()) return;
    SpanStats& st = spans_[i];
    const Nanoseconds span = std::max(Nanoseconds{0}, ended - began);
    if (k.behind) {
      ++st.queued;
      st.queued_total += span;
    } else {
      ++st.launched;
      st.launched_total += span;
    }
  }
  [[nodiscard]] std::size_t span_index(runtime::ComputeKind kind, std::uint32_t tokens) const noexcept {
    return static_cast<std::size_t>(kind) * (std::size_t{cfg_.max_tokens} + 1) + tokens;
  }

  Config cfg_;
  Layout layout_;
  std::byte* device_ = nullptr;
  std::size_t device_bytes_ = 0;
  std::span<const std::byte> store_;
  std::chrono::steady_clock::time_point epoch_;
  std::vector<std::uint64_t> chunk_offset_;
  std::vector<std::uint32_t> expected_;
  bool batched_ = false;             // resolved copy_submit (set by initialize())
  std::vector<void*> piece_dst_;     // copy thread only: one chunk's pieces for cudaMemcpyBatchAsync
  std::vector<const void*> piece_src_;
  std::vector<std::size_t> piece_size_;
  bool running_ = false;           // driver thread only
  bool created_ = false;
  bool registered_ = false;
  bool shut_ = false;              // shutdown() ran: the completion queue is closed for good
  std::uint64_t outstanding_ = 0;  // driver thread only

  cudaStream_t compute_stream_ = nullptr;
  cudaStream_t copy_stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  cudaEvent_t anchor_ = nullptr;
  Nanoseconds anchor_host_{};
  std::vector<cudaEvent_t> slot_free_;  ///< recorded after each expert kernel reading the slot

  mutable std::mutex m_;  // guards everything below except done_
  std::condition_variable copy_cv_;
  std::condition_variable poll_cv_;
  std::condition_variable idle_cv_;
  bool stop_ = false;
  bool draining_ = false;
  runtime::Status error_{};
  std::vector<cudaEvent_t> all_events_;
  std::vector<cudaEvent_t> free_events_;
  std::vector<Copy> copies_;
  runtime::CopyQueue waiting_;  ///< copies waiting for the copy thread
  std::uint32_t current_ = kNone;
  bool copy_busy_ = false;
  std::deque<ChunkRecord> chunks_;   ///< on the copy stream, link order
  std::deque<StreamRecord> stream_;  ///< on the compute stream, submission order

  runtime::CompletionQueue done_;
  runtime::JobWorkers workers_;  ///< the cpu_worker predictor jobs
  std::vector<cudaGraphExec_t> graphs_;  // Config::graphs: graph_index() -> the order's graph, or null (driver thread)
  std::size_t graphs_built_ = 0;
  HostStats host_stats_{};       // driver thread only
  std::vector<SpanStats> spans_;  // [kind x (max_tokens + 1) + tokens], under m_ (span_stats())
  Nanoseconds last_return_{-1};  // when wait() last returned a completion; -1: not since a reset
  std::vector<std::thread> threads_;
};

static_assert(runtime::Backend<CudaBackend>);

}  // namespace moesched::cuda

#undef MOESCHED_CUDA_BACKEND_RETURN_IF_
