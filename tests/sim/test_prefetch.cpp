// Predictive prefetching: prediction tables, the CPU worker resource, and policy::Prefetch on
// hand-computed scenarios and random ones (invariants, the lower bound, determinism).
#include "support/catch.hpp"
#include "support/predictions.hpp"
#include "support/routing.hpp"

#include <moesched/policy/baseline.hpp>
#include <moesched/policy/prefetch.hpp>
#include <moesched/sim/replay.hpp>
#include <moesched/sim/lower_bound.hpp>
#include <moesched/policy/trace_predictions.hpp>
#include "registry.hpp"  // moesched-sim's policy registry (sim/src)

#include <array>

using namespace moesched;
using namespace std::chrono_literals;
using sim::CostModel;
using moesched::Workload;

static_assert(policy::PredictionSource<test::VecRouting>);
static_assert(JobExecutor<sim::SimMachine>);
static_assert(Policy<policy::Prefetch, sim::SimMachine>);
static_assert(JobPolicy<policy::Prefetch, sim::SimMachine>);
static_assert(!JobPolicy<policy::LayerLru, sim::SimMachine>);

namespace {

struct NoJobs {  // an executor that runs no predictor jobs
  Nanoseconds now() const { return {}; }
  std::uint32_t layers() const { return 1; }
  std::uint32_t experts_per_layer() const { return 1; }
  std::uint32_t capacity_slots() const { return 1; }
  std::uint32_t free_slots() const { return 1; }
  Residency residency(ExpertId) const { return Residency::absent; }
  bool evictable(ExpertId) const { return false; }
  DeviceAddress address(ExpertId) const { return {}; }
  runtime::Status copy(ExpertId, CopyPriority) { return {}; }
  runtime::Status evict(ExpertId) { return {}; }
  bool cancel(ExpertId) { return false; }
  void promote(ExpertId) {}
};
static_assert(Executor<NoJobs>);
static_assert(!JobExecutor<NoJobs>);
static_assert(!Policy<policy::Prefetch, NoJobs>);

template <class P>
runtime::RunMetrics run(const Workload& w, const CostModel& c, P& p, Bytes budget, std::uint32_t workers = 1) {
  sim::SimOptions o;
  o.budget = budget;
  o.check_invariants = true;
  o.cpu_workers = workers;
  return sim::replay(w, c, p, o);
}


/// Predictions that are right with probability `accuracy` per candidate (else a random expert).
policy::PredictionTable noisy(const Workload& w, double accuracy, std::uint64_t seed) {
  Rng rng(seed);
  policy::PredictionTable t("noisy");
  std::vector<std::uint16_t> c;
  for (std::uint64_t p = 0; p < w.pass_count(); ++p) {
    t.begin_pass();
    for (std::uint32_t l = 1; l < w.layers(); ++l) {
      c.clear();
      for (const auto& u : w.uses(p, l)) {
        const auto e = rng.chance(accuracy) ? u.expert : static_cast<std::uint16_t>(rng.below(w.shape().experts));
        if (std::find(c.begin(), c.end(), e) == c.end()) c.push_back(e);
      }
      t.add({static_cast<std::uint16_t>(l), static_cast<std::int16_t>(l - 1), 0, 0, 0}, c);
    }
  }
  return t;
}

/// One decode pass of 2 layers x 3 experts, top-1: layer 0 uses E0, layer 1 uses E1.
Workload one_pass() {
  test::VecRouting r;
  r.layers = 2;
  r.top_k = 1;
  r.add({.request = 0, .phase = StepPhase::decode, .tokens = 1}, {0, 1});
  return build_workload(r, {2, 3, 1});
}

policy::PredictionTable predict_layer1(std::initializer_list<std::uint16_t> candidates) {
  policy::PredictionTable t("hand");
  t.begin_pass();
  const std::vector<std::uint16_t> c(candidates);
  t.add({1, 0, 0, 0, 0}, c);
  return t;
}

}  // namespace

