// The published policies (policy::Pipeline presets: mixtral-offloading, promoe, spmoe, moesched):
// a hand-computed case each (CostModel::fixed); for each ProMoE and SP-MoE mechanism (stride,
// early preemption, cutoff, chunked copies, LRU touched by prefetch) a workload built to exercise
// it, on which switching it off changes the outcome in the expected direction; invariants on
// random configurations (never below the lower bound, within the budget, every use computed with
// a resident expert: the driver's checks throw InvariantError otherwise), determinism, the host
// backend's real threads, and moesched-sim's registry (names, options, predictors, labels).
#include "support/catch.hpp"
#include "support/predictions.hpp"
#include "support/routing.hpp"
#include "support/shapes.hpp"

#include <moesched/host/backend.hpp>
#include <moesched/policy/baseline.hpp>
#include <moesched/policy/mixtral_offloading.hpp>
#include <moesched/policy/moesched_policy.hpp>
#include <moesched/policy/promoe.hpp>
#include <moesched/policy/spmoe.hpp>
#include <moesched/runtime/archetype.hpp>
#include <moesched/runtime/driver.hpp>
#include <moesched/sim/lower_bound.hpp>
#include <moesched/sim/replay.hpp>
#include "registry.hpp"  // moesched-sim's policy registry (sim/src)

#include <algorithm>
#include <array>
#include <memory>
#include <optional>
#include <string>
#include <vector>

using namespace moesched;
using namespace std::chrono_literals;
using sim::CostModel;

static_assert(JobPolicy<policy::MixtralOffloading, sim::SimMachine>);
static_assert(JobPolicy<policy::ProMoE, sim::SimMachine>);
static_assert(JobPolicy<policy::SpMoE, runtime::Machine<host::HostBackend>>);
static_assert(JobPolicy<policy::Moesched, runtime::Machine<host::HostBackend>>);

