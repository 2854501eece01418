// moesched-sizing: how MoE models fit on GPUs, and what offloading their experts costs.
//
//   moesched-sizing                                   every shipped model on every shipped GPU
//   moesched-sizing --gpu rtx4090 --model mixtral --dtype int4 --json out.json
//
// For each (GPU, model) it splits GPU memory between the resident weights, the KV cache, a
// workspace and the expert cache, then prints how many routed experts stay resident, what one
// expert costs to copy and to compute, and the expected copy time per decoded token if routing
// were uniform and independent (a first-order number; moesched-sim replays real routing).
#include "output.hpp"
#include "presets_location.hpp"
#include "main_guard.hpp"
#include "table.hpp"

#include <moesched/io/presets.hpp>
#include <moesched/moesched.hpp>

#include <CLI/CLI.hpp>
#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <optional>
#include <string>
#include <vector>

namespace {

using namespace moesched;

struct Row {
  const HardwareDesc* gpu;
  ModelDesc model;
  MemoryPlan plan;
  Nanoseconds copy;       // one expert, one copy
  Nanoseconds ffn_1tok;   // one expert, one token
  double miss_ms_per_token;
  double expert_compute_ms_per_token;
};

Row evaluate(const HardwareDesc& gpu, const ModelDesc& model, const MemoryPlanOptions& opt) {
  Row r{&gpu, model, plan_memory(model, gpu, opt), expert_copy_time(model, gpu),
        expert_ffn_time(model, gpu, 1), 0.0, 0.0};
  const double routed = static_cast<double>(model.shape.moe_layers()) * model.shape.top_k;
  const double miss = r.plan.fits_without_experts ? 1.0 - r.plan.cached_fraction() : 1.0;
  r.miss_ms_per_token = routed * miss * to_ms(r.copy);
  r.expert_compute_ms_per_token = routed * to_ms(r.ffn_1tok);
  return r;
}

nlohmann::ordered_json to_json(const Row& r, const MemoryPlanOptions& opt) {
  const auto& s = r.model.shape;
  return {
      {"gpu", r.gpu->name},
      {"model", r.model.name},
      {"dtype", std::string(dtype_name(r.model.dtype))},
      {"context_tokens", opt.context_tokens},
      {"batch", opt.batch},
      {"moe_layers", s.moe_layers()},
      {"experts_per_layer", s.experts_per_layer},
      {"top_k", s.top_k},
      {"expert_bytes", r.model.expert_bytes().count},
      {"all_expert_bytes", r.model.all_expert_bytes().count},
      {"resident_bytes", r.plan.non_expert.count},
      {"kv_cache_bytes", r.plan.kv_cache.count},
      {"workspace_bytes", r.plan.workspace.count},
      {"extra_resident_bytes", r.plan.extra_resident.count},
      {"usable_gpu_bytes", r.plan.usable.count},
      {"expert_cache_bytes", r.plan.expert_cache.count},
      {"experts_fit", r.plan.experts_fit},
      {"total_experts", r.plan.total_experts},
      {"cached_fraction", r.plan.cached_fraction()},
      {"fits_without_experts", r.plan.fits_without_experts},
      {"fits_entirely", r.plan.fits_entirely},
      {"expert_copy_ns", r.copy.count()},
      {"expert_ffn_1tok_ns", r.ffn_1tok.count()},
      {"uniform_miss_copy_ms_per_token", r.miss_ms_per_token},
      {"expert_compute_ms_per_token", r.expert_compute_ms_per_token},
  };
}

std::string csv_of(const nlohmann::ordered_json& rows) {
  if (rows.empty()) return "";
  std::string out;
  std::vector<std::string> keys;
  for (const auto& [k, v] : rows.front().items()) keys.push_back(k);
  for (std::size_t i = 0; i < keys.size(); ++i) out += (i ? "," : "") + keys[i];
  out += '\n';
  for (const auto& row : rows) {
    for (std::size_t i = 0; i < keys.size(); ++i) {
      const auto& v = row.at(keys[i]);
      out += (i ? "," : "") + (v.is_string() ? v.get<std::string>() : v.dump());
    }
    out += '\n';
  }
  return out;
}

std::string fit_cell(const MemoryPlan& p) {
  if (!p.fits_without_experts) return "no room";
  if (p.fits_entirely) return "all";
  return fmt::format("{:.1f}%", 100.0 * p.cached_fraction());
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "moesched-sizing: how MoE models fit on GPUs and what offloading their experts costs.\n"
      "For each GPU and model: memory split (resident weights, KV cache, workspace, expert cache),\n"
      "how many routed experts stay resident, one expert's copy and FFN time, and the expected\n"
      "expert-copy time per decoded token if routing were uniform and independent (first order;\n"
      "real routing is skewed and reused, which moesched-sim replays)."};
  app.get_formatter()->column_width(34);