TEST_CASE("prediction table: sets sorted by (after, draft tokens, layer) within each pass", "[sim][prefetch]") {
  policy::PredictionTable t("x");
  t.begin_pass();
  t.add({3, 2, 0, 0, 0}, std::array<std::uint16_t, 1>{7});
  t.add({1, -1, 2, 0, 0}, std::array<std::uint16_t, 2>{4, 5});
  t.add({2, -1, 1, 0, 0}, std::array<std::uint16_t, 1>{6});
  t.begin_pass();  // an empty pass
  t.begin_pass();
  t.add({0, -1, 0, 0, 0}, std::array<std::uint16_t, 1>{1});
  REQUIRE(t.pass_count() == 3);
  const auto p0 = t.of_pass(0);
  REQUIRE(p0.size() == 3);
  CHECK(p0[0].layer == 2);  // (-1, 1)
  CHECK(p0[1].layer == 1);  // (-1, 2)
  CHECK(p0[2].layer == 3);  // (2, 0)
  CHECK(std::vector<std::uint16_t>(t.candidates(p0[1]).begin(), t.candidates(p0[1]).end()) == std::vector<std::uint16_t>{4, 5});
  CHECK(t.of_pass(1).empty());
  CHECK(t.of_pass(2).size() == 1);
  CHECK(t.pass_begin(2) == 3);
  CHECK(t.pass_end(2) == 4);
  CHECK(t.of_pass(3).empty());
}

TEST_CASE("build_predictions: merging, top, draft timing, dropped and refused predictions", "[sim][prefetch]") {
  test::VecRouting r;
  r.layers = 3;
  r.top_k = 1;
  r.add({.request = 0, .phase = StepPhase::decode, .tokens = 1}, {0, 1, 2});
  // A verify step: 3 tokens (the last accepted one and 2 drafts).
  r.add({.request = 0, .phase = StepPhase::verify, .tokens = 3, .draft_len = 2, .accepted = 1},
        {0, 1, 2, 1, 1, 1, 2, 2, 2});
  r.predictions = {
      {0, 1, 0, 0, {1, 2, 3}},   // step 0: layer 1 after layer 0; top 2 keeps {1, 2}
      {0, 1, 0, 0, {2, 0}},      // same key: merged, 2 already there -> {1, 2, 0}
      {0, 0, 0, 1, {0}},         // layer 0 after layer 1: useless, dropped
      {1, 2, 0, -1, {2, 1}},     // verify step, token 0 from drafting: needs 1 draft
      {1, 2, 1, -1, {1, 0}},     // token 1: needs 2 drafts
      {1, 2, 2, -1, {0}},        // token 2 (the last draft): needs all 2 drafts -> merged with token 1
      {1, 1, -1, -1, {1}},       // whole step: after all drafts
  };
  const Workload w = build_workload(r, {3, 4, 1});
  const auto t = policy::build_predictions(r, 0, w, {.name = "ch", .max_candidates = 3, .top = 2});
  REQUIRE(t.pass_count() == 2);
  const auto p0 = t.of_pass(0);
  REQUIRE(p0.size() == 1);
  CHECK(p0[0].layer == 1);
  CHECK(p0[0].after == 0);
  // Ordered by best rank: rank 0 {1, 2}, then rank 1 {2 (seen), 0}.
  CHECK(std::vector<std::uint16_t>(t.candidates(p0[0]).begin(), t.candidates(p0[0]).end()) == std::vector<std::uint16_t>{1, 2, 0});
  const auto p1 = t.of_pass(1);
  REQUIRE(p1.size() == 3);
  CHECK((p1[0].layer == 2 && p1[0].after == -1 && p1[0].draft_tokens == 1));
  CHECK((p1[1].layer == 1 && p1[1].draft_tokens == 2));
  CHECK((p1[2].layer == 2 && p1[2].draft_tokens == 2));
  CHECK(std::vector<std::uint16_t>(t.candidates(p1[2]).begin(), t.candidates(p1[2]).end()) == std::vector<std::uint16_t>{1, 0});

  // SD replay re-cuts the steps: a whole-step prediction cannot follow its tokens.
  const Workload sd = build_workload(r, {3, 4, 1}, {.sd = SdReplay{.gamma = 2, .acceptance = 0.5}});
  CHECK(test::thrown_message<ConfigError>([&] { (void)policy::build_predictions(r, 0, sd, {.name = "ch", .max_candidates = 3}); }).find("whole-step prediction") != std::string::npos);
  // Out-of-range candidates are refused, not used as indices.
  r.predictions = {{0, 1, 0, 0, {9}}};
  CHECK(test::thrown_message<ConfigError>([&] { (void)policy::build_predictions(r, 0, w, {.name = "ch", .max_candidates = 3}); }).find("not below experts_per_layer") != std::string::npos);
}

