#pragma once
// The subcommands of moesched-trace: options and what each one does.
#include "output.hpp"
#include "presets_location.hpp"
#include "table.hpp"

#include <moesched/io/trace.hpp>
#include <moesched/predict/channel.hpp>
#include <moesched/trace/fit.hpp>
#include <moesched/trace/import.hpp>
#include <moesched/trace/stats.hpp>
#include <moesched/trace/synth.hpp>
#include <moesched/trace/transform.hpp>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <cmath>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace moesched::tools {

inline std::string pct(double v) { return std::isfinite(v) ? fmt::format("{:.1f}%", 100.0 * v) : std::string("-"); }
inline std::string opt_pct(const std::optional<double>& v) { return v ? pct(*v) : std::string("-"); }

/// "0,2,5-7" -> {0, 2, 5, 6, 7}
inline std::vector<std::uint32_t> parse_list(const std::string& text, const char* option) {
  std::vector<std::uint32_t> out;
  std::size_t i = 0;
  while (i <= text.size()) {
    const std::size_t comma = std::min(text.find(',', i), text.size());
    const std::string item = text.substr(i, comma - i);
    try {
      const auto dash = item.find('-');
      std::size_t used = 0;
      if (dash == std::string::npos) {
        const auto v = std::stoul(item, &used);
        if (used != item.size()) throw std::invalid_argument(item);
        out.push_back(static_cast<std::uint32_t>(v));
      } else {
        const auto a = std::stoul(item.substr(0, dash));
        const auto b = std::stoul(item.substr(dash + 1));
        if (b < a) throw std::invalid_argument(item);
        for (auto v = a; v <= b; ++v) out.push_back(static_cast<std::uint32_t>(v));
      }
    } catch (const std::exception&) {
      throw ConfigError("", option, text, "expected numbers and ranges like 0,2,5-7");
    }
    i = comma + 1;
  }
  return out;
}

/// "a-b" (inclusive) or "a" -> [a, b + 1)
inline std::pair<std::uint64_t, std::uint64_t> parse_range(const std::string& text, const char* option) {
  const auto v = parse_list(text, option);
  if (v.empty() || v.back() < v.front() || v.size() != v.back() - v.front() + 1U) {
    throw ConfigError("", option, text, "expected one range like 3-10");
  }
  return {v.front(), std::uint64_t{v.back()} + 1U};
}

/// Refuse a trace output path that cannot be written, before any work ("-" is no file here).
inline void check_trace_output(const std::string& path) {
  if (path == "-") throw ConfigError("", "--output", "-", "a trace is written to a file, not to stdout");
  check_output_path(path, "--output");
}

