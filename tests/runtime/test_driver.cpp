// The layer driver on the simulator backend: ready points of predictor jobs, jobs on the compute
// stream, compute_ahead, the end of a run, and its refusals. Times are hand-computed.
#include "support/catch.hpp"
#include "support/routing.hpp"

#include <moesched/policy/baseline.hpp>
#include <moesched/policy/oracle.hpp>
#include <moesched/runtime/driver.hpp>
#include <moesched/sim/lower_bound.hpp>
#include <moesched/sim/replay.hpp>

#include <array>
#include <vector>

using namespace moesched;
using namespace std::chrono_literals;
using sim::CostModel;

namespace {

/// One SD pass (2 drafts, 1 accepted: 2 tokens emitted) over 2 layers x 2 experts, top-1; every
/// token routes to E0 in both layers.
Workload sd_pass() {
  test::VecRouting r;
  r.layers = 2;
  r.top_k = 1;
  r.add({.request = 0, .phase = StepPhase::verify, .tokens = 3, .draft_len = 2, .accepted = 1}, {0, 0, 0, 0, 0, 0});
  return build_workload(r, {2, 2, 1});
}

CostModel costs() {
  return CostModel::fixed({.dense = 10ns, .expert = 20ns, .head = 5ns, .draft_step = 50ns, .chunk_times = {100ns},
                           .expert_bytes = Bytes{1000}});
}

std::uint32_t no_answer(const void*, const runtime::JobInput&, std::span<runtime::ScoredExpert>) noexcept { return 0; }

/// Per-layer LRU for demand; submits the given jobs at the pass start and records when each ends.
struct Probe {
  static constexpr std::string_view name() { return "probe"; }
  std::vector<runtime::PredictorJob> jobs;
  std::vector<std::pair<std::uint32_t, std::int64_t>> done;  // (tag, ns)
  policy::LayerLru lru;
  template <JobExecutor E> void on_pass_begin(E& e, const PassInfo& p) {
    lru.on_pass_begin(e, p);
    for (const auto& j : jobs) REQUIRE(e.submit_job(j));
  }
  template <JobExecutor E> void on_gate(E& e, std::uint32_t l, std::span<const ExpertId> n) { lru.on_gate(e, l, n); }
  template <JobExecutor E> void on_expert_done(E&, ExpertId) {}
  template <JobExecutor E> void on_copy_done(E&, ExpertId) {}
  template <JobExecutor E> void on_layer_done(E&, std::uint32_t) {}
  template <JobExecutor E> void on_job_done(E& e, std::uint32_t tag, std::uint32_t) { done.emplace_back(tag, e.now().count()); }
};
static_assert(JobPolicy<Probe, runtime::ArchetypeExecutor>);

runtime::PredictorJob job(std::uint32_t tag, runtime::ReadyPoint ready, runtime::JobResource where, Nanoseconds cost) {
  runtime::PredictorJob j;
  j.tag = tag;
  j.ready = ready;
  j.where = where;
  j.cost = cost;
  j.predict = &no_answer;
  return j;
}

sim::SimOptions checked(Bytes budget, std::uint32_t ahead = 1) {
  sim::SimOptions o;
  o.budget = budget;
  o.check_invariants = true;
  o.compute_ahead = ahead;
  return o;
}

/// OnDemand, plus a prefetch at every layer's end.
struct Late {
  static constexpr std::string_view name() { return "late"; }
  policy::OnDemand demand;
  template <Executor E> void on_pass_begin(E& e, const PassInfo& p) { demand.on_pass_begin(e, p); }
  template <Executor E> void on_gate(E& e, std::uint32_t l, std::span<const ExpertId> n) { demand.on_gate(e, l, n); }
  template <Executor E> void on_expert_done(E&, ExpertId) {}
  template <Executor E> void on_copy_done(E&, ExpertId) {}
  template <Executor E> void on_layer_done(E& e, std::uint32_t) { REQUIRE(e.copy({0, 1}, CopyPriority::low)); }
};

}  // namespace

