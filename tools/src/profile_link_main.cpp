// moesched-profile-link: measure this machine's host<->GPU copy-time curve and write it as a
// GPU preset, so moesched's latency model and simulator use the link you actually have.
//
//   moesched-profile-link                                  print the curve (4 KiB .. 256 MiB)
//   moesched-profile-link --like h200 --name my-h100 -o presets/gpus/my-h100.json
//
// Pinned host memory (cudaHostAlloc), one cudaMemcpyAsync per timed copy between device events,
// median over --repeats. Compute peaks cannot be measured by copying, so a written preset takes
// its compute section from the --like preset and says so in its notes.
#include "output.hpp"
#include "presets_location.hpp"
#include "main_guard.hpp"
#include "table.hpp"

#include <moesched/cuda/link_profiler.cuh>
#include <moesched/io/presets.hpp>
#include <moesched/moesched.hpp>

#include <CLI/CLI.hpp>
#include <cuda_runtime.h>
#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include <cctype>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

namespace {

using namespace moesched;

struct CudaFailure {
  std::string what;
};

void check(cudaError_t st, const char* what) {
  if (st != cudaSuccess) throw CudaFailure{std::string(what) + ": " + cuda::describe(st)};
}

nlohmann::ordered_json knots_json(const std::vector<TransferCurve::Knot>& knots) {
  nlohmann::ordered_json pts = nlohmann::ordered_json::array();
  for (const auto& k : knots) {
    pts.push_back({{"bytes", k.size.count}, {"us", static_cast<double>(k.time.count()) / 1e3}});
  }
  return {{"points", pts}};
}

std::string slug(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (std::isalnum(static_cast<unsigned char>(c))) {
      out.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
    } else if (!out.empty() && out.back() != '-') {
      out.push_back('-');
    }
  }
  while (!out.empty() && out.back() == '-') out.pop_back();
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "moesched-profile-link: measure the host<->GPU copy-time curve (pinned memory, one\n"
      "cudaMemcpyAsync per timed copy, device events, median of --repeats) and optionally write\n"
      "it as a GPU preset. Copy sizes are powers of 4 from 4 KiB to --max-mib."};
  app.get_formatter()->column_width(30);
  int device = 0;
  std::uint64_t max_mib = 256;
  int repeats = 20;
  std::string like;
  std::string name;
  std::string out_path;
  std::string json_out;
  app.add_option("--device", device, "CUDA device ordinal")->capture_default_str();
  app.add_option("--max-mib", max_mib, "largest copy, MiB (also the pinned buffer size)")
      ->capture_default_str()->check(CLI::Range(std::uint64_t{1}, std::uint64_t{16384}));
  app.add_option("--repeats", repeats, "timed copies per size")->capture_default_str()
      ->check(CLI::Range(1, 100000));
  app.add_option("--like", like, "GPU preset whose compute section the written preset reuses");
  app.add_option("--name", name, "name of the written preset (default: from the device name)");
  app.add_option("-o,--output", out_path, "write a GPU preset JSON here (needs --like)");
  app.add_option("--json", json_out, "write the raw samples as JSON to FILE ('-' = stdout)");
  CLI11_PARSE(app, argc, argv);

  return tools::guarded_main("moesched-profile-link", [&] {
  try {
    if (!out_path.empty()) tools::check_output_path(out_path, "--output");
    if (!json_out.empty()) tools::check_output_path(json_out, "--json");
    std::optional<HardwareDesc> base;
    if (!out_path.empty()) {
      if (like.empty()) {
        throw ConfigError("", "--like", "", "required with --output: the written preset needs compute peaks");
      }
      base = tools::preset_catalog({}).gpu(like);
    }
    check(cudaSetDevice(device), "cudaSetDevice");
    cudaDeviceProp prop{};
    check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
    check(cudaFree(nullptr), "creating the CUDA context");
    std::size_t free_bytes = 0;
    std::size_t total_bytes = 0;
    check(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo");
    int runtime = 0;
    int driver = 0;
    check(cudaRuntimeGetVersion(&runtime), "cudaRuntimeGetVersion");
    check(cudaDriverGetVersion(&driver), "cudaDriverGetVersion");

    const auto sizes = cuda::default_profile_sizes(max_mib << 20U);
    const std::uint64_t need = cuda::link_profile_workspace_bytes(sizes);
    auto version = [](int v) { return fmt::format("{}.{}", v / 1000, (v % 1000) / 10); };
    fmt::print(stderr, "{}: {:.1f} GiB, {} copy engines, CUDA runtime {}, driver {}; pinning {} MiB\n",
               prop.name, static_cast<double>(total_bytes) / 1073741824.0, prop.asyncEngineCount,
               version(runtime), version(driver), need >> 20U);
    void* host = nullptr;
    void* dev = nullptr;
    cudaStream_t stream = nullptr;
    check(cudaHostAlloc(&host, need, cudaHostAllocDefault), "cudaHostAlloc");
    check(cudaMalloc(&dev, need), "cudaMalloc");
    check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
    std::memset(host, 0x5A, need);  // touch every page: no first-touch cost in the timings

    std::vector<cuda::CopySample> h2d(sizes.size());
    std::vector<cuda::CopySample> d2h(sizes.size());
    fmt::print(stderr, "measuring host-to-device...\n");
    check(cuda::profile_link(host, dev, sizes, repeats, cuda::Direction::host_to_device, stream, h2d.data()),
          "profiling host-to-device");
    fmt::print(stderr, "measuring device-to-host...\n");
    check(cuda::profile_link(host, dev, sizes, repeats, cuda::Direction::device_to_host, stream, d2h.data()),
          "profiling device-to-host");
    cudaStreamDestroy(stream);
    cudaFree(dev);
    cudaFreeHost(host);

    tools::TextTable t({"bytes", "H2D us", "p10", "p90", "H2D GB/s", "D2H us", "D2H GB/s"});
    nlohmann::ordered_json samples = nlohmann::ordered_json::array();
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      t.add({std::to_string(sizes[i]), fmt::format("{:.1f}", h2d[i].median_us),
             fmt::format("{:.1f}", h2d[i].p10_us), fmt::format("{:.1f}", h2d[i].p90_us),
             fmt::format("{:.1f}", h2d[i].gb_per_s()), fmt::format("{:.1f}", d2h[i].median_us),
             fmt::format("{:.1f}", d2h[i].gb_per_s())});
      samples.push_back({{"bytes", sizes[i]},
                         {"h2d_median_us", h2d[i].median_us}, {"h2d_p10_us", h2d[i].p10_us},
                         {"h2d_p90_us", h2d[i].p90_us}, {"d2h_median_us", d2h[i].median_us},
                         {"d2h_p10_us", d2h[i].p10_us}, {"d2h_p90_us", d2h[i].p90_us}});
    }
    std::fputs(t.render().c_str(), stdout);
    if (!json_out.empty()) {
      nlohmann::ordered_json j = {{"device", prop.name}, {"cuda_runtime", version(runtime)},
                                  {"cuda_driver", version(driver)}, {"repeats", repeats}, {"samples", samples}};
      tools::write_text_file(json_out, j.dump(2) + "\n");
    }

    if (base) {
      char date[32];
      const std::time_t now = std::time(nullptr);
      std::strftime(date, sizeof date, "%Y-%m-%d", std::gmtime(&now));
      const auto h2d_knots = cuda::curve_knots(h2d);
      const auto d2h_knots = cuda::curve_knots(d2h);
      nlohmann::ordered_json preset = {
          {"kind", "gpu"},
          {"name", name.empty() ? slug(prop.name) : name},
          {"display_name", prop.name},
          {"source", fmt::format("h2d/d2h measured by moesched-profile-link on {} (CUDA runtime {}, driver {}, "
                                 "{} repeats, median); compute section copied from preset '{}'",
                                 date, version(runtime), version(driver), repeats, base->name)},
          {"notes", fmt::format("memory_gib from cudaMemGetInfo; reserved_mib = memory already in use "
                                "once the CUDA context existed ({} MiB) plus 256 MiB for libraries. "
                                "Compute peaks are those of {}: check they match this GPU.",
                                (total_bytes - free_bytes) >> 20U, base->display_name)},
          {"interconnect", base->interconnect},
          {"memory_gib", static_cast<double>(total_bytes) / 1073741824.0},
          {"reserved_mib", static_cast<double>(((total_bytes - free_bytes) >> 20U) + 256U)},
          {"copy_engines", std::max(1, prop.asyncEngineCount)},
          {"h2d", knots_json(h2d_knots)},
          {"d2h", knots_json(d2h_knots)},
      };
      if (base->bidirectional_total) preset["bidirectional_total_gbps"] = base->bidirectional_total->gb_per_s();
      const auto& c = base->compute;
      preset["compute"] = {{"bf16_tflops", c.bf16_tflops}, {"fp8_tflops", c.fp8_tflops},
                           {"int8_tops", c.int8_tops}, {"f32_tflops", c.f32_tflops},
                           {"memory_bandwidth_gbps", c.memory_bandwidth.gb_per_s()},
                           {"kernel_overhead_us", to_us(c.kernel_overhead)}};
      // The preset must load back before it is written.
      (void)io::parse_gpu_preset(nlohmann::json::parse(preset.dump()), out_path);
      tools::write_text_file(out_path, preset.dump(2) + "\n");
      fmt::print(stderr, "wrote GPU preset '{}' to {}\n", preset["name"].get<std::string>(), out_path);
    }
  } catch (const CudaFailure& e) {
    std::fprintf(stderr, "moesched-profile-link: CUDA error: %s\n", e.what.c_str());
    return 3;
  }
  return 0;
  });
}
