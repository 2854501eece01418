// memory_plan: how much of a model's experts a GPU can keep resident, and what a miss costs.
//
//        GPU memory (usable)
//   +-----------------------------------------------------------+
//   | resident weights | KV cache | workspace |  expert cache   |  <- experts_fit experts
//   +-----------------------------------------------------------+
//                                                     ^
//            host memory (pinned): all routed experts | copy = expert_copy_time()
//
// Run:  ./memory_plan [model] [gpu]      (defaults: mixtral-8x7b rtx4090)
#include <moesched/io/presets.hpp>
#include <moesched/moesched.hpp>

#include <cstdio>
#include <exception>

int main(int argc, char** argv) {
  try {
    const auto catalog = moesched::io::PresetCatalog::from_environment();
    const moesched::ModelDesc model = catalog.model(argc > 1 ? argv[1] : "mixtral-8x7b");
    const moesched::HardwareDesc gpu = catalog.gpu(argc > 2 ? argv[2] : "rtx4090");

    moesched::MemoryPlanOptions options;
    options.context_tokens = 4096;
    const moesched::MemoryPlan plan = moesched::plan_memory(model, gpu, options);

    std::printf("%s on %s\n", model.display_name.c_str(), gpu.display_name.c_str());
    std::printf("  usable GPU memory   %8.2f GB\n", plan.usable.gigabytes());
    std::printf("  resident weights    %8.2f GB\n", plan.non_expert.gigabytes());
    std::printf("  KV cache (4k ctx)   %8.2f GB\n", plan.kv_cache.gigabytes());
    std::printf("  expert cache        %8.2f GB -> %llu of %llu experts (%.1f%%)\n",
                plan.expert_cache.gigabytes(), static_cast<unsigned long long>(plan.experts_fit),
                static_cast<unsigned long long>(plan.total_experts), 100.0 * plan.cached_fraction());
    std::printf("  one expert          %8.1f MB: copy %.3f ms, FFN (1 token) %.1f us\n",
                model.expert_bytes().megabytes(),
                moesched::to_ms(moesched::expert_copy_time(model, gpu)),
                moesched::to_us(moesched::expert_ffn_time(model, gpu, 1)));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "memory_plan: %s\n", e.what());
    return 1;
  }
  return 0;
}