TEST_CASE("driver: a job is released at its ready point and runs on a CPU worker", "[runtime][driver]") {
  // Draft steps 0-50 and 50-100; dense L0 100-110, gate: copy L0/E0 110-210, FFN 210-230; layer 0
  // done at 230; dense L1 230-240, copy 240-340, FFN 340-360; head 360-365.
  const Workload w = sd_pass();
  const CostModel c = costs();
  using runtime::ReadyPoint;
  using runtime::JobResource;
  Probe p;
  p.jobs = {job(0, ReadyPoint::pass_start(), JobResource::cpu_worker, 10ns),
            job(1, ReadyPoint::after_draft(1), JobResource::cpu_worker, 10ns),
            job(2, ReadyPoint::after_draft(2), JobResource::cpu_worker, 10ns),
            job(3, ReadyPoint::after_layer(0), JobResource::cpu_worker, 10ns)};
  const auto m = sim::replay(w, c, p, checked(Bytes{2000}));
  CHECK(p.done == std::vector<std::pair<std::uint32_t, std::int64_t>>{{0, 10}, {1, 60}, {2, 110}, {3, 240}});
  CHECK(m.total_time == 365ns);
  CHECK(m.tpot_ms.mean == Approx(365.0 / 2 / 1e6));
  CHECK(m.cpu_jobs == 4);
  CHECK(m.cpu_busy == 40ns);
  CHECK(m.cpu_wait == 0ns);
  CHECK(m.compute_busy == 2 * 50ns + 2 * 10ns + 2 * 20ns + 5ns);
}

TEST_CASE("driver: a job on the compute stream delays the next kernel by its cost", "[runtime][driver]") {
  // As above, but a 30 ns router GEMV after draft step 1: draft 0-50, job 50-80, draft 80-130,
  // and everything after moves by 30 ns: the pass ends at 395.
  const Workload w = sd_pass();
  const CostModel c = costs();
  Probe p;
  p.jobs = {job(7, runtime::ReadyPoint::after_draft(1), runtime::JobResource::gpu_stream, 30ns)};
  const auto m = sim::replay(w, c, p, checked(Bytes{2000}));
  CHECK(p.done == std::vector<std::pair<std::uint32_t, std::int64_t>>{{7, 80}});
  CHECK(m.total_time == 395ns);
  CHECK(m.gpu_jobs == 1);
  CHECK(m.gpu_job_busy == 30ns);
  CHECK(m.cpu_jobs == 0);
  CHECK(m.compute_busy == 2 * 50ns + 2 * 10ns + 2 * 20ns + 5ns);  // the job is not a driver kernel
}

TEST_CASE("driver: copies that land after the last LM head do not count", "[runtime][driver]") {
  // One decode pass, 1 layer x 2 experts: dense 0-10, copy L0/E0 10-110, FFN 110-130; at layer
  // done the policy prefetches L0/E1 (lands at 230); the head ends at 135, and so does the run.
  test::VecRouting r;
  r.layers = 1;
  r.top_k = 1;
  r.add({.request = 0, .phase = StepPhase::decode, .tokens = 1}, {0});
  const Workload w = build_workload(r, {1, 2, 1});
  Late p;
  const auto m = sim::replay(w, costs(), p, checked(Bytes{2000}));
  CHECK(m.total_time == 135ns);
  CHECK(m.link_busy == 100ns);
  CHECK(m.bytes_copied == Bytes{1000});
  CHECK(m.experts_copied == 1);
  CHECK(m.prefetch_copies == 1);  // submitted, never landed in the run
  CHECK(m.link_busy_share == Approx(100.0 / 135.0));
}