// ---------------------------------------------------------------------------------------------
inline int run_info(const std::string& file) {
  const auto t = io::Trace::open(file);
  const auto& m = t.meta();
  fmt::print("file        {} ({:.2f} MB)\n", file, static_cast<double>(t.container().file_bytes()) / 1e6);
  fmt::print("model       {}: {} MoE layers x {} experts, top-{}\n", m.model.name, m.model.moe_layers, m.model.experts_per_layer, m.model.top_k);
  fmt::print("source      {}\n", m.source);
  if (!m.dataset.empty()) fmt::print("dataset     {}\n", m.dataset);
  if (!m.notes.empty()) fmt::print("notes       {}\n", m.notes);
  fmt::print("generated   {}\n", m.generated ? "yes (synthetic data)" : "no (recorded)");
  std::uint64_t steps[3] = {0, 0, 0};
  std::uint64_t emitted = 0, drafted = 0, accepted = 0;
  for (StepInfo s : t.steps()) {
    ++steps[static_cast<int>(s.phase)];
    emitted += s.emitted_tokens();
    drafted += s.draft_len;
    accepted += s.accepted;
  }
  fmt::print("requests    {}\n", m.request_count);
  fmt::print("steps       {} (prefill {}, decode {}, verify {})\n", t.step_count(), steps[0], steps[1], steps[2]);
  fmt::print("tokens      {} routed, {} emitted\n", t.token_count(), emitted);
  if (drafted > 0) fmt::print("SD          {} drafted, {} accepted ({:.1f}%)\n", drafted, accepted, 100.0 * static_cast<double>(accepted) / static_cast<double>(drafted));
  fmt::print("optional    weights {}, token ids {}, positions {}\n", t.has_weights() ? "yes" : "no", t.has_token_ids() ? "yes" : "no",
             t.has_positions() ? "yes" : "no");
  for (std::uint32_t c = 0; c < m.channels.size(); ++c) {
    fmt::print("channel     {}: {} predictions, {} candidates{}; {}\n", m.channels[c].name, t.prediction_count(c), m.channels[c].max_candidates,
               m.channels[c].has_scores ? " with scores" : "", m.channels[c].description);
  }
  for (const auto& h : m.hidden) fmt::print("hidden      {}: {} layers x {} ({})\n", h.name, h.layers.size(), h.hidden_size, io::tensor_dtype_name(h.dtype));
  if (!m.provenance.empty()) fmt::print("provenance  {}\n", m.provenance.dump());
  TextTable tt({"tensor", "dtype", "shape", "MB"});
  for (const auto& ti : t.container().tensors()) {
    std::string shape;
    for (auto d : ti.shape) shape += (shape.empty() ? "" : "x") + std::to_string(d);
    tt.add({ti.name, std::string(io::tensor_dtype_name(ti.dtype)), shape, fmt::format("{:.3f}", static_cast<double>(ti.bytes()) / 1e6)});
  }
  fmt::print("\n{}", tt.render());
  return 0;
}

inline int run_validate(const std::vector<std::string>& files) {
  int bad = 0;
  for (const auto& f : files) {
    try {
      const auto t = io::Trace::open(f);
      fmt::print("{}: ok ({} steps, {} tokens, {} channels)\n", f, t.step_count(), t.token_count(), t.meta().channels.size());
    } catch (const ConfigError& e) {
      fmt::print("{}: INVALID: {}\n", f, e.what());
      ++bad;
    }
  }
  if (files.size() > 1) fmt::print("{} valid, {} invalid\n", files.size() - static_cast<std::size_t>(bad), bad);
  return bad == 0 ? 0 : 1;
}

