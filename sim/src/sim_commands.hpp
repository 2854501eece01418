#pragma once
// moesched-sim's commands: scenario set-up (trace + presets -> workload, costs, budget), the
// run/compare/sweep drivers, and their table, JSON and CSV output.
#include "main_guard.hpp"
#include "output.hpp"
#include "registry.hpp"
#include "presets_location.hpp"
#include "table.hpp"

#include <moesched/core/sizing.hpp>
#include <moesched/fit/latency_fit.hpp>
#include <moesched/io/presets.hpp>
#include <moesched/io/profile_json.hpp>
#include <moesched/io/trace.hpp>
#include <moesched/sim/replay.hpp>
#include <moesched/sim/lower_bound.hpp>
#include <moesched/policy/trace_predictions.hpp>

#include <CLI/CLI.hpp>
#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace moesched::tools {

/// Output JSON keeps keys in the order written (scenario first, then records).
using Json = nlohmann::ordered_json;

/// Everything that defines one simulated configuration, as the command line gives it.
struct ScenarioOptions {
  std::string trace;
  std::string model;  // empty = the trace's model name
  std::string gpu = "rtx4090";
  std::vector<std::string> preset_dirs;
  std::optional<double> cache_gb;        // unset = all the memory the GPU has left for experts
  std::optional<double> bandwidth_gbps;  // unset = the preset's measured curve
  std::optional<double> gpu_memory_gb;   // unset = the preset's memory (emulates a card of this size)
  std::uint32_t gamma = 0;               // 0 = replay steps as recorded
  double acceptance = 0.7;               // per draft token (i.i.d. until the first rejection)
  std::optional<double> acceptance_rate; // accepted / drafted (a model card's); replaces acceptance
  std::string rejected_routing = "nearby";  // nearby | continuation (WorkloadOptions, RejectedRouting)
  std::uint64_t seed = 1;
  std::uint32_t batch = 1;
  std::uint32_t chunks = 1;
  double d2h_share = 0.0;
  std::uint64_t context = 4096;
  double workspace_gb = 0.5;
  std::optional<double> draft_ms;
  std::optional<double> draft_gb;
  std::uint32_t max_requests = 0;
  bool no_prefill = false;
  std::optional<double> predictor_us;    // unset = per channel (predictor_latency)
  std::string predictor_on = "auto";     // auto (by channel), cpu, gpu
  std::uint32_t cpu_workers = 1;
  std::uint32_t compute_ahead = 1;       // kernels the driver keeps submitted (runtime::DriverOptions)
  std::uint32_t predict_top = 0;         // 0 = the model's top_k
  std::uint32_t prefetch_depth = 2;
  std::uint32_t lookahead = 0;
  std::uint32_t horizon = 2;             // predict:*: layers ranked ahead after each gate
  std::string train_trace;               // predict:*, moe-infinity: warm the predictor on this trace
  std::string profile;                   // a moesched-profile file: measured times replace the roofline
};