TEST_CASE("build_predictions: per-token predictions follow their tokens into re-cut SD windows", "[sim][prefetch]") {
  test::VecRouting r;
  r.layers = 2;
  r.top_k = 1;
  // A recorded verify step (2 drafts, both accepted: tokens 0, 1, 2 are output), then a decode step (token 3).
  r.add({.request = 0, .phase = StepPhase::verify, .tokens = 3, .draft_len = 2, .accepted = 2}, {0, 0, 1, 1, 2, 2});
  r.add({.request = 0, .phase = StepPhase::decode, .tokens = 1}, {3, 3});
  r.predictions = {
      {0, 1, 0, -1, {0}},  // drafting-timed: the draft ran token 0
      {0, 1, 1, -1, {1}},  // and token 1
      {0, 1, 2, 0, {2}},   // layer-timed, token 2: after its layer 0
      {1, 1, 0, 0, {3}},   // the decode step's token: after layer 0
      {1, 0, 0, -1, {2}},  // and before its step (from the previous token's forward)
  };
  auto sets = [](const policy::PredictionTable& t, std::uint64_t p) {
    std::vector<std::tuple<int, int, int, std::vector<std::uint16_t>>> out;  // (after, draft, layer, candidates)
    for (const auto& s : t.of_pass(p)) {
      const auto c = t.candidates(s);
      out.emplace_back(s.after, s.draft_tokens, s.layer, std::vector<std::uint16_t>(c.begin(), c.end()));
    }
    return out;
  };
  using Sets = std::vector<std::tuple<int, int, int, std::vector<std::uint16_t>>>;
  // gamma 3, all accepted: one window of tokens 0..3 (positions 0..3). Tokens 0 and 1 keep their
  // drafting timing at their positions (1 and 2 draft forwards); 2 and 3 are layer-timed.
  const Workload one = build_workload(r, {2, 4, 1}, {.sd = SdReplay{.gamma = 3, .acceptance = 1.0}});
  REQUIRE(one.pass_count() == 1);
  const auto t1 = policy::build_predictions(r, 0, one, {.name = "ch", .max_candidates = 1});
  // Token 3 at position 3: its before-the-step prediction exists once 3 drafts ran.
  CHECK(sets(t1, 0) == Sets{{-1, 1, 1, {0}}, {-1, 2, 1, {1}}, {-1, 3, 0, {2}}, {0, 0, 1, {2, 3}}});
  // gamma 1: windows {0, 1} and {2, 3}. Token 1 is the first window's last draft, which the draft
  // never runs: its drafting-timed prediction does not exist there.
  const Workload two = build_workload(r, {2, 4, 1}, {.sd = SdReplay{.gamma = 1, .acceptance = 1.0}});
  REQUIRE(two.pass_count() == 2);
  const auto t2 = policy::build_predictions(r, 0, two, {.name = "ch", .max_candidates = 1});
  CHECK(sets(t2, 0) == Sets{{-1, 1, 1, {0}}});
  CHECK(sets(t2, 1) == Sets{{-1, 1, 0, {2}}, {0, 0, 1, {2, 3}}});  // token 3 is the window's draft 1
}

namespace {
/// A predictor that answers its key as the one candidate.
std::uint32_t echo(const void*, const runtime::JobInput& in, std::span<runtime::ScoredExpert> out) noexcept {
  out[0] = {static_cast<std::uint16_t>(in.key), 1.0f};
  return 1;
}
}  // namespace

