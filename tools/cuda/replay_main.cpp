// moesched-replay: replays a routing trace on the GPU (moesched::cuda::CudaBackend) under one of
// the library's policies, with the model preset's real shapes in bf16, and reports the same JSON
// metrics as moesched-sim beside the simulator's prediction of the same run.
//
//   trace + presets --> Workload --> LayerDriver --> CudaBackend (copies, cuBLAS GEMMs, events)
//                                        |                \--> metrics (real time)
//                                        \--> sim::replay of the same scenario --> sim_tpot_ms
//
//   moesched-replay --trace traces/real/mix-prose-sd4.trace.safetensors --policy lru --cache-gb 4 --json out.json
//
// Exit codes: 0 ok; 1 a CUDA or policy failure at run time (the message names the call); 2 bad
// input; 4 out of memory; 70 a bug (tools/common/main_guard.hpp).
#include "../../sim/src/sim_commands.hpp"

#include <moesched/cuda/backend.cuh>
#include <moesched/runtime/driver.hpp>
#include <moesched/sim/lower_bound.hpp>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace moesched::tools {
namespace {

struct ReplayOptions {
  std::string policy = "lru";
  std::string json;
  std::uint32_t host_experts = 0;
  std::uint32_t copy_window = 2;
  bool verify = false;
  int device = 0;
  std::string copy_submit = "automatic";
  std::uint64_t copy_piece_bytes = 0;
  bool graphs = true;
  std::uint32_t wait_spin_us = 50;
};


const char* kind_name(runtime::ComputeKind k) {
  switch (k) {
    case runtime::ComputeKind::draft_step: return "draft_step";
    case runtime::ComputeKind::dense: return "dense";
    case runtime::ComputeKind::expert: return "expert";
    case runtime::ComputeKind::head: return "head";
  }
  return "?";
}

/// The cost model's device time for an expert order of `tokens` (the measured profile under
/// --profile, else the roofline), beside the run's own: 0 for the other kinds (their time depends on
/// the pass's context and members, not on the tokens alone).
double model_ns(const cuda::CudaBackend::SpanRow& row, const sim::CostModel& cost) {
  return row.kind == runtime::ComputeKind::expert ? static_cast<double>(cost.expert_time(row.tokens).count()) : 0.0;
}

/// The compute orders' device time as this run gave it (CudaBackend::span_stats()): the spans of
/// orders queued behind another (their kernels' time alone) and of orders launched onto an idle
/// stream (launch included).
std::string span_table(const std::vector<cuda::CudaBackend::SpanRow>& rows, const sim::CostModel& cost) {
  std::string out = "device time in this run, per order kind and tokens (queued: kernels alone; launched onto an idle "
                    "stream: launch included; model: the cost model's expert time):\n";
  for (const auto& row : rows) {
    const double m = model_ns(row, cost);
    out += fmt::format("  {:<10} x{:<3} queued {:>9.2f} us ({:>6})  launched {:>9.2f} us ({:>6}){}\n", kind_name(row.kind),
                       row.tokens, row.stats.queued_mean_ns() / 1e3, row.stats.queued, row.stats.launched_mean_ns() / 1e3,
                       row.stats.launched, m > 0.0 ? fmt::format("  model {:.2f} us", m / 1e3) : std::string());
  }
  return out;
}

Json span_json(const std::vector<cuda::CudaBackend::SpanRow>& rows, const sim::CostModel& cost) {
  Json out = Json::array();
  for (const auto& row : rows) {
    Json j = {{"kind", kind_name(row.kind)},
              {"tokens", row.tokens},
              {"queued", row.stats.queued},
              {"queued_mean_ns", row.stats.queued_mean_ns()},
              {"launched", row.stats.launched},
              {"launched_mean_ns", row.stats.launched_mean_ns()}};
    if (const double m = model_ns(row, cost); m > 0.0) j["model_ns"] = m;
    out.push_back(std::move(j));
  }
  return out;
}

int replay(const ScenarioOptions& o, const ReplayOptions& r) {
  if (!r.json.empty()) check_output_path(r.json, "--json");
  check_policy_name(r.policy);
  const ScenarioBase b = open_base(o);
  Scenario s = prepare(b, build_workload_for(b, o), o);
  attach_predictions(s, b, {r.policy});
  const Workload& w = *s.workload;
  const std::uint32_t slots = sim::slots_for(s.budget, *s.cost, w.shape());

  std::uint32_t max_tokens = 1;
  bool drafts = false;  // SD passes: the draft step's graphs are captured too
  for (const auto& p : w.passes()) {
    max_tokens = std::max({max_tokens, p.tokens, p.member_count});
    drafts = drafts || p.draft_len > 0;
  }
  auto cfg = cuda::CudaBackend::from_model(s.model, slots, max_tokens);
  // A published policy's chunks= decides the copy engine's chunks, as it does in the simulator.
  const std::uint32_t policy_chunks_wanted = policy_chunks(r.policy, *s.cost);
  cfg.chunks = policy_chunks_wanted != 0 ? policy_chunks_wanted : s.opt.chunks;  // --chunks 0 resolved by prepare()
  cfg.cpu_workers = o.cpu_workers;
  cfg.copy_window = r.copy_window;
  cfg.host_experts = r.host_experts;
  cfg.verify = r.verify;
  cfg.device = r.device;
  if (!cuda::parse_copy_submit(r.copy_submit, cfg.copy_submit)) {
    throw ConfigError("", "copy_submit", r.copy_submit, "must be automatic, batched or loop");
  }
  if (cfg.copy_submit == cuda::CopySubmit::batched && !cuda::kHasBatchedCopy) {
    throw ConfigError("", "copy_submit", r.copy_submit, "this CUDA runtime has no cudaMemcpyBatchAsync (CUDA 12.8+)");
  }
  cfg.copy_piece_bytes = r.copy_piece_bytes;
  cfg.graphs = r.graphs;
  cfg.wait_spin_us = r.wait_spin_us;
  const auto req = cuda::CudaBackend::requirements(cfg);

  cudaError_t st = cudaSetDevice(r.device);
  void* device = nullptr;
  if (st == cudaSuccess) st = cudaMalloc(&device, req.device_bytes);
  if (st != cudaSuccess) {
    std::fprintf(stderr, "moesched-replay: error: cudaMalloc of %.2f GB: %s\n", static_cast<double>(req.device_bytes) / 1e9,
                 cuda::describe(st).c_str());
    return 1;
  }
  std::unique_ptr<void, decltype(&cudaFree)> device_owner(device, &cudaFree);
  std::unique_ptr<std::byte[]> store(new std::byte[req.host_bytes]);
  if (r.verify) {  // distinct bytes per expert, so that a wrong slot is caught
    for (std::size_t i = 0; i < req.host_bytes; ++i) store[i] = static_cast<std::byte>((i * 2654435761ULL) >> 24U);
  } else {
    cuda::fill_host_random_bf16(store.get(), req.host_bytes);  // touched once: pinning and copies see real pages
  }

  runtime::RunMetrics real;
  bool batched = false;
  std::string fault;
  runtime::Status err = runtime::Status::success();
  std::uint64_t mismatches = 0;
  std::uint64_t checked = 0;
  cuda::CudaBackend::HostStats host;
  std::vector<cuda::CudaBackend::SpanRow> spans;
  std::size_t graphs = 0;
  double graph_s = 0.0;
  {
    cuda::CudaBackend backend(cfg, device, req.device_bytes, std::span<const std::byte>(store.get(), req.host_bytes));
    if (auto is = backend.initialize(); !is) {
      std::fprintf(stderr, "moesched-replay: error: %s\n", is.describe().c_str());
      return 1;
    }
    batched = backend.batched_copies();
    // Every order's graph captured before the timed run (none is captured inside it).
    const auto g0 = std::chrono::steady_clock::now();
    if (auto gs = backend.prepare_graphs(max_tokens, drafts); !gs) {
      std::fprintf(stderr, "moesched-replay: error: %s\n", gs.describe().c_str());
      return 1;
    }
    graph_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - g0).count();
    graphs = backend.graphs_built();
    const PolicyInputs in = policy_inputs(s, r.policy);
    const PolicyRun ran = visit_policy(r.policy, w, *s.cost, in, [&](auto& pol, const sim::CostModel&) {
      runtime::LayerDriver<cuda::CudaBackend> driver(w, backend, {.check_invariants = false, .compute_ahead = o.compute_ahead});
      backend.reset_host_stats();
      err = driver.run(pol);
      host = backend.host_stats();
      spans = backend.span_stats();
      real = driver.metrics();
      if (!err) fault = driver.fault_text();
    });
    label_run(ran, in, real);
    if (err && r.verify) err = backend.verify_counts(mismatches, checked);
    if (auto be = backend.error(); !be) err = be;
    if (auto sh = backend.shutdown(); !sh && err) err = sh;
  }
  if (!err) {
    std::fprintf(stderr, "moesched-replay: error: %s%s%s\n", err.describe().c_str(), fault.empty() ? "" : ": ", fault.c_str());
    return 1;
  }
  if (r.verify && mismatches != 0) {
    std::fprintf(stderr, "moesched-replay: error: %llu of %llu expert kernels read a slot without their expert\n",
                 static_cast<unsigned long long>(mismatches), static_cast<unsigned long long>(checked));
    return 1;
  }