TEST_CASE("driver: compute_ahead keeps kernels queued; demand policies give the same run", "[runtime][driver]") {
  // The simulator charges no launch latency, so submitting ahead changes when choices are made,
  // not what the stream does, for policies that copy only at the gate.
  for (std::uint64_t seed = 0; seed < 4; ++seed) {
    CAPTURE(seed);
    const auto routing = test::random_routing(900 + seed, 4, 8, 2, 2, 4, 30, 0.5);
    WorkloadOptions wo;
    if (seed % 2 == 1) wo.sd = SdReplay{.gamma = 3, .acceptance = 0.7};
    const Workload w = build_workload(routing, {4, 8, 2}, wo);
    const CostModel c = CostModel::fixed({.dense = 40ns, .expert = 25ns, .expert_per_token = 3ns, .head = 15ns,
                                          .draft_step = 50ns, .chunk_times = {60ns, 60ns}, .expert_bytes = Bytes{900}});
    const std::uint32_t slots = w.max_layer_union() + 3;
    const Bytes budget{900ULL * slots};
    const auto lb = sim::tpot_lower_bound(w, c, slots);
    for (std::uint32_t ahead : {2U, 4U, 64U}) {
      CAPTURE(ahead);
      policy::LayerLru a1;
      policy::LayerLru a2;
      const auto one = sim::replay(w, c, a1, checked(budget, 1));
      const auto more = sim::replay(w, c, a2, checked(budget, ahead));
      CHECK(more.tpot_ms == one.tpot_ms);
      CHECK(more.stall == one.stall);
      CHECK(more.misses == one.misses);
      policy::Oracle o(w);
      const auto oracle = sim::replay(w, c, o, checked(budget, ahead));
      CHECK(oracle.tpot_ms.mean >= lb.tpot_ms * (1 - 1e-12));
      CHECK(oracle.decode_tokens == w.decode_tokens());
    }
  }
}

TEST_CASE("driver: the executor's host time (submit, launch, notify) on the simulator backend", "[runtime][driver][host]") {
  // sd_pass() with host times: submitting a draft step 2 ns, a dense order 3, an expert 4, the
  // head 1; an order starts 5 ns after its submission began at the earliest (and ends no earlier
  // than 5 ns after its submission ended); a completion reaches the driver 7 ns after it happened. One kernel at a time (compute_ahead 1):
  //   draft 1: submit 0-2, runs 5-55, driver knows at 62; draft 2: submit 62-64, runs 67-117 (124)
  //   dense L0: submit 124-127, runs 129-139 (146): gate, copy L0/E0 146-246 (253)
  //   FFN L0: submit 253-257, runs 258-278 (285); dense L1: submit 285-288, runs 290-300 (307)
  //   copy L1/E0 307-407 (414); FFN L1: submit 414-418, runs 419-439 (446); head: 446-447, runs 451-456.
  const Workload w = sd_pass();
  auto fixed = [](sim::HostTimes h) {
    return CostModel::fixed({.dense = 10ns, .expert = 20ns, .head = 5ns, .draft_step = 50ns, .chunk_times = {100ns},
                             .expert_bytes = Bytes{1000}, .host = h});
  };
  const sim::HostTimes host{.submit_dense = 3ns, .submit_expert = 4ns, .submit_head = 1ns, .submit_draft = 2ns,
                            .launch = 5ns, .notify = 7ns};
  const CostModel c = fixed(host);
  policy::LayerLru a;
  const auto one = sim::replay(w, c, a, checked(Bytes{2000}, 1));
  CHECK(one.total_time == 456ns);
  CHECK(one.tpot_ms.mean == Approx(456.0 / 2 / 1e6));
  CHECK(one.compute_busy == 2 * 50ns + 2 * 10ns + 2 * 20ns + 5ns);  // host time is not kernel time
  CHECK(one.link_busy == 200ns);
  // compute_ahead 4: the two draft steps and dense L0 are submitted back to back (host 0-2, 2-4,
  // 4-7) and run 5-55, 55-105, 105-115 (122): gate, copy 122-222 (229); FFN L0 submitted 229-233,
  // runs 234-254, then dense L1 submitted 233-236 runs 254-264 (271); copy 271-371 (378); FFN L1
  // submitted 378-382, runs 383-403; the head submitted 382-383 runs 403-408.
  policy::LayerLru b;
  const auto ahead = sim::replay(w, c, b, checked(Bytes{2000}, 4));
  CHECK(ahead.total_time == 408ns);
  // All zero: the run of "a job is released at its ready point" (365 ns) whatever compute_ahead.
  policy::LayerLru z;
  CHECK(sim::replay(w, fixed({}), z, checked(Bytes{2000}, 4)).total_time == 365ns);
  // Notify alone: every completion the driver waits on (2 drafts, 2 dense, 2 copies, 2 FFNs) is
  // 7 ns late, and the next submission with it: 365 + 8 x 7.
  policy::LayerLru n;
  CHECK(sim::replay(w, fixed({.notify = 7ns}), n, checked(Bytes{2000}, 1)).total_time == 365ns + 8 * 7ns);
  // A submission longer than its kernels (an expert order 30 ns, its FFN 20) ends no earlier than
  // the submission's end plus the launch delay. Launch 5, nothing else: drafts 5-55, 60-110; dense
  // L0 115-125; copy 125-225; FFN L0 submitted 225-255, starts 230, ends max(250, 260) = 260;
  // dense L1 265-275; copy 275-375; FFN L1 submitted 375-405, ends 410; head 415-420.
  policy::LayerLru s;
  CHECK(sim::replay(w, fixed({.submit_expert = 30ns, .launch = 5ns}), s, checked(Bytes{2000}, 1)).total_time == 420ns);
  // Handle alone (the driver's own work per completion, 6 ns): a kernel submitted after a
  // completion starts 6 ns after it; the copy the gate submits does not wait (the link starts at
  // the gate). Drafts 0-50, 56-106; dense L0 112-122; copy 122-222; FFN L0 228-248; dense L1
  // 254-264; copy 264-364; FFN L1 370-390; head 396-401: 365 + 6 x 6.
  policy::LayerLru hd;
  const auto handled = sim::replay(w, fixed({.handle = 6ns}), hd, checked(Bytes{2000}, 1));
  CHECK(handled.total_time == 401ns);
  CHECK(handled.compute_busy == 2 * 50ns + 2 * 10ns + 2 * 20ns + 5ns);
  // Copy launch alone (4 ns): each copy starts on the idle link 4 ns after the gate submitted it;
  // the link's busy time is its chunks' alone. Copy L0 114-214, FFN 214-234, dense L1 234-244,
  // copy 248-348, FFN 348-368, head 368-373: 365 + 2 x 4.
  policy::LayerLru cl;
  const auto launched = sim::replay(w, fixed({.copy_launch = 4ns}), cl, checked(Bytes{2000}, 1));
  CHECK(launched.total_time == 373ns);
  CHECK(launched.link_busy == 200ns);
}

