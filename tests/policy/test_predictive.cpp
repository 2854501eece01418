// policy::Predictive over each routing-only predictor: hand-computed TPOTs (CostModel::fixed),
// random configurations (lower bound, memory budget, determinism), the archetype executor, the
// host backend on real threads, and moesched-sim's registry.
#include "support/catch.hpp"
#include "support/routing.hpp"

#include <moesched/host/backend.hpp>
#include <moesched/policy/baseline.hpp>
#include <moesched/policy/predictive.hpp>
#include <moesched/runtime/archetype.hpp>
#include <moesched/runtime/driver.hpp>
#include <moesched/sim/lower_bound.hpp>
#include <moesched/sim/replay.hpp>
#include "registry.hpp"  // moesched-sim's policy registry (sim/src)

#include <array>
#include <optional>
#include <vector>

using namespace moesched;
using namespace std::chrono_literals;
using sim::CostModel;

using PopularityPolicy = policy::Predictive<policy::PopularityPredictor>;
using TransitionPolicy = policy::Predictive<policy::TransitionPredictor>;
using MatrixPolicy = policy::Predictive<policy::ActivationMatrixPredictor>;
static_assert(Policy<PopularityPolicy, sim::SimMachine>);
static_assert(Policy<TransitionPolicy, runtime::Machine<host::HostBackend>>);
static_assert(!JobPolicy<MatrixPolicy, sim::SimMachine>);  // inline: it submits no jobs

namespace {

template <class P>
runtime::RunMetrics run(const Workload& w, const CostModel& c, P& p, Bytes budget) {
  sim::SimOptions o;
  o.budget = budget;
  o.check_invariants = true;
  return sim::replay(w, c, p, o);
}

/// Dense parts of 150 ns, an FFN 20, a copy 100: a copy hides behind one dense part.
CostModel costs() {
  return CostModel::fixed({.dense = 150ns, .expert = 20ns, .chunk_times = {100ns}, .expert_bytes = Bytes{1000}});
}

/// Decode passes of 2 layers, top-1, both layers using `experts[i]` in pass i.
Workload same_in_both_layers(std::initializer_list<std::uint16_t> experts, std::uint32_t per_layer) {
  test::VecRouting r;
  r.layers = 2;
  r.top_k = 1;
  for (auto e : experts) r.add({.request = 0, .phase = StepPhase::decode, .tokens = 1}, {e, e});
  return build_workload(r, {2, per_layer, 1});
}

}  // namespace

TEST_CASE("predictive: hand-computed, transitions warmed on an alternating pattern", "[policy][predictive]") {
  // Passes alternate E0 and E1 in both layers; 2 slots (one per layer). LRU misses every use:
  // per pass 2 x (150 dense + 100 copy + 20 FFN) = 540 ns.
  const Workload train = same_in_both_layers({0, 1, 0, 1}, 3);
  const Workload w = same_in_both_layers({0, 1, 0, 1}, 3);
  const Bytes budget{2000};
  policy::LayerLru lru;
  CHECK(run(w, costs(), lru, budget).tpot_ms.mean == Approx(540e-6));
  // Warmed, the predictor knows E0 -> E1 -> E0 (layer 1 of one pass -> layer 0 of the next,
  // distance 1; layer 1 of a pass -> layer 1 of the next, distance 2) and E -> E (layer 0 -> 1).
  // Pass 0 at 0: L0/E0 copies 0-100, L1/E0 100-200; dense 0-150, FFN 150-170, dense 170-320,
  // FFN 320-340. Later passes: the next pass's L0 expert evicts layer 1's (its turn is furthest)
  // at the pass start and lands during layer 0's dense part; layer 1's waits for layer 0's FFN
  // (the only victim) and lands during layer 1's dense part: every pass takes 340 ns.
  policy::TransitionPredictor t(2);
  policy::warm(t, train);
  TransitionPolicy p(std::move(t), {.depth = 2, .horizon = 2});
  const auto m = run(w, costs(), p, budget);
  CHECK(m.tpot_ms.mean == Approx(340e-6));
  CHECK(m.prefetch_hits == 8);
  CHECK(m.misses == 0);
  CHECK(m.late == 0);
  CHECK(m.prefetch_copies == 8);
  CHECK(m.wasted_bytes == Bytes{0});
  CHECK(m.stall == 0ns);
  // Unwarmed it must learn first: slower than warmed, never below the bound.
  TransitionPolicy cold(policy::TransitionPredictor{2}, {.depth = 2, .horizon = 2});
  const auto c = run(w, costs(), cold, budget);
  CHECK(c.tpot_ms.mean > m.tpot_ms.mean);
  CHECK(c.tpot_ms.mean >= sim::tpot_lower_bound(w, costs(), 2).tpot_ms * (1 - 1e-12));
}

