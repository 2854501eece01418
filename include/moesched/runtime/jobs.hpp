#pragma once
/// Predictor jobs: real work a policy asks the machine to run, and when its input exists.
///
///   std::array<moesched::runtime::ScoredExpert, 8> out;
///   moesched::runtime::PredictorJob job{
///       .tag = 7,
///       .ready = moesched::runtime::ReadyPoint::after_layer(2),   // needs layer 2's output
///       .where = moesched::runtime::JobResource::cpu_worker,     // an MLP on a CPU thread
///       .cost = moesched::Nanoseconds{200'000},                  // what the simulator charges
///       .predict = &MyPredictor::run, .predictor = &my_predictor,
///       .input = {.source = moesched::runtime::InputSource::layer_boundary, .layer = 4},
///       .out = out};
///   exec.submit_job(job);       // later: policy.on_job_done(exec, 7, count) with out[0..count)
///
/// A job names its predictor (a function and the object it runs on), the input it reads (the
/// hidden state at a layer boundary, the draft's state at a draft step, or the routing history the
/// policy already has), the point of the pass from which that input exists, and the resource the
/// predictor really uses: CPU worker threads (ProMoE's MLP, about 200 us) or the GPU compute stream
/// (a router GEMV: the skip gate, SP-MoE's draft gate). The layer driver holds the job until its
/// ready point occurs in the running pass, then gives it to the backend: a real backend runs
/// `predict` there (a CPU worker thread, or a kernel launched on the stream) and reports when it
/// really finished; the simulator charges `cost` on that resource and calls `predict` when the
/// charged time has passed. `out` belongs to the policy and must stay valid until on_job_done.

#include "moesched/core/config.hpp"
#include "moesched/core/units.hpp"

#include <cstddef>
#include <cstdint>
#include <span>

namespace moesched::runtime {

/// One ranked candidate: an expert of the predicted layer and its score (higher = likelier).
struct ScoredExpert {
  std::uint16_t expert = 0;
  float score = 0.0f;
};

/// What a predictor reads.
enum class InputSource : std::uint8_t {
  routing_history,  ///< only what the policy has seen (gates of earlier layers and passes)
  layer_boundary,   ///< the hidden state after MoE layer `after` of the pass
  draft_state,      ///< the draft model's state after draft step `after` (SD)
};

/// Where a predictor runs.
enum class JobResource : std::uint8_t {
  cpu_worker,  ///< a CPU worker thread (an MLP predictor); runs beside the GPU
  gpu_stream,  ///< the compute stream (a router GEMV): delays the next kernel by its time
};

/// The point of a pass from which a job's input exists.
struct ReadyPoint {
  enum class Kind : std::uint8_t {
    pass_start,  ///< before drafting and the first layer
    after_draft, ///< after draft step `index` (1-based) of the pass (SD; none: = pass start)
    after_layer, ///< after every expert of MoE layer `index` ran
  };
  Kind kind = Kind::pass_start;
  std::uint32_t index = 0;

  [[nodiscard]] static constexpr ReadyPoint pass_start() noexcept { return {Kind::pass_start, 0}; }
  [[nodiscard]] static constexpr ReadyPoint after_draft(std::uint32_t step) noexcept { return {Kind::after_draft, step}; }
  [[nodiscard]] static constexpr ReadyPoint after_layer(std::uint32_t layer) noexcept { return {Kind::after_layer, layer}; }
};

/// What the predictor is asked.
struct JobInput {
  InputSource source = InputSource::routing_history;
  std::uint64_t pass = 0;          ///< pass the prediction is for
  std::uint32_t layer = 0;         ///< MoE layer predicted
  std::uint64_t key = 0;           ///< the policy's own handle (a table row, a request id)
  const std::byte* state = nullptr;///< the backend's activation for the source, or null (no activations)
  std::size_t state_bytes = 0;
};

/// Runs the predictor: writes at most out.size() candidates, best first; returns how many.
/// Called on the thread of the resource (a CPU worker thread in a real backend): it must not
/// touch policy state other than through `predictor`, which the policy keeps alive and unchanged
/// while jobs run.
using PredictFn = std::uint32_t (*)(const void* predictor, const JobInput& input, std::span<ScoredExpert> out) noexcept;

/// A predictor job (see the header comment).
struct PredictorJob {
  std::uint32_t tag = 0;           ///< returned to the policy in on_job_done
  ReadyPoint ready{};
  JobResource where = JobResource::cpu_worker;
  Nanoseconds cost{};              ///< time a virtual-time backend charges on `where`
  PredictFn predict = nullptr;
  const void* predictor = nullptr;
  JobInput input{};
  std::span<ScoredExpert> out{};
};

}  // namespace moesched::runtime
