// moesched-trace: routing traces: import, inspect, validate, cut, combine, analyse, generate, predict.
//
//   moesched-trace info run.trace.safetensors
//   moesched-trace validate traces/*.safetensors
//   moesched-trace stats run.trace.safetensors --json stats.json
//   moesched-trace synth -o big.trace.safetensors --model qwen3-30b-a3b --requests 64
//   moesched-trace import dump.jsonl -o run.trace.safetensors --model mixtral-8x7b
//   moesched-trace import routes.json.gz -o run.trace.safetensors --field request=dataset,problem_id --json report.json
//   moesched-trace slice run.trace.safetensors -o part.trace.safetensors --requests 0-3 --layers 0-7
//   moesched-trace merge a.trace.safetensors b.trace.safetensors -o both.trace.safetensors
//   moesched-trace predict run.trace.safetensors --gates gates.safetensors --channel skip_gate --as cpu --compare skip_gate -o out.trace.safetensors
//
// Exit codes: 0 success, 1 a file is invalid (validate), 2 bad input or options.
#include "output.hpp"
#include "presets_location.hpp"
#include "main_guard.hpp"
#include "table.hpp"
#include "trace_commands.hpp"

#include <moesched/io/trace.hpp>
#include <moesched/trace/stats.hpp>
#include <moesched/trace/synth.hpp>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <cstdio>
#include <string>
#include <vector>

using namespace moesched;

int main(int argc, char** argv) {
  CLI::App app{"moesched-trace: routing traces (format: traces/FORMAT.md). Run a subcommand with --help for its options."};
  app.require_subcommand(1);
  app.get_formatter()->column_width(36);

  auto* info = app.add_subcommand("info", "metadata, counts, tensors and channels of a trace");
  std::string info_file;
  info->add_option("file", info_file, "trace file")->required();

  auto* validate = app.add_subcommand("validate", "check traces completely; exit 1 if any is invalid");
  std::vector<std::string> validate_files;
  validate->add_option("files", validate_files, "trace files")->required();

  auto* stats = app.add_subcommand("stats", "routing statistics: popularity and skew, reuse, reuse distance, "
                                            "next-layer predictability, window unions, channel precision/recall");
  std::string stats_file, stats_json;
  bool stats_layers = false;
  stats->add_option("file", stats_file, "trace file")->required();
  stats->add_option("--json", stats_json, "also write every statistic as JSON to FILE ('-' = stdout, no table)");
  stats->add_flag("--layers", stats_layers, "print the per-layer table too");

  auto* synth = app.add_subcommand("synth", "generate a synthetic trace (deterministic by seed; marked as generated)");
  tools::SynthOptions so;
  tools::add_synth_options(*synth, so);

  auto* import = app.add_subcommand("import", "convert a routing dump (JSON, JSONL or CSV, gzip or not: vLLM / Hugging Face / MLX hooks, llama.cpp scripts) "
                                            "to a trace; damage (tokens lacking layers, a cut-short end) is dropped and reported");
  tools::ImportOptions io_opts;
  tools::add_import_options(*import, io_opts);

  auto* slice = app.add_subcommand("slice", "cut a trace by requests, steps and layers");
  tools::SliceOptions sl;
  tools::add_slice_options(*slice, sl);

  auto* merge = app.add_subcommand("merge", "concatenate traces of the same model shape (requests renumbered)");
  tools::MergeOptions mo;
  tools::add_merge_options(*merge, mo);

  auto* predict = app.add_subcommand("predict", "recompute prediction channels (skip_gate, draft_gate, learned MLP or linear) from the "
                                              "trace's hidden states and weight files; compare them with recorded channels");
  tools::PredictOptions po;
  tools::add_predict_options(*predict, po);

  CLI11_PARSE(app, argc, argv);

  return tools::guarded_main("moesched-trace", [&] {
    if (info->parsed()) return tools::run_info(info_file);
    if (validate->parsed()) return tools::run_validate(validate_files);
    if (stats->parsed()) return tools::run_stats(stats_file, stats_json, stats_layers);
    if (synth->parsed()) return tools::run_synth(so, *synth);
    if (import->parsed()) return tools::run_import(io_opts);
    if (slice->parsed()) return tools::run_slice(sl);
    if (merge->parsed()) return tools::run_merge(mo);
    if (predict->parsed()) return tools::run_predict(po);
    return 0;
  });
}