TEST_CASE("predictive: hand-computed, popularity prefetches at the pass start", "[policy][predictive]") {
  // One pass using E2 in both layers, popular in training. LRU: 540 ns. Popularity: L0/E2 copies
  // 0-100 and L1/E2 100-200 from the pass start; both gates find them resident: 150 + 20 + 150 +
  // 20 = 340 ns.
  const Workload train = same_in_both_layers({2, 2, 2}, 3);
  const Workload w = same_in_both_layers({2}, 3);
  const Bytes budget{4000};
  policy::LayerLru lru;
  CHECK(run(w, costs(), lru, budget).tpot_ms.mean == Approx(540e-6));
  policy::PopularityPredictor pop(0.9);
  policy::warm(pop, train);
  PopularityPolicy p(std::move(pop));
  const auto m = run(w, costs(), p, budget);
  CHECK(m.tpot_ms.mean == Approx(340e-6));
  CHECK(m.prefetch_hits == 2);
  CHECK(m.prefetch_copies == 2);
  // Cold, it has nothing to say: exactly per-layer LRU.
  PopularityPolicy cold;
  CHECK(run(w, costs(), cold, budget).tpot_ms.mean == Approx(540e-6));
}

TEST_CASE("predictive: hand-computed, MoE-Infinity matches the request to a stored one", "[policy][predictive]") {
  // 2 layers x 4 experts, 4 slots. Training: request A uses (E0, E1), request B (E2, E3), each a
  // prefill and a decode pass. The replayed request C uses (E2, E3).
  test::VecRouting tr;
  tr.layers = 2;
  tr.top_k = 1;
  for (std::uint32_t q = 0; q < 2; ++q) {
    const auto e0 = static_cast<std::uint16_t>(2 * q), e1 = static_cast<std::uint16_t>(2 * q + 1);
    tr.add({.request = q, .phase = StepPhase::prefill, .tokens = 1}, {e0, e1});
    tr.add({.request = q, .phase = StepPhase::decode, .tokens = 1}, {e0, e1});
  }
  const Workload train = build_workload(tr, {2, 4, 1});
  test::VecRouting r;
  r.layers = 2;
  r.top_k = 1;
  r.add({.request = 0, .phase = StepPhase::prefill, .tokens = 1}, {2, 3});
  r.add({.request = 0, .phase = StepPhase::decode, .tokens = 1}, {2, 3});
  const Workload w = build_workload(r, {2, 4, 1});
  const Bytes budget{4000};
  // LRU: prefill 540 ns (TTFT); decode finds both resident: 340 ns.
  policy::LayerLru lru;
  const auto l = run(w, costs(), lru, budget);
  CHECK(l.ttft_ms.mean == Approx(540e-6));
  CHECK(l.tpot_ms.mean == Approx(340e-6));
  // MoE-Infinity: the prefill's layer-0 gate (150) matches B; B's layer 1 (E3) is prefetched
  // behind the demand copy of L0/E2 (150-250): 250-350, resident at layer 1's gate (420): TTFT
  // 440 ns. Decode: 340 ns.
  policy::ActivationMatrixPredictor a(4);
  policy::warm(a, train);
  MatrixPolicy p(std::move(a), {.horizon = 0});
  const auto m = run(w, costs(), p, budget);
  CHECK(p.predictor().best_match() == 1);  // B (A was stored first)
  CHECK(m.ttft_ms.mean == Approx(440e-6));
  CHECK(m.tpot_ms.mean == Approx(340e-6));
  CHECK(m.layers[1].prefetch_hits == 1);
}