inline void add_scenario_options(CLI::App& app, ScenarioOptions& o, bool grid) {
  app.add_option("--trace", o.trace, "routing trace (moesched-trace format)")->required();
  app.add_option("--model", o.model, "model preset name or JSON file (default: the trace's model name)");
  app.add_option("--gpu", o.gpu, "GPU preset name or JSON file")->capture_default_str();
  app.add_option("--presets", o.preset_dirs, "extra preset directories");
  app.add_option("--chunks", o.chunks,
                 "copies per expert: 1 (whole), 3 (one per matrix), 2..64 equal parts, or 0 = auto (3 when splitting "
                 "costs at most 1/50 of a whole copy's link time, else 1)")
      ->capture_default_str();
  app.add_option("--d2h-share", o.d2h_share, "share of time device-to-host traffic runs beside the copies, [0, 1)")
      ->capture_default_str();
  app.add_option("--context", o.context, "KV-cache tokens reserved per sequence (memory plan)")->capture_default_str();
  app.add_option("--workspace-gb", o.workspace_gb, "activations and workspace reserved on the GPU, GB")->capture_default_str();
  app.add_option("--profile", o.profile,
                 "hardware profile of this GPU and model written by moesched-profile: its fitted compute times and "
                 "measured copy curve replace the roofline estimates and the preset's link curve (the fit error "
                 "of each item is printed)");
  app.add_option("--draft-ms", o.draft_ms,
                 "time of one draft step in ms (default: the target's dense upcycling source on the roofline model)");
  app.add_option("--draft-gb", o.draft_gb,
                 "draft model memory in GB (default: non-expert weights + one expert per MoE layer)");
  app.add_option("--seed", o.seed, "seed of the acceptance draws (SD replay)")->capture_default_str();
  app.add_option("--max-requests", o.max_requests, "replay only the first N requests (0 = all)")->capture_default_str();
  app.add_flag("--no-prefill", o.no_prefill, "leave prefill steps out (TTFT is then not measured)");
  app.add_option("--predictor-us", o.predictor_us,
                 "prefetch:CHANNEL: time of one predictor call in us, where it runs (default: 200 on a CPU worker "
                 "for channels whose name contains 'mlp', ProMoE's MLP; for gate channels one router GEMV on the "
                 "compute stream, timed by the GPU preset)");
  app.add_option("--predictor-on", o.predictor_on,
                 "prefetch:CHANNEL: where the predictor runs: cpu (worker threads), gpu (the compute stream, "
                 "delaying the next kernel), auto (mlp channels on cpu, gate channels on gpu)")
      ->check(CLI::IsMember({"auto", "cpu", "gpu"}))
      ->capture_default_str();
  app.add_option("--cpu-workers", o.cpu_workers, "prefetch:CHANNEL: predictor threads")->capture_default_str();
  app.add_option("--compute-ahead", o.compute_ahead,
                 "kernels the driver keeps submitted ahead of the running one, 1..64 (changes the run only where the "
                 "executor's host time is charged: a --profile with host costs)")
      ->capture_default_str();
  app.add_option("--predict-top", o.predict_top,
                 "prefetch:CHANNEL: candidates prefetched per prediction (0 = the model's top_k); predict:*, "
                 "moe-infinity: candidates per ranking (0 = as many as the layer's last gate asked for)")
      ->capture_default_str();
  app.add_option("--prefetch-depth", o.prefetch_depth,
                 "prefetch:CHANNEL: copies kept outstanding (demand included) before another prefetch is issued")
      ->capture_default_str();
  app.add_option("--lookahead", o.lookahead,
                 "prefetch:CHANNEL, predict:*, moe-infinity: prefetch at most N layers ahead (0 = any later layer)")
      ->capture_default_str();
  app.add_option("--horizon", o.horizon,
                 "predict:*: layers the predictor ranks ahead after each gate (0 = every later layer; moe-infinity: all)")
      ->capture_default_str();
  app.add_option("--train-trace", o.train_trace,
                 "predict:*, moe-infinity: a trace (same model) whose routing the predictor learns before the run "
                 "(a training split; default: learn online only)");
  app.add_option("--rejected-routing", o.rejected_routing,
                 "--gamma: routing of rejected drafts: nearby (another token of the request: a recorded rejected "
                 "draft, else an output token near the window) or continuation (the real continuation's; optimistic)")
      ->check(CLI::IsMember({"nearby", "continuation"}))
      ->capture_default_str();
  if (!grid) {
    app.add_option("--cache-gb", o.cache_gb, "expert cache budget in GB (default: everything the GPU has left)");
    app.add_option("--gpu-memory-gb", o.gpu_memory_gb,
                   "emulate a card with this much device memory (GB) instead of the preset's: the memory plan, hence "
                   "the largest expert cache, follows it (moesched-replay then uses no more on the real GPU)");
    app.add_option("--bandwidth-gbps", o.bandwidth_gbps,
                   "replace the host-to-device curve by X GB/s plus the preset's per-copy cost");
    app.add_option("--gamma", o.gamma, "re-cut decoding into SD windows of N drafts (0 = replay steps as recorded)")
        ->capture_default_str();
    auto* acc = app.add_option("--acceptance", o.acceptance,
                               "--gamma: per-draft-token acceptance probability (each draft accepted with this "
                               "probability until the first rejection)")
                    ->capture_default_str();
    app.add_option("--acceptance-rate", o.acceptance_rate,
                   "--gamma: acceptance rate as model cards and `moesched-trace stats` give it (accepted drafts / "
                   "drafted tokens); converted to the per-token probability with the same mean")
        ->excludes(acc);
    app.add_option("--batch", o.batch, "requests decoding together")->capture_default_str();
  }
}

/// A prepared configuration: what replays need, validated.
struct Scenario {
  ModelDesc model;
  HardwareDesc gpu;
  std::shared_ptr<const Workload> workload;
  std::shared_ptr<const sim::CostModel> cost;
  MemoryPlan plan;
  Bytes budget{};
  bool has_draft = false;
  ScenarioOptions opt;
  /// --train-trace's workload (same batch, no SD re-cut), or null.
  std::shared_ptr<const Workload> training;
  /// Prediction tables of the prefetch:CHANNEL policies to run, by channel.
  std::map<std::string, std::shared_ptr<const policy::PredictionTable>, std::less<>> predictions;
  /// The trace's prediction channels (their recorded predictions replay, also in re-cut windows).
  std::vector<std::string> channels;
  /// --profile's fitted times (also held by cost's options), or null.
  std::shared_ptr<const profile::MeasuredCosts> measured;
};

