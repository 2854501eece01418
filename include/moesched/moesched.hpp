#pragma once
/// moesched: the umbrella header of everything that needs only the standard library: the core
/// vocabulary, the workload, the runtime (executor concept, predictor jobs, layer driver), the
/// policies, the simulator backend and the host backend.
///
///   #include <moesched/moesched.hpp>
///   moesched::sim::CostModel cost(model, gpu);
///   moesched::policy::LayerLru lru;
///   auto m = moesched::sim::replay(workload, cost, lru, {.budget = moesched::Bytes::gib(12)});
///
/// Not pulled in: JSON presets and trace files (<moesched/io/...>, <moesched/trace/...>, target
/// moesched::io) and the CUDA executor (<moesched/cuda/...>, target moesched::cuda).

#include "moesched/core/config.hpp"
#include "moesched/core/dtype.hpp"
#include "moesched/core/error.hpp"
#include "moesched/core/expert_id.hpp"
#include "moesched/core/hardware.hpp"
#include "moesched/core/model.hpp"
#include "moesched/core/random.hpp"
#include "moesched/core/routing.hpp"
#include "moesched/core/sizing.hpp"
#include "moesched/core/units.hpp"
#include "moesched/host/backend.hpp"
#include "moesched/policy/activation_matrix_predictor.hpp"
#include "moesched/policy/any_predictor.hpp"
#include "moesched/policy/baseline.hpp"
#include "moesched/policy/cutoff_solver.hpp"
#include "moesched/policy/expert_predictor.hpp"
#include "moesched/policy/latency_model.hpp"
#include "moesched/policy/mixtral_offloading.hpp"
#include "moesched/policy/moesched_policy.hpp"
#include "moesched/policy/oracle.hpp"
#include "moesched/policy/pipeline.hpp"
#include "moesched/policy/popularity_predictor.hpp"
#include "moesched/policy/prediction_ledger.hpp"
#include "moesched/policy/prediction_table.hpp"
#include "moesched/policy/predictive.hpp"
#include "moesched/policy/prefetch.hpp"
#include "moesched/policy/prefetch_queue.hpp"
#include "moesched/policy/promoe.hpp"
#include "moesched/policy/rank_ahead.hpp"
#include "moesched/policy/recency_list.hpp"
#include "moesched/policy/reuse_model.hpp"
#include "moesched/policy/spmoe.hpp"
#include "moesched/policy/table_jobs.hpp"
#include "moesched/policy/trace_predictions.hpp"
#include "moesched/policy/transition_predictor.hpp"
#include "moesched/profile/profile.hpp"
#include "moesched/runtime/archetype.hpp"
#include "moesched/runtime/backend.hpp"
#include "moesched/runtime/completion_queue.hpp"
#include "moesched/runtime/copy_queue.hpp"
#include "moesched/runtime/driver.hpp"
#include "moesched/runtime/executor.hpp"
#include "moesched/runtime/job_workers.hpp"
#include "moesched/runtime/jobs.hpp"
#include "moesched/runtime/machine.hpp"
#include "moesched/runtime/metrics.hpp"
#include "moesched/runtime/status.hpp"
#include "moesched/runtime/timeline.hpp"
#include "moesched/sim/backend.hpp"
#include "moesched/sim/cost_model.hpp"
#include "moesched/sim/event_queue.hpp"
#include "moesched/sim/lower_bound.hpp"
#include "moesched/sim/replay.hpp"
#include "moesched/version.hpp"
#include "moesched/workload/workload.hpp"
