// GPU test of moesched-profile (ctest label 'gpu'; exit 77 = skipped without a CUDA device): the
// tool runs on a small model's shapes, its profile loads with io::read_profile (which checks the
// format, every field and strictly increasing copy sizes), copy times do not fall as sizes grow,
// every item has its samples, the executor's host costs are measured, and the --copy-csv file has its header and one row per size.
// Host code (g++); the tool's path comes from CMake (MOESCHED_PROFILE_TOOL).
#include <moesched/io/profile_json.hpp>

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace {

int failures = 0;
void expect(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++failures;
}

}  // namespace

int main() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::printf("no CUDA device: skipped\n");
    return 77;
  }
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "moesched-test-profile";
  std::filesystem::create_directories(dir);
  const std::filesystem::path json = dir / "olmoe.profile.json";
  const std::filesystem::path csv = dir / "copy.csv";
  std::filesystem::remove(json);
  std::filesystem::remove(csv);
  const std::string cmd = std::string("'") + MOESCHED_PROFILE_TOOL + "' --model olmoe-1b-7b --quick --max-copy-mib 64 -o '" +
                          json.string() + "' --copy-csv '" + csv.string() + "'";
  const int rc = std::system(cmd.c_str());
  expect(rc == 0, "moesched-profile exits 0 (" + std::to_string(rc) + ")");
  if (rc != 0) return 1;
  try {
    const moesched::profile::HardwareProfile p = moesched::io::read_profile(json);
    expect(p.model == "olmoe-1b-7b", "the profile names the model timed");
    expect(!p.gpu.empty(), "the profile names the GPU: " + p.gpu);
    expect(p.copy_h2d.size() >= 6 && p.copy_h2d.front().bytes == 4096 && p.copy_h2d.back().bytes == (64ULL << 20),
           "copy sizes from 4 KiB to --max-copy-mib");
    bool monotone = true;
    for (std::size_t i = 1; i < p.copy_h2d.size(); ++i) monotone = monotone && p.copy_h2d[i].ns >= p.copy_h2d[i - 1].ns;
    expect(monotone, "copy times do not fall as copies grow");
    const double gbps = static_cast<double>(p.copy_h2d.back().bytes) / p.copy_h2d.back().ns;
    expect(gbps > 1.0, "64 MiB copies run above 1 GB/s (" + std::to_string(gbps) + ")");
    expect(p.expert_ffn.size() == 7 && p.expert_ffn.front().tokens == 1 && p.expert_ffn.back().tokens == 64,
           "expert FFN at 1..64 tokens");
    // At these sizes the FFN is bound by kernel launches (tens of us whatever the tokens), so only a
    // loose band: 64 tokens take between half and 20 times one token's time.
    const double ratio = p.expert_ffn.back().ns / p.expert_ffn.front().ns;
    expect(ratio > 0.5 && ratio < 20.0, "expert FFN at 64 tokens within [0.5, 20] x one token's (" + std::to_string(ratio) + ")");
    bool contexts = false;
    for (const auto& d : p.dense) contexts = contexts || d.context == 8192;
    expect(p.dense.size() >= 7 && contexts, "dense samples over tokens and contexts up to 8192");
    expect(!p.head.empty() && !p.router.empty() && p.draft_step.size() == 4, "head, router and draft samples");
    expect(p.kernel_launch_ns > 0 && p.kernel_launch_ns < 1e5, "launch cost in (0, 100 us): " + std::to_string(p.kernel_launch_ns));
    expect(p.gemm_slowdown_under_copy >= 1.0 && p.gemm_slowdown_under_copy < 3.0,
           "GEMM slowdown under a copy in [1, 3): " + std::to_string(p.gemm_slowdown_under_copy));
    // Host costs: every one measured, each in (0, 1 ms); a draft step (every layer's dense part,
    // an FFN per layer, the head) takes longer to submit than one dense order.
    const auto& h = p.host;
    const bool host_range = h.submit_dense_ns > 0 && h.submit_expert_ns > 0 && h.submit_head_ns > 0 &&
                            h.launch_ns > 0 && h.notify_ns > 0 && h.submit_dense_ns < 1e6 && h.submit_expert_ns < 1e6 &&
                            h.launch_ns < 1e6 && h.notify_ns < 1e6;
    expect(host_range, "host costs measured, each in (0, 1 ms): submit dense " + std::to_string(h.submit_dense_ns) +
                           " expert " + std::to_string(h.submit_expert_ns) + " head " + std::to_string(h.submit_head_ns) +
                           " draft " + std::to_string(h.submit_draft_ns) + ", launch " + std::to_string(h.launch_ns) +
                           ", notify " + std::to_string(h.notify_ns));
    expect(h.submit_draft_ns > h.submit_dense_ns, "a draft step takes longer to submit than a dense order");
  } catch (const std::exception& e) {
    expect(false, std::string("read_profile: ") + e.what());
  }
  // Orders timed after an L2 flush (--cold-l2 true), the driver blocking at once (--wait-spin-us 0):
  // both paths run, and a cold expert is not faster than the warm one above (loosely: noise).
  {
    const std::filesystem::path cold = dir / "olmoe.cold.profile.json";
    std::filesystem::remove(cold);
    const std::string cmd2 = std::string("'") + MOESCHED_PROFILE_TOOL +
                             "' --model olmoe-1b-7b --quick --max-copy-mib 4 --cold-l2 true --wait-spin-us 0 -o '" +
                             cold.string() + "'";
    const int rc2 = std::system(cmd2.c_str());
    expect(rc2 == 0, "moesched-profile --cold-l2 true --wait-spin-us 0 exits 0 (" + std::to_string(rc2) + ")");
    if (rc2 == 0) {
      try {
        const moesched::profile::HardwareProfile warm = moesched::io::read_profile(json);
        const moesched::profile::HardwareProfile c = moesched::io::read_profile(cold);
        const double w1 = warm.expert_ffn.front().ns;
        const double c1 = c.expert_ffn.front().ns;
        expect(c1 >= 0.8 * w1, "a cold-L2 expert at 1 token is not faster than a warm one (cold " + std::to_string(c1) +
                                   " ns, warm " + std::to_string(w1) + " ns)");
        expect(c.host.notify_ns > 0 && c.host.launch_ns > 0, "cold profile: launch and notify measured");
      } catch (const std::exception& e) {
        expect(false, std::string("read_profile (cold): ") + e.what());
      }
    }
  }
  std::ifstream in(csv);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  expect(text.rfind("bytes,plain_gbps,executor_gbps\n", 0) == 0, "copy csv header");
  int rows = 0;
  for (char ch : text) rows += ch == '\n' ? 1 : 0;
  expect(rows >= 2, "copy csv has a row");
  std::printf("%d failure(s)\n", failures);
  return failures == 0 ? 0 : 1;
}