TEST_CASE("driver: a copy queued behind another pays no copy launch", "[runtime][driver][host]") {
  // Two experts needed at one layer, both absent, one chunk of 100 each: the first copy starts 4 ns
  // after the gate (idle link), the second right behind it (the copy engine holds it already).
  Workload w(RoutingShape{1, 2, 2});
  const PassMember m{.request = 0, .emitted = 1, .step = 0};
  w.begin_pass(Pass{.phase = StepPhase::decode, .tokens = 1}, std::span<const PassMember>(&m, 1));
  const ExpertUse both[] = {{0, 1}, {1, 1}};
  w.add_layer(both);
  w.set_request_count(1);
  auto fixed = [](sim::HostTimes h) {
    return CostModel::fixed({.dense = 10ns, .expert = 20ns, .head = 5ns, .draft_step = 50ns, .chunk_times = {100ns},
                             .expert_bytes = Bytes{1000}, .host = h});
  };
  // dense 0-10; copies 14-114 and 114-214; FFN of the first 114-134, of the second 214-234; head 234-239.
  policy::LayerLru a;
  CHECK(sim::replay(w, fixed({.copy_launch = 4ns}), a, checked(Bytes{2000}, 1)).total_time == 239ns);
  policy::LayerLru b;
  CHECK(sim::replay(w, fixed({}), b, checked(Bytes{2000}, 1)).total_time == 235ns);
}

TEST_CASE("driver: refusals", "[runtime][driver]") {
  const Workload w = sd_pass();
  const CostModel c = costs();
  sim::SimBackend b(c, {2, 2, 1}, {.slots = 2});
  runtime::LayerDriver<sim::SimBackend> d(w, b);
  policy::LayerLru lru;
  REQUIRE(d.run(lru));
  CHECK(d.run(lru).code == runtime::StatusCode::bad_argument);  // a driver runs once
  sim::SimBackend other(c, {3, 2, 1}, {.slots = 2});
  CHECK(test::contains(test::thrown_message<ConfigError>([&] { runtime::LayerDriver<sim::SimBackend> x(w, other); }),
                       "field 'workload' = 2 x 2: differs from the backend's 3 MoE layers x 2 experts"));
  CHECK(test::contains(test::thrown_message<ConfigError>([&] {
                         runtime::LayerDriver<sim::SimBackend> x(w, b, {.compute_ahead = 0});
                       }),
                       "field 'compute_ahead' = 0: must be between 1 and 64"));
}