  std::vector<std::string> gpus;
  std::vector<std::string> models;
  std::string dtype_text;
  std::vector<std::string> preset_dirs;
  std::uint64_t context = 4096;
  std::uint32_t batch = 1;
  double workspace_mib = 512.0;
  double extra_gib = 0.0;
  std::string json_out;
  std::string csv_out;
  bool list = false;

  app.add_option("-g,--gpu", gpus, "GPU preset names or .json files (default: every shipped GPU)")
      ->delimiter(',');
  app.add_option("-m,--model", models, "model preset names or .json files (default: every shipped model)")
      ->delimiter(',');
  app.add_option("--dtype", dtype_text,
                 "store weights as: f32, bf16, fp16, fp8, int8, int4, mxfp4 (default: each preset's own)");
  app.add_option("--context", context, "KV-cache length in tokens per sequence")->capture_default_str()
      ->check(CLI::Range(std::uint64_t{0}, std::uint64_t{1} << 24U));
  app.add_option("--batch", batch, "sequences decoding together (KV cache only)")->capture_default_str()
      ->check(CLI::Range(1U, 65536U));
  app.add_option("--workspace-mib", workspace_mib, "activations and staging buffers, MiB")
      ->capture_default_str()->check(CLI::Range(0.0, 1e7));
  app.add_option("--extra-gib", extra_gib, "other resident memory, GiB (e.g. a draft model)")
      ->capture_default_str()->check(CLI::Range(0.0, 1e5));
  app.add_option("--presets", preset_dirs,
                 "extra preset directories (with models/ and gpus/), searched before "
                 "MOESCHED_PRESET_PATH and the shipped presets");
  app.add_option("--json", json_out, "write one JSON record per row to FILE ('-' = stdout)");
  app.add_option("--csv", csv_out, "write the rows as CSV to FILE ('-' = stdout)");
  app.add_flag("--list", list, "list the available presets and exit");
  CLI11_PARSE(app, argc, argv);

