// custom_policy: write your own offloading policy against the Executor concept and replay a
// routing trace with it, beside a library baseline and the lower bound.
//
//   trace ──► Workload (passes x layers: expert unions)
//                 │
//                 ▼                           hooks: on_pass_begin, on_gate, on_expert_done,
//   LayerDriver ── NextLayerPrefetch ◄────────        on_copy_done, on_layer_done
//        │   drives a backend: SimBackend (slots, serial H2D link, one compute stream);
//        │   the same policy runs on the host backend and the CUDA executor unchanged
//        ▼
//   RunMetrics (TPOT, stall, hits)  vs  tpot_lower_bound
//
// The policy below keeps LRU order over everything it holds and, when layer l's gate runs, also
// prefetches (low priority) for layer l + 1 the experts layer l + 1 used in the previous pass,
// evicting the least recently used to make room: a deliberately naive predictor, to show the
// mechanics (on the shipped trace it is slower than LRU: its guesses evict what was needed).
//
// Run:  ./custom_policy [trace] [gpu]   (defaults: the shipped Mixtral SD trace, rtx4090)
#include <moesched/io/presets.hpp>
#include <moesched/io/trace.hpp>
#include <moesched/policy/recency_list.hpp>
#include <moesched/sim/lower_bound.hpp>
#include <moesched/policy/baseline.hpp>
#include <moesched/runtime/archetype.hpp>
#include <moesched/sim/replay.hpp>

#include <cstdio>
#include <exception>
#include <vector>

namespace {

using namespace moesched;

class NextLayerPrefetch {
 public:
  static constexpr std::string_view name() { return "next-layer-repeat"; }

  template <Executor E>
  void on_pass_begin(E& e, const PassInfo&) {
    if (last_used_.empty()) {
      held_ = policy::RecencyList(e.layers() * e.experts_per_layer());
      last_used_.resize(e.layers());
    }
  }
  template <Executor E>
  void on_gate(E& e, std::uint32_t layer, std::span<const ExpertId> needed) {
    const std::uint32_t per = e.experts_per_layer();
    for (ExpertId id : needed) {
      if (e.residency(id) != Residency::absent) {
        held_.touch(id.flat(per));
        e.promote(id);  // a prefetch that is now needed goes first
      } else if (make_room(e)) {
        if (e.copy(id, CopyPriority::high)) held_.touch(id.flat(per));
      }
    }
    if (needed.size() == 0) return;
    // Guess: the next layer uses what it used last pass.
    const std::uint32_t next = layer + 1;
    if (next < e.layers()) {
      for (ExpertId id : last_used_[next]) {
        if (e.residency(id) == Residency::absent && make_room(e)) {
          if (e.copy(id, CopyPriority::low)) held_.touch(id.flat(per));
        }
      }
    }
    last_used_[layer].assign(needed.begin(), needed.end());
  }
  template <Executor E> void on_expert_done(E&, ExpertId) {}
  template <Executor E> void on_copy_done(E&, ExpertId) {}
  template <Executor E> void on_layer_done(E&, std::uint32_t) {}

 private:
  template <Executor E>
  bool make_room(E& e) {
    if (e.free_slots() > 0) return true;
    for (auto v = held_.oldest(); v != policy::RecencyList::none(); v = held_.newer(v)) {
      const ExpertId id = ExpertId::from_flat(v, e.experts_per_layer());
      if (e.evictable(id) && e.evict(id)) {
        held_.remove(v);
        return true;
      }
    }
    return false;  // everything is pinned or moving: the driver calls on_gate again later
  }

  policy::RecencyList held_;
  std::vector<std::vector<ExpertId>> last_used_;
};
// Uses only what the Executor concept offers: it compiles against the archetype, so it runs on
// every backend.
static_assert(Policy<NextLayerPrefetch, runtime::ArchetypeExecutor>);

}  // namespace

int main(int argc, char** argv) {
  try {
    const char* path = argc > 1 ? argv[1] : MOESCHED_SOURCE_DIR "/traces/synthetic/mixtral-sd4.trace.safetensors";
    const auto trace = io::Trace::open(path);
    const auto catalog = io::PresetCatalog::from_environment();
    const ModelDesc model = catalog.model(trace.meta().model.name);
    const HardwareDesc gpu = catalog.gpu(argc > 2 ? argv[2] : "rtx4090");
    const auto& m = trace.meta().model;
    const Workload w = build_workload(trace, {m.moe_layers, m.experts_per_layer, m.top_k});
    const sim::CostModel cost(model, gpu);
    sim::SimOptions opt;
    opt.budget = model.expert_bytes() * (w.max_layer_union() + 16);

    NextLayerPrefetch mine;
    const auto a = sim::replay(w, cost, mine, opt);
    policy::LayerLru lru;
    const auto b = sim::replay(w, cost, lru, opt);
    const auto lb = sim::tpot_lower_bound(w, cost, static_cast<std::uint32_t>(opt.budget.count / model.expert_bytes().count));
    for (const auto* r : {&a, &b}) {
      std::printf("%-18s TPOT %8.2f ms  hit %5.1f%%  prefetch precision %5.1f%%  recall %5.1f%%\n", r->policy.c_str(),
                  r->tpot_ms.mean, 100 * r->hit_rate(), 100 * r->prefetch_precision(), 100 * r->prefetch_recall());
    }
    std::printf("%-18s TPOT %8.2f ms\n", "lower bound", lb.tpot_ms);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "custom_policy: %s\n", e.what());
    return 2;
  }
  return 0;
}