/// Reads and fits --profile for `model`: a profile of another model's shapes is refused (the
/// times would be of other matrices). Each item's fit error goes to stderr.
inline std::shared_ptr<const profile::MeasuredCosts> load_profile(const std::string& path, const ModelDesc& model) {
  const profile::HardwareProfile p = io::read_profile(path);
  if (p.model != model.name) {
    throw ConfigError(path, "model", "\"" + p.model + "\"",
                      "the profile times another model's shapes; this run's model is " + model.name +
                          " (profile it: moesched-profile --model " + model.name + ")");
  }
  if (p.dtype != dtype_name(model.dtype)) {
    throw ConfigError(path, "dtype", "\"" + p.dtype + "\"",
                      "the profile was measured in another dtype than the model's " + std::string(dtype_name(model.dtype)));
  }
  auto m = std::make_shared<const profile::MeasuredCosts>(fit::fit_profile(p));
  std::fprintf(stderr, "profile %s (%s, %s):\n", path.c_str(), m->gpu.c_str(), m->model.c_str());
  for (const auto& f : m->fits) std::fprintf(stderr, "  %s\n", profile::describe(f).c_str());
  return m;
}

/// Memory left for experts and what took the rest, for error messages.
inline std::string plan_text(const MemoryPlan& p) {
  return fmt::format("{:.2f} GB usable - {:.2f} GB resident weights - {:.2f} GB KV cache - {:.2f} GB workspace - "
                     "{:.2f} GB draft model = {:.2f} GB",
                     p.usable.gigabytes(), p.non_expert.gigabytes(), p.kv_cache.gigabytes(), p.workspace.gigabytes(),
                     p.extra_resident.gigabytes(), p.expert_cache.gigabytes());
}

/// Checks that the trace's routing shape is the model's.
inline void check_trace_model(const io::Trace& t, const ModelDesc& m, const std::string& path) {
  const auto& tm = t.meta().model;
  auto mismatch = [&](const char* field, std::uint32_t trace_value, std::uint32_t model_value) {
    if (trace_value == model_value) return;
    throw ConfigError(path, std::string("model.") + field, std::to_string(trace_value),
                      fmt::format("does not match model preset '{}' ({}); pass the model the trace was recorded "
                                  "with (--model)",
                                  m.name, model_value));
  };
  mismatch("moe_layers", tm.moe_layers, m.shape.moe_layers());
  mismatch("experts_per_layer", tm.experts_per_layer, m.shape.experts_per_layer);
  mismatch("top_k", tm.top_k, m.shape.top_k);
}

inline void check_positive(const char* field, double v) {
  if (!(v > 0.0) || !std::isfinite(v)) throw ConfigError("", field, to_text(v), "must be positive and finite");
}

/// A size option in GB as bytes, range-checked before the conversion (1e30 GB must not wrap).
inline Bytes gb_option(const char* field, double gb, bool allow_zero) {
  constexpr double kMaxGb = 1e6;  // 1 PB: far above any GPU or host, far below 2^64 bytes
  if (!std::isfinite(gb) || gb < 0.0 || (!allow_zero && gb == 0.0) || gb > kMaxGb) {
    throw ConfigError("", field, to_text(gb),
                      fmt::format("must be {} and at most {:.0f} GB", allow_zero ? "zero or positive" : "positive", kMaxGb));
  }
  return Bytes{static_cast<std::uint64_t>(gb * 1e9)};
}

/// A time option (`value` in units of `ns_per_unit` ns) as nanoseconds, range-checked first.
inline Nanoseconds time_option(const char* field, double value, double ns_per_unit, bool allow_zero) {
  constexpr double kMaxNs = 1e15;  // about 11.6 days
  if (!std::isfinite(value) || value < 0.0 || (!allow_zero && value == 0.0) || value * ns_per_unit > kMaxNs) {
    throw ConfigError("", field, to_text(value),
                      fmt::format("must be {} and at most {:g}", allow_zero ? "zero or positive" : "positive",
                                  kMaxNs / ns_per_unit));
  }
  return ceil_ns(value * ns_per_unit);
}

/// The shared, read-only parts: trace, presets and the workload for (gamma, acceptance, batch).
struct ScenarioBase {
  std::shared_ptr<io::Trace> trace;
  ModelDesc model;
  HardwareDesc gpu;
  std::shared_ptr<const profile::MeasuredCosts> measured;  ///< --profile, fitted once
};

inline ScenarioBase open_base(const ScenarioOptions& o) {
  ScenarioBase b;
  b.trace = std::make_shared<io::Trace>(io::Trace::open(o.trace));
  const auto catalog = preset_catalog({o.preset_dirs.begin(), o.preset_dirs.end()});
  const std::string model = o.model.empty() ? b.trace->meta().model.name : o.model;
  if (model.empty()) {
    throw ConfigError(o.trace, "model.name", "\"\"", "the trace names no model; pass --model");
  }
  b.model = catalog.model(model);
  check_trace_model(*b.trace, b.model, o.trace);
  b.gpu = catalog.gpu(o.gpu);
  if (!o.profile.empty()) b.measured = load_profile(o.profile, b.model);
  return b;
}

/// The per-token acceptance --gamma re-cuts with: --acceptance, or --acceptance-rate converted.
inline double per_token(const ScenarioOptions& o) {
  return o.acceptance_rate && o.gamma > 0 ? per_token_acceptance(*o.acceptance_rate, o.gamma) : o.acceptance;
}