  // The simulator's prediction of the same scenario and policy (roofline presets, or the measured
  // profile with --profile).
  // Its driver keeps as many kernels submitted ahead as the real one (--compute-ahead): with a
  // measured profile's host costs, how far the driver runs ahead decides how much launch delay hides.
  runtime::RunMetrics simulated = run_scenario_policy(s, r.policy, sim_options(s));
  const sim::LowerBound lb = sim::tpot_lower_bound(w, *s.cost, slots);
  cudaDeviceProp prop{};
  const std::string device_name = cudaGetDeviceProperties(&prop, r.device) == cudaSuccess ? prop.name : "?";

  if (r.json != "-") {
    runtime::RunMetrics shown = simulated;
    shown.policy = simulated.policy + " (sim)";
    std::fputs(compare_table(s, {real, shown}, lb).c_str(), stdout);
    std::fprintf(stdout, "device: %s; %u slots (%.2f GB), %u chunks (%s copies), compute_ahead %u%s\n", device_name.c_str(),
                 slots, (cfg.expert_bytes * slots).gigabytes(), cfg.chunks, batched ? "batched" : "looped", o.compute_ahead,
                 r.verify ? fmt::format(", {} expert kernels verified", checked).c_str() : "");
    std::fprintf(stdout, "compute orders: %s\n",
                 cfg.graphs ? fmt::format("CUDA graphs ({} captured in {:.2f} s before the run)", graphs, graph_s).c_str()
                            : "kernels launched one by one (--graphs false)");
    std::fprintf(stdout, "driver thread: %.2f us per completion beside submit_compute (%llu completions), %.1f ms "
                         "submitting; notify %.1f us where it waited (polling %u us before blocking)\n",
                 host.handle_ns() / 1e3, static_cast<unsigned long long>(host.completions),
                 static_cast<double>(host.submitting.count()) / 1e6, host.notify_ns() / 1e3, cfg.wait_spin_us);
    std::fputs(span_table(spans, *s.cost).c_str(), stdout);
  }
  if (!r.json.empty()) {
    Json rec = metrics_json(real, lb, true);
    rec["backend"] = "cuda";
    rec["sim_tpot_ms"] = simulated.tpot_ms.mean;
    rec["sim_relative_error"] = real.tpot_ms.mean > 0 ? (simulated.tpot_ms.mean - real.tpot_ms.mean) / real.tpot_ms.mean : 0.0;
    // The driver thread's time as the backend saw it (CudaBackend::HostStats): what the profile's
    // host costs (submit, handle, notify) model, measured in this very run.
    rec["device_spans"] = span_json(spans, *s.cost);
    rec["driver_thread"] = {{"completions", host.completions},
                            {"busy_ms", static_cast<double>(host.busy.count()) / 1e6},
                            {"submitting_ms", static_cast<double>(host.submitting.count()) / 1e6},
                            {"handle_ns", host.handle_ns()},
                            {"waited", host.waited},
                            {"notify_ns", host.notify_ns()}};
    Json scenario = scenario_json(s);
    scenario["device"] = device_name;
    scenario["host_experts"] = moesched::cuda::CudaBackend::host_expert_count(cfg);
    scenario["copy_submit"] = batched ? "batched" : "loop";
    scenario["copy_chunks"] = cfg.chunks;
    scenario["copy_piece_bytes"] = cfg.copy_piece_bytes;
    scenario["graphs"] = cfg.graphs;
    scenario["graphs_captured"] = graphs;
    scenario["wait_spin_us"] = cfg.wait_spin_us;
    Json records = Json::array();
    records.push_back(std::move(rec));
    records.push_back(bound_json(lb));
    const Json doc = {{"tool", "moesched-replay"}, {"scenario", std::move(scenario)}, {"records", std::move(records)}};
    write_text_file(r.json, doc.dump(2) + "\n");
  }
  return 0;
}

}  // namespace
}  // namespace moesched::tools