inline void print_stats(const trace::TraceStats& s, bool layers) {
  fmt::print("model {}: {} MoE layers x {} experts, top-{}{}\n", s.model.name, s.model.moe_layers, s.model.experts_per_layer, s.model.top_k,
             s.generated ? "  [generated data]" : "");
  fmt::print("{} requests, {} steps (prefill {}, decode {}, verify {}), {} tokens routed, {} emitted\n", s.requests, s.steps, s.prefill_steps,
             s.decode_steps, s.verify_steps, s.tokens, s.emitted_tokens);
  if (s.drafted > 0) fmt::print("speculative decoding: {} drafted, {} accepted: acceptance {}\n", s.drafted, s.accepted, pct(s.acceptance_rate()));
  TextTable sum({"statistic", "value", "meaning"});
  sum.add({"popularity gini", fmt::format("{:.3f}", s.gini), "0 = every expert equally used, 1 = one expert takes all (mean over layers)"});
  sum.add({"popularity entropy", fmt::format("{:.3f}", s.entropy), "entropy / log(experts): 1 = uniform"});
  sum.add({"top-10% share", pct(s.top10_share), "activations of the most used 10% of experts"});
  sum.add({"next-token reuse", pct(s.next_token_reuse), "share of a token's experts the next token uses again (same layer)"});
  sum.add({"next-layer hit", opt_pct(s.next_layer_hit), "layer l's experts predict l+1's: co-occurrence top-k, out of sample"});
  sum.add({"next-layer baseline", opt_pct(s.next_layer_baseline), "same, predicting the most popular experts"});
  fmt::print("\n{}", sum.render());
  TextTable rd({"reuse distance (tokens)", "activations", "share"});
  std::uint64_t total = 0;
  for (auto c : s.reuse_distance) total += c;
  for (std::size_t b = 0; b < trace::kReuseBuckets.size(); ++b) {
    rd.add({trace::kReuseBuckets[b], std::to_string(s.reuse_distance[b]), pct(total ? static_cast<double>(s.reuse_distance[b]) / static_cast<double>(total) : 0.0)});
  }
  fmt::print("\n{}", rd.render());
  TextTable wu({"window (tokens)", "distinct experts / layer", "of window x top_k", "of experts"});
  for (std::size_t w = 0; w < 7; ++w) {
    const double u = s.window_union[w];
    wu.add({std::to_string(w + 2), fmt::format("{:.2f}", u), pct(u / static_cast<double>((w + 2) * s.model.top_k)),
            pct(u / static_cast<double>(s.model.experts_per_layer))});
  }
  fmt::print("\n{}", wu.render());
  if (!s.channels.empty()) {
    TextTable ch({"channel", "predictions", "precision", "recall"});
    for (const auto& c : s.channels) ch.add({c.name, std::to_string(c.predictions), pct(c.precision), pct(c.recall)});
    fmt::print("\n{}", ch.render());
  }
  if (layers) {
    std::vector<std::string> head{"layer", "gini", "entropy", "top-10%", "cover 50%", "cover 90%", "reuse", "next-layer hit", "baseline"};
    for (const auto& c : s.channels) head.push_back(c.name + " recall");
    TextTable lt(head);
    for (std::size_t l = 0; l < s.layers.size(); ++l) {
      const auto& ls = s.layers[l];
      std::vector<std::string> row{std::to_string(l), fmt::format("{:.3f}", ls.gini), fmt::format("{:.3f}", ls.entropy), pct(ls.top10_share),
                                   std::to_string(ls.experts_for_50pct), std::to_string(ls.experts_for_90pct), pct(ls.next_token_reuse),
                                   opt_pct(ls.next_layer_hit), opt_pct(ls.next_layer_baseline)};
      for (const auto& c : s.channels) row.push_back(pct(c.recall_per_layer[l]));
      lt.add(row);
    }
    fmt::print("\n{}", lt.render());
  }
}

inline int run_stats(const std::string& file, const std::string& json_out, bool layers) {
  if (!json_out.empty()) check_output_path(json_out, "--json");
  const auto t = io::Trace::open(file);
  const auto s = trace::compute_stats(t);
  if (json_out != "-") print_stats(s, layers);
  if (!json_out.empty()) write_text_file(json_out, trace::stats_to_json(s).dump(2) + "\n");
  return 0;
}

// ---------------------------------------------------------------------------------------------
struct SynthOptions {
  trace::SynthParams p;
  std::string output;
  std::string model;
  std::string fit;
  std::vector<std::string> preset_dirs;
};

inline void add_synth_options(CLI::App& app, SynthOptions& o) {
  auto& p = o.p;
  app.add_option("-o,--output", o.output, "trace file to write")->required();
  app.add_option("--model", o.model, "take moe_layers, experts and top_k from this model preset");
  app.add_option("--fit", o.fit, "fit the parameters to this trace's statistics (shape, lengths, skew, reuse, correlation, SD, channels); explicit options still win");
  app.add_option("--seed", p.seed, "random seed: the same seed gives the same file")->capture_default_str();
  app.add_option("--layers", p.moe_layers, "MoE layers")->capture_default_str()->check(CLI::Range(1U, 4096U));
  app.add_option("--experts", p.experts, "experts per MoE layer")->capture_default_str()->check(CLI::Range(1U, 32768U));
  app.add_option("--top-k", p.top_k, "experts chosen per token per layer")->capture_default_str()->check(CLI::Range(1U, 32768U));
  app.add_option("--requests", p.requests, "requests")->capture_default_str()->check(CLI::Range(1U, 10000000U));
  app.add_option("--prompt-tokens", p.prompt_tokens, "prefill tokens per request")->capture_default_str()->check(CLI::Range(1U, 10000000U));
  app.add_option("--decode-tokens", p.decode_tokens, "output tokens per request (SD may overshoot by up to draft_len)")->capture_default_str();
  app.add_option("--zipf", p.zipf, "popularity skew: Zipf exponent over a random per-layer ranking (0 = uniform)")->capture_default_str();
  app.add_option("--reuse", p.reuse, "probability a top-k slot reuses an expert of the previous token (same layer)")->capture_default_str();
  app.add_option("--cross-layer", p.cross_layer, "probability a slot follows a fixed map from one of this token's previous-layer experts")->capture_default_str();
  app.add_option("--draft-len", p.sd_draft_len, "speculative decoding: draft tokens per verify step (0 = plain decoding)")->capture_default_str();
  app.add_option("--acceptance", p.sd_acceptance, "speculative decoding: probability each draft token is accepted (until the first rejection)")->capture_default_str();
  app.add_option("--skip-gate-accuracy", p.skip_gate_accuracy, "add a skip-gate channel listing each true expert with this probability (negative: none)")->capture_default_str();
  app.add_option("--draft-gate-accuracy", p.draft_gate_accuracy, "add a draft-gate channel (needs --draft-len) with this accuracy (negative: none)")->capture_default_str();
  app.add_option("--presets", o.preset_dirs, "extra preset directories");
}