inline std::shared_ptr<const Workload> build_workload_for(const ScenarioBase& b, const ScenarioOptions& o) {
  const auto& tm = b.trace->meta().model;
  WorkloadOptions wo;
  wo.batch = o.batch;
  wo.prefill = !o.no_prefill;
  wo.max_requests = o.max_requests;
  if (o.acceptance_rate && o.gamma == 0) {
    throw ConfigError("", "acceptance_rate", to_text(*o.acceptance_rate), "needs --gamma (SD windows to re-cut)");
  }
  if (o.acceptance_rate && !(*o.acceptance_rate >= 0.0 && *o.acceptance_rate <= 1.0)) {
    throw ConfigError("", "acceptance_rate", to_text(*o.acceptance_rate), "must be between 0 and 1");
  }
  if (o.gamma > 0) {
    wo.sd = SdReplay{o.gamma, per_token(o), o.seed,
                     o.rejected_routing == "continuation" ? RejectedRouting::continuation : RejectedRouting::nearby_token};
  }
  auto w = std::make_shared<const Workload>(
      build_workload(*b.trace, {tm.moe_layers, tm.experts_per_layer, tm.top_k}, wo));
  if (w->decode_tokens() == 0) {
    throw ConfigError(o.trace, "steps", "no decode steps", "nothing to measure TPOT on");
  }
  return w;
}