int main(int argc, char** argv) {
  using namespace moesched::tools;
  CLI::App app{"moesched-replay: replay a routing trace on the GPU under a policy (real copies, real GEMMs)"};
  ScenarioOptions o;
  o.gpu = "h200";
  o.chunks = 0;  // auto: 3 for large experts, 1 where splitting costs more than 1/50 of a copy
  o.compute_ahead = 8;
  ReplayOptions r;
  add_scenario_options(app, o, false);
  app.add_option("--policy", r.policy,
                 "any policy moesched-sim runs (`moesched-sim compare --help` lists them): on-demand, lru, lfu, static, "
                 "oracle, prefetch:CHANNEL, predict:popularity, predict:transition, moe-infinity, and the published "
                 "mixtral-offloading, promoe, spmoe, moesched with their name:key=value options (a chunks= option "
                 "sets the copy engine's chunks)")->capture_default_str();
  app.add_option("--json", r.json, "write the metrics as JSON here ('-' = only the JSON, on stdout)");
  app.add_option("--copy-window", r.copy_window, "chunks on the copy stream at once, 1..16")->capture_default_str();
  app.add_option("--host-experts", r.host_experts,
                 "hold only N experts in host memory and alias the rest onto them (0 = all)")
      ->capture_default_str();
  app.add_option("--copy-submit", r.copy_submit,
                 "how a chunk's copies go out: automatic (batched where the runtime has cudaMemcpyBatchAsync), batched "
                 "or loop (cudaMemcpyAsync each)")
      ->capture_default_str();
  app.add_option("--copy-piece-bytes", r.copy_piece_bytes,
                 "cut each chunk into copies of at most this many bytes, as an engine with separate tensors (0 = one)")
      ->capture_default_str();
  app.add_flag("--verify", r.verify, "checksum every expert kernel's slot on the GPU (slower)");
  app.add_option("--graphs", r.graphs,
                 "submit each compute order as one CUDA graph launch (captured before the run): true or false")
      ->capture_default_str();
  app.add_option("--wait-spin-us", r.wait_spin_us,
                 "the driver thread polls for a completion this many microseconds before it blocks (0..100000; 0 = "
                 "block at once): a completion within the spin is seen without a thread wake-up; profile with the same")
      ->capture_default_str()
      ->check(CLI::Range(0U, moesched::cuda::CudaBackend::kMaxWaitSpinUs));
  app.add_option("--device", r.device, "CUDA device ordinal")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  return guarded_main("moesched-replay", [&] { return replay(o, r); });
}
