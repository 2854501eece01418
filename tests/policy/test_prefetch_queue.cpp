// PrefetchQueue driven by hand on the archetype executor: depth, de-duplication against resident
// and in-flight experts, the lookahead, early preemption at the gate, refusal after the gate,
// replacement, and the layer-clock Belady victim rule.
#include "support/catch.hpp"

#include <moesched/policy/prefetch_queue.hpp>
#include <moesched/runtime/archetype.hpp>

#include <initializer_list>
#include <vector>

using namespace moesched;
using runtime::ArchetypeExecutor;
using Control = ArchetypeExecutor::Control;

namespace {
std::vector<runtime::ScoredExpert> ranked(std::initializer_list<std::uint16_t> experts) {
  std::vector<runtime::ScoredExpert> v;
  for (auto e : experts) v.push_back({e, 1.0f});
  return v;
}
std::vector<std::uint16_t> vec(std::span<const std::uint16_t> s) { return {s.begin(), s.end()}; }
}  // namespace

TEST_CASE("prefetch queue: depth, de-duplication, preemption at the gate, the victim rule", "[policy][prefetch_queue]") {
  ArchetypeExecutor e(3, 4, 4);  // 3 layers x 4 experts, 4 slots
  policy::PrefetchQueue q(/*depth=*/2);
  q.begin_pass(e, PassInfo{0, StepPhase::decode, 1, 1, 0});
  CHECK(q.gated_layer() == -1);

  // Two copies outstanding at most: the third candidate waits.
  CHECK(q.push(e, 1, ranked({0, 1, 2})));
  CHECK(Control::copies(e) == 2);
  CHECK(e.residency({1, 0}) == Residency::queued);
  CHECK(e.residency({1, 2}) == Residency::absent);
  CHECK(vec(q.pending(1)) == std::vector<std::uint16_t>{2});
  Control::land(e, {1, 0});
  q.copy_done(e, {1, 0});
  CHECK(e.residency({1, 2}) == Residency::queued);
  CHECK(Control::copies(e) == 3);

  // A resident candidate is not copied again (it waits for the depth, then is only touched).
  CHECK(q.push(e, 1, ranked({0})));
  CHECK(vec(q.pending(1)) == std::vector<std::uint16_t>{0});
  Control::land(e, {1, 1});
  q.copy_done(e, {1, 1});
  CHECK(q.pending(1).empty());
  CHECK(Control::copies(e) == 3);

  // The running layer's demand copies count towards the depth.
  const std::array<ExpertId, 1> gate0{ExpertId{0, 3}};
  q.gate(e, 0, gate0);
  CHECK(q.gated_layer() == 0);
  CHECK(e.residency({0, 3}) == Residency::queued);  // demand (high)
  CHECK(Control::copies(e) == 4);
  CHECK(q.push(e, 2, ranked({1})));
  CHECK(vec(q.pending(2)) == std::vector<std::uint16_t>{1});  // 1 low + 1 demand outstanding

  // Early preemption: layer 1's gate asks for E0 and E1 (resident); the queued, unasked E2 is
  // cancelled, which frees its slot.
  const std::array<ExpertId, 2> gate1{ExpertId{1, 0}, ExpertId{1, 1}};
  q.gate(e, 1, gate1);
  CHECK(e.residency({1, 2}) == Residency::absent);
  CHECK(e.free_slots() == 1);
  CHECK_FALSE(q.push(e, 1, ranked({3})));  // its gate ran: too late
  q.layer_done(e, 1);                      // nothing of layer 1 outstanding: layer 2's goes
  CHECK(e.residency({2, 1}) == Residency::queued);
  CHECK(Control::copies(e) == 5);
  Control::land(e, {0, 3});
  Control::land(e, {2, 1});

  // The next pass: memory is full (L0/E3, L1/E0, L1/E1, L2/E1). A prefetch for layer 0 evicts from
  // the layer whose turn is furthest (layer 2, just run), not from layer 1, which runs sooner.
  q.begin_pass(e, PassInfo{1, StepPhase::decode, 1, 1, 0});
  CHECK(q.push(e, 0, ranked({0})));
  CHECK(e.residency({2, 1}) == Residency::absent);
  CHECK(e.residency({0, 0}) == Residency::queued);
  CHECK(e.residency({1, 0}) == Residency::resident);
  // A prefetch for layer 2 may evict only from layers whose turn comes after layer 2's: none.
  CHECK(q.push(e, 2, ranked({2})));
  CHECK(e.residency({2, 2}) == Residency::absent);
  CHECK(vec(q.pending(2)) == std::vector<std::uint16_t>{2});
  // A newer prediction replaces what was not issued.
  CHECK(q.replace(e, 2, ranked({3})));
  CHECK(vec(q.pending(2)) == std::vector<std::uint16_t>{3});
}

TEST_CASE("prefetch queue: the lookahead bounds how far ahead copies are issued", "[policy][prefetch_queue]") {
  ArchetypeExecutor e(4, 4, 8);
  policy::PrefetchQueue q(/*depth=*/4, /*lookahead=*/1);
  q.begin_pass(e, PassInfo{0, StepPhase::decode, 1, 1, 0});
  CHECK(q.push(e, 2, ranked({1})));
  CHECK(e.residency({2, 1}) == Residency::absent);  // before layer 0's gate only layer 0 is in reach
  CHECK(q.push(e, 0, ranked({1})));
  CHECK(e.residency({0, 1}) == Residency::queued);
  const std::array<ExpertId, 1> g{ExpertId{0, 1}};
  q.gate(e, 0, g);
  q.layer_done(e, 0);
  CHECK(e.residency({2, 1}) == Residency::absent);  // running layer 0: layer 1 is in reach, 2 not
  const std::array<ExpertId, 1> g1{ExpertId{1, 0}};
  q.gate(e, 1, g1);
  q.layer_done(e, 1);
  CHECK(e.residency({2, 1}) == Residency::queued);
}