TEST_CASE("CPU workers: first come first served, waiting, results", "[sim][prefetch]") {
  const CostModel c = CostModel::fixed({.dense = 10ns, .expert = 20ns, .chunk_times = {100ns}, .expert_bytes = Bytes{1000}});
  for (std::uint32_t workers : {1U, 2U}) {
    CAPTURE(workers);
    sim::SimBackend b(c, {1, 8, 1}, {.slots = 1, .cpu_workers = workers});
    CHECK(b.cpu_workers() == workers);
    std::array<runtime::ScoredExpert, 3> out{};
    for (std::uint32_t tag = 0; tag < 3; ++tag) {
      runtime::PredictorJob j;
      j.tag = tag;
      j.cost = tag == 2 ? 10ns : 100ns;
      j.predict = &echo;
      j.input.key = 5 + tag;
      j.out = {out.data() + tag, 1};
      REQUIRE(b.submit_job(j));
    }
    std::vector<std::pair<std::int64_t, std::uint32_t>> ends;
    Nanoseconds wait{0};
    runtime::Completion done;
    while (b.wait(done)) {
      REQUIRE(done.kind == runtime::CompletionKind::job);
      CHECK(done.count == 1);
      ends.emplace_back(done.end.count(), done.tag);
      wait += done.start - done.queued;
    }
    // The results are the predictor's, written when the job ended.
    CHECK(out[0].expert == 5);
    CHECK(out[2].expert == 7);
    if (workers == 1) {
      CHECK(ends == std::vector<std::pair<std::int64_t, std::uint32_t>>{{100, 0}, {200, 1}, {210, 2}});
      CHECK(wait == 300ns);
    } else {
      CHECK(ends == std::vector<std::pair<std::int64_t, std::uint32_t>>{{100, 0}, {100, 1}, {110, 2}});
      CHECK(wait == 100ns);
    }
  }
  sim::SimBackend none(c, {1, 8, 1}, {.slots = 1, .cpu_workers = 0});
  sim::SimMachine m(none);
  runtime::PredictorJob j;
  j.predict = &echo;
  CHECK(m.submit_job(j).code == runtime::StatusCode::bad_argument);
  CHECK_FALSE(m.fault().ok());
}

TEST_CASE("prefetch: hand-computed lead time, latency and a late prediction", "[sim][prefetch]") {
  // Layer 0 uses E0, layer 1 uses E1; the dense part takes 150 ns, an FFN 20, a copy 100.
  // LRU: dense 0-150, copy L0/E0 150-250, FFN 250-270; dense 270-420, copy L1/E1 420-520,
  // FFN 520-540: TPOT 540.
  const Workload w = one_pass();
  const CostModel c = CostModel::fixed({.dense = 150ns, .expert = 20ns, .chunk_times = {100ns}, .expert_bytes = Bytes{1000}});
  const Bytes budget{3000};
  policy::LayerLru lru;
  CHECK(run(w, c, lru, budget).tpot_ms.mean == Approx(540e-6));
  const auto right = predict_layer1({1});
  SECTION("no predictor latency: the copy hides behind layer 1's dense part") {
    // Prediction at 270 (layer 0 done), copy 270-370, gate at 420 finds it resident: FFN 420-440.
    policy::Prefetch p(right, 0ns);
    const auto m = run(w, c, p, budget);
    CHECK(m.tpot_ms.mean == Approx(440e-6));
    CHECK(m.layers[1].prefetch_hits == 1);
    CHECK(m.prefetch_copies == 1);
    CHECK(m.prefetch_used == 1);
    CHECK(m.stall == 100ns);  // layer 0's demand copy only
    CHECK(m.cpu_jobs == 1);
  }
  SECTION("60 ns of predictor latency: the copy lands 10 ns after the gate") {
    // Job 270-330, copy 330-430, gate at 420: late, promoted; FFN 430-450.
    policy::Prefetch p(right, 60ns);
    const auto m = run(w, c, p, budget);
    CHECK(m.tpot_ms.mean == Approx(450e-6));
    CHECK(m.layers[1].late == 1);
    CHECK(m.cpu_busy == 60ns);
    CHECK(m.cpu_wait == 0ns);
  }
  SECTION("a prediction that ends after its layer's gate is dropped: plain per-layer LRU") {
    policy::Prefetch p(right, 200ns);  // job 270-470, gate at 420
    const auto m = run(w, c, p, budget);
    CHECK(m.tpot_ms.mean == Approx(540e-6));
    CHECK(p.too_late() == 1);
    CHECK(m.prefetch_copies == 0);
  }
  SECTION("a wrong prediction costs a copy and is evicted unused") {
    // Budget 2: L1/E0 prefetched 270-370 takes the last slot; the gate at 420 wants L1/E1, which
    // evicts the unused L1/E0 (wasted) and copies 420-520: FFN 520-540, as LRU.
    const auto wrong = predict_layer1({0});
    policy::Prefetch p(wrong, 0ns);
    const auto m = run(w, c, p, Bytes{2000});
    CHECK(m.tpot_ms.mean == Approx(540e-6));
    CHECK(m.wasted_bytes == Bytes{1000});
    CHECK(m.prefetch_copies == 1);
    CHECK(m.prefetch_used == 0);
  }
  SECTION("early preemption cancels a queued wrong prefetch at the gate") {
    // Job 270-370, then L1/E0 copies 370-470 and L1/E2 waits behind it. The gate at 420 cancels
    // L1/E2 (queued) and queues L1/E1 high behind the moving L1/E0: copy 470-570, FFN 570-590.
    const auto wrong = predict_layer1({0, 2});
    policy::Prefetch p(wrong, 100ns);
    const auto m = run(w, c, p, budget);
    CHECK(m.cancelled == 1);
    CHECK(m.prefetch_copies == 1);  // the cancelled one never moved a byte
    CHECK(m.tpot_ms.mean == Approx(590e-6));
  }
}