  return tools::guarded_main("moesched-sizing", [&] {
    if (!json_out.empty()) tools::check_output_path(json_out, "--json");
    if (!csv_out.empty()) tools::check_output_path(csv_out, "--csv");
    std::vector<std::filesystem::path> dirs(preset_dirs.begin(), preset_dirs.end());
    const auto catalog = tools::preset_catalog(dirs);
    if (list) {
      tools::TextTable t({"kind", "name", "display name", "aliases", "file"});
      auto add = [&](const char* kind, const std::vector<io::PresetCatalog::Entry>& es) {
        for (const auto& e : es) {
          std::string aliases;
          for (const auto& a : e.aliases) aliases += (aliases.empty() ? "" : ", ") + a;
          t.add({kind, e.name, e.display_name, aliases, e.path.string()});
        }
      };
      add("model", catalog.list_models());
      add("gpu", catalog.list_gpus());
      std::fputs(t.render().c_str(), stdout);
      return 0;
    }
    if (gpus.empty()) {
      for (const auto& e : catalog.list_gpus()) gpus.push_back(e.path.string());
    }
    if (models.empty()) {
      for (const auto& e : catalog.list_models()) models.push_back(e.path.string());
    }
    if (gpus.empty() || models.empty()) {
      throw ConfigError("", "", "", "no presets found; pass --gpu/--model files or --presets DIR");
    }
    std::optional<DType> dtype;
    if (!dtype_text.empty()) {
      dtype = parse_dtype(dtype_text);
      if (!dtype) {
        throw ConfigError("", "--dtype", dtype_text,
                          "unknown dtype; known: f32, bf16, fp16, fp8, int8, int4, mxfp4");
      }
    }
    std::vector<HardwareDesc> hw;
    for (const auto& g : gpus) hw.push_back(catalog.gpu(g));
    std::vector<ModelDesc> ms;
    for (const auto& m : models) {
      ModelDesc d = catalog.model(m);
      ms.push_back(dtype ? d.with_dtype(*dtype) : d);
    }

    MemoryPlanOptions opt;
    opt.context_tokens = context;
    opt.batch = batch;
    opt.workspace = Bytes{static_cast<std::uint64_t>(workspace_mib * 1048576.0)};
    opt.extra_resident = Bytes{static_cast<std::uint64_t>(extra_gib * 1073741824.0)};

    tools::TextTable t({"gpu", "model", "dtype", "MB/expert", "experts", "experts GB",
                        "resident GB", "KV GB", "cache GB", "resident %", "copy ms", "FFN us",
                        "copy/FFN", "miss ms/tok"});
    nlohmann::ordered_json records = nlohmann::ordered_json::array();
    for (std::size_t gi = 0; gi < hw.size(); ++gi) {
      if (gi > 0) t.separator();
      for (const auto& m : ms) {
        const Row r = evaluate(hw[gi], m, opt);
        records.push_back(to_json(r, opt));
        const auto& s = m.shape;
        t.add({hw[gi].name, m.name, std::string(dtype_name(m.dtype)),
               fmt::format("{:.1f}", m.expert_bytes().megabytes()),
               fmt::format("{}x{}", s.moe_layers(), s.experts_per_layer),
               fmt::format("{:.1f}", m.all_expert_bytes().gigabytes()),
               fmt::format("{:.2f}", r.plan.non_expert.gigabytes()),
               fmt::format("{:.2f}", r.plan.kv_cache.gigabytes()),
               fmt::format("{:.1f}", r.plan.expert_cache.gigabytes()), fit_cell(r.plan),
               fmt::format("{:.3f}", to_ms(r.copy)), fmt::format("{:.1f}", to_us(r.ffn_1tok)),
               fmt::format("{:.0f}x", static_cast<double>(r.copy.count()) /
                                          static_cast<double>(r.ffn_1tok.count())),
               fmt::format("{:.1f}", r.miss_ms_per_token)});
      }
    }
    if (json_out != "-" && csv_out != "-") {
      fmt::print("moesched-sizing: {} model(s) x {} GPU(s); context {} tokens, batch {}, workspace {} MiB, "
                 "extra {} GiB\n\n",
                 ms.size(), hw.size(), context, batch, workspace_mib, extra_gib);
      std::fputs(t.render().c_str(), stdout);
      fmt::print(
          "\nresident %: share of routed experts that fit in the cache (\"all\": no offloading needed).\n"
          "copy ms: one expert host-to-device in one copy (pinned memory, the preset's link curve).\n"
          "FFN us: one expert over one token (roofline of three GEMMs plus kernel overhead).\n"
          "miss ms/tok: moe_layers x top_k x (1 - resident share) x copy ms, i.e. uniform routing\n"
          "  and no prefetch: an upper reference point, not a prediction.\n");
    }
    if (!json_out.empty()) tools::write_text_file(json_out, records.dump(2) + "\n");
    if (!csv_out.empty()) tools::write_text_file(csv_out, csv_of(records));
    return 0;
  });
}