inline int run_synth(SynthOptions& o, const CLI::App& app) {
  check_trace_output(o.output);
  auto& p = o.p;
  auto given = [&](const char* name) { return app.count(name) > 0; };
  if (!o.model.empty()) {
    const auto m = preset_catalog({o.preset_dirs.begin(), o.preset_dirs.end()}).model(o.model);
    p.model_name = m.name;
    p.moe_layers = m.shape.moe_layers();
    p.experts = m.shape.experts_per_layer;
    p.top_k = m.shape.top_k;
  }
  std::optional<trace::TraceStats> target;
  if (!o.fit.empty()) {
    const auto t = io::Trace::open(o.fit);
    std::fprintf(stderr, "fitting to %s: computing its statistics, then 8 calibration rounds on pilot traces of %u requests...\n",
                 o.fit.c_str(), t.meta().request_count);
    target = trace::compute_stats(t);
    trace::FitLocks locks;
    locks.prompt_tokens = given("--prompt-tokens");
    locks.decode_tokens = given("--decode-tokens");
    locks.zipf = given("--zipf");
    locks.reuse = given("--reuse");
    locks.cross_layer = given("--cross-layer");
    locks.draft_len = given("--draft-len");
    locks.acceptance = given("--acceptance");
    locks.skip_gate_accuracy = given("--skip-gate-accuracy");
    locks.draft_gate_accuracy = given("--draft-gate-accuracy");
    p = trace::fit_synth_params(*target, p, locks);
  }
  const auto w = trace::synthesize(p);
  w.write(o.output);
  fmt::print("wrote {}: {} steps, {} tokens, {} MoE layers x {} experts, top-{} (seed {})\n", o.output, w.step_count(), w.token_count(), p.moe_layers,
             p.experts, p.top_k, p.seed);
  if (target) {
    fmt::print("fitted: zipf {:.3f}, reuse {:.3f}, cross-layer {:.3f}, prompt {} and decode {} tokens, draft_len {}, acceptance {:.3f}\n", p.zipf, p.reuse,
               p.cross_layer, p.prompt_tokens, p.decode_tokens, p.sd_draft_len, p.sd_acceptance);
    const auto t = io::Trace::open(o.output);
    const auto got = trace::compute_stats(t);
    const auto& s = *target;
    TextTable cmp({"statistic", "target (" + o.fit + ")", "synthetic"});
    cmp.add({"popularity gini", fmt::format("{:.3f}", s.gini), fmt::format("{:.3f}", got.gini)});
    cmp.add({"next-token reuse", pct(s.next_token_reuse), pct(got.next_token_reuse)});
    cmp.add({"next-layer hit", opt_pct(s.next_layer_hit), opt_pct(got.next_layer_hit)});
    cmp.add({"window union (4 tokens)", fmt::format("{:.2f}", s.window_union[2]), fmt::format("{:.2f}", got.window_union[2])});
    cmp.add({"acceptance", pct(s.acceptance_rate()), pct(got.acceptance_rate())});
    for (std::size_t c = 0; c < s.channels.size(); ++c) {
      const auto it = std::find_if(got.channels.begin(), got.channels.end(), [&](const trace::ChannelStats& x) {
        return (x.name.find("skip") != std::string::npos && s.channels[c].name.find("skip") != std::string::npos) ||
               (x.name.find("draft") != std::string::npos && s.channels[c].name.find("draft") != std::string::npos);
      });
      cmp.add({s.channels[c].name + " recall", pct(s.channels[c].recall), it == got.channels.end() ? "-" : pct(it->recall)});
    }
    fmt::print("\n{}", cmp.render());
  }
  return 0;
}