TEST_CASE("prefetch: never beats the lower bound; invariants hold; perfect predictions help", "[sim][prefetch][lower_bound]") {
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
  };
  for (std::size_t i = 0; i < configs.size(); ++i) {
    const Config& k = configs[i];
    CAPTURE(i);
    const auto routing = test::random_routing(300 + i, k.layers, k.experts, k.top_k, k.requests, 4, k.decode, 0.5);
    const Workload w = build_workload(routing, {k.layers, k.experts, k.top_k}, {.batch = k.batch, .sd = k.sd});
    // Dense parts long enough for a copy to hide behind one (the regime prefetching is for).
    std::vector<Nanoseconds> chunks(k.chunks, Nanoseconds{90 / k.chunks});
    const CostModel c = CostModel::fixed({.dense = 120ns, .expert = 25ns, .expert_per_token = 3ns, .head = 15ns,
                                          .draft_step = 50ns, .chunk_times = chunks, .expert_bytes = Bytes{900}});
    const std::uint32_t slots = w.max_layer_union() + k.slots_extra;
    const Bytes budget{900ULL * slots};
    const auto lb = sim::tpot_lower_bound(w, c, slots);
    policy::LayerLru lru;
    const auto base = run(w, c, lru, budget);
    const auto good = test::perfect_predictions(w);
    const auto bad = noisy(w, 0.5, 7 + i);
    for (const auto* table : {&good, &bad}) {
      for (std::uint32_t workers : {1U, 2U}) {
        CAPTURE(table->channel(), workers);
        policy::Prefetch p(*table, 30ns);
        const auto m = run(w, c, p, budget, workers);
        CHECK(m.tpot_ms.mean >= lb.tpot_ms * (1 - 1e-12));
        CHECK(m.peak_expert_memory <= budget);
        CHECK(m.cache_hits + m.prefetch_hits + m.late + m.misses == m.uses);
        CHECK(m.prefetch_used <= m.prefetch_copies);
        if (table == &good) {
          CHECK(m.tpot_ms.mean < base.tpot_ms.mean);
          CHECK(m.prefetch_used == m.prefetch_copies);  // every perfect prediction is used
        }
        policy::Prefetch again(*table, 30ns);
        CHECK(run(w, c, again, budget, workers) == m);  // deterministic
      }
    }
  }
}

TEST_CASE("registry: prefetch:CHANNEL needs its predictions", "[sim][prefetch]") {
  const Workload w = one_pass();
  const CostModel c = CostModel::fixed({.dense = 150ns, .expert = 20ns, .chunk_times = {100ns}, .expert_bytes = Bytes{1000}});
  sim::SimOptions o;
  o.budget = Bytes{3000};
  CHECK_NOTHROW(tools::check_policy_name("prefetch:skip_gate"));
  CHECK(test::thrown_message<ConfigError>([&] { (void)tools::check_policy_name("prefetch:"); }).find("unknown policy") != std::string::npos);
  CHECK(test::thrown_message<ConfigError>([&] { (void)tools::run_policy("prefetch:hand", w, c, o); }).find("no predictions of channel 'hand'") != std::string::npos);
  const auto t = predict_layer1({1});
  tools::PolicyInputs in;
  in.predictions = &t;
  in.predictor_latency = 0ns;
  const auto m = tools::run_policy("prefetch:hand", w, c, o, in);
  CHECK(m.policy == "prefetch:hand");
  CHECK(m.tpot_ms.mean == Approx(440e-6));
}
