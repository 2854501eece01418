// Every policy of the library, instantiated against the archetype executor (only what the
// Executor and JobExecutor concepts offer): if a policy reached past the concept, this file would
// not compile. The hooks are also driven by hand, so the instantiated bodies run.
#include "support/catch.hpp"
#include "support/routing.hpp"

#include <moesched/policy/baseline.hpp>
#include <moesched/policy/mixtral_offloading.hpp>
#include <moesched/policy/moesched_policy.hpp>
#include <moesched/policy/oracle.hpp>
#include <moesched/policy/pipeline.hpp>
#include <moesched/policy/prefetch.hpp>
#include <moesched/policy/promoe.hpp>
#include <moesched/policy/spmoe.hpp>
#include <moesched/runtime/archetype.hpp>

#include <array>
#include <optional>
#include <vector>

using namespace moesched;
using runtime::ArchetypeExecutor;
using Control = ArchetypeExecutor::Control;

namespace {

/// One pass of a layer-0 gate asking for E1 and E2, both landing and running, then layer 0 done.
template <class P>
std::uint64_t drive(P& p, ArchetypeExecutor& e) {
  p.on_pass_begin(e, PassInfo{0, StepPhase::decode, 1, 1, 0});
  const std::array<ExpertId, 2> need{ExpertId{0, 1}, ExpertId{0, 2}};
  p.on_gate(e, 0, need);
  for (ExpertId id : need) {
    REQUIRE(e.residency(id) != Residency::absent);  // the gate's contract
    Control::land(e, id);
    p.on_copy_done(e, id);
  }
  for (ExpertId id : need) p.on_expert_done(e, id);
  p.on_layer_done(e, 0);
  return Control::copies(e);
}

}  // namespace

TEST_CASE("archetype: every baseline runs on only what the concept offers", "[runtime][archetype]") {
  {
    ArchetypeExecutor e(2, 4, 4);
    policy::OnDemand p;
    CHECK(drive(p, e) == 2);
  }
  {
    ArchetypeExecutor e(2, 4, 4);
    policy::LayerLru p;
    CHECK(drive(p, e) == 2);
  }
  {
    ArchetypeExecutor e(2, 4, 4);
    policy::Lfu p;
    CHECK(drive(p, e) == 2);
  }
  {
    ArchetypeExecutor e(2, 4, 4);
    // Profile: L1/E3 most used: it is copied at the start and kept; two slots stage the rest.
    std::vector<std::uint64_t> uses(8, 0);
    uses[7] = 5;
    policy::StaticPopular p(uses, 2);
    CHECK(drive(p, e) == 3);
    CHECK(p.pinned_count() == 1);
  }
}

TEST_CASE("archetype: the oracle and the prefetcher run on it too", "[runtime][archetype]") {
  test::VecRouting r;
  r.layers = 2;
  r.top_k = 2;
  r.add({.request = 0, .phase = StepPhase::decode, .tokens = 1}, {1, 2, 0, 3});
  const Workload w = build_workload(r, {2, 4, 2});
  {
    ArchetypeExecutor e(2, 4, 4);
    policy::Oracle p(w);
    CHECK(drive(p, e) == 4);  // Belady: all four experts fit; each is fetched once, early
  }
  {
    ArchetypeExecutor e(2, 4, 4);
    policy::PredictionTable t("hand");
    t.begin_pass();
    t.add({1, 0, 0, 0, 0}, std::array<std::uint16_t, 2>{0, 3});  // layer 1 after layer 0
    policy::Prefetch p(t, Nanoseconds{0});
    CHECK(drive(p, e) == 2);  // the gate's demand copies
    auto& jobs = Control::jobs(e);
    REQUIRE(jobs.size() == 1);  // one job per predicted set, submitted at the pass start
    const runtime::PredictorJob j = jobs.front();
    CHECK(j.ready.kind == runtime::ReadyPoint::Kind::after_layer);
    CHECK(j.ready.index == 0);
    const std::uint32_t n = j.predict(j.predictor, j.input, j.out);
    REQUIRE(n == 2);
    CHECK(j.out[0].expert == 0);
    CHECK(j.out[1].expert == 3);
    p.on_job_done(e, j.tag, n);
    CHECK(Control::copies(e) == 4);  // both candidates prefetched
    CHECK(e.residency({1, 0}) == Residency::queued);
    CHECK(e.residency({1, 3}) == Residency::queued);
  }
}

TEST_CASE("archetype: the published policies run on it too", "[runtime][archetype]") {
  // A table predicting layer 1's E0 and E3 after layer 0 (a skip gate), and the routing fallback.
  policy::PredictionTable t("hand");
  t.begin_pass();
  t.add({1, 0, 0, 0, 0}, std::array<std::uint16_t, 2>{0, 3});
  const std::vector<policy::TableInput> tables{{&t, Nanoseconds{0}, runtime::JobResource::gpu_stream}};
  const std::vector<policy::TableInput> none;
  const policy::AnalyticalLatency lat{.link_bytes_per_ns = 1.0, .expert = Bytes{100}, .dense = Nanoseconds{50},
                                      .draft_step = Nanoseconds{20}};
  // Each runs the pass of drive(), then its job's result (if any) is handed back: both guesses
  // become low copies (4 slots, 2 taken by the gate's demand copies).
  auto with_job = [](auto& p, ArchetypeExecutor& e) {
    CHECK(drive(p, e) == 2);
    auto& jobs = Control::jobs(e);
    REQUIRE(jobs.size() == 1);
    const runtime::PredictorJob j = jobs.front();
    CHECK(j.ready.kind == runtime::ReadyPoint::Kind::after_layer);
    CHECK(j.where == runtime::JobResource::gpu_stream);
    const std::uint32_t n = j.predict(j.predictor, j.input, j.out);
    REQUIRE(n == 2);
    p.on_job_done(e, j.tag, n);
    CHECK(e.residency({1, 0}) != Residency::absent);
    CHECK(e.residency({1, 3}) != Residency::absent);
    CHECK(Control::copies(e) == 4);
  };
  {
    ArchetypeExecutor e(2, 4, 4);
    policy::MixtralOffloading p(tables, policy::TransitionPredictor{});
    with_job(p, e);
  }
  {
    ArchetypeExecutor e(2, 4, 4);
    policy::ProMoE p(tables, policy::TransitionPredictor{});
    with_job(p, e);
  }
  {
    ArchetypeExecutor e(2, 4, 4);
    policy::SpMoE p(tables, policy::TransitionPredictor{}, lat);
    CHECK(drive(p, e) == 2);  // a pass without drafting: layer-ahead only
    auto& jobs = Control::jobs(e);
    REQUIRE(jobs.size() == 1);
    const runtime::PredictorJob j = jobs.front();
    const std::uint32_t n = j.predict(j.predictor, j.input, j.out);
    p.on_job_done(e, j.tag, n);
    CHECK(e.residency({1, 0}) != Residency::absent);  // layer 1 is one layer ahead of layer 0
  }
  {
    ArchetypeExecutor e(2, 4, 4);
    policy::Moesched p(none, policy::TransitionPredictor{}, lat);  // the routing-only fallback: no job
    CHECK(drive(p, e) == 2);
    CHECK(Control::jobs(e).empty());
    CHECK(p.predictor_label() == "transition");
  }
  {
    ArchetypeExecutor e(2, 4, 4);
    policy::Pipeline p(none, policy::AnyRoutingPredictor{policy::PopularityPredictor{}}, {});
    CHECK(drive(p, e) == 2);
  }
}
