// two_backends: one policy, two executors. The same policy type runs the same layer driver on the
// discrete-event simulator (virtual time) and on the host backend (real threads, real copies
// between host buffers), and makes the same decisions on both.
//
//   trace ──► Workload ──► LayerDriver ──► SimBackend  (virtual time: cost model, event queue)
//                              │      └──► HostBackend (copy thread, compute thread, workers)
//                              ▼
//                      policy::LayerLru  (sees only the Executor concept)
//
// Run:  ./two_backends [trace] [slots]   (defaults: the shipped recorded SD trace, 21 slots)
#include <moesched/host/backend.hpp>
#include <moesched/io/presets.hpp>
#include <moesched/io/trace.hpp>
#include <moesched/policy/baseline.hpp>
#include <moesched/runtime/driver.hpp>
#include <moesched/sim/replay.hpp>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <vector>

int main(int argc, char** argv) {
  using namespace moesched;
  try {
    const char* path = argc > 1 ? argv[1] : MOESCHED_SOURCE_DIR "/traces/real/mix-prose-sd4.trace.safetensors";
    const auto slots = static_cast<std::uint32_t>(argc > 2 ? std::strtoul(argv[2], nullptr, 10) : 21);
    const auto trace = io::Trace::open(path);
    const auto& tm = trace.meta().model;
    const Workload w = build_workload(trace, {tm.moe_layers, tm.experts_per_layer, tm.top_k}, {.max_requests = 1});
    const auto catalog = io::PresetCatalog::from_environment();
    const ModelDesc model = catalog.model(tm.name);
    const sim::CostModel cost(model, catalog.gpu("rtx4090"));

    // 1. Virtual time.
    policy::LayerLru a;
    const auto simulated = sim::replay(w, cost, a, {.budget = model.expert_bytes() * slots});

    // 2. Real threads: the caller sizes and owns the memory; the backend checks every expert
    //    kernel against the bytes it should read.
    host::HostBackend::Config cfg;
    cfg.layers = tm.moe_layers;
    cfg.experts = tm.experts_per_layer;
    cfg.expert_bytes = model.expert_bytes();
    cfg.slots = slots;
    cfg.link_gbps = 25.0;  // the RTX 4090's PCIe 4 link, as a rate limit
    const auto need = host::HostBackend::requirements(cfg);
    std::vector<std::byte> device(need.device_bytes);
    std::vector<std::byte> store(need.host_bytes);
    host::fill_expert_store(std::span<std::byte>(store), cfg);
    host::HostBackend backend(cfg, device, store);
    if (const auto s = backend.initialize(); !s) {
      std::fprintf(stderr, "two_backends: %s\n", s.describe().c_str());
      return 1;
    }
    runtime::LayerDriver<host::HostBackend> driver(w, backend);
    policy::LayerLru b;
    if (const auto s = driver.run(b); !s) {
      std::fprintf(stderr, "two_backends: %s\n", driver.fault_text().c_str());
      return 1;
    }
    const auto& real = driver.metrics();

    std::printf("%-22s %12s %12s\n", "", "simulator", "host backend");
    std::printf("%-22s %12.3f %12.3f\n", "TPOT ms", simulated.tpot_ms.mean, real.tpot_ms.mean);
    std::printf("%-22s %12llu %12llu\n", "cache hits", static_cast<unsigned long long>(simulated.cache_hits),
                static_cast<unsigned long long>(real.cache_hits));
    std::printf("%-22s %12llu %12llu\n", "experts copied", static_cast<unsigned long long>(simulated.experts_copied),
                static_cast<unsigned long long>(real.experts_copied));
    std::printf("%-22s %12s %12llu\n", "kernel data errors", "-", static_cast<unsigned long long>(backend.verify_failures()));
    const bool same = simulated.cache_hits == real.cache_hits && simulated.experts_copied == real.experts_copied;
    std::printf("same decisions: %s\n", same ? "yes" : "NO");
    return same && backend.verify_failures() == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "two_backends: %s\n", e.what());
    return 2;
  }
}
