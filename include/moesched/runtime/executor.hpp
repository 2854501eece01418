#pragma once
/// The seam between scheduling policies and the machines they drive: the Executor a policy sees
/// and the hooks a Policy implements.
///
///   template <moesched::Executor E>
///   void on_gate(E& exec, std::uint32_t layer, std::span<const moesched::ExpertId> needed) {
///     for (moesched::ExpertId id : needed)
///       if (exec.residency(id) == moesched::Residency::absent && exec.free_slots() > 0)
///         (void)exec.copy(id, moesched::CopyPriority::high);
///   }
///
/// An `Executor` owns the expert memory: it copies experts in, evicts them and says where each one
/// is. The only model in the library is runtime::Machine<Backend> (moesched/runtime/machine.hpp),
/// which the layer driver builds over a backend: the discrete-event simulator (virtual time) or a
/// real one (the host backend, the CUDA executor). A `Policy` decides what to copy, when, and what
/// to evict, sees only an Executor, and so runs unchanged on every backend. Every policy of the
/// library is checked against runtime::ArchetypeExecutor (only what this concept offers) in its
/// own header and instantiated against it in a test: a policy that reaches past the concept does
/// not compile.
///
/// Memory is counted in slots of one routed expert (all routed experts of a model have the same
/// size). A slot is taken when a copy is submitted and given back by evict() or cancel(). An
/// expert can be computed only while it is resident; the driver pins the experts of the layer
/// being computed from its gate until their FFN has run, and evict() refuses them. Slots are
/// reused in stream order: a copy into a slot starts only after the slot's last reader finished
/// (an event on a GPU, a completion in the simulator), so evicting never synchronises the host.
///
/// Threading rule: every hook runs on the driver's thread, one at a time. Backends learn of
/// completions on other threads (copy workers, CUDA events) and hand them to the driver through a
/// completion queue it drains; residency changes only when the driver takes a completion. A
/// policy may call any Executor member from any hook, and must not call one from another thread.
///
/// Hooks a policy implements, in the order the driver calls them for one forward pass:
///   on_pass_begin(exec, pass)          before drafting (SD) or the first layer
///   on_gate(exec, layer, needed)       the router of `layer` ran: every needed expert must become
///                                      non-absent (resident, copying or queued); called again with
///                                      the still-absent ones whenever memory may have freed
///   on_expert_done(exec, id)           one expert's FFN finished (it is unpinned)
///   on_copy_done(exec, id)             a copy landed: the expert is resident
///   on_layer_done(exec, layer)         every expert of `layer` ran
///   on_job_done(exec, tag, count)      a JobPolicy's predictor job finished (moesched/runtime/jobs.hpp)
///
/// Failures are statuses (runtime::Status) that name the call and the expert. no_free_slot is
/// ordinary (evict first); the others are contract violations, which the driver also records and
/// ends the run with.

#include "moesched/core/config.hpp"
#include "moesched/core/expert_id.hpp"
#include "moesched/core/routing.hpp"
#include "moesched/core/units.hpp"
#include "moesched/runtime/jobs.hpp"
#include "moesched/runtime/status.hpp"

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

/// Address of a slot in the backend's device memory (a virtual offset in the simulator).
struct DeviceAddress {
  std::uint64_t value = 0;
  friend constexpr bool operator==(DeviceAddress, DeviceAddress) = default;
};

/// What a policy learns when a forward pass starts.
struct PassInfo {
  std::uint64_t index = 0;     ///< pass number in the run
  StepPhase phase = StepPhase::decode;
  std::uint32_t tokens = 0;    ///< tokens the target model runs in this pass (all sequences)
  std::uint32_t sequences = 0; ///< requests batched in this pass
  std::uint16_t draft_len = 0; ///< SD: draft steps before verification (ReadyPoint::after_draft 1..draft_len)
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
  { ce.address(id) } -> std::same_as<DeviceAddress>;  ///< its slot's address; precondition: not absent
  { e.copy(id, p) } -> std::same_as<runtime::Status>;  ///< absent -> queued; no_free_slot when full
  { e.evict(id) } -> std::same_as<runtime::Status>;    ///< resident and unpinned -> absent
  { e.cancel(id) } -> std::same_as<bool>;      ///< queued -> absent; false if already moving
  { e.promote(id) } -> std::same_as<void>;     ///< a low copy of `id` becomes high
};

/// An Executor that also runs predictor jobs (moesched/runtime/jobs.hpp).
template <class E>
concept JobExecutor = Executor<E> && requires(E& e, const E& ce, const runtime::PredictorJob& job) {
  { ce.cpu_workers() } -> std::same_as<std::uint32_t>;
  { e.submit_job(job) } -> std::same_as<runtime::Status>;
};

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

/// A policy that submits predictor jobs and takes their results.
template <class P, class E>
concept JobPolicy = Policy<P, E> && JobExecutor<E> &&
                    requires(P& p, E& e, std::uint32_t tag, std::uint32_t count) { p.on_job_done(e, tag, count); };

}  // namespace moesched
