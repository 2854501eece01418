// moesched-sim: replay a routing trace on a simulated GPU and compare offloading policies.
//
//   moesched-sim compare --trace traces/synthetic/mixtral-sd4.trace.safetensors --gpu rtx4090
//   moesched-sim compare --trace run.trace.safetensors --model mixtral-8x7b --gpu rtx3090
//       --cache-gb 8 --policies lru,oracle --json out.json
//   moesched-sim run --trace run.trace.safetensors --policy lru --timeline lru.json --layers
//   moesched-sim sweep --trace run.trace.safetensors --cache-gb 4,8,12 --gamma 0,4 --batch 1,4
//       --csv sweep.csv --json sweep.json --plot sweep.svg
//
// Exit codes: 0 success, 2 bad input or options (the message names the file, field and value).
#include "sim_commands.hpp"

#include <moesched/runtime/timeline.hpp>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <set>

using namespace moesched;
using namespace moesched::tools;

namespace {

std::vector<std::string> split_policies(const std::vector<std::string>& in) {
  std::vector<std::string> out;
  for (const auto& item : in) {
    std::stringstream ss(item);
    std::string name;
    while (std::getline(ss, name, ',')) {
      if (name.empty()) continue;
      check_policy_name(name);
      if (std::find(out.begin(), out.end(), name) == out.end()) out.push_back(name);
    }
  }
  if (out.empty()) throw ConfigError("", "policies", "\"\"", "name at least one policy");
  return out;
}

std::string policies_help(const std::string& head) {
  std::string s = head;
  for (auto n : policy_names()) s += "\n  " + std::string(n) + ": " + std::string(policy_summary(n));
  for (auto n : predictive_policy_names()) s += "\n  " + std::string(n) + ": " + std::string(policy_summary(n));
  for (auto n : reference_policy_names()) s += "\n  " + std::string(n) + ": " + std::string(policy_summary(n));
  s += "\n  " + std::string(policy_summary("prefetch"));
  return s;
}

struct CompareResult {
  std::vector<runtime::RunMetrics> runs;
  sim::LowerBound bound;
};

CompareResult simulate(const Scenario& s, const std::vector<std::string>& policies, unsigned jobs, bool progress,
                       runtime::Timeline* timeline, std::uint64_t timeline_passes) {
  CompareResult r;
  r.runs.resize(policies.size());
  const std::uint32_t slots = static_cast<std::uint32_t>(
      std::min<std::uint64_t>(s.budget.count / s.model.expert_bytes().count, s.model.shape.total_experts()));
  run_parallel(policies.size() + 1, jobs, "simulating", progress, [&](std::size_t i) {
    if (i == policies.size()) {
      r.bound = sim::tpot_lower_bound(*s.workload, *s.cost, slots);
      return;
    }
    sim::SimOptions o = sim_options(s);
    o.timeline = timeline;
    o.timeline_passes = timeline_passes;
    r.runs[i] = run_scenario_policy(s, policies[i], o);
  });
  return r;
}

Json compare_json(const Scenario& s, const CompareResult& r, bool layers) {
  const runtime::RunMetrics* base = nullptr;
  for (const auto& m : r.runs) {
    if (m.policy == "on-demand") base = &m;
  }
  const double rate = s.gpu.h2d.asymptotic_bandwidth().value / 1e9;  // bytes per ns
  Json records = Json::array();
  for (const auto& m : r.runs) {
    auto j = metrics_json(m, r.bound, layers);
    j["copy_bytes_per_stall_byte_avoided"] = copy_cost(m, base, rate);
    records.push_back(std::move(j));
  }
  records.push_back(bound_json(r.bound));
  return {{"tool", "moesched-sim"}, {"scenario", scenario_json(s)}, {"records", std::move(records)}};
}

struct Prepared {
  Scenario scenario;
  std::vector<std::string> policies;
};

/// Opens the trace, builds the workload and the predictions; empty `policy_args` = the defaults.
Prepared prepare_single(const ScenarioOptions& o, const std::vector<std::string>& policy_args) {
  auto policies = policy_args.empty() ? std::vector<std::string>{} : split_policies(policy_args);
  const ScenarioBase b = open_base(o);
  if (policies.empty()) policies = default_policies(b, o);
  Prepared p{prepare(b, build_workload_for(b, o), o), policies};
  attach_predictions(p.scenario, b, p.policies);
  return p;
}

int cmd_compare(const ScenarioOptions& o, const std::vector<std::string>& policy_args, const std::string& json,
                unsigned jobs, bool progress) {
  if (!json.empty()) check_output_path(json, "--json");
  const auto [s, policies] = prepare_single(o, policy_args);
  const auto r = simulate(s, policies, jobs, progress, nullptr, 0);
  if (json != "-") std::fputs(compare_table(s, r.runs, r.bound).c_str(), stdout);
  if (!json.empty()) write_text_file(json, compare_json(s, r, false).dump(2) + "\n");
  return 0;
}

int cmd_run(const ScenarioOptions& o, const std::string& policy, const std::string& json, const std::string& timeline,
            std::uint64_t timeline_passes, bool layers) {
  if (!json.empty()) check_output_path(json, "--json");
  if (!timeline.empty()) check_output_path(timeline, "--timeline");
  const auto [s, policies] = prepare_single(o, {policy});
  runtime::Timeline tl;
  const auto r = simulate(s, policies, 2, false, timeline.empty() ? nullptr : &tl, timeline_passes);
  if (json != "-") {
    std::fputs(compare_table(s, r.runs, r.bound).c_str(), stdout);
    if (layers) std::fputs(("\n" + layer_table(r.runs.front())).c_str(), stdout);
  }
  if (!json.empty()) write_text_file(json, compare_json(s, r, true).dump(2) + "\n");
  if (!timeline.empty()) {
    std::ostringstream os;
    tl.write_chrome_json(os, fmt::format("moesched-sim {} {} {}", policy, s.model.name, s.gpu.name));
    write_text_file(timeline, os.str());
    if (json != "-") {
      std::fprintf(stdout, "\ntimeline of the first %llu passes: %s (open in ui.perfetto.dev or chrome://tracing)\n",
                   static_cast<unsigned long long>(timeline_passes), timeline.c_str());
    }
  }
  return 0;
}

// ---- sweep ----

struct SweepGrid {
  std::vector<double> cache_gb;
  std::vector<double> bandwidth_gbps;
  std::vector<std::uint32_t> gamma{0};
  std::vector<double> acceptance{0.7};
  std::vector<std::uint32_t> batch{1};
};

struct SweepPoint {
  Scenario scenario;
  std::optional<double> bandwidth;  // as given (unset = the preset's curve)
};

std::string find_plot_script() {
  std::error_code ec;
  const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  std::vector<std::filesystem::path> candidates;
  if (!ec) candidates.push_back(exe.parent_path().parent_path() / "share" / "moesched" / "plot_sweep.py");
  candidates.emplace_back(MOESCHED_PLOT_SCRIPT);
  for (const auto& c : candidates) {
    if (std::filesystem::exists(c, ec)) return c.string();
  }
  throw ConfigError("", "plot", "plot_sweep.py", "the plotting script is not installed beside moesched-sim");
}

std::string shell_quote(const std::string& s) {
  std::string o = "'";
  for (char c : s) o += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return o + "'";
}

/// Exit code when --plot is asked for and no Python can import matplotlib (the test skips on it).
constexpr int kExitNoPlotter = 5;

struct NoPlotter : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// The Python that plots: the first of `python3` on PATH, then /usr/bin/python3, that imports
/// matplotlib. Throws NoPlotter listing what was tried.
std::string find_plot_python() {
  std::vector<std::string> candidates;
  if (const char* path = std::getenv("PATH")) {
    std::stringstream ss(path);
    std::string dir;
    while (std::getline(ss, dir, ':')) {
      if (dir.empty()) continue;
      std::error_code ec;
      const auto py = std::filesystem::path(dir) / "python3";
      if (std::filesystem::exists(py, ec)) {
        candidates.push_back(py.string());
        break;
      }
    }
  }
  if (std::find(candidates.begin(), candidates.end(), "/usr/bin/python3") == candidates.end()) {
    candidates.emplace_back("/usr/bin/python3");
  }
  std::string tried;
  for (const auto& py : candidates) {
    std::error_code ec;
    if (!std::filesystem::exists(py, ec)) continue;
    const std::string probe = shell_quote(py) + " -c 'import matplotlib' >/dev/null 2>&1";
    if (std::system(probe.c_str()) == 0) return py;
    tried += (tried.empty() ? "" : ", ") + py;
  }
  throw NoPlotter("--plot needs a Python with matplotlib; none of [" + (tried.empty() ? std::string("no python3 found") : tried) +
                  "] imports it (Debian: apt-get install python3-matplotlib); nothing was simulated");
}

int cmd_sweep(const ScenarioOptions& base_opt, const SweepGrid& grid, const std::vector<std::string>& policy_args,
              const std::string& csv, const std::string& json, const std::string& plot, unsigned jobs, bool progress) {
  const auto policies = split_policies(policy_args);
  if (csv.empty() && json.empty() && plot.empty()) {
    throw ConfigError("", "output", "none", "give --csv, --json and/or --plot");
  }
  if (!csv.empty()) check_output_path(csv, "--csv");
  if (!json.empty()) check_output_path(json, "--json");
  std::string python, plot_script;
  if (!plot.empty()) {
    check_output_path(plot, "--plot");
    plot_script = find_plot_script();
    python = find_plot_python();
  }
  const ScenarioBase b = open_base(base_opt);
  // 1. Every point, validated before any simulation starts.
  std::vector<SweepPoint> points;
  std::map<std::tuple<std::uint32_t, double, std::uint32_t>, std::shared_ptr<const Workload>> workloads;
  PredictionCache tables;
  for (std::uint32_t batch : grid.batch) {
    for (std::uint32_t gamma : grid.gamma) {
      for (double acc : gamma == 0 ? std::vector<double>{0.0} : grid.acceptance) {
        ScenarioOptions o = base_opt;
        o.batch = batch;
        o.gamma = gamma;
        o.acceptance = gamma == 0 ? 0.7 : acc;
        auto& w = workloads[{gamma, acc, batch}];
        if (!w) w = build_workload_for(b, o);
        std::vector<std::optional<double>> bws;
        if (grid.bandwidth_gbps.empty()) bws.emplace_back(std::nullopt);
        for (double bw : grid.bandwidth_gbps) bws.emplace_back(bw);
        for (const auto& bw : bws) {
          o.bandwidth_gbps = bw;
          std::vector<double> caches = grid.cache_gb;
          if (caches.empty()) {  // six budgets from the least that works to all that fits
            o.cache_gb.reset();
            const Scenario full = prepare(b, w, o);
            const double lo = full.model.expert_bytes().gigabytes() * w->max_layer_union();
            const double hi = std::min(full.budget.gigabytes(), full.model.all_expert_bytes().gigabytes());
            for (int i = 0; i < 6; ++i) caches.push_back(lo + (hi - lo) * i / 5.0);
          }
          for (double c : caches) {
            o.cache_gb = c;
            try {
              points.push_back({prepare(b, w, o), bw});
              attach_predictions(points.back().scenario, b, policies, &tables);
            } catch (const ConfigError& e) {
              throw ConfigError(e.source(), e.field(), e.value(),
                                e.reason() + fmt::format(" (sweep point: cache {} GB, batch {}, gamma {}{})", c, batch, gamma,
                                                         bw ? fmt::format(", bandwidth {} GB/s", *bw) : ""));
            }
          }
        }
      }
    }
  }
  // 2. Run every (point, policy) and every point's bound on all cores.
  const std::size_t per = policies.size() + 1;
  std::vector<runtime::RunMetrics> runs(points.size() * per);
  std::vector<sim::LowerBound> bounds(points.size());
  if (progress || isatty(2) != 0) {
    std::fprintf(stderr, "moesched-sim sweep: %zu points x %zu policies on %u threads\n", points.size(), policies.size(),
                 std::min<unsigned>(jobs, static_cast<unsigned>(points.size() * per)));
  }
  run_parallel(points.size() * per, jobs, "sweep", progress, [&](std::size_t i) {
    const Scenario& s = points[i / per].scenario;
    const std::size_t k = i % per;
    if (k == policies.size()) {
      const auto slots = static_cast<std::uint32_t>(
          std::min<std::uint64_t>(s.budget.count / s.model.expert_bytes().count, s.model.shape.total_experts()));
      bounds[i / per] = sim::tpot_lower_bound(*s.workload, *s.cost, slots);
      return;
    }
    runs[i] = run_scenario_policy(s, policies[k], sim_options(s));
  });
  // 3. Output: one row per (point, policy), the bound as policy "lower-bound".
  std::string out_csv =
      "policy,cache_gb,bandwidth_gbps,gamma,acceptance,batch,tpot_ms_mean,tpot_ms_p50,tpot_ms_p99,ttft_ms_mean,"
      "tokens_per_s,stall_ms,hit_rate,link_busy_share,bytes_copied_gb,lower_bound_tpot_ms,ratio_to_bound\n";
  Json rows = Json::array();
  for (std::size_t p = 0; p < points.size(); ++p) {
    const Scenario& s = points[p].scenario;
    const auto& lb = bounds[p];
    const double bw = s.gpu.h2d.asymptotic_bandwidth().gb_per_s();
    const std::string acc = s.opt.gamma > 0 ? fmt::format("{}", s.opt.acceptance) : "";
    for (std::size_t k = 0; k <= policies.size(); ++k) {
      Json j = k < policies.size() ? metrics_json(runs[p * per + k], lb, false) : bound_json(lb);
      const runtime::RunMetrics* m = k < policies.size() ? &runs[p * per + k] : nullptr;
      const std::string name = m ? m->policy : "lower-bound";
      const double tpot = m ? m->tpot_ms.mean : lb.tpot_ms;
      out_csv += fmt::format("{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n", name, s.budget.gigabytes(), bw,
                             s.opt.gamma, acc, s.opt.batch, tpot, m ? m->tpot_ms.p50 : tpot, m ? m->tpot_ms.p99 : tpot,
                             m ? m->ttft_ms.mean : 0.0, m ? m->tokens_per_s : 0.0, m ? ms(m->decode_stall) : 0.0,
                             m ? m->hit_rate() : 0.0, m ? m->link_busy_share : 0.0,
                             m ? m->bytes_copied.gigabytes() : 0.0, lb.tpot_ms, lb.tpot_ms > 0 ? tpot / lb.tpot_ms : 0.0);
      j["point"] = {{"cache_gb", s.budget.gigabytes()},
                    {"bandwidth_gbps", bw},
                    {"gamma", s.opt.gamma},
                    {"acceptance", s.opt.gamma > 0 ? Json(s.opt.acceptance) : Json(nullptr)},
                    {"batch", s.opt.batch}};
      rows.push_back(std::move(j));
    }
  }
  std::string csv_path = csv;
  if (!csv.empty()) write_text_file(csv, out_csv);
  if (!json.empty()) {
    Json doc{{"tool", "moesched-sim sweep"},
                       {"trace", base_opt.trace},
                       {"model", b.model.name},
                       {"gpu", b.gpu.name},
                       {"rows", std::move(rows)}};
    write_text_file(json, doc.dump(2) + "\n");
  }
  if (!plot.empty()) {
    if (csv_path.empty() || csv_path == "-") {
      csv_path = plot + ".csv";
      write_text_file(csv_path, out_csv);
    }
    std::fprintf(stderr, "moesched-sim: plotting with %s (the first Python that imports matplotlib)\n", python.c_str());
    const std::string cmd = shell_quote(python) + " " + shell_quote(plot_script) + " " + shell_quote(csv_path) + " -o " +
                            shell_quote(plot) + " --title " +
                            shell_quote(fmt::format("{} on {}: TPOT against expert cache", b.model.name, b.gpu.name));
    const int rc = std::system(cmd.c_str());
    if (rc != 0) {
      std::fprintf(stderr, "moesched-sim: warning: plotting failed (%s); the CSV and JSON are written\n", cmd.c_str());
      return 1;
    }
  }
  if (csv != "-" && json != "-") {
    std::fprintf(stdout, "%zu points x %zu policies%s%s%s\n", points.size(), policies.size(),
                 csv.empty() ? "" : (", CSV: " + csv).c_str(), json.empty() ? "" : (", JSON: " + json).c_str(),
                 plot.empty() ? "" : (", plot: " + plot).c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"moesched-sim: replay routing traces on a simulated GPU (discrete-event, integer ns) and compare "
               "expert-offloading policies against a provable lower bound. Run a subcommand with --help."};
  app.require_subcommand(1);
  app.get_formatter()->column_width(40);
  app.footer("Exit codes: 0 done; 1 plotting failed (CSV/JSON written); 2 bad input (names the file, field and value); "
             "3 a policy broke the executor's rules; 4 out of memory; 5 --plot without a Python that has matplotlib "
             "(checked before any work); 70 a bug in moesched.");
  unsigned jobs = default_jobs();
  bool progress = false;

  auto* compare = app.add_subcommand("compare", "several policies on one trace, side by side, with the lower bound");
  ScenarioOptions co;
  add_scenario_options(*compare, co, false);
  std::vector<std::string> compare_policies;
  std::string compare_json_path;
  compare->add_option("--policies", compare_policies, policies_help("policies, comma-separated (default: on-demand,lru,lfu,static,oracle and "
                                                      "prefetch:C for each prediction channel C of the trace when steps replay as recorded):"));
  compare->add_option("--json", compare_json_path, "write one record per policy (and the bound) as JSON to FILE ('-' = stdout, no table)");
  compare->add_option("--jobs", jobs, "threads (policies run in parallel)")->capture_default_str();
  compare->add_flag("--progress", progress, "report progress on stderr even when it is not a terminal");

  auto* run = app.add_subcommand("run", "one policy on one trace: metrics, per-layer breakdown, timeline");
  ScenarioOptions ro;
  add_scenario_options(*run, ro, false);
  std::string run_policy = "lru", run_json, run_timeline;
  std::uint64_t timeline_passes = 16;
  bool run_layers = false;
  run->add_option("--policy", run_policy, policies_help("the policy:"))->capture_default_str();
  run->add_option("--json", run_json, "write the metrics (with per-layer detail) as JSON to FILE ('-' = stdout)");
  run->add_option("--timeline", run_timeline, "write a Chrome/Perfetto trace-event JSON timeline to FILE");
  run->add_option("--timeline-passes", timeline_passes, "passes the timeline covers (from the start)")->capture_default_str();
  run->add_flag("--layers", run_layers, "print the per-layer table");

  auto* sweep = app.add_subcommand("sweep", "a grid of configurations x policies on all cores: CSV, JSON, plot");
  ScenarioOptions so;
  add_scenario_options(*sweep, so, true);
  SweepGrid grid;
  std::vector<std::string> sweep_policies{"on-demand,lru,lfu,static,oracle"};
  std::string sweep_csv, sweep_json, sweep_plot;
  sweep->add_option("--cache-gb", grid.cache_gb, "expert cache budgets in GB (default: 6 from the least that works to all that fits)")->delimiter(',');
  sweep->add_option("--bandwidth-gbps", grid.bandwidth_gbps, "host-to-device rates in GB/s (default: the preset's curve)")->delimiter(',');
  sweep->add_option("--gamma", grid.gamma, "SD draft lengths (0 = steps as recorded)")->delimiter(',')->capture_default_str();
  sweep->add_option("--acceptance", grid.acceptance, "SD per-draft-token acceptance probabilities (i.i.d. until the first rejection; compare --acceptance-rate takes a model card's accepted / drafted)")->delimiter(',')->capture_default_str();
  sweep->add_option("--batch", grid.batch, "requests decoding together")->delimiter(',')->capture_default_str();
  sweep->add_option("--policies", sweep_policies, policies_help("policies, comma-separated:"))->capture_default_str();
  sweep->add_option("--csv", sweep_csv, "write one row per (point, policy) as CSV to FILE");
  sweep->add_option("--json", sweep_json, "write one record per (point, policy) as JSON to FILE");
  sweep->add_option("--plot", sweep_plot, "plot TPOT against cache budget per policy to FILE (.png or .svg; needs matplotlib)");
  sweep->add_option("--jobs", jobs, "threads")->capture_default_str();
  sweep->add_flag("--progress", progress, "report progress on stderr even when it is not a terminal");

  CLI11_PARSE(app, argc, argv);
  return guarded_main("moesched-sim", [&] {
    try {
      if (compare->parsed()) return cmd_compare(co, compare_policies, compare_json_path, jobs, progress);
      if (run->parsed()) return cmd_run(ro, run_policy, run_json, run_timeline, timeline_passes, run_layers);
      if (sweep->parsed()) return cmd_sweep(so, grid, sweep_policies, sweep_csv, sweep_json, sweep_plot, jobs, progress);
    } catch (const runtime::PolicyError& e) {
      std::fprintf(stderr, "moesched-sim: policy error: %s\n", e.what());
      return 3;
    } catch (const NoPlotter& e) {
      std::fprintf(stderr, "moesched-sim: %s\n", e.what());
      return kExitNoPlotter;
    }
    return 0;
  });
}