TEST_CASE("predictive: never below the lower bound; within the budget; deterministic", "[policy][predictive][lower_bound]") {
  struct Config {
    std::uint32_t layers, experts, top_k, requests, decode, batch;
    std::optional<SdReplay> sd;
    std::uint32_t slots_extra, chunks;
  };
  const std::vector<Config> configs{
      {4, 8, 2, 2, 40, 1, std::nullopt, 4, 1},
      {4, 8, 2, 3, 30, 2, std::nullopt, 8, 3},
      {3, 16, 4, 2, 40, 1, SdReplay{.gamma = 3, .acceptance = 0.6}, 6, 2},
      {6, 8, 2, 2, 50, 2, SdReplay{.gamma = 4, .acceptance = 0.8}, 20, 1},
      {2, 32, 8, 1, 60, 1, std::nullopt, 30, 3},
  };
  for (std::size_t i = 0; i < configs.size(); ++i) {
    const Config& k = configs[i];
    CAPTURE(i);
    const auto routing = test::random_routing(500 + i, k.layers, k.experts, k.top_k, k.requests, 4, k.decode, 0.6);
    const Workload w = build_workload(routing, {k.layers, k.experts, k.top_k}, {.batch = k.batch, .sd = k.sd});
    std::vector<Nanoseconds> chunks(k.chunks, Nanoseconds{90 / k.chunks});
    const CostModel c = CostModel::fixed({.dense = 120ns, .expert = 25ns, .expert_per_token = 3ns, .head = 15ns,
                                          .draft_step = 50ns, .chunk_times = chunks, .expert_bytes = Bytes{900}});
    const std::uint32_t slots = w.max_layer_union() + k.slots_extra;
    const Bytes budget{900ULL * slots};
    const auto lb = sim::tpot_lower_bound(w, c, slots);
    for (const policy::PredictiveOptions o : {policy::PredictiveOptions{}, policy::PredictiveOptions{.depth = 4, .lookahead = 2, .horizon = 0, .top = 3}}) {
      CAPTURE(o.depth, o.horizon);
      std::vector<runtime::RunMetrics> runs;
      PopularityPolicy a(policy::PopularityPredictor{0.8}, o);
      runs.push_back(run(w, c, a, budget));
      TransitionPolicy b(policy::TransitionPredictor{2}, o);
      runs.push_back(run(w, c, b, budget));
      MatrixPolicy d(policy::ActivationMatrixPredictor{8}, o);
      runs.push_back(run(w, c, d, budget));
      for (const auto& m : runs) {
        CHECK(m.tpot_ms.mean >= lb.tpot_ms * (1 - 1e-12));
        CHECK(m.peak_expert_memory <= budget);
        CHECK(m.uses == w.all_uses().size());
        CHECK(m.cache_hits + m.prefetch_hits + m.late + m.misses == m.uses);
        CHECK(m.prefetch_used <= m.prefetch_copies);
        CHECK(m.decode_tokens == w.decode_tokens());
      }
      PopularityPolicy a2(policy::PopularityPredictor{0.8}, o);
      CHECK(run(w, c, a2, budget) == runs[0]);
      TransitionPolicy b2(policy::TransitionPredictor{2}, o);
      CHECK(run(w, c, b2, budget) == runs[1]);
      MatrixPolicy d2(policy::ActivationMatrixPredictor{8}, o);
      CHECK(run(w, c, d2, budget) == runs[2]);
    }
  }
}

