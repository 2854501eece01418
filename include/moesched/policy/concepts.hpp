#pragma once
/// The seam between scheduling policies and the machines they drive.
///
///   template <moesched::Executor E>
///   void on_gate(E& exec, std::uint32_t layer, std::span<const moesched::ExpertId> needed) {
///     for (moesched::ExpertId id : needed)
///       if (exec.residency(id) == moesched::Residency::absent && exec.free_slots() > 0)
///         exec.copy(id, moesched::CopyPriority::high);
///   }
///
/// An `Executor` owns the expert memory and the host-to-device link: it copies experts in, evicts
/// them and says where each one is. The discrete-event simulator (moesched/sim/engine.hpp) is one
/// executor; the CUDA executor is the other. A `Policy` decides what to copy, when, and what to
/// evict, and sees only an Executor, so the same policy code runs on both.
///
/// Memory is counted in slots of one routed expert (all routed experts of a model have the same
/// size). A slot is taken when a copy is submitted (the destination buffer must exist) and given
/// back by evict() or cancel(). An expert can be computed only while it is resident; the executor
/// pins the experts of the layer being computed until their FFN has run, and refuses to evict them.
///
/// Hooks a policy implements, in the order an executor calls them for one forward pass:
///   on_pass_begin(exec, pass)          before drafting (SD) or the first layer
///   on_gate(exec, layer, needed)       the router of `layer` ran: every needed expert must become
///                                      non-absent (resident, copying or queued); called again with
///                                      the still-absent ones whenever memory may have freed
///   on_expert_done(exec, id)           one expert's FFN finished (it is unpinned)
///   on_copy_done(exec, id)             a copy landed: the expert is resident
///   on_layer_done(exec, layer)         every expert of `layer` ran
///   on_cpu_done(exec, tag)             optional: a job the policy gave a CpuExecutor finished
///
/// A `CpuExecutor` also runs the policy's predictor jobs on CPU worker threads (ProMoE's MLP
/// predictor costs about 200 us a prediction): cpu_submit(tag, ready_at, duration) queues a job
/// whose input exists from `ready_at` on; it runs on the first free worker, first come first
/// served, and on_cpu_done(exec, tag) reports its end. The simulator charges `duration`; a live
/// executor runs the predictor and reports when it really finished.

#include "moesched/core/config.hpp"
#include "moesched/core/expert_id.hpp"
#include "moesched/core/routing.hpp"
#include "moesched/core/units.hpp"

#include <concepts>
#include <cstdint>
#include <span>
#include <string_view>

namespace moesched {

/// Where an expert is.
enum class Residency : std::uint8_t {
  absent,    ///< only in host memory
  queued,    ///< a copy was submitted and holds a slot, but no byte has moved yet
  copying,   ///< part of the copy has landed
  resident,  ///< usable by the GPU
};

/// Copy priority. `high` = precise (the gate asked for it now), `low` = speculative (a prediction
/// or a prefetch). A high copy waits for at most one chunk of a low copy already on the link.
enum class CopyPriority : std::uint8_t { high = 0, low = 1 };

/// What a policy learns when a forward pass starts.
struct PassInfo {
  std::uint64_t index = 0;     ///< pass number in the run
  StepPhase phase = StepPhase::decode;
  std::uint32_t tokens = 0;    ///< tokens the target model runs in this pass (all sequences)
  std::uint32_t sequences = 0; ///< requests batched in this pass
  std::uint16_t draft_len = 0; ///< SD: draft tokens each sequence proposes before verification
  Nanoseconds draft_time{};    ///< SD: how long drafting runs before the first target layer
};

/// What a policy may ask of the machine it drives.
template <class E>
concept Executor = requires(E& e, const E& ce, ExpertId id, CopyPriority p) {
  { ce.now() } -> std::same_as<Nanoseconds>;
  { ce.layers() } -> std::same_as<std::uint32_t>;
  { ce.experts_per_layer() } -> std::same_as<std::uint32_t>;
  { ce.capacity_slots() } -> std::same_as<std::uint32_t>;  ///< expert budget, in experts
  { ce.free_slots() } -> std::same_as<std::uint32_t>;
  { ce.residency(id) } -> std::same_as<Residency>;
  { ce.evictable(id) } -> std::same_as<bool>;  ///< resident and not pinned by the running layer
  { e.copy(id, p) } -> std::same_as<bool>;     ///< absent -> queued; false when no slot is free
  { e.evict(id) } -> std::same_as<void>;       ///< precondition: evictable(id)
  { e.cancel(id) } -> std::same_as<bool>;      ///< queued -> absent; false if already moving
  { e.promote(id) } -> std::same_as<void>;     ///< a low copy of `id` becomes high
};

/// An Executor with CPU worker threads for predictor jobs (see the header comment).
template <class E>
concept CpuExecutor = Executor<E> && requires(E& e, const E& ce, std::uint32_t tag, Nanoseconds t) {
  { ce.cpu_workers() } -> std::same_as<std::uint32_t>;
  { e.cpu_submit(tag, t, t) } -> std::same_as<void>;  ///< (tag, ready_at, duration)
};

/// A policy that submits CPU jobs and wants their completions.
template <class P, class E>
concept CpuPolicy = CpuExecutor<E> && requires(P& p, E& e, std::uint32_t tag) { p.on_cpu_done(e, tag); };

/// A scheduling policy driving executor `E`.
template <class P, class E>
concept Policy = Executor<E> && requires(P& p, E& e, const PassInfo& pass, std::uint32_t layer,
                                         std::span<const ExpertId> needed, ExpertId id) {
  { P::name() } -> std::convertible_to<std::string_view>;
  p.on_pass_begin(e, pass);
  p.on_gate(e, layer, needed);
  p.on_expert_done(e, id);
  p.on_copy_done(e, id);
  p.on_layer_done(e, layer);
};

}  // namespace moesched