// ---------------------------------------------------------------------------------------------
struct ImportOptions {
  std::string input, output, model, name, source, dataset, incomplete = "drop", records, format = "auto", json;
  std::vector<std::string> fields, preset_dirs;
  std::uint32_t experts = 0, top_k = 0, prefill_tokens = 0;
};

inline void add_import_options(CLI::App& app, ImportOptions& o) {
  app.add_option("input", o.input, "routing dump: JSON, JSONL or CSV, gzip-compressed or not")->required();
  app.add_option("-o,--output", o.output, "trace file to write")->required();
  app.add_option("--model", o.model, "model preset: expert count, top-k and decoder-layer mapping (else from the dump's meta, else inferred)");
  app.add_option("--name", o.name, "model name recorded in the trace");
  app.add_option("--experts", o.experts, "experts per layer (overrides everything)");
  app.add_option("--top-k", o.top_k, "experts per token (overrides everything)");
  app.add_option("--prefill-tokens", o.prefill_tokens, "without phase fields: prompt tokens per request")->capture_default_str();
  app.add_option("--field", o.fields,
                 "field spellings, e.g. --field token=pos,tok_idx --field experts=ids; fields: request, token, position, layer, experts, "
                 "weights, layers, phase, step, draft_len, accepted, token_id. request=a,b (two or more) keys requests by all of them");
  app.add_option("--incomplete", o.incomplete,
                 "tokens lacking some MoE layers (a dump cut short): drop them and report per request, or refuse the dump (error)")
      ->capture_default_str()
      ->check(CLI::IsMember({"drop", "error"}));
  app.add_option("--records", o.records, "key of the records in a JSON object (default: its only list of objects)");
  app.add_option("--format", o.format, "input format (auto: by name, then by content)")->capture_default_str()->check(CLI::IsMember({"auto", "json", "csv"}));
  app.add_option("--json", o.json, "also write the import report as JSON to FILE ('-' = stdout, no text report)");
  app.add_option("--source", o.source, "recorder/engine, stored in the trace");
  app.add_option("--dataset", o.dataset, "prompt set, stored in the trace");
  app.add_option("--presets", o.preset_dirs, "extra preset directories");
}