/// Validates `o` against `b` and the workload, and prepares costs and budget.
inline Scenario prepare(const ScenarioBase& b, std::shared_ptr<const Workload> w, const ScenarioOptions& o) {
  Scenario s;
  s.opt = o;
  s.model = b.model;
  s.gpu = b.gpu;
  if (o.acceptance < 0.0 || o.acceptance > 1.0 || !std::isfinite(o.acceptance)) {
    throw ConfigError("", "acceptance", to_text(o.acceptance), "must be between 0 and 1");
  }
  if (o.bandwidth_gbps) {
    check_positive("bandwidth_gbps", *o.bandwidth_gbps);
    if (*o.bandwidth_gbps > 1e5) {
      throw ConfigError("", "bandwidth_gbps", to_text(*o.bandwidth_gbps), "must be at most 100000 GB/s");
    }
    s.gpu.h2d = TransferCurve::affine(gb_per_s(*o.bandwidth_gbps), b.gpu.h2d.time(Bytes{0}));
  }
  if (o.gpu_memory_gb) s.gpu.memory = gb_option("gpu_memory_gb", *o.gpu_memory_gb, false);
  (void)gb_option("workspace_gb", o.workspace_gb, false);  // range-checked here, converted below
  if (o.predictor_us) (void)time_option("predictor_us", *o.predictor_us, 1e3, true);
  if (o.prefetch_depth < 1 || o.prefetch_depth > 4096) {
    throw ConfigError("", "prefetch_depth", std::to_string(o.prefetch_depth), "must be between 1 and 4096");
  }
  if (o.cpu_workers < 1 || o.cpu_workers > 1024) {
    throw ConfigError("", "cpu_workers", std::to_string(o.cpu_workers), "must be between 1 and 1024");
  }
  if (o.compute_ahead < 1 || o.compute_ahead > 64) {
    throw ConfigError("", "compute_ahead", std::to_string(o.compute_ahead), "must be between 1 and 64");
  }
  s.workload = std::move(w);
  if (!o.train_trace.empty()) {
    ScenarioOptions to = o;
    to.trace = o.train_trace;
    to.gamma = 0;
    to.acceptance_rate.reset();  // the training split replays as recorded
    to.profile.clear();  // costs are the replayed scenario's
    const ScenarioBase tb = open_base(to);
    if (tb.model.name != b.model.name) {
      throw ConfigError(o.train_trace, "model.name", tb.model.name, "differs from the replayed trace's model " + b.model.name);
    }
    s.training = build_workload_for(tb, to);
  }
  for (const auto& p : s.workload->passes()) s.has_draft = s.has_draft || p.draft_len > 0;
  sim::CostOptions co;
  co.chunks = o.chunks;
  co.d2h_share = o.d2h_share;
  if (o.draft_ms) co.draft_token_time = time_option("draft_ms", *o.draft_ms, 1e6, false);
  if (o.draft_gb) co.draft_bytes = gb_option("draft_gb", *o.draft_gb, true);
  if (!o.profile.empty()) {
    if (o.bandwidth_gbps) {
      throw ConfigError("", "bandwidth_gbps", to_text(*o.bandwidth_gbps),
                        "cannot be combined with --profile, whose measured copy curve it would replace");
    }
    s.measured = b.measured ? b.measured : load_profile(o.profile, s.model);
    co.measured = s.measured;
    s.gpu.h2d = s.measured->copy_h2d;
  }
  if (o.chunks == 0) {  // auto: from the copy curve this scenario uses (preset, --bandwidth-gbps or --profile)
    co.chunks = 1;
    co.chunks = registry_detail::auto_chunks(sim::CostModel(s.model, s.gpu, co));
    s.opt.chunks = co.chunks;
  }
  s.cost = std::make_shared<const sim::CostModel>(s.model, s.gpu, co);
  MemoryPlanOptions mo;
  mo.context_tokens = o.context;
  mo.batch = o.batch;
  mo.workspace = gb_option("workspace_gb", o.workspace_gb, false);
  if (s.has_draft) mo.extra_resident = s.cost->draft_bytes();
  s.plan = plan_memory(s.model, s.gpu, mo);
  if (!s.plan.fits_without_experts) {
    throw ConfigError(o.gpu_memory_gb ? std::string() : b.gpu.name,
                      o.gpu_memory_gb ? "gpu_memory_gb" : "memory_gib", to_text(s.gpu.memory.gigabytes()) + " GB",
                      "too small for " + s.model.name + " without any expert: " + plan_text(s.plan));
  }
  const Bytes e = s.model.expert_bytes();
  const Bytes need = e * s.workload->max_layer_union();
  if (o.cache_gb) {
    s.budget = gb_option("cache_gb", *o.cache_gb, false);
    if (s.budget > s.plan.expert_cache) {
      throw ConfigError("", "cache_gb", to_text(*o.cache_gb),
                        fmt::format("is more than {} has left for experts ({}); use a larger GPU preset or a "
                                    "smaller --context/--batch",
                                    s.gpu.name, plan_text(s.plan)));
    }
  } else {
    s.budget = s.plan.expert_cache;
  }
  if (s.budget < need) {
    throw ConfigError("", "cache_gb", fmt::format("{:.3f}", s.budget.gigabytes()),
                      fmt::format("is below one layer's experts: this workload needs {} experts of {:.1f} MB at once "
                                  "({:.3f} GB){}",
                                  s.workload->max_layer_union(), e.megabytes(), need.gigabytes(),
                                  o.cache_gb ? "" : "; the GPU has " + plan_text(s.plan)));
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// Predictive policies

/// Whether the predictor behind `channel` is a learned MLP (ProMoE's; on CPU workers) rather
/// than a router GEMV (the skip gate, the draft gate; on the compute stream).
inline bool mlp_channel(std::string_view channel) { return channel.find("mlp") != std::string_view::npos; }

/// Where the predictor behind `channel` runs (see --predictor-on).
inline runtime::JobResource predictor_where(const ScenarioOptions& o, std::string_view channel) {
  if (o.predictor_on == "cpu") return runtime::JobResource::cpu_worker;
  if (o.predictor_on == "gpu") return runtime::JobResource::gpu_stream;
  return mlp_channel(channel) ? runtime::JobResource::cpu_worker : runtime::JobResource::gpu_stream;
}

/// Time of one call of the predictor behind `channel` (see --predictor-us).
inline Nanoseconds predictor_latency(const ScenarioOptions& o, const sim::CostModel& cost, std::string_view channel) {
  if (o.predictor_us) return time_option("predictor_us", *o.predictor_us, 1e3, true);
  return mlp_channel(channel) ? Nanoseconds{200'000} : cost.router_time(1);
}

/// Tables already built, by (workload, channel), so sweep points share them.
using PredictionCache = std::map<std::pair<const Workload*, std::string>, std::shared_ptr<const policy::PredictionTable>>;

/// Builds (or takes from `cache`) the table of every prefetch:CHANNEL policy in `policies`.
inline void attach_predictions(Scenario& s, const ScenarioBase& b, const std::vector<std::string>& policies,
                               PredictionCache* cache = nullptr) {
  s.channels.clear();
  for (const auto& c : b.trace->meta().channels) s.channels.push_back(c.name);
  for (const auto& p : policies) {
    for (const std::string& channel : policy_channels(p, s.channels)) {
      if (s.predictions.contains(channel)) continue;
      std::shared_ptr<const policy::PredictionTable> t;
      const auto key = std::make_pair(s.workload.get(), channel);
      if (cache != nullptr && cache->contains(key)) {
        t = cache->at(key);
      } else {
        std::uint32_t c = 0;
        try {
          c = b.trace->channel_index(channel);
        } catch (const ConfigError& e) {
          throw ConfigError(s.opt.trace, "policies", p, e.reason());
        }
        policy::PredictionOptions po;
        po.name = channel;
        po.max_candidates = b.trace->meta().channels[c].max_candidates;
        po.top = s.opt.predict_top == 0 ? s.model.shape.top_k : s.opt.predict_top;
        t = std::make_shared<const policy::PredictionTable>(policy::build_predictions(*b.trace, c, *s.workload, po));
        if (cache != nullptr) (*cache)[key] = t;
      }
      s.predictions[channel] = std::move(t);
    }
  }
}

/// The policies compare runs by default: the baselines, the oracle, and prefetch:C for every
/// channel C of the trace; with --gamma, only the channels whose predictions are all per token
/// (they follow their tokens into the re-cut windows; whole-step ones cannot).
inline std::vector<std::string> default_policies(const ScenarioBase& b, const ScenarioOptions& o) {
  std::vector<std::string> out;
  for (auto n : policy_names()) out.emplace_back(n);
  const auto& channels = b.trace->meta().channels;
  for (std::uint32_t c = 0; c < channels.size(); ++c) {
    bool per_token = true;
    for (std::uint64_t i = 0; o.gamma > 0 && per_token && i < b.trace->prediction_count(c); ++i) {
      per_token = b.trace->prediction(c, i).token >= 0;
    }
    if (per_token) out.push_back(std::string(kPrefetchPrefix) + channels[c].name);
  }
  return out;
}

inline sim::SimOptions sim_options(const Scenario& s) {
  sim::SimOptions o;
  o.budget = s.budget;
  o.check_invariants = false;
  o.cpu_workers = s.opt.cpu_workers;
  o.compute_ahead = s.opt.compute_ahead;
  return o;
}

/// Replays policy `name` on scenario `s` (its predictions attached when it is prefetch:CHANNEL).
/// What the policy called `name` takes from scenario `s` (its tables, predictor costs, options):
/// the same for the simulator and for moesched-replay's GPU run.
inline PolicyInputs policy_inputs(const Scenario& s, const std::string& name) {
  PolicyInputs in;
  const std::string_view channel = prefetch_channel(name);
  if (!channel.empty()) {
    const auto it = s.predictions.find(channel);
    if (it != s.predictions.end()) in.predictions = it->second.get();
    in.predictor_latency = predictor_latency(s.opt, *s.cost, channel);
    in.predictor_where = predictor_where(s.opt, channel);
    in.prefetch_depth = s.opt.prefetch_depth;
    in.lookahead = s.opt.lookahead;
  }
  if (parse_composed(name)) {
    for (const std::string& c : policy_channels(name, s.channels)) {
      const auto it = s.predictions.find(c);
      if (it == s.predictions.end()) continue;
      in.tables.push_back({it->second.get(), predictor_latency(s.opt, *s.cost, c), predictor_where(s.opt, c)});
    }
    in.training = s.training.get();
  }
  if (name.starts_with("predict:") || name == "moe-infinity") {
    in.prefetch_depth = s.opt.prefetch_depth;
    in.lookahead = s.opt.lookahead;
    in.predict_top = s.opt.predict_top;
    in.horizon = s.opt.horizon;
    in.training = s.training.get();
  }
  return in;
}

inline runtime::RunMetrics run_scenario_policy(const Scenario& s, const std::string& name, const sim::SimOptions& o) {
  return run_policy(name, *s.workload, *s.cost, o, policy_inputs(s, name));
}

// ---------------------------------------------------------------------------------------------
// Output

inline double ms(Nanoseconds t) { return to_ms(t); }

inline Json scenario_json(const Scenario& s) {
  const auto& o = s.opt;
  Json j;
  j["trace"] = o.trace;
  j["model"] = s.model.name;
  j["dtype"] = std::string(dtype_name(s.model.dtype));
  j["gpu"] = s.gpu.name;
  j["gpu_memory_gb"] = s.gpu.memory.gigabytes();
  j["cache_gb"] = s.budget.gigabytes();
  j["cache_experts"] = std::min<std::uint64_t>(s.budget.count / s.model.expert_bytes().count, s.model.shape.total_experts());
  j["total_experts"] = s.model.shape.total_experts();
  j["expert_mb"] = s.model.expert_bytes().megabytes();
  j["expert_copy_us"] = to_us(s.cost->expert_copy_time());
  j["bandwidth_gbps"] = s.gpu.h2d.asymptotic_bandwidth().gb_per_s();
  j["profile"] = o.profile.empty() ? Json(nullptr) : Json(o.profile);
  if (s.measured) {
    Json fits = Json::array();
    for (const auto& f : s.measured->fits) {
      fits.push_back({{"item", f.item}, {"samples", f.samples}, {"rms_relative_error", f.rms_relative_error},
                      {"max_relative_error", f.max_relative_error}, {"formula", f.terms}});
    }
    j["profile_fits"] = fits;
  }
  j["chunks"] = o.chunks;
  j["compute_ahead"] = o.compute_ahead;
  j["d2h_share"] = o.d2h_share;
  j["gamma"] = o.gamma;
  j["acceptance"] = o.gamma > 0 ? Json(per_token(o)) : Json(nullptr);
  j["acceptance_rate"] = o.gamma > 0 ? Json(acceptance_rate_of(per_token(o), o.gamma)) : Json(nullptr);
  j["rejected_routing"] = o.gamma > 0 ? Json(o.rejected_routing) : Json(nullptr);
  j["batch"] = o.batch;
  j["seed"] = o.seed;
  j["context_tokens"] = o.context;
  j["draft_resident_gb"] = s.has_draft ? s.cost->draft_bytes().gigabytes() : 0.0;
  j["passes"] = s.workload->pass_count();
  j["requests"] = s.workload->request_count();
  j["decode_tokens"] = s.workload->decode_tokens();
  j["activations"] = s.workload->activations();
  j["max_layer_union"] = s.workload->max_layer_union();
  return j;
}

inline Json metrics_json(const runtime::RunMetrics& m, const sim::LowerBound& lb, bool layers) {
  Json j;
  j["policy"] = m.policy;
  j["tpot_ms"] = {{"mean", m.tpot_ms.mean}, {"p50", m.tpot_ms.p50}, {"p99", m.tpot_ms.p99}};
  j["ratio_to_bound"] = lb.tpot_ms > 0 ? m.tpot_ms.mean / lb.tpot_ms : 0.0;
  j["ttft_ms"] = {{"mean", m.ttft_ms.mean}, {"p50", m.ttft_ms.p50}, {"p99", m.ttft_ms.p99}};
  j["tokens_per_s"] = m.tokens_per_s;
  j["decode_tokens"] = m.decode_tokens;
  j["total_ms"] = ms(m.total_time);
  j["prefill_ms"] = ms(m.prefill_time);
  j["decode_ms"] = ms(m.decode_time);
  j["compute_busy_ms"] = ms(m.compute_busy);
  j["stall_ms"] = ms(m.stall);
  j["decode_stall_ms"] = ms(m.decode_stall);
  j["stall_ms_per_token"] = m.decode_tokens == 0 ? 0.0 : ms(m.decode_stall) / static_cast<double>(m.decode_tokens);
  j["link_busy_ms"] = ms(m.link_busy);
  j["link_busy_share"] = m.link_busy_share;
  j["bytes_copied"] = m.bytes_copied.count;
  j["experts_copied"] = m.experts_copied;
  j["uses"] = m.uses;
  j["hit_rate"] = m.hit_rate();
  j["cache_hits"] = m.cache_hits;
  j["prefetch_hits"] = m.prefetch_hits;
  j["late"] = m.late;
  j["misses"] = m.misses;
  j["prefetch"] = {{"copies", m.prefetch_copies},        {"used", m.prefetch_used},
                   {"precision", m.prefetch_precision()}, {"recall", m.prefetch_recall()},
                   {"goodpred", m.goodpred()}};
  j["evictions"] = m.evictions;
  if (m.cpu_jobs > 0 || m.gpu_jobs > 0) {
    j["predictor"] = {{"jobs", m.cpu_jobs},
                      {"busy_ms", ms(m.cpu_busy)},
                      {"wait_ms", ms(m.cpu_wait)},
                      {"gpu_jobs", m.gpu_jobs},
                      {"gpu_busy_ms", ms(m.gpu_job_busy)},
                      {"late", m.predictions_late}};
  }
  j["wasted_bytes"] = m.wasted_bytes.count;
  j["peak_expert_bytes"] = m.peak_expert_memory.count;
  j["budget_bytes"] = m.budget.count;
  if (layers) {
    Json ls = Json::array();
    for (std::size_t l = 0; l < m.layers.size(); ++l) {
      const auto& x = m.layers[l];
      ls.push_back({{"layer", l},
                    {"stall_ms", ms(x.stall)},
                    {"uses", x.uses},
                    {"cache_hits", x.cache_hits},
                    {"prefetch_hits", x.prefetch_hits},
                    {"late", x.late},
                    {"misses", x.misses},
                    {"hit_rate", x.uses == 0 ? 0.0 : static_cast<double>(x.cache_hits + x.prefetch_hits) /
                                                         static_cast<double>(x.uses)}});
    }
    j["layers"] = std::move(ls);
  }
  return j;
}

inline Json bound_json(const sim::LowerBound& lb) {
  return {{"policy", "lower-bound"},
          {"tpot_ms", {{"mean", lb.tpot_ms}}},
          {"ratio_to_bound", 1.0},
          {"compute_only_tpot_ms", lb.compute_tpot_ms},
          {"forced_copies", lb.forced_copies},
          {"derivation", "ARCHITECTURE.md#lower-bound"}};
}

/// Bytes copied per byte of stall removed, against on-demand (stall converted to bytes at the
/// link's asymptotic rate); null when on-demand is not in the run or nothing was removed.
inline Json copy_cost(const runtime::RunMetrics& m, const runtime::RunMetrics* base, double link_bytes_per_ns) {
  if (base == nullptr) return nullptr;
  const double avoided = static_cast<double>((base->decode_stall - m.decode_stall).count());
  if (avoided <= 0.0) return nullptr;
  return static_cast<double>(m.bytes_copied.count) / (avoided * link_bytes_per_ns);
}

inline std::string fixed(double v, int digits) { return fmt::format("{:.{}f}", v, digits); }

inline std::string compare_table(const Scenario& s, const std::vector<runtime::RunMetrics>& runs, const sim::LowerBound& lb) {
  TextTable t({"policy", "TPOT ms", "p50", "p99", "x bound", "tok/s", "TTFT ms", "stall ms/tok", "hit %",
               "link %", "GB copied", "wasted GB"});
  for (const auto& m : runs) {
    const double per_tok = m.decode_tokens == 0 ? 0.0 : ms(m.decode_stall) / static_cast<double>(m.decode_tokens);
    t.add({m.policy, fixed(m.tpot_ms.mean, 2), fixed(m.tpot_ms.p50, 2), fixed(m.tpot_ms.p99, 2),
           fixed(lb.tpot_ms > 0 ? m.tpot_ms.mean / lb.tpot_ms : 0.0, 2), fixed(m.tokens_per_s, 1),
           fixed(m.ttft_ms.mean, 1), fixed(per_tok, 2), fixed(100.0 * m.hit_rate(), 1),
           fixed(100.0 * m.link_busy_share, 1), fixed(m.bytes_copied.gigabytes(), 2),
           fixed(m.wasted_bytes.gigabytes(), 2)});
  }
  t.add({"lower-bound", fixed(lb.tpot_ms, 2), "", "", "1.00", "", "", "", "", "", "", ""});
  const auto& o = s.opt;
  std::string head = fmt::format(
      "{} on {} ({}{}), trace {}\n"
      "expert cache {:.2f} GB = {} of {} experts ({:.1f} MB each, copy {:.0f} us at {:.1f} GB/s{}); "
      "{} requests, batch {}, {} decode tokens{}\n"
      "compute-only TPOT {:.2f} ms; the bound adds {} copies no schedule avoids (ARCHITECTURE.md, lower bound)\n\n",
      s.model.name, s.gpu.name, s.gpu.display_name, o.profile.empty() ? std::string() : "; measured: " + o.profile,
      o.trace, s.budget.gigabytes(),
      std::min<std::uint64_t>(s.budget.count / s.model.expert_bytes().count, s.model.shape.total_experts()),
      s.model.shape.total_experts(), s.model.expert_bytes().megabytes(), to_us(s.cost->expert_copy_time()),
      s.gpu.h2d.asymptotic_bandwidth().gb_per_s(), o.chunks > 1 ? fmt::format(", {} chunks", o.chunks) : "",
      s.workload->request_count(), o.batch, s.workload->decode_tokens(),
      s.has_draft ? (o.gamma > 0 ? fmt::format(", SD gamma {} acceptance {:.3f} per draft ({:.1f}% of drafts), "
                                               "rejected drafts routed as {}",
                                               o.gamma, per_token(o), 100.0 * acceptance_rate_of(per_token(o), o.gamma),
                                               o.rejected_routing)
                                 : std::string(", SD as recorded"))
                  : "",
      lb.compute_tpot_ms, lb.forced_copies);
  return head + t.render();
}

inline std::string layer_table(const runtime::RunMetrics& m) {
  TextTable t({"layer", "uses", "hit %", "prefetch hits", "late", "misses", "stall ms"});
  for (std::size_t l = 0; l < m.layers.size(); ++l) {
    const auto& x = m.layers[l];
    t.add({std::to_string(l), std::to_string(x.uses),
           fixed(x.uses == 0 ? 0.0 : 100.0 * static_cast<double>(x.cache_hits + x.prefetch_hits) / static_cast<double>(x.uses), 1),
           std::to_string(x.prefetch_hits), std::to_string(x.late), std::to_string(x.misses), fixed(ms(x.stall), 3)});
  }
  return t.render();
}

// ---------------------------------------------------------------------------------------------
// Parallel execution with progress

/// Runs `n` tasks on `jobs` threads; task i writes only its own result slot, so the output is
/// the same for any thread count. Progress goes to stderr when it is a terminal (or `force`).
template <class Fn>
void run_parallel(std::size_t n, unsigned jobs, const std::string& what, bool force_progress, Fn&& fn) {
  jobs = std::max(1U, std::min<unsigned>(jobs, static_cast<unsigned>(std::max<std::size_t>(n, 1))));
  const bool tty = isatty(2) != 0;
  const bool progress = force_progress || tty;
  std::atomic<std::size_t> next{0};
  std::atomic<std::size_t> done{0};
  std::mutex err_mutex;
  std::exception_ptr error;
  std::mutex print_mutex;
  auto report = [&](std::size_t d) {
    if (!progress) return;
    std::lock_guard<std::mutex> lock(print_mutex);
    const int width = 30;
    const auto filled = static_cast<int>(static_cast<double>(d) / static_cast<double>(n) * width);
    std::fprintf(stderr, "%s%s [%s%s] %zu/%zu%s", tty ? "\r" : "", what.c_str(), std::string(static_cast<std::size_t>(filled), '#').c_str(),
                 std::string(static_cast<std::size_t>(width - filled), '.').c_str(), d, n, tty ? "" : "\n");
    if (tty && d == n) std::fputc('\n', stderr);
  };
  auto worker = [&] {
    for (;;) {
      const std::size_t i = next.fetch_add(1);
      if (i >= n) return;
      try {
        fn(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(err_mutex);
        if (!error) error = std::current_exception();
        next.store(n);
        return;
      }
      report(done.fetch_add(1) + 1);
    }
  };
  std::vector<std::thread> pool;
  for (unsigned t = 1; t < jobs; ++t) pool.emplace_back(worker);
  worker();
  for (auto& th : pool) th.join();
  if (error) std::rethrow_exception(error);
}

inline unsigned default_jobs() { return std::max(1U, std::thread::hardware_concurrency()); }

}  // namespace moesched::tools
