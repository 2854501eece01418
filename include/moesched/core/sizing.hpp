#pragma once
/// First-order sizing: how much of a model's experts fit on a GPU, and what one expert costs to
/// copy and to compute.
///
///   auto plan = moesched::plan_memory(model, gpu, {.context_tokens = 4096, .batch = 1});
///   plan.expert_cache;      // bytes left for routed experts after resident weights and KV cache
///   plan.experts_fit;       // how many routed experts that holds
///   auto copy = moesched::expert_copy_time(model, gpu);             // whole expert, one copy
///   auto ffn  = moesched::expert_ffn_time(model, gpu, /*tokens=*/1);
///
/// These are the back-of-envelope numbers of the design guide's tables, computed from presets.
/// The analytical latency model and the simulator refine them; this header gives the sizes every
/// later component is budgeted against.

#include "moesched/core/config.hpp"
#include "moesched/core/hardware.hpp"
#include "moesched/core/model.hpp"
#include "moesched/core/units.hpp"

#include <algorithm>
#include <cstdint>

namespace moesched {

/// What runs besides the weights: context length and batch (for the KV cache) and a workspace.
struct MemoryPlanOptions {
  std::uint64_t context_tokens = 4096;  ///< KV-cache length per sequence
  std::uint32_t batch = 1;              ///< sequences decoding together
  Bytes workspace = Bytes::mib(512);    ///< activations, GEMM workspace, staging buffers
  Bytes extra_resident{};               ///< anything else resident, e.g. a draft model
};

/// Where the GPU's memory goes.
struct MemoryPlan {
  Bytes usable;        ///< device memory minus the runtime's reservation
  Bytes non_expert;    ///< resident weights that are not routed experts
  Bytes kv_cache;
  Bytes workspace;
  Bytes extra_resident;
  Bytes expert_cache;  ///< what is left for routed experts (0 if the rest does not fit)
  std::uint64_t experts_fit = 0;     ///< whole routed experts that fit in expert_cache
  std::uint64_t total_experts = 0;
  bool fits_without_experts = false; ///< whether the resident part fits at all
  bool fits_entirely = false;        ///< whether every expert fits: no offloading needed

  /// Share of routed experts that can be resident, in [0, 1].
  [[nodiscard]] double cached_fraction() const noexcept {
    return total_experts == 0 ? 0.0
                              : static_cast<double>(experts_fit) / static_cast<double>(total_experts);
  }
};

/// Split the GPU's memory between resident weights, KV cache, workspace and the expert cache.
[[nodiscard]] inline MemoryPlan plan_memory(const ModelDesc& model, const HardwareDesc& gpu,
                                            const MemoryPlanOptions& opt = {}) {
  MemoryPlan p;
  p.usable = gpu.usable_memory();
  p.non_expert = model.non_expert_bytes();
  p.kv_cache = model.shape.kv_cache_bytes_per_token() * (opt.context_tokens * opt.batch);
  p.workspace = opt.workspace;
  p.extra_resident = opt.extra_resident;
  const Bytes taken = p.non_expert + p.kv_cache + p.workspace + p.extra_resident;
  p.fits_without_experts = taken <= p.usable;
  p.expert_cache = saturating_sub(p.usable, taken);
  p.total_experts = model.shape.total_experts();
  const Bytes e = model.expert_bytes();
  p.experts_fit = std::min<std::uint64_t>(p.expert_cache.count / e.count, p.total_experts);
  p.fits_entirely = p.fits_without_experts && p.experts_fit == p.total_experts;
  return p;
}

/// Time to copy one routed expert host-to-device in `chunks` copies (1 = one copy of the whole
/// expert; 3 = one per matrix, as ProMoE's prefetcher does). Copies run back to back on one link.
[[nodiscard]] inline Nanoseconds expert_copy_time(const ModelDesc& model, const HardwareDesc& gpu,
                                                  std::uint32_t chunks = 1) {
  if (chunks <= 1) return gpu.h2d.time(model.expert_bytes());
  if (chunks == 3) {
    Nanoseconds t{0};
    for (Bytes b : model.shape.expert_matrices(model.dtype).bytes) t += gpu.h2d.time(b);
    return t;
  }
  const Bytes total = model.expert_bytes();
  const Bytes each{(total.count + chunks - 1) / chunks};
  Nanoseconds t{0};
  Bytes left = total;
  while (left.count > 0) {
    const Bytes piece = std::min(each, left);
    t += gpu.h2d.time(piece);
    left -= piece;
  }
  return t;
}

/// First-order time of one routed expert's FFN over `tokens` tokens: three matrix products
/// (gate, up, down), each a roofline of its FLOPs and its weight bytes plus a kernel overhead.
[[nodiscard]] inline Nanoseconds expert_ffn_time(const ModelDesc& model, const HardwareDesc& gpu,
                                                 std::uint32_t tokens) {
  const auto m = model.shape.expert_matrices(model.dtype);
  const double flops_per_matrix =
      2.0 * static_cast<double>(model.shape.hidden) * model.shape.moe_ffn * tokens;
  const ComputeClass c = dtype_info(model.dtype).compute;
  Nanoseconds t{0};
  for (Bytes b : m.bytes) t += gpu.compute.matmul_time(flops_per_matrix, b, c);
  return t;
}

}  // namespace moesched