inline int run_import(const ImportOptions& o) {
  check_trace_output(o.output);
  if (!o.json.empty()) check_output_path(o.json, "--json");
  trace::ImportOptions opt;
  for (const auto& f : o.fields) {
    const auto eq = f.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == f.size()) throw ConfigError("", "--field", f, "expected FIELD=name[,name...]");
    std::vector<std::string> names;
    std::string rest = f.substr(eq + 1);
    std::size_t i = 0;
    while (i <= rest.size()) {
      const auto c = std::min(rest.find(',', i), rest.size());
      if (c > i) names.push_back(rest.substr(i, c - i));
      i = c + 1;
    }
    opt.fields.set(f.substr(0, eq), names);
  }
  if (!o.model.empty()) {
    const auto m = preset_catalog({o.preset_dirs.begin(), o.preset_dirs.end()}).model(o.model);
    opt.shape = m.shape;
    opt.model_name = m.name;
  }
  if (!o.name.empty()) opt.model_name = o.name;
  if (o.experts > 0) opt.experts = o.experts;
  if (o.top_k > 0) opt.top_k = o.top_k;
  opt.prefill_tokens = o.prefill_tokens;
  opt.source = o.source;
  opt.dataset = o.dataset;
  opt.incomplete = o.incomplete == "error" ? trace::IncompleteTokens::error : trace::IncompleteTokens::drop;
  opt.records_key = o.records;
  opt.format = o.format == "json" ? trace::DumpFormat::json : o.format == "csv" ? trace::DumpFormat::csv : trace::DumpFormat::automatic;
  auto [writer, report] = trace::import_routing_dump(o.input, opt);
  writer.write(o.output);
  if (o.json != "-") {
    fmt::print("imported {} ({}): {} records -> {} requests, {} steps, {} tokens; {} MoE layers x {} experts, top-{}\n", o.input, report.layout,
               report.records, report.requests, report.steps, report.tokens, report.layers, report.experts, report.top_k);
    for (const auto& n : report.notes) fmt::print("  note: {}\n", n);
    for (const auto& d : report.dropped) fmt::print("  dropped: {}\n", trace::describe(d));
    for (const auto& [field, count] : report.ignored) fmt::print("  ignored field '{}' in {} records (not part of the trace format)\n", field, count);
    fmt::print("wrote {}\n", o.output);
  }
  if (!o.json.empty()) {
    auto j = trace::report_to_json(report);
    j["input"] = o.input;
    j["output"] = o.output;
    write_text_file(o.json, j.dump(2) + "\n");
  }
  return 0;
}

// ---------------------------------------------------------------------------------------------
struct SliceOptions {
  std::string input, output, requests, steps, layers;
};
inline void add_slice_options(CLI::App& app, SliceOptions& o) {
  app.add_option("input", o.input, "trace file")->required();
  app.add_option("-o,--output", o.output, "trace file to write")->required();
  app.add_option("--requests", o.requests, "requests to keep, e.g. 0,2,5-7 (renumbered from 0)");
  app.add_option("--steps", o.steps, "step range to keep, e.g. 0-99 (inclusive)");
  app.add_option("--layers", o.layers, "MoE layer range to keep, e.g. 0-7 (inclusive; renumbered from 0)");
}
inline int run_slice(const SliceOptions& o) {
  check_trace_output(o.output);
  const auto t = io::Trace::open(o.input);
  trace::SliceSpec spec;
  if (!o.requests.empty()) spec.requests = parse_list(o.requests, "--requests");
  if (!o.steps.empty()) std::tie(spec.step_begin, spec.step_end) = parse_range(o.steps, "--steps");
  if (!o.layers.empty()) {
    const auto [a, b] = parse_range(o.layers, "--layers");
    spec.layer_begin = static_cast<std::uint32_t>(a);
    spec.layer_end = static_cast<std::uint32_t>(b);
  }
  const auto w = trace::slice(t, spec);
  w.write(o.output);
  fmt::print("wrote {}: {} of {} steps, {} tokens, {} MoE layers\n", o.output, w.step_count(), t.step_count(), w.token_count(), w.meta().model.moe_layers);
  return 0;
}

struct MergeOptions {
  std::vector<std::string> inputs;
  std::string output;
};
inline void add_merge_options(CLI::App& app, MergeOptions& o) {
  app.add_option("inputs", o.inputs, "trace files (same model shape)")->required()->expected(2, -1);
  app.add_option("-o,--output", o.output, "trace file to write")->required();
}
inline int run_merge(const MergeOptions& o) {
  check_trace_output(o.output);
  std::vector<io::Trace> traces;
  traces.reserve(o.inputs.size());
  for (const auto& f : o.inputs) traces.push_back(io::Trace::open(f));
  std::vector<const io::Trace*> ptrs;
  for (const auto& t : traces) ptrs.push_back(&t);
  const auto w = trace::merge(ptrs, o.inputs);
  w.write(o.output);
  fmt::print("wrote {}: {} requests, {} steps, {} tokens from {} traces\n", o.output, w.meta().request_count, w.step_count(), w.token_count(), o.inputs.size());
  return 0;
}

