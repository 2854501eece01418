#pragma once
/// The backend concept: what the layer driver asks of the machine that really moves bytes and
/// runs kernels. The simulator (moesched/sim/backend.hpp, virtual time), the host backend
/// (moesched/host/backend.hpp, worker threads and host buffers) and the CUDA executor model it;
/// the driver (moesched/runtime/driver.hpp) and every policy above it never ask which one runs.
///
///   Backend b = ...;                          // sized by the caller (requirements() first)
///   b.submit_compute({.kind = ComputeKind::dense, .layer = 0, .pass = &pass});
///   b.submit_copy({.expert = id, .slot = 3, .priority = CopyPriority::high});
///   runtime::Completion c;
///   while (b.wait(c)) { ... }                 // every completion, on the driver's thread
///
/// Operations (ARCHITECTURE.md has the table of how each backend implements them):
/// - submit_compute: a kernel on the one compute stream, run in submission order. An expert kernel
///   reads its slot; the driver submits it only once the expert is resident.
/// - submit_copy / cancel_copy / promote_copy / copy_started: host-to-device copies into a slot
///   on one serial link, high priority first, in chunks; a high copy waits for at most the chunk
///   in transit. cancel succeeds only while no byte has moved. A copy into a slot must not start
///   before the slot's last submitted reader finished (stream order).
/// - submit_job: a predictor job, on a CPU worker or on the compute stream (moesched/runtime/jobs.hpp).
/// - wait / poll: the next completion. wait blocks until one exists (virtual time: advances the
///   clock to it) and returns false only when nothing is in flight; poll never blocks.
///   Completions of one kind arrive in order: compute in submission order, chunks in link order.
/// - drain: stop: cancel queued copies and jobs, let running work finish, discard completions.
/// Lifecycle: the caller asks a backend's requirements() for a configuration, allocates and owns
/// the memory, constructs the backend over it (initialisation returns a Status), runs the driver,
/// then drain() and destruction (which joins threads and never throws).

#include "moesched/core/config.hpp"
#include "moesched/core/expert_id.hpp"
#include "moesched/core/units.hpp"
#include "moesched/runtime/executor.hpp"
#include "moesched/runtime/jobs.hpp"
#include "moesched/runtime/status.hpp"
#include "moesched/workload/workload.hpp"

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>

namespace moesched::runtime {

/// Index of an expert slot in the backend's device memory.
using SlotIndex = std::uint32_t;

/// What a kernel on the compute stream is.
enum class ComputeKind : std::uint8_t {
  draft_step,  ///< one forward of the draft model over one token per sequence (SD)
  dense,       ///< attention, projections, router, shared experts of MoE layer `layer`
  expert,      ///< FFN of routed expert `expert` over `tokens` tokens, weights in `slot`
  head,        ///< final norm, decoder layers after the last MoE layer, LM head
};

/// One kernel for the compute stream.
struct ComputeOrder {
  ComputeKind kind = ComputeKind::dense;
  std::uint32_t layer = 0;     ///< dense, expert
  ExpertId expert{};           ///< expert
  SlotIndex slot = 0;          ///< expert: where its weights are
  std::uint32_t tokens = 0;    ///< expert: tokens routed to it
  std::uint32_t step = 0;      ///< draft_step: 1..draft_len
  const Pass* pass = nullptr;  ///< the pass (tokens, sequences, context lengths); never null
};

/// One host-to-device copy of an expert into a slot.
struct CopyOrder {
  ExpertId expert{};
  SlotIndex slot = 0;
  CopyPriority priority = CopyPriority::high;
};

enum class CompletionKind : std::uint8_t {
  compute,  ///< the oldest unfinished compute kernel finished
  chunk,    ///< a chunk of a copy landed (`landed`: it was the last, the expert is resident)
  job,      ///< a predictor job finished (`count` candidates written)
};

/// Something that finished, with when it ran on the backend's clock.
struct Completion {
  CompletionKind kind = CompletionKind::compute;
  bool landed = false;         ///< chunk: the copy is complete
  bool high = false;           ///< chunk: moved at high priority
  ExpertId expert{};           ///< chunk
  std::uint32_t chunk = 0;     ///< chunk: index
  std::uint32_t chunks = 0;    ///< chunk: chunks of the copy
  Bytes bytes{};               ///< chunk: bytes moved
  std::uint32_t tag = 0;       ///< job
  std::uint32_t count = 0;     ///< job: candidates written
  JobResource where = JobResource::cpu_worker;  ///< job
  std::uint32_t worker = 0;    ///< job on a CPU worker: which one
  Nanoseconds queued{};        ///< job: when the backend received it (its input existed)
  Nanoseconds start{};         ///< when the work began
  Nanoseconds end{};           ///< when it finished
};

/// Memory a backend needs for a configuration; the caller allocates and owns it.
struct Requirements {
  std::size_t device_bytes = 0;     ///< expert slots (and the backend's device workspace)
  std::size_t device_alignment = 256;
  std::size_t host_bytes = 0;       ///< host copy of every expert (pinned on a GPU)
  std::size_t host_alignment = 64;
};

/// What the layer driver asks of a backend (see the header comment).
template <class B>
concept Backend = requires(B& b, const B& cb, const ComputeOrder& k, const CopyOrder& c, const PredictorJob& j,
                           ExpertId id, SlotIndex s, Completion& out, InputSource src, std::uint32_t index) {
  { cb.now() } -> std::same_as<Nanoseconds>;
  { cb.layers() } -> std::same_as<std::uint32_t>;
  { cb.experts_per_layer() } -> std::same_as<std::uint32_t>;
  { cb.slot_count() } -> std::same_as<std::uint32_t>;
  { cb.expert_bytes() } -> std::same_as<Bytes>;
  { cb.slot_address(s) } -> std::same_as<DeviceAddress>;
  { cb.cpu_workers() } -> std::same_as<std::uint32_t>;
  { b.submit_compute(k) } -> std::same_as<Status>;
  { b.submit_copy(c) } -> std::same_as<Status>;
  { b.cancel_copy(id) } -> std::same_as<bool>;
  { b.promote_copy(id) } -> std::same_as<void>;
  { cb.copy_started(id) } -> std::same_as<bool>;
  { b.submit_job(j) } -> std::same_as<Status>;
  { cb.activation(src, index) } -> std::same_as<std::span<const std::byte>>;
  { b.wait(out) } -> std::same_as<bool>;
  { b.poll(out) } -> std::same_as<bool>;
  { b.drain() } -> std::same_as<Status>;
};

}  // namespace moesched::runtime