namespace {

template <class P>
runtime::RunMetrics run(const Workload& w, const CostModel& c, P& p, Bytes budget) {
  sim::SimOptions o;
  o.budget = budget;
  o.check_invariants = true;
  return sim::replay(w, c, p, o);
}

/// Dense parts of 150 ns, an FFN 20, a copy 100 (one chunk).
CostModel costs() {
  return CostModel::fixed({.dense = 150ns, .expert = 20ns, .chunk_times = {100ns}, .expert_bytes = Bytes{1000}});
}

std::vector<policy::TableInput> one_table(const policy::PredictionTable& t, Nanoseconds latency = 0ns) {
  return {{&t, latency, runtime::JobResource::cpu_worker}};
}

policy::AnyRoutingPredictor transition() { return policy::TransitionPredictor{2}; }

/// Decode passes of `layers` layers, top-1; pass i uses per_pass[i][l] at layer l.
Workload decode_passes(const std::vector<std::vector<std::uint16_t>>& per_pass, std::uint32_t layers, std::uint32_t experts) {
  test::VecRouting r;
  r.layers = layers;
  r.top_k = 1;
  for (const auto& p : per_pass) {
    r.steps.push_back({.request = 0, .phase = StepPhase::decode, .tokens = 1, .first_token = r.tokens()});
    r.ids.insert(r.ids.end(), p.begin(), p.end());
  }
  return build_workload(r, {layers, experts, 1});
}

/// A table predicting, for every pass, `candidates(pass, layer)` for each layer listed, usable
/// after layer `after(layer)` (-1: the pass start).
template <class Candidates, class After>
policy::PredictionTable table_of(const Workload& w, const std::vector<std::uint16_t>& layers, Candidates&& candidates,
                                 After&& after, std::uint16_t draft_tokens = 0) {
  policy::PredictionTable t("hand");
  for (std::uint64_t p = 0; p < w.pass_count(); ++p) {
    t.begin_pass();
    for (std::uint16_t l : layers) {
      const std::vector<std::uint16_t> c = candidates(p, l);
      t.add({l, static_cast<std::int16_t>(after(l)), draft_tokens, 0, 0}, c);
    }
  }
  return t;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Hand-computed cases

TEST_CASE("mixtral-offloading: hand-computed speculative loading from a right skip gate", "[policy][published]") {
  // 2 layers x 3 experts, 2 slots (one per layer); passes alternate E0 and E1 in both layers.
  // LRU misses every use: 2 x (150 + 100 + 20) = 540 ns a pass. With the next layer's experts
  // guessed right (layer 0 at the pass start, layer 1 after layer 0): L0's copy 0-100 lands before
  // its gate (150), FFN 150-170; L1's copy 170-270 (evicting the previous pass's, its layer's LRU)
  // lands before its gate (320), FFN 320-340: 340 ns a pass, from the first.
  const Workload w = decode_passes({{0, 0}, {1, 1}, {0, 0}, {1, 1}}, 2, 3);
  const auto t = test::perfect_predictions(w, 1);
  const Bytes budget{2000};
  policy::LayerLru lru;
  const auto l = run(w, costs(), lru, budget);
  CHECK(l.tpot_ms.mean == Approx(540e-6));
  policy::MixtralOffloading p(one_table(t), transition());
  const auto m = run(w, costs(), p, budget);
  CHECK(m.tpot_ms.mean == Approx(340e-6));
  CHECK(m.prefetch_hits == 8);
  CHECK(m.misses == 0);
  CHECK(p.predictor_label() == "perfect");
  // Speculation off: exactly per-layer LRU.
  policy::MixtralOffloading off(one_table(t), transition(), {.speculate = false});
  const auto o = run(w, costs(), off, budget);
  CHECK(off.predictor_label() == "none");
  CHECK(o.tpot_ms.mean == Approx(l.tpot_ms.mean));
  CHECK(o.misses == l.misses);
  CHECK(o.bytes_copied == l.bytes_copied);
}

TEST_CASE("promoe: hand-computed, and stride gives a copy two layers of lead", "[policy][published][stride]") {
  // 4 layers x 4 experts; layers 0 and 2 always use E0, layers 1 and 3 cycle E0..E3 (never held by
  // an LRU of up to 3). A layer is 100 + 20 = 120 ns, a copy 150 ns: more than one layer, less than
  // two. 8 slots. Predictions right, made two layers ahead (ProMoE's stride).
  std::vector<std::vector<std::uint16_t>> passes;
  for (std::uint16_t i = 0; i < 16; ++i) {
    const auto x = static_cast<std::uint16_t>(i % 4);
    passes.push_back({0, x, 0, static_cast<std::uint16_t>((i + 1) % 4)});
  }
  const Workload w = decode_passes(passes, 4, 4);
  const auto t = test::perfect_predictions(w, 2);
  const CostModel c = CostModel::fixed({.dense = 100ns, .expert = 20ns, .chunk_times = {150ns}, .expert_bytes = Bytes{1000}});
  const Bytes budget{8000};
  // Stride 2, a steady pass: layer 1's copy 0-150 (from the pass start) before its gate at 220;
  // layer 3's 240-390 (after layer 1) before its gate at 460: 480 ns, no stall.
  policy::ProMoE s2(one_table(t), transition(), {.stride = 2});
  const auto m2 = run(w, c, s2, budget);
  CHECK(m2.tpot_ms.p50 == Approx(480e-6));
  // Stride 1: layer 1's copy only after layer 0 (120-270, gate 220: 50 ns stall), layer 3's after
  // layer 2 (410-560, gate 510: 50 ns): 580 ns.
  policy::ProMoE s1(one_table(t), transition(), {.stride = 1});
  const auto m1 = run(w, c, s1, budget);
  CHECK(m1.tpot_ms.p50 == Approx(580e-6));
  CHECK(m2.tpot_ms.mean < m1.tpot_ms.mean);
  CHECK(m1.late > m2.late);
  CHECK(m2.stall < m1.stall);
  // The routing-only fallback with stride ranks two layers ahead after each gate.
  policy::ProMoE r(std::vector<policy::TableInput>{}, transition(), {.stride = 2});
  (void)run(w, c, r, budget);
  CHECK(r.predictor_label() == "transition");
  REQUIRE(r.routing() != nullptr);
  // Per pass: 2 at the start, then 2, 2, 1, 0 after the gates of layers 0-3 (clipped at layer 3).
  CHECK(r.routing()->rankings() == 16 * 7);
}

TEST_CASE("spmoe: hand-computed drafting-time prefetch from the draft gate", "[policy][published][cutoff]") {
  // 2 layers x 4 experts, 2 slots; verification passes of 2 tokens (1 draft, accepted), both
  // tokens using E0 (even passes) or E1 (odd) at both layers. A draft step 50 ns, a layer 150 +
  // 20, a copy 100. LRU: 50 + 2 x 270 = 590 ns a pass, 295 a token.
  test::VecRouting r;
  r.layers = 2;
  r.top_k = 1;
  for (std::uint16_t i = 0; i < 8; ++i) {
    const auto x = static_cast<std::uint16_t>(i % 2);
    r.add({.request = 0, .phase = StepPhase::verify, .tokens = 2, .draft_len = 1, .accepted = 1}, {x, x, x, x});
  }
  const Workload w = build_workload(r, {2, 4, 1});
  const CostModel c = CostModel::fixed({.dense = 150ns, .expert = 20ns, .draft_step = 50ns, .chunk_times = {100ns},
                                        .expert_bytes = Bytes{1000}});
  const auto t = table_of(
      w, {0, 1}, [&](std::uint64_t p, std::uint16_t) { return std::vector<std::uint16_t>{static_cast<std::uint16_t>(p % 2)}; },
      [](std::uint16_t) { return -1; }, /*draft_tokens=*/1);
  const policy::AnalyticalLatency lat{.copy_fixed = 0ns, .link_bytes_per_ns = 10.0, .expert = Bytes{1000},
                                      .dense = 150ns, .expert_ffn = 20ns, .draft_step = 50ns};
  const Bytes budget{2000};
  policy::LayerLru lru;
  CHECK(run(w, c, lru, budget).tpot_ms.p50 == Approx(295e-6));
  // The solver: a layer takes 170 > one copy (100), so layer-ahead prefetch hides a copy and
  // drafting-time prefetch (one 50 ns draft step) gains nothing: cutoff 0. Layer 0 is still one
  // layer ahead of the pass start: its copy 50-150 (after the draft, evicting layer 1's, whose
  // turn is furthest) lands before its gate (200); layer 1's waits for layer 0's FFN (the only
  // victim): 220-320, before its gate (370). 390 ns a pass, 195 a token.
  policy::SpMoE p(one_table(t), transition(), lat);
  const auto m = run(w, c, p, budget);
  CHECK(m.tpot_ms.p50 == Approx(195e-6));
  CHECK(p.cutoff_passes() == 8);
  CHECK(p.cutoff_sum() == 0);
  // A fixed cutoff of 2 gives the same schedule here (layer 1 cannot evict before layer 0 ran).
  policy::SpMoE all(one_table(t), transition(), lat, {.cutoff = policy::CutoffRule::all});
  CHECK(run(w, c, all, budget).tpot_ms.p50 == Approx(195e-6));
  CHECK(all.cutoff_sum() == 16);
  // A cutoff rule that needs the latency model refuses to run without one.
  CHECK(test::thrown_message<ConfigError>([&] { [[maybe_unused]] policy::SpMoE x(one_table(t), transition(), std::nullopt); })
            .find("latency model") != std::string::npos);
}

TEST_CASE("moesched: hand-computed, the reuse model keeps the expert a cycle needs next", "[policy][published][reuse]") {
  // One layer x 3 experts, 2 slots, passes A, B, C, A, B, C, A, B, C, no predictor. LRU misses
  // every pass (a cycle of 3 through 2 slots). The reuse model learns from each expert's last four
  // turns: at pass 3 (C) it evicts B, asked two turns ago, a state seen once and then not asked
  // (p = 1/3), rather than A, asked three turns ago, a state not seen yet (p = 1/2); from then on
  // the state "asked three turns ago" keeps being asked and "asked last turn" or "two turns ago"
  // not, so it keeps the one the cycle needs next: passes 4, 6, 8 hit. Misses 6 of 9: mean
  // (6 x 270 + 3 x 170) / 9 ns.
  const Workload w = decode_passes({{0}, {1}, {2}, {0}, {1}, {2}, {0}, {1}, {2}}, 1, 3);
  const Bytes budget{2000};
  policy::LayerLru lru;
  const auto l = run(w, costs(), lru, budget);
  CHECK(l.misses == 9);
  policy::Moesched p(std::vector<policy::TableInput>{}, transition(), std::nullopt, {.cutoff = false});
  p.drop_predictors();
  const auto m = run(w, costs(), p, budget);
  CHECK(m.misses == 6);
  CHECK(m.cache_hits == 3);
  CHECK(m.tpot_ms.mean == Approx((6 * 270e-6 + 3 * 170e-6) / 9));
  // Utility off: layer-clock victims, which are LRU within the layer: every pass misses.
  policy::Moesched off(std::vector<policy::TableInput>{}, transition(), std::nullopt, {.utility = false, .cutoff = false});
  off.drop_predictors();
  CHECK(run(w, costs(), off, budget).misses == 9);
}

// ---------------------------------------------------------------------------------------------
// Each mechanism switched off on a workload built for it

TEST_CASE("promoe: early preemption frees the link for the next layer's right guess", "[policy][published][preempt]") {
  // 3 layers x 64 experts, every expert fresh in every pass (nothing is reused: every use is
  // copied), 64 slots (no eviction). Layer 1's predictions are three wrong guesses, layer 2's is
  // right; a copy takes 200 ns, a layer 170. At layer 1's gate (320) its second guess is on the
  // link and its third queued. With preemption the third is cancelled and layer 2's right guess
  // follows layer 1's demand copy; without, the third wrong guess runs first and layer 2 waits
  // 200 ns longer.
  std::vector<std::vector<std::uint16_t>> passes;
  for (std::uint16_t i = 0; i < 6; ++i) {
    const auto b = static_cast<std::uint16_t>(i * 10);
    passes.push_back({b, static_cast<std::uint16_t>(b + 1), static_cast<std::uint16_t>(b + 2)});
  }
  const Workload w = decode_passes(passes, 3, 64);
  const auto t = table_of(
      w, {1, 2},
      [](std::uint64_t p, std::uint16_t l) {
        const auto b = static_cast<std::uint16_t>(p * 10);
        if (l == 1) return std::vector<std::uint16_t>{static_cast<std::uint16_t>(b + 5), static_cast<std::uint16_t>(b + 6),
                                                      static_cast<std::uint16_t>(b + 7)};
        return std::vector<std::uint16_t>{static_cast<std::uint16_t>(b + 2)};
      },
      [](std::uint16_t) { return -1; });
  const CostModel c = CostModel::fixed({.dense = 150ns, .expert = 20ns, .chunk_times = {200ns}, .expert_bytes = Bytes{1000}});
  const Bytes budget{64000};
  policy::ProMoE on(one_table(t), transition(), {.depth = 3});
  policy::ProMoE off(one_table(t), transition(), {.preempt = false, .depth = 3});
  const auto a = run(w, c, on, budget);
  const auto b = run(w, c, off, budget);
  CHECK(a.cancelled > 0);
  CHECK(b.cancelled == 0);
  CHECK(a.bytes_copied < b.bytes_copied);
  CHECK(a.tpot_ms.mean < b.tpot_ms.mean);
  CHECK(a.layers[2].stall < b.layers[2].stall);
}

namespace {
/// 10 decode passes over 2 layers x 4 experts, top-2: layer 0 always {E0, E1}, layer 1
/// alternating {E0, E1} and {E0, E2}.
Workload alternating_second_layer() {
  test::VecRouting r;
  r.layers = 2;
  r.top_k = 2;
  for (std::uint16_t i = 0; i < 10; ++i) {
    const auto x = static_cast<std::uint16_t>(i % 2 == 0 ? 1 : 2);
    r.add({.request = 0, .phase = StepPhase::decode, .tokens = 1}, {0, 1, 0, x});
  }
  return build_workload(r, {2, 4, 2});
}
}  // namespace

TEST_CASE("promoe: a prefetch that touches its resident guess keeps it", "[policy][published][touch]") {
  // 2 layers x 4 experts, top-2, 4 slots (2 per layer). Layer 0 always {E0, E1}; layer 1
  // alternates {E0, E1} and {E0, E2}, predicted right at the pass start as [E0, new]. E0 is its
  // layer's least recently used when the prediction comes: touched, it stays and the other goes;
  // not touched, E0 is the victim of the new expert's copy, and the gate misses it.
  const Workload w = alternating_second_layer();
  const auto t = table_of(
      w, {1},
      [](std::uint64_t p, std::uint16_t) {
        return std::vector<std::uint16_t>{0, static_cast<std::uint16_t>(p % 2 == 0 ? 1 : 2)};
      },
      [](std::uint16_t) { return -1; });
  const Bytes budget{4000};
  policy::ProMoE on(one_table(t), transition());
  policy::ProMoE off(one_table(t), transition(), {.touch = false});
  const auto a = run(w, costs(), on, budget);
  const auto b = run(w, costs(), off, budget);
  CHECK(a.layers[1].misses == 0);
  CHECK(b.layers[1].misses > 0);
  CHECK(a.tpot_ms.mean < b.tpot_ms.mean);
}

TEST_CASE("promoe: a prefetch never evicts a resident expert its own prediction names", "[policy][published][touch]") {
  // As above, but the prediction ranks the new expert first, [new, E0], and a copy takes 200 ns.
  // The copy for `new` is issued before the pump reaches E0, while E0 is still its layer's least
  // recently used. E0 is a pending candidate of the same prediction: spared, the old expert goes,
  // one copy a pass (0-200 ns, before layer 1's gate at 320). Evicting it (what the queue did, and
  // still does with touch off) re-copies E0 behind `new` (200-400 ns): late at every gate.
  const Workload w = alternating_second_layer();
  const auto t = table_of(
      w, {1},
      [](std::uint64_t p, std::uint16_t) {
        return std::vector<std::uint16_t>{static_cast<std::uint16_t>(p % 2 == 0 ? 1 : 2), 0};
      },
      [](std::uint16_t) { return -1; });
  const CostModel c = CostModel::fixed({.dense = 150ns, .expert = 20ns, .chunk_times = {200ns}, .expert_bytes = Bytes{1000}});
  const Bytes budget{4000};
  policy::ProMoE on(one_table(t), transition());
  policy::ProMoE off(one_table(t), transition(), {.touch = false});
  policy::ProMoE none(one_table(t), transition());
  none.drop_predictors();
  const auto a = run(w, c, on, budget);
  const auto b = run(w, c, off, budget);
  const auto n = run(w, c, none, budget);
  CHECK(a.layers[1].misses == 0);
  CHECK(a.layers[1].late <= 1);  // the first pass only
  CHECK(b.layers[1].late > 5);
  CHECK(a.prefetch_copies < b.prefetch_copies);
  CHECK(a.evictions < b.evictions);
  CHECK(a.tpot_ms.mean < b.tpot_ms.mean);
  CHECK(a.tpot_ms.mean < n.tpot_ms.mean);  // right predictions: better than none
}

TEST_CASE("promoe: stride 1 with a predictor slower than a layer's dense part is always too late", "[policy][published][stride]") {
  // moesched-sim's promoe:stride=1 on the real traces equals predictor=none: the 200 us MLP runs
  // after layer t - 1 and layer t's gate comes one dense part (tens of us) later. Here: layers of
  // 100 + 20 ns, copies of 150, a predictor of 110 ns, right predictions. Stride 2 (released after
  // layer t - 2) has a layer more: its copies start before the gate and the gate waits less than
  // for a demand copy; with stride 1 every prediction comes back after its gate (counted too late,
  // layer 0's too: it is ready at the pass start, 100 ns before its gate) and the run is exactly
  // the run without a predictor.
  std::vector<std::vector<std::uint16_t>> passes;
  for (std::uint16_t i = 0; i < 16; ++i) {
    const auto x = static_cast<std::uint16_t>(i % 4);
    passes.push_back({0, x, 0, static_cast<std::uint16_t>((i + 1) % 4)});
  }
  const Workload w = decode_passes(passes, 4, 4);
  const auto t = test::perfect_predictions(w, 2);
  const CostModel c = CostModel::fixed({.dense = 100ns, .expert = 20ns, .chunk_times = {150ns}, .expert_bytes = Bytes{1000}});
  const Bytes budget{8000};
  policy::ProMoE s2(one_table(t, 110ns), transition(), {.stride = 2});
  policy::ProMoE s1(one_table(t, 110ns), transition(), {.stride = 1});
  policy::ProMoE none(one_table(t, 110ns), transition(), {.stride = 1});
  none.drop_predictors();
  const auto m2 = run(w, c, s2, budget);
  const auto m1 = run(w, c, s1, budget);
  const auto mn = run(w, c, none, budget);
  CHECK(m2.prefetch_copies > 0);
  CHECK(m1.prefetch_copies == 0);
  CHECK(s1.too_late() == t.set_count());
  CHECK(m1.tpot_ms.mean == Approx(mn.tpot_ms.mean));
  CHECK(m1.bytes_copied == mn.bytes_copied);
  CHECK(m2.tpot_ms.mean < m1.tpot_ms.mean);
}

TEST_CASE("spmoe: the solver's cutoff keeps wrong deep guesses from evicting needed experts", "[policy][published][cutoff]") {
  // 4 layers x 4 experts, 4 slots; verification passes of 3 tokens (2 drafts) all using E0 at every
  // layer: once warm, every expert needed is resident. The draft gate is right for layers 0 and 1
  // (E0) and wrong for layers 2 and 3 (E1). Prefetching every layer during drafting (cutoff all)
  // evicts resident E0s for the wrong guesses; the solver learns the deep layers' low recall and
  // stops at layer 2 (a layer of 170 ns hides less than a copy of 400, two copies fit the
  // 1000 ns draft window). No prefetch beyond the cutoff in either run (beyond 0).
  test::VecRouting r;
  r.layers = 4;
  r.top_k = 1;
  for (int i = 0; i < 12; ++i) {
    r.add({.request = 0, .phase = StepPhase::verify, .tokens = 3, .draft_len = 2, .accepted = 2},
          {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0});
  }
  const Workload w = build_workload(r, {4, 4, 1});
  const CostModel c = CostModel::fixed({.dense = 150ns, .expert = 20ns, .draft_step = 500ns, .chunk_times = {400ns},
                                        .expert_bytes = Bytes{1000}});
  const policy::AnalyticalLatency lat{.copy_fixed = 0ns, .link_bytes_per_ns = 2.5, .expert = Bytes{1000},
                                      .dense = 150ns, .expert_ffn = 20ns, .draft_step = 500ns};
  const auto t = table_of(
      w, {0, 1, 2, 3},
      [](std::uint64_t, std::uint16_t l) { return std::vector<std::uint16_t>{static_cast<std::uint16_t>(l < 2 ? 0 : 1)}; },
      [](std::uint16_t) { return -1; }, /*draft_tokens=*/2);
  const Bytes budget{4000};
  policy::SpMoE solver(one_table(t), transition(), lat, {.beyond = 0});
  policy::SpMoE all(one_table(t), transition(), lat, {.cutoff = policy::CutoffRule::all, .beyond = 0});
  const auto a = run(w, c, solver, budget);
  const auto b = run(w, c, all, budget);
  CHECK(solver.cutoff_sum() < all.cutoff_sum());
  CHECK(solver.cutoff() == 2);  // the last pass's
  CHECK(a.misses < b.misses);
  CHECK(a.tpot_ms.mean < b.tpot_ms.mean);
}

TEST_CASE("spmoe: batch submits every drafting-time copy at once, without it depth at a time", "[policy][published][batch]") {
  // One SD pass (2 drafts), 4 layers x 4 experts, 8 free slots; the draft gate predicts one expert
  // of each layer, ready after the second draft step. On an executor whose copies never land, the
  // copies submitted once every prediction came back are the batch: all 4 with batch, the queue's
  // depth (2) without, the rest waiting for a copy to land. (moesched-sim's link moves one copy at
  // a time and charges nothing per submission, and a landing refills the depth at once: there the
  // two schedules keep the link equally busy, hence `batch=off` barely moves TPOT.)
  test::VecRouting r;
  r.layers = 4;
  r.top_k = 1;
  r.add({.request = 0, .phase = StepPhase::verify, .tokens = 3, .draft_len = 2, .accepted = 2},
        {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0});
  const Workload w = build_workload(r, {4, 4, 1});
  const auto t = table_of(
      w, {0, 1, 2, 3}, [](std::uint64_t, std::uint16_t l) { return std::vector<std::uint16_t>{l}; },
      [](std::uint16_t) { return -1; }, /*draft_tokens=*/2);
  const policy::AnalyticalLatency lat{.copy_fixed = 0ns, .link_bytes_per_ns = 2.5, .expert = Bytes{1000},
                                      .dense = 150ns, .expert_ffn = 20ns, .draft_step = 500ns};
  auto submitted = [&](bool batch) {
    runtime::ArchetypeExecutor e(4, 4, 8);
    policy::SpMoE p(one_table(t), transition(), lat, {.cutoff = policy::CutoffRule::all, .batch = batch});
    p.on_pass_begin(e, PassInfo{0, StepPhase::verify, 3, 1, 2});
    auto jobs = runtime::ArchetypeExecutor::Control::jobs(e);  // a copy: on_job_done may submit more
    for (const auto& j : jobs) p.on_job_done(e, j.tag, j.predict(j.predictor, j.input, j.out));
    return runtime::ArchetypeExecutor::Control::copies(e);
  };
  CHECK(submitted(true) == 4);
  CHECK(submitted(false) == 2);
}

TEST_CASE("promoe: chunked copies make a demand copy wait at most one chunk of a wrong guess",
          "[policy][published][chunks]") {
  // A preset-built cost model (the registry rebuilds it with the policy's chunks): 2 MoE layers x
  // 8 experts of 3 x 64 x 128 bf16 (49 152 bytes), a link of 0.125 GB/s (a copy about 393 us),
  // kernels of 20 us. Every pass needs fresh experts and layer 1's guess is always wrong: at its
  // gate the guess is on the link; the demand copy waits for all of it (chunks 1) or for the
  // chunk on the link (chunks 3, one per matrix).
  ModelDesc model;
  model.name = "chunk-test";
  model.shape = test::tiny_shape();
  model.shape.decoder_layers = 2;
  model.shape.hidden = 64;
  model.shape.moe_ffn = 128;
  model.shape.experts_per_layer = 8;
  model.shape.vocab = 16;
  model.shape.attention.head_dim = 32;
  HardwareDesc gpu;
  gpu.name = "chunk-gpu";
  gpu.memory = Bytes::gib(1);
  gpu.h2d = TransferCurve::affine(gb_per_s(0.125), 0ns);
  gpu.compute.bf16_tflops = 1e3;
  gpu.compute.memory_bandwidth = gb_per_s(1e4);
  gpu.compute.kernel_overhead = 20us;
  const CostModel cost(model, gpu, {.chunks = 1});
  std::vector<std::vector<std::uint16_t>> passes;
  for (std::uint16_t i = 0; i < 4; ++i) passes.push_back({static_cast<std::uint16_t>(2 * i), static_cast<std::uint16_t>(2 * i)});
  const Workload w = decode_passes(passes, 2, 8);
  const auto t = table_of(
      w, {1}, [](std::uint64_t p, std::uint16_t) { return std::vector<std::uint16_t>{static_cast<std::uint16_t>(2 * p + 1)}; },
      [](std::uint16_t) { return -1; });
  sim::SimOptions o;
  o.budget = cost.expert_bytes() * 16;
  o.check_invariants = true;
  tools::PolicyInputs in;
  in.tables = one_table(t);
  in.label_predictor = false;
  const auto whole = tools::run_policy("promoe:predictor=hand:chunks=1", w, cost, o, in);
  const auto three = tools::run_policy("promoe:predictor=hand:chunks=3", w, cost, o, in);
  const auto dflt = tools::run_policy("promoe:predictor=hand", w, cost, o, in);  // ProMoE's default: per matrix
  CHECK(three.chunks_copied >= 3 * three.experts_copied);  // per matrix (and parts of copies cut off at the end)
  CHECK(whole.chunks_copied == whole.experts_copied);
  CHECK(three.tpot_ms.mean < whole.tpot_ms.mean);
  CHECK(dflt.tpot_ms.mean == Approx(three.tpot_ms.mean));
  CHECK(dflt.chunks_copied == three.chunks_copied);
  CHECK(whole.policy == "promoe:predictor=hand:chunks=1");
}

// ---------------------------------------------------------------------------------------------
// Invariants, determinism, real threads

namespace {
/// A table that names, for each layer of each pass, its real experts and as many wrong ones, made
/// `distance` layers ahead.
policy::PredictionTable noisy_predictions(const Workload& w, std::uint32_t distance, std::uint16_t draft_tokens) {
  policy::PredictionTable t("noisy");
  std::vector<std::uint16_t> c;
  const auto E = static_cast<std::uint16_t>(w.shape().experts);
  for (std::uint64_t p = 0; p < w.pass_count(); ++p) {
    t.begin_pass();
    for (std::uint32_t l = 0; l < w.layers(); ++l) {
      c.clear();
      for (const auto& u : w.uses(p, l)) {
        if ((u.expert + p) % 3 != 0) c.push_back(u.expert);  // a third of the right ones missed
        const auto wrong = static_cast<std::uint16_t>((u.expert * 5 + p + 1) % E);
        if (std::find(c.begin(), c.end(), wrong) == c.end()) c.push_back(wrong);
      }
      const auto after = static_cast<std::int64_t>(l) - distance;
      t.add({static_cast<std::uint16_t>(l), static_cast<std::int16_t>(after < -1 ? -1 : after),
             static_cast<std::uint16_t>(after < 0 ? draft_tokens : 0), 0, 0},
            c);
    }
  }
  return t;
}
}  // namespace

TEST_CASE("published policies: never below the bound, within the budget, deterministic", "[policy][published][lower_bound]") {
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
    const auto routing = test::random_routing(900 + i, k.layers, k.experts, k.top_k, k.requests, 4, k.decode, 0.6);
    const Workload w = build_workload(routing, {k.layers, k.experts, k.top_k}, {.batch = k.batch, .sd = k.sd});
    std::vector<Nanoseconds> chunks(k.chunks, Nanoseconds{150 / k.chunks});
    const CostModel c = CostModel::fixed({.dense = 120ns, .expert = 25ns, .expert_per_token = 3ns, .head = 15ns,
                                          .draft_step = 50ns, .chunk_times = chunks, .expert_bytes = Bytes{900}});
    const std::uint32_t slots = w.max_layer_union() + k.slots_extra;
    const Bytes budget{900ULL * slots};
    const auto lb = sim::tpot_lower_bound(w, c, slots);
    const auto lat = tools::latency_model(c, w);
    const auto perfect = test::perfect_predictions(w, 2);
    const auto noisy = noisy_predictions(w, 1, k.sd ? static_cast<std::uint16_t>(k.sd->gamma) : 0);
    std::vector<std::pair<std::string, runtime::RunMetrics>> runs;
    auto check = [&](const std::string& what, auto make) {
      CAPTURE(what);
      auto p1 = make();
      const auto m = run(w, c, *p1, budget);
      CHECK(m.tpot_ms.mean >= lb.tpot_ms * (1 - 1e-12));
      CHECK(m.peak_expert_memory <= budget);
      CHECK(m.uses == w.all_uses().size());
      CHECK(m.cache_hits + m.prefetch_hits + m.late + m.misses == m.uses);
      CHECK(m.prefetch_used <= m.prefetch_copies);
      CHECK(m.decode_tokens == w.decode_tokens());
      auto p2 = make();
      CHECK(run(w, c, *p2, budget) == m);  // deterministic
    };
    for (const auto* tab : {&perfect, &noisy}) {
      const auto tables = one_table(*tab, 30ns);
      check("mixtral " + tab->channel(), [&] { return std::make_unique<policy::MixtralOffloading>(tables, transition()); });
      check("mixtral preempt", [&] {
        return std::make_unique<policy::MixtralOffloading>(tables, transition(), policy::MixtralOffloadingOptions{.preempt = true});
      });
      check("promoe " + tab->channel(), [&] { return std::make_unique<policy::ProMoE>(tables, transition()); });
      check("promoe ablated", [&] {
        return std::make_unique<policy::ProMoE>(
            tables, transition(), policy::ProMoEOptions{.stride = 1, .preempt = false, .touch = false, .lookahead = 0});
      });
      check("spmoe " + tab->channel(), [&] { return std::make_unique<policy::SpMoE>(tables, transition(), lat); });
      check("spmoe closed, no batch", [&] {
        return std::make_unique<policy::SpMoE>(
            tables, transition(), lat, policy::SpMoEOptions{.cutoff = policy::CutoffRule::closed_form, .batch = false});
      });
      check("moesched " + tab->channel(), [&] { return std::make_unique<policy::Moesched>(tables, transition(), lat); });
      check("moesched no link, no cutoff", [&] {
        return std::make_unique<policy::Moesched>(tables, transition(), lat,
                                                  policy::MoeschedOptions{.link_aware = false, .cutoff = false});
      });
      check("moesched utility off", [&] {
        return std::make_unique<policy::Moesched>(tables, transition(), lat, policy::MoeschedOptions{.utility = false});
      });
    }
    const std::vector<policy::TableInput> none;
    check("promoe fallback", [&] { return std::make_unique<policy::ProMoE>(none, transition()); });
    check("spmoe fallback popularity", [&] {
      return std::make_unique<policy::SpMoE>(none, policy::AnyRoutingPredictor{policy::PopularityPredictor{}}, lat);
    });
    check("moesched fallback matrix", [&] {
      return std::make_unique<policy::Moesched>(none, policy::AnyRoutingPredictor{policy::ActivationMatrixPredictor{8}}, lat);
    });
    check("mixtral fallback", [&] { return std::make_unique<policy::MixtralOffloading>(none, transition()); });
  }
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

TEST_CASE("published policies run on the host backend's real threads", "[policy][published][host]") {
  const auto routing = test::random_routing(78, 4, 8, 2, 2, 4, 30, 0.5);
  const Workload w = build_workload(routing, {4, 8, 2}, {.sd = SdReplay{.gamma = 3, .acceptance = 0.6}});
  const auto t = noisy_predictions(w, 1, 3);
  const auto tables = one_table(t, 5us);
  host::HostBackend::Config cfg;
  cfg.layers = 4;
  cfg.experts = 8;
  cfg.expert_bytes = Bytes{4096};
  cfg.slots = w.max_layer_union() + 4;
  cfg.chunks = 3;
  cfg.cpu_workers = 1;
  const policy::AnalyticalLatency lat{.copy_fixed = 0ns, .link_bytes_per_ns = 4.0, .expert = Bytes{4096},
                                      .dense = 2us, .expert_ffn = 1us, .draft_step = 2us};
  auto check = [&](auto& pol) {
    Rig rig(cfg);
    runtime::LayerDriver<host::HostBackend> driver(w, rig.backend, {.check_invariants = true});
    const runtime::Status s = driver.run(pol);
    INFO(driver.fault_text());
    REQUIRE(s);
    CHECK(rig.backend.verify_failures() == 0);
    CHECK(rig.backend.expert_kernels() == w.all_uses().size());
    CHECK(driver.metrics().peak_expert_memory <= Bytes{4096ULL * cfg.slots});
  };
  policy::MixtralOffloading a(tables, transition());
  check(a);
  policy::ProMoE b(tables, transition());
  check(b);
  policy::SpMoE c(tables, transition(), lat);
  check(c);
  policy::Moesched d(tables, transition(), lat);
  check(d);
  policy::Moesched e(std::vector<policy::TableInput>{}, transition(), lat);
  check(e);
}

// ---------------------------------------------------------------------------------------------
// The registry

TEST_CASE("registry: published policies by name, their options and predictors", "[policy][published][registry]") {
  for (auto n : tools::composed_policy_names()) {
    CAPTURE(n);
    CHECK_NOTHROW(tools::check_policy_name(n));
    const std::string summary(tools::policy_summary(n));
    CHECK(summary.find("Options") != std::string::npos);
    CHECK(summary.find("predictor=auto|CHANNEL") != std::string::npos);
  }
  CHECK_NOTHROW(tools::check_policy_name("promoe:stride=1:preempt=off:touch=off:chunks=1:lookahead=0"));
  CHECK_NOTHROW(tools::check_policy_name("spmoe:cutoff=3:batch=off:beyond=0"));
  CHECK_NOTHROW(tools::check_policy_name("moesched:predictor=skip_gate:utility=off:cutoff=closed:chunks=auto"));
  auto err = [](const char* name) {
    return test::thrown_message<ConfigError>([&] { tools::check_policy_name(name); });
  };
  CHECK(err("promoe:strid=1").find("unknown option 'strid'; promoe takes predictor=") != std::string::npos);
  CHECK(err("promoe:stride").find("is not key=value") != std::string::npos);
  CHECK(err("promoe:preempt=maybe").find("option preempt = 'maybe' is not one of on|off") != std::string::npos);
  CHECK(err("spmoe:cutoff=deep").find("is not one of solver|closed|all|N") != std::string::npos);
  CHECK(err("mixtral-offloading:stride=2").find("unknown option 'stride'") != std::string::npos);
  // The parsed name: later options win, defaults fill the rest.
  const auto n = tools::parse_composed("promoe:stride=1:stride=3");
  REQUIRE(n);
  CHECK(n->get("stride") == "3");
  CHECK(n->get("chunks") == "3");
  CHECK_FALSE(tools::parse_composed("lru"));
  // Channels by policy and trace.
  const std::vector<std::string> real{"skip_gate", "draft_gate", "mlp_stride2"};
  const std::vector<std::string> synth{"synthetic_skip_gate", "synthetic_draft_gate"};
  const std::vector<std::string> none;
  using V = std::vector<std::string>;
  CHECK(tools::policy_channels("mixtral-offloading", real) == V{"skip_gate"});
  CHECK(tools::policy_channels("promoe", real) == V{"mlp_stride2"});
  CHECK(tools::policy_channels("promoe", synth).empty());
  CHECK(tools::policy_channels("spmoe", synth) == V{"synthetic_draft_gate"});
  CHECK(tools::policy_channels("moesched", real).empty());  // routing-only transitions by default
  CHECK(tools::policy_channels("moesched:predictor=auto", real) == V{"draft_gate"});
  CHECK(tools::policy_channels("moesched:predictor=auto", V{"skip_gate", "mlp_stride2"}) == V{"mlp_stride2"});
  CHECK(tools::policy_channels("moesched:predictor=auto", none).empty());
  CHECK(tools::policy_channels("promoe:predictor=skip_gate", none) == V{"skip_gate"});  // demanded: the front end reports it missing
  CHECK(tools::policy_channels("promoe:predictor=popularity", real).empty());
  CHECK(tools::policy_channels("prefetch:x", none) == V{"x"});
  CHECK(tools::policy_channels("lru", real).empty());
}

TEST_CASE("registry: the run says which predictor ran, and falls back without a channel", "[policy][published][registry]") {
  const Workload w = decode_passes({{0, 0}, {1, 1}, {0, 0}, {1, 1}}, 2, 3);
  const auto t = test::perfect_predictions(w, 1);
  sim::SimOptions o;
  o.budget = Bytes{2000};
  o.check_invariants = true;
  std::string ran;
  tools::PolicyInputs in;
  in.predictor_out = &ran;
  // No table: the routing-only fallback, said so.
  const auto fb = tools::run_policy("mixtral-offloading", w, costs(), o, in);
  CHECK(fb.policy == "mixtral-offloading [fallback transition]");
  CHECK(ran == "transition");
  const auto pop = tools::run_policy("promoe:predictor=popularity", w, costs(), o, in);
  CHECK(pop.policy == "promoe:predictor=popularity [popularity]");
  const auto nopred = tools::run_policy("moesched:predictor=none", w, costs(), o, in);
  CHECK(nopred.policy == "moesched:predictor=none [none]");
  // With the channel's table: it runs, as hand-computed above (340 ns a pass).
  in.tables = one_table(t);
  const auto m = tools::run_policy("mixtral-offloading", w, costs(), o, in);
  CHECK(m.policy == "mixtral-offloading [perfect]");
  CHECK(ran == "perfect");
  CHECK(m.tpot_ms.mean == Approx(340e-6));
  in.label_predictor = false;
  CHECK(tools::run_policy("mixtral-offloading", w, costs(), o, in).policy == "mixtral-offloading");
  // A demanded channel that was not given is an error naming it.
  in.tables.clear();
  CHECK(test::thrown_message<ConfigError>([&] { (void)tools::run_policy("spmoe:predictor=draft_gate", w, costs(), o, in); })
            .find("no predictions of channel 'draft_gate'") != std::string::npos);
  // A table of another replay is refused.
  const Workload shorter = decode_passes({{0, 0}}, 2, 3);
  const auto t2 = test::perfect_predictions(shorter, 1);
  in.tables = one_table(t2);
  CHECK(test::thrown_message<ConfigError>([&] { (void)tools::run_policy("moesched:predictor=auto", w, costs(), o, in); })
            .find("cover 1 passes, the workload has 4") != std::string::npos);
  // Every published policy runs by name on routing alone (SD replay included).
  const auto routing = test::random_routing(5, 4, 8, 2, 2, 4, 20, 0.5);
  const Workload sd = build_workload(routing, {4, 8, 2}, {.sd = SdReplay{.gamma = 3, .acceptance = 0.6}});
  const CostModel c = CostModel::fixed({.dense = 120ns, .expert = 25ns, .head = 15ns, .draft_step = 50ns,
                                        .chunk_times = {150ns}, .expert_bytes = Bytes{900}});
  sim::SimOptions so;
  so.budget = Bytes{900ULL * (sd.max_layer_union() + 4)};
  so.check_invariants = true;
  for (auto name : tools::composed_policy_names()) {
    CAPTURE(name);
    const auto r = tools::run_policy(name, sd, c, so);
    CHECK(r.policy == std::string(name) + (name == "moesched" ? " [transition]" : " [fallback transition]"));
    CHECK(r.decode_tokens == sd.decode_tokens());
  }
}