// ---------------------------------------------------------------------------------------------
struct PredictOptions {
  std::string input, output, gates, mlp, linear, as, compare, json;
  std::vector<std::string> channels;
  std::uint32_t candidates = 0;
  bool in_prefill = false, replace = false;
};
inline void add_predict_options(CLI::App& app, PredictOptions& o) {
  app.add_option("input", o.input, "trace file with hidden states (record.py --hidden ...)")->required();
  app.add_option("-o,--output", o.output, "trace file to write: the input plus the computed channels")->type_name("FILE");
  app.add_option("--channel", o.channels, "channel to compute (repeatable): skip_gate, draft_gate, mlp, linear")
      ->required()
      ->check(CLI::IsMember({"skip_gate", "draft_gate", "mlp", "linear"}));
  app.add_option("--gates", o.gates, "routers of the model (format moesched-gates: record.py --gates-out); skip_gate, draft_gate")->type_name("FILE");
  app.add_option("--mlp", o.mlp, "learned predictor of kind mlp (train_predictor.py); the mlp channel")->type_name("FILE");
  app.add_option("--linear", o.linear, "learned predictor of kind linear (train_predictor.py --kind linear); the linear channel")->type_name("FILE");
  app.add_option("--as", o.as, "name of the computed channel (one --channel only; default: skip_gate, draft_gate, mlp_strideS, preattn_linear)")->type_name("NAME");
  app.add_option("--candidates", o.candidates, "ranked candidates per prediction (default: the model's top_k)")->type_name("C");
  app.add_flag("--in-prefill", o.in_prefill, "predict in prefill steps too (record.py --channels-in-prefill)");
  app.add_flag("--replace", o.replace, "replace a channel of the same name in the trace (else that is an error)");
  app.add_option("--compare", o.compare, "print the agreement of the computed channel (one --channel only) with channel NAME of the trace")->type_name("NAME");
  app.add_option("--json", o.json, "with --compare: also write the agreement as JSON to FILE ('-' = stdout, no table)")->type_name("FILE");
  app.footer(
      "Recomputes prediction channels from the hidden states a trace carries, exactly as tools/record/record.py\n"
      "records them (T rows of a hidden state = the trace's tokens in step order; C = --candidates):\n"
      "  skip_gate   router l+1 on hidden 'moe_input' of layer l, every token of each decode and verify step;\n"
      "              available after layer l (needs --gates)\n"
      "  draft_gate  router l on hidden 'draft_moe_input' of layer l, tokens 0..draft_len-1 of each verify step;\n"
      "              available before the step (needs --gates)\n"
      "  mlp         the MLP of each source layer l on hidden 'layer_output' of l predicts layer l+stride;\n"
      "              channel mlp_strideS, available after layer l (needs --mlp)\n"
      "  linear      the linear maps on hidden 'attn_input' of layer l predict layer l; channel preattn_linear,\n"
      "              available after layer l-1 (needs --linear)\n"
      "Candidates are ranked by score, ties to the lower expert id; scores are stored as F16.\n"
      "--compare NAME: the share of predictions (matched by step, layer, token) whose candidate sets are equal,\n"
      "the mean overlap of their top-k sets, and the largest |score difference| of an expert both list.\n"
      "Example:\n"
      "  moesched-trace predict run.trace.safetensors --gates gates.safetensors --channel skip_gate \\\n"
      "      --as skip_gate_cpu --compare skip_gate -o run+cpu.trace.safetensors");
}

