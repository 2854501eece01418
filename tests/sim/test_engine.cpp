#include "support/catch.hpp"
#include "support/routing.hpp"

#include <moesched/policy/baseline.hpp>
#include <moesched/policy/oracle.hpp>
#include <moesched/sim/replay.hpp>

#include <sstream>

using namespace moesched;
using namespace std::chrono_literals;
using sim::CostModel;
using sim::FixedCosts;
using moesched::Workload;

namespace {

/// 2 layers x 2 experts, top-1; two decode tokens, each using L0/E0 and L1/E1.
test::VecRouting two_tokens() {
  test::VecRouting r;
  r.layers = 2;
  r.top_k = 1;
  r.add({.request = 0, .phase = StepPhase::decode, .tokens = 1}, {0, 1});
  r.add({.request = 0, .phase = StepPhase::decode, .tokens = 1}, {0, 1});
  return r;
}

CostModel fixed(std::vector<Nanoseconds> chunks, Nanoseconds head = 0ns) {
  return CostModel::fixed(FixedCosts{.dense = 10ns, .expert = 20ns, .head = head, .chunk_times = std::move(chunks),
                                     .expert_bytes = Bytes{1000}});
}

sim::SimOptions checked(Bytes budget) {
  sim::SimOptions o;
  o.budget = budget;
  o.check_invariants = true;
  return o;
}

}  // namespace

TEST_CASE("on-demand: exact TPOT and stall of a hand-computed run", "[sim][engine]") {
  const auto routing = two_tokens();
  const Workload w = build_workload(routing, {2, 2, 1});
  const CostModel cost = fixed({100ns});
  policy::OnDemand pol;
  const auto m = sim::replay(w, cost, pol, checked(Bytes{4000}));
  // Pass 0: dense L0 [0,10], miss: copy [10,110], stall 100, FFN [110,130]; dense L1 [130,140],
  // miss: copy [140,240], stall 100, FFN [240,260]. Pass 1: all hits, 2 x (10 + 20) = 60.
  CHECK(m.total_time == 320ns);
  CHECK(m.stall == 200ns);
  CHECK(m.layers[0].stall == 100ns);
  CHECK(m.layers[1].stall == 100ns);
  CHECK(m.decode_tokens == 2);
  CHECK(m.tpot_ms.mean == Approx((260.0 + 60.0) / 2 / 1e6));
  CHECK(m.tpot_ms.p99 == Approx(260.0 / 1e6));
  CHECK(m.tpot_ms.p50 == Approx(60.0 / 1e6));
  CHECK(m.bytes_copied == Bytes{2000});
  CHECK(m.experts_copied == 2);
  CHECK(m.uses == 4);
  CHECK(m.misses == 2);
  CHECK(m.cache_hits == 2);
  CHECK(m.hit_rate() == Approx(0.5));
  CHECK(m.link_busy == 200ns);
  CHECK(m.compute_busy == 120ns);
  CHECK(m.peak_expert_memory == Bytes{2000});
}

TEST_CASE("oracle: prefetches from the start and the gate promotes what is late", "[sim][engine]") {
  const auto routing = two_tokens();
  const Workload w = build_workload(routing, {2, 2, 1});
  const CostModel cost = fixed({100ns});
  policy::Oracle pol(w);
  const auto m = sim::replay(w, cost, pol, checked(Bytes{4000}));
  // Copies L0/E0 [0,100] and L1/E1 [100,200] start at once. Gate L0 at 10: late, stall to 100,
  // FFN [100,120]; dense L1 [120,130], late, stall to 200, FFN [200,220]. Pass 1: 60.
  CHECK(m.total_time == 280ns);
  CHECK(m.stall == 90ns + 70ns);
  CHECK(m.late == 2);
  CHECK(m.prefetch_copies == 2);
  CHECK(m.prefetch_used == 2);
  CHECK(m.prefetch_precision() == Approx(1.0));
  CHECK(m.prefetch_recall() == Approx(0.0));  // both arrived after their gate
  CHECK(m.tpot_ms.mean == Approx(140.0 / 1e6));
}

TEST_CASE("a high copy waits for at most one chunk of a low one", "[sim][engine]") {
  const CostModel cost = fixed({10ns, 10ns, 10ns});
  sim::SimBackend b(cost, {1, 4, 1}, {.slots = 4});
  const ExpertId a{0, 0};
  const ExpertId c{0, 1};
  REQUIRE(b.submit_copy({a, 0, CopyPriority::low}));
  REQUIRE(b.submit_copy({c, 1, CopyPriority::high}));
  std::vector<std::pair<std::int64_t, std::uint32_t>> landed;
  Bytes moved{0};
  runtime::Completion done;
  while (b.wait(done)) {
    REQUIRE(done.kind == runtime::CompletionKind::chunk);
    moved += done.bytes;
    CHECK(done.end - done.start == 10ns);
    if (done.landed) landed.emplace_back(done.end.count(), done.expert.flat(4));
  }
  // a's first chunk [0,10]; c [10,40]; a's other two chunks [40,60].
  REQUIRE(landed.size() == 2);
  CHECK(landed[0] == std::pair<std::int64_t, std::uint32_t>{40, 1});
  CHECK(landed[1] == std::pair<std::int64_t, std::uint32_t>{60, 0});
  CHECK(moved == Bytes{2000});
}