TEST_CASE("predictive: runs on only what the Executor concept offers", "[policy][predictive][archetype]") {
  using runtime::ArchetypeExecutor;
  using Control = ArchetypeExecutor::Control;
  ArchetypeExecutor e(2, 4, 4);
  TransitionPolicy p(policy::TransitionPredictor{1}, {.horizon = 1, .top = 1});
  for (std::uint64_t pass = 0; pass < 2; ++pass) {
    p.on_pass_begin(e, PassInfo{pass, StepPhase::decode, 1, 1, 0});
    for (std::uint16_t layer = 0; layer < 2; ++layer) {
      const std::array<ExpertId, 1> need{ExpertId{layer, static_cast<std::uint16_t>(layer + 1)}};
      p.on_gate(e, layer, need);
      REQUIRE(e.residency(need[0]) != Residency::absent);
      if (e.residency(need[0]) != Residency::resident) {
        Control::land(e, need[0]);
        p.on_copy_done(e, need[0]);
      }
      p.on_expert_done(e, need[0]);
      p.on_layer_done(e, layer);
    }
  }
  // Pass 0: two demand copies; pass 1 finds both resident (4 slots): no further copy. Rankings:
  // layer 0 at each pass start, layer 1 after layer 0's gate (horizon 1).
  CHECK(Control::copies(e) == 2);
  CHECK(p.rankings() == 4);
}

namespace {
struct Rig {
  host::HostBackend::Config cfg;
  std::vector<std::byte> device;
  std::vector<std::byte> store;
  host::HostBackend backend;
  explicit Rig(const host::HostBackend::Config& c)
      : cfg(c),
        device(host::HostBackend::requirements(c).device_bytes),
        store(host::HostBackend::requirements(c).host_bytes),
        backend(c, device, store) {
    host::fill_expert_store(std::span<std::byte>(store), c);
    REQUIRE(backend.initialize());
  }
};
}  // namespace

TEST_CASE("predictive: every predictor runs on the host backend's real threads", "[policy][predictive][host]") {
  const auto routing = test::random_routing(77, 4, 8, 2, 2, 4, 30, 0.5);
  const Workload w = build_workload(routing, {4, 8, 2}, {.sd = SdReplay{.gamma = 3, .acceptance = 0.6}});
  host::HostBackend::Config cfg;
  cfg.layers = 4;
  cfg.experts = 8;
  cfg.expert_bytes = Bytes{4096};
  cfg.slots = w.max_layer_union() + 4;
  cfg.chunks = 2;
  cfg.cpu_workers = 1;
  auto check = [&](auto& pol) {
    Rig rig(cfg);
    runtime::LayerDriver<host::HostBackend> driver(w, rig.backend, {.check_invariants = true});
    const runtime::Status s = driver.run(pol);
    INFO(driver.fault_text());
    REQUIRE(s);
    CHECK(rig.backend.verify_failures() == 0);
    CHECK(rig.backend.expert_kernels() == w.all_uses().size());
    const auto& m = driver.metrics();
    CHECK(m.uses == w.all_uses().size());
    CHECK(m.peak_expert_memory <= Bytes{4096ULL * cfg.slots});
    CHECK(m.decode_tokens == w.decode_tokens());
  };
  PopularityPolicy a;
  check(a);
  TransitionPolicy b;
  check(b);
  MatrixPolicy c(policy::ActivationMatrixPredictor{8}, {.horizon = 0});
  check(c);
}

TEST_CASE("registry: routing-only predictive policies by name", "[policy][predictive]") {
  for (auto n : tools::predictive_policy_names()) {
    CHECK_NOTHROW(tools::check_policy_name(n));
    CHECK_FALSE(tools::policy_summary(n).empty());
  }
  CHECK(test::thrown_message<ConfigError>([] { tools::check_policy_name("predict:oracle"); }).find("predict:transition") != std::string::npos);
  const Workload train = same_in_both_layers({0, 1, 0, 1}, 3);
  const Workload w = same_in_both_layers({0, 1, 0, 1}, 3);
  sim::SimOptions o;
  o.budget = Bytes{2000};
  o.check_invariants = true;
  tools::PolicyInputs in;
  in.training = &train;
  const auto m = tools::run_policy("predict:transition", w, costs(), o, in);
  CHECK(m.policy == "predict:transition");
  CHECK(m.tpot_ms.mean == Approx(340e-6));  // as hand-computed above (same defaults)
  const auto mi = tools::run_policy("moe-infinity", w, costs(), o);
  CHECK(mi.policy == "moe-infinity");
  const Workload other = same_in_both_layers({0}, 4);
  in.training = &other;
  CHECK(test::thrown_message<ConfigError>([&] { (void)tools::run_policy("predict:popularity", w, costs(), o, in); }).find("train_trace") != std::string::npos);
}