inline int run_predict(const PredictOptions& o) {
  if (o.output.empty() && o.compare.empty()) {
    throw ConfigError("", "--output", "", "nothing to do: give -o FILE (write the trace with the channels) or --compare NAME");
  }
  if (!o.output.empty()) check_trace_output(o.output);
  if (!o.json.empty()) {
    if (o.compare.empty()) throw ConfigError("", "--json", o.json, "needs --compare NAME");
    check_output_path(o.json, "--json");
  }
  if (o.channels.size() > 1 && !o.as.empty()) throw ConfigError("", "--as", o.as, "names one channel; give one --channel");
  if (o.channels.size() > 1 && !o.compare.empty()) throw ConfigError("", "--compare", o.compare, "compares one channel; give one --channel");
  auto needs = [](const std::string& file, const std::string& channel, const char* option, const char* what) {
    if (file.empty()) throw ConfigError("", "--channel", channel, std::string("needs ") + option + " FILE (" + what + ")");
  };
  for (const auto& c : o.channels) {
    if (c == "skip_gate" || c == "draft_gate") needs(o.gates, c, "--gates", "a moesched-gates file: record.py --gates-out");
    if (c == "mlp") needs(o.mlp, c, "--mlp", "a moesched-mlp-predictor file of kind mlp: train_predictor.py");
    if (c == "linear") needs(o.linear, c, "--linear", "a moesched-mlp-predictor file of kind linear: train_predictor.py --kind linear");
  }
  const auto t = io::Trace::open(o.input);
  std::shared_ptr<const predict::GateSet> gates;
  if (!o.gates.empty()) gates = std::make_shared<const predict::GateSet>(predict::read_gates(o.gates));
  auto learned = [](const std::string& file, predict::LearnedKind want, const char* option) {
    auto s = std::make_shared<const predict::LearnedSet>(predict::read_learned(file));
    if (s->kind != want) {
      throw ConfigError(file, "__metadata__.config.kind", s->kind == predict::LearnedKind::mlp ? "\"mlp\"" : "\"linear\"",
                        std::string(option) + " takes a predictor of kind " + (want == predict::LearnedKind::mlp ? "mlp" : "linear"));
    }
    return s;
  };
  predict::ChannelOptions co;
  co.candidates = o.candidates;
  co.in_prefill = o.in_prefill;
  co.name = o.as;
  std::vector<predict::ChannelData> computed;
  for (const auto& c : o.channels) {
    if (c == "skip_gate") computed.push_back(predict::skip_gate_channel(t, gates, co));
    if (c == "draft_gate") computed.push_back(predict::draft_gate_channel(t, gates, co));
    if (c == "mlp") computed.push_back(predict::learned_channel(t, learned(o.mlp, predict::LearnedKind::mlp, "--mlp"), co));
    if (c == "linear") computed.push_back(predict::learned_channel(t, learned(o.linear, predict::LearnedKind::linear, "--linear"), co));
  }
  const bool quiet = o.json == "-";
  if (!quiet) {
    for (const auto& ch : computed) {
      fmt::print("computed {}: {} predictions, {} candidates each\n", ch.desc.name, ch.size(), ch.desc.max_candidates);
    }
  }
  if (!o.compare.empty()) {
    const auto recorded = predict::channel_from_trace(t, t.channel_index(o.compare));
    const auto a = predict::compare(computed[0], recorded, t.meta().model.top_k);
    if (!quiet) {
      TextTable tt({"computed", "recorded", "matched", "only computed", "only recorded", "equal sets", "equal order",
                    fmt::format("top-{} overlap", a.top_k), "max |score diff|", "mean |score diff|", "available_after differs"});
      tt.add({computed[0].desc.name, o.compare, std::to_string(a.matched), std::to_string(a.only_a), std::to_string(a.only_b),
              pct(a.equal_set_fraction()), pct(a.equal_order_fraction()), pct(a.mean_topk_overlap()), fmt::format("{:.4g}", a.max_score_diff),
              fmt::format("{:.4g}", a.mean_score_diff()), std::to_string(a.available_after_differs)});
      fmt::print("\n{}", tt.render());
    }
    if (!o.json.empty()) {
      auto j = a.to_json();
      j["computed"] = computed[0].desc.name;
      j["recorded"] = o.compare;
      j["trace"] = o.input;
      write_text_file(o.json, j.dump(2) + "\n");
    }
  }
  if (!o.output.empty()) {
    const auto w = predict::with_channels(t, computed, o.replace);
    w.write(o.output);
    if (!quiet) fmt::print("wrote {}: {} steps, {} channels\n", o.output, w.step_count(), w.meta().channels.size());
  }
  return 0;
}

}  // namespace moesched::tools