namespace {

/// When one expert kernel (alone: `kernel`) ends, on a backend with slowdown `slow` where
/// `before(b)` ran first (copies submitted, cancelled) and `after(b)` right after the kernel's
/// submission; copies of `chunk` each.
template <class Before, class After>
std::int64_t kernel_end(double slow, Nanoseconds kernel, Nanoseconds chunk, Before before, After after) {
  const CostModel cost = CostModel::fixed(FixedCosts{.expert = kernel, .chunk_times = {chunk}, .expert_bytes = Bytes{1000},
                                                     .compute_slowdown_under_copy = slow});
  sim::SimBackend b(cost, {1, 4, 1}, {.slots = 4});
  const Pass pass{};
  before(b);
  REQUIRE(b.submit_compute({.kind = runtime::ComputeKind::expert, .expert = {0, 3}, .slot = 3, .tokens = 1, .pass = &pass}));
  after(b);
  runtime::Completion c;
  while (b.wait(c)) {
    if (c.kind == runtime::CompletionKind::compute) return c.end.count();
  }
  FAIL("no compute completion");
  return -1;
}

}  // namespace

TEST_CASE("kernels beside copies run slower while the link is busy", "[sim][engine]") {
  const auto none = [](sim::SimBackend&) {};
  const auto copy = [](std::uint16_t e) {
    return [e](sim::SimBackend& b) { REQUIRE(b.submit_copy({{0, e}, e, CopyPriority::high})); };
  };
  // No copy: the kernel's own 100.
  CHECK(kernel_end(2.0, 100ns, 300ns, none, none) == 100);
  // The link busy until 300: all of the kernel overlaps it, twice as slow: [0, 200].
  CHECK(kernel_end(2.0, 100ns, 300ns, copy(0), none) == 200);
  // Busy until 150: 150 ns at half speed do 75 of the work, the other 25 at full speed: 175.
  CHECK(kernel_end(2.0, 100ns, 150ns, copy(0), none) == 175);
  // Slowdown 1 (roofline, no profile): copies change nothing.
  CHECK(kernel_end(1.0, 100ns, 300ns, copy(0), none) == 100);
  // A measured ratio below 1 is noise: it counts as 1.
  CHECK(kernel_end(0.9, 100ns, 300ns, copy(0), none) == 100);
  // A copy submitted after the kernel started does not change its end.
  CHECK(kernel_end(2.0, 100ns, 300ns, none, copy(0)) == 100);
  // Queued copies count: two of 300 keep the link busy until 600; a kernel of 250 -> 500.
  const auto two = [&](sim::SimBackend& b) { copy(0)(b); copy(1)(b); };
  CHECK(kernel_end(2.0, 250ns, 300ns, two, none) == 500);
  // ... and a cancelled one does not: busy until 300, then 300 + (250 - 150) = 400.
  const auto two_cancel_one = [&](sim::SimBackend& b) { two(b); REQUIRE(b.cancel_copy({0, 1})); };
  CHECK(kernel_end(2.0, 250ns, 300ns, two_cancel_one, none) == 400);
  // A slowdown that is not a ratio of times is refused, naming the field.
  CHECK(test::contains(test::thrown_message<ConfigError>([] {
          (void)CostModel::fixed(FixedCosts{.expert = 1ns, .chunk_times = {1ns}, .expert_bytes = Bytes{1},
                                            .compute_slowdown_under_copy = 0.0});
        }),
        "compute_slowdown_under_copy"));
}

TEST_CASE("executor contract: slots, cancel, promote, evict", "[sim][engine]") {
  const CostModel cost = fixed({10ns});
  sim::SimBackend b(cost, {1, 4, 1}, {.slots = 2});
  sim::SimMachine m(b);
  CHECK(m.capacity_slots() == 2);
  CHECK(m.copy({0, 0}, CopyPriority::low));
  CHECK(m.copy({0, 1}, CopyPriority::low));
  CHECK(m.copy({0, 2}, CopyPriority::high).code == runtime::StatusCode::no_free_slot);  // no slot: not a fault
  CHECK(m.fault().ok());
  CHECK(m.residency({0, 0}) == Residency::copying);
  CHECK(m.residency({0, 1}) == Residency::queued);
  CHECK(m.address({0, 0}) != m.address({0, 1}));
  CHECK_FALSE(m.cancel({0, 0}));                    // already moving
  CHECK(m.cancel({0, 1}));
  CHECK(m.free_slots() == 1);
  const runtime::Status early = m.evict({0, 0});   // not resident yet
  CHECK(early.code == runtime::StatusCode::not_resident);
  CHECK(early.describe() == "evict of L0/E0: the expert is not resident");
  CHECK(m.fault().code == runtime::StatusCode::not_resident);  // recorded: the driver ends the run with it
  CHECK(m.copy({0, 0}, CopyPriority::high).code == runtime::StatusCode::not_absent);
  runtime::Completion c;
  REQUIRE(b.wait(c));
  REQUIRE(c.landed);
  m.land(c.expert.flat(4));  // what the driver does when it takes the landing
  CHECK(m.residency({0, 0}) == Residency::resident);
  CHECK(m.evictable({0, 0}));
  CHECK(m.evict({0, 0}));
  CHECK(m.counters().wasted_bytes == Bytes{1000});  // copied, never used
  CHECK(m.free_slots() == 2);
  CHECK(m.check_invariants() == nullptr);
}

TEST_CASE("a policy that leaves a need unmet is reported, not hung", "[sim][engine]") {
  struct Lazy {
    static constexpr std::string_view name() { return "lazy"; }
    void on_pass_begin(sim::SimMachine&, const PassInfo&) {}
    void on_gate(sim::SimMachine&, std::uint32_t, std::span<const ExpertId>) {}
    void on_expert_done(sim::SimMachine&, ExpertId) {}
    void on_copy_done(sim::SimMachine&, ExpertId) {}
    void on_layer_done(sim::SimMachine&, std::uint32_t) {}
  };
  static_assert(Policy<Lazy, sim::SimMachine>);
  const auto routing = two_tokens();
  const Workload w = build_workload(routing, {2, 2, 1});
  const CostModel cost = fixed({100ns});
  Lazy pol;
  CHECK(test::contains(test::thrown_message<runtime::PolicyError>([&] { (void)sim::replay(w, cost, pol, checked(Bytes{4000})); }),
                       "policy 'lazy' left 1 needed expert(s) of layer 0 of pass 0 absent (first: L0/E0) with nothing in flight"));
}

TEST_CASE("a policy that evicts a pinned expert is stopped", "[sim][engine]") {
  struct Rogue {
    static constexpr std::string_view name() { return "rogue"; }
    void on_pass_begin(sim::SimMachine&, const PassInfo&) {}
    void on_gate(sim::SimMachine& e, std::uint32_t, std::span<const ExpertId> need) {
      for (auto id : need) {
        if (e.residency(id) == Residency::absent) (void)e.copy(id, CopyPriority::high);
        else (void)e.evict(id);
      }
    }
    void on_expert_done(sim::SimMachine&, ExpertId) {}
    void on_copy_done(sim::SimMachine&, ExpertId) {}
    void on_layer_done(sim::SimMachine&, std::uint32_t) {}
  };
  const auto routing = two_tokens();
  const Workload w = build_workload(routing, {2, 2, 1});
  const CostModel cost = fixed({100ns});
  Rogue pol;
  CHECK(test::contains(test::thrown_message<runtime::PolicyError>([&] { (void)sim::replay(w, cost, pol, checked(Bytes{4000})); }),
                       "policy 'rogue': evict of L0/E0: the expert is pinned by the running layer"));
}

TEST_CASE("a budget below one layer's experts is refused before any work", "[sim][engine]") {
  test::VecRouting r;
  r.layers = 1;
  r.top_k = 2;
  r.add({.request = 0, .phase = StepPhase::decode, .tokens = 1}, {0, 1});
  const Workload w = build_workload(r, {1, 4, 2});
  const CostModel cost = fixed({100ns});
  policy::OnDemand pol;
  CHECK(test::contains(test::thrown_message<ConfigError>([&] { (void)sim::replay(w, cost, pol, checked(Bytes{1500})); }),
                       "holds 1 experts, but one layer of this workload needs 2 at once"));
}

TEST_CASE("timeline records compute, copies and stalls", "[sim][engine]") {
  const auto routing = two_tokens();
  const Workload w = build_workload(routing, {2, 2, 1});
  const CostModel cost = fixed({100ns});
  policy::OnDemand pol;
  runtime::Timeline tl;
  auto opt = checked(Bytes{4000});
  opt.timeline = &tl;
  (void)sim::replay(w, cost, pol, opt);
  std::ostringstream os;
  tl.write_chrome_json(os, "on-demand");
  const std::string j = os.str();
  CHECK(test::contains(j, R"x("name":"copy L0/E0 (high)","cat":"copy,high","ph":"X","pid":1,"tid":2,"ts":0.010,"dur":0.100)x"));
  CHECK(test::contains(j, R"x("name":"stall L1","cat":"stall","ph":"X","pid":1,"tid":3,"ts":0.140,"dur":0.100)x"));
  CHECK(test::contains(j, R"x("name":"L1/E1","cat":"expert","ph":"X","pid":1,"tid":1,"ts":0.240,"dur":0.020)x"));
}
