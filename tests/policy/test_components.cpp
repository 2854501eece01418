// The components the published policies are assembled from, driven by hand: the prediction
// ledger, the reuse model, the prefetch queue's switches (preemption, touch, victim rules, cutoff,
// batched depth, the utility victim and admission), table jobs' lead, the cutoff rules.
#include "support/catch.hpp"

#include <moesched/policy/cutoff_solver.hpp>
#include <moesched/policy/latency_model.hpp>
#include <moesched/policy/prediction_ledger.hpp>
#include <moesched/policy/prefetch_queue.hpp>
#include <moesched/policy/reuse_model.hpp>
#include <moesched/policy/table_jobs.hpp>
#include <moesched/runtime/archetype.hpp>
#include <moesched/core/random.hpp>

#include <algorithm>
#include <cmath>
#include <array>
#include <initializer_list>
#include <vector>

using namespace moesched;
using namespace std::chrono_literals;
using runtime::ArchetypeExecutor;
using Control = ArchetypeExecutor::Control;

namespace {
std::vector<runtime::ScoredExpert> ranked(std::initializer_list<std::uint16_t> experts) {
  std::vector<runtime::ScoredExpert> v;
  for (auto e : experts) v.push_back({e, 1.0f});
  return v;
}
PassInfo decode(std::uint64_t i) { return PassInfo{i, StepPhase::decode, 1, 1, 0}; }

/// Runs one whole layer through the queue: gate, every needed copy landing, FFNs, layer done.
void run_layer(policy::PrefetchQueue& q, ArchetypeExecutor& e, std::uint32_t layer, std::span<const ExpertId> need) {
  q.gate(e, layer, need);
  for (ExpertId id : need) {
    REQUIRE(e.residency(id) != Residency::absent);
    if (e.residency(id) != Residency::resident) {
      Control::land(e, id);
      q.copy_done(e, id);
    }
  }
  for (ExpertId id : need) q.expert_done(e, id);
  q.layer_done(e, layer);
}
}  // namespace

TEST_CASE("prediction ledger: best ranks, recall, precision per rank, predicted counts", "[policy][ledger]") {
  policy::PredictionLedger l;
  l.resize(2, 4);
  l.begin_pass();
  CHECK_FALSE(l.has_prediction(1));
  l.record(1, ranked({2, 0}));
  l.record(1, ranked({0, 3}));  // a second prediction of the layer: E0 keeps its best rank
  CHECK(l.has_prediction(1));
  CHECK(l.rank({1, 2}) == 0);
  CHECK(l.rank({1, 0}) == 0);
  CHECK(l.rank({1, 3}) == 1);
  CHECK(l.rank({1, 1}) == policy::PredictionLedger::kNotPredicted);
  CHECK(l.predicted_count(1) == 3);
  const std::array<ExpertId, 2> need{ExpertId{1, 0}, ExpertId{1, 1}};
  l.observe(1, need);
  l.observe(1, need);  // a later call of the same gate adds nothing
  CHECK(l.recall(1) == Approx(2.0 / 4.0));      // 1 of 2 needed predicted, prior 1/2
  CHECK(l.precision(1) == Approx(2.0 / 5.0));   // 1 of 3 predicted needed
  CHECK(l.precision_at(1, 0) == Approx(2.0 / 4.0));  // rank 0: E2, E0; E0 asked
  CHECK(l.precision_at(1, 1) == Approx(1.0 / 3.0));  // rank 1: E3, not asked
  CHECK(l.mean_predicted(1) == Approx(3.0));
  CHECK(l.scored_passes(1) == 1);
  // A layer without predictions is not scored; the next pass forgets the ranks.
  l.observe(0, std::array<ExpertId, 1>{ExpertId{0, 1}});
  CHECK(l.scored_passes(0) == 0);
  CHECK(l.recall(0) == Approx(0.5));
  l.begin_pass();
  CHECK_FALSE(l.has_prediction(1));
  CHECK(l.rank({1, 2}) == policy::PredictionLedger::kNotPredicted);
  CHECK(l.predicted_count(1) == 0);
}

/// ReuseModel's counting done the plain way, expert by expert (the reference of its counting):
/// P(needed | state) per layer, phase and state, the history bits and (with `frequency`) the
/// frequency class from the expert's asks against its layer's mean, kept here on their own.
/// States: joint (history x 4 + class) x 5 + bucket, then marginal 64 x 5 + history x 4 + class.
struct PlainReuse {
  std::uint32_t layers = 0, experts = 0;
  bool frequency = false;
  std::vector<std::uint8_t> history;
  std::vector<std::uint64_t> asks;         // [layer * experts + expert]: turns asked for
  std::vector<std::uint64_t> used, total;  // [(layer * 3 + phase) * kStates + state]
  static constexpr std::uint32_t kStates = 16 * 4 * 5 + 16 * 4;
  static_assert(kStates == policy::ReuseModel::kStates);
  PlainReuse(std::uint32_t l, std::uint32_t e, bool f)
      : layers(l), experts(e), frequency(f), history(std::size_t{l} * e, 0), asks(std::size_t{l} * e, 0),
        used(std::size_t{l} * 3 * kStates, 0), total(std::size_t{l} * 3 * kStates, 0) {}
  /// The class of `e` of `layer`: its asks per turn against the mean over the layer's experts
  /// (below half of it: 0, below it: 1, below twice it: 2, else 3; no asks yet: mean 0, class 3).
  [[nodiscard]] std::uint32_t frequency_class(std::uint32_t layer, std::uint32_t e) const {
    if (!frequency) return 0;
    std::uint64_t all = 0;
    for (std::uint32_t x = 0; x < experts; ++x) all += asks[std::size_t{layer} * experts + x];
    const double mean = static_cast<double>(all) / static_cast<double>(experts);  // asks per expert
    const auto a = static_cast<double>(asks[std::size_t{layer} * experts + e]);
    if (a < 0.5 * mean) return 0;
    if (a < mean) return 1;
    if (a < 2.0 * mean) return 2;
    return 3;
  }
  void observe(std::uint32_t layer, std::span<const ExpertId> needed, std::uint32_t ph,
               const policy::PredictionLedger& ledger) {
    const bool predicted = ledger.has_prediction(layer);
    std::vector<std::uint32_t> cls(experts);
    for (std::uint32_t e = 0; e < experts; ++e) cls[e] = frequency_class(layer, e);  // before this turn
    for (std::uint32_t e = 0; e < experts; ++e) {
      bool u = false;
      for (ExpertId id : needed) u = u || id.expert == e;
      const std::uint32_t h = history[std::size_t{layer} * experts + e];
      const std::uint32_t cell = h * 4 + cls[e];
      const std::size_t base = (std::size_t{layer} * 3 + ph) * kStates;
      const std::size_t m = base + 16 * 4 * 5 + cell;
      total[m] += 1;
      used[m] += u ? 1 : 0;
      if (predicted) {
        const std::uint32_t r = ledger.rank(ExpertId{static_cast<std::uint16_t>(layer), static_cast<std::uint16_t>(e)});
        const std::uint32_t b = r == policy::PredictionLedger::kNotPredicted ? 4 : std::min<std::uint32_t>(r, 3);
        total[base + cell * 5 + b] += 1;
        used[base + cell * 5 + b] += u ? 1 : 0;
      }
      history[std::size_t{layer} * experts + e] = static_cast<std::uint8_t>(((h << 1U) | (u ? 1U : 0U)) & 15U);
      asks[std::size_t{layer} * experts + e] += u ? 1 : 0;
    }
  }
};

TEST_CASE("reuse model: its counting equals counting expert by expert (random passes)", "[policy][reuse]") {
  for (const bool frequency : {false, true}) {
  Rng rng(frequency ? 11 : 7);
  for (std::uint32_t round = 0; round < 20; ++round) {
    const std::uint32_t L = 1 + static_cast<std::uint32_t>(rng.below(4));
    const std::uint32_t E = 1 + static_cast<std::uint32_t>(rng.below(20));
    // Skewed asks (expert e asked with probability falling in e) so that every class occurs.
    const double skew = frequency ? 0.5 + rng.uniform() : 0.0;
    policy::PredictionLedger ledger;
    ledger.resize(L, E);
    policy::ReuseModel r(frequency);
    REQUIRE(r.frequency() == frequency);
    r.resize(L, E);
    PlainReuse plain(L, E, frequency);
    std::array<std::uint64_t, 4> classes_seen{};
    const StepPhase phases[3] = {StepPhase::prefill, StepPhase::decode, StepPhase::verify};
    for (std::uint32_t pass = 0; pass < 60; ++pass) {
      ledger.begin_pass();
      const std::uint32_t ph = static_cast<std::uint32_t>(rng.below(3));
      for (std::uint32_t l = 0; l < L; ++l) {
        for (auto k = rng.below(3); k > 0; --k) {  // predictions, overlapping, some out of range
          std::vector<runtime::ScoredExpert> v;
          for (auto c = rng.below(E + 2); c > 0; --c) v.push_back({static_cast<std::uint16_t>(rng.below(E + 1)), 1.0f});
          ledger.record(l, v);
        }
        std::vector<ExpertId> needed;  // repeats and ids past the layer's experts are ignored
        for (auto c = rng.below(E + 2); c > 0; --c) {
          auto x = static_cast<std::uint16_t>(rng.below(E + 1));
          if (skew > 0.0) x = static_cast<std::uint16_t>(static_cast<double>(x) * std::pow(rng.uniform(), skew));
          needed.push_back({static_cast<std::uint16_t>(l), x});
        }
        if (rng.below(2) == 0) {
          std::vector<ExpertId> in_range;
          for (ExpertId id : needed) {
            if (id.expert < E) in_range.push_back(id);
          }
          needed = in_range;
        }
        std::vector<std::uint16_t> named;  // predicted(): the experts with a rank, each once
        for (std::uint32_t e = 0; e < E; ++e) {
          if (ledger.rank({static_cast<std::uint16_t>(l), static_cast<std::uint16_t>(e)}) !=
              policy::PredictionLedger::kNotPredicted) {
            named.push_back(static_cast<std::uint16_t>(e));
          }
        }
        std::vector<std::uint16_t> listed(ledger.predicted(l).begin(), ledger.predicted(l).end());
        std::sort(listed.begin(), listed.end());
        REQUIRE(listed == named);
        plain.observe(l, needed, ph, ledger);
        r.observe(l, needed, phases[ph], ledger);
        std::vector<ExpertId> scored;  // the ledger takes the layer's experts only
        for (ExpertId id : needed) {
          if (id.expert < E) scored.push_back(id);
        }
        ledger.observe(l, scored);
      }
      for (std::uint32_t l = 0; l < L; ++l) {
        for (std::uint32_t e = 0; e < E; ++e) {
          const ExpertId id{static_cast<std::uint16_t>(l), static_cast<std::uint16_t>(e)};
          REQUIRE(r.history(id) == plain.history[std::size_t{l} * E + e]);
          REQUIRE(r.frequency_class(id) == plain.frequency_class(l, e));
          ++classes_seen[plain.frequency_class(l, e)];
          // The state ids the counts below are read by.
          const std::uint32_t cell = plain.history[std::size_t{l} * E + e] * 4 + plain.frequency_class(l, e);
          REQUIRE(r.state(id, false, ledger) == 16 * 4 * 5 + cell);
          const std::uint32_t rank = ledger.rank(id);
          const std::uint32_t b = rank == policy::PredictionLedger::kNotPredicted ? 4 : std::min<std::uint32_t>(rank, 3);
          REQUIRE(r.state(id, true, ledger) == cell * 5 + b);
        }
        for (std::uint32_t p = 0; p < 3; ++p) {
          for (std::uint32_t st = 0; st < PlainReuse::kStates; ++st) {
            const std::size_t i = (std::size_t{l} * 3 + p) * PlainReuse::kStates + st;
            const double want = (static_cast<double>(plain.used[i]) + 1.0) / (static_cast<double>(plain.total[i]) + 2.0);
            REQUIRE(r.state_probability(l, st, phases[p]) == want);
          }
        }
      }
    }
    if (!frequency) CHECK(classes_seen[1] + classes_seen[2] + classes_seen[3] == 0);
    if (frequency && E >= 4) {
      for (const std::uint64_t n : classes_seen) CHECK(n > 0);
    }
  }
  }
}

TEST_CASE("reuse model: probabilities counted per history, expected next use", "[policy][reuse]") {
  policy::PredictionLedger ledger;
  ledger.resize(2, 4);
  policy::ReuseModel r;
  r.resize(2, 4);
  // Layer 0 asks for E0 six times. E0's history at its gates: 0, 1, 3, 7, 15, 15 (4 turns kept);
  // the others' stays 0. Counts: history 0: 1 use of 4 + 3 x 5 = 19; histories 1, 3, 7: 1 of 1
  // each; history 15: 2 of 2.
  const std::array<ExpertId, 1> e0{ExpertId{0, 0}};
  for (int i = 0; i < 6; ++i) {
    ledger.begin_pass();
    r.observe(0, e0, StepPhase::decode, ledger);
  }
  CHECK(r.history({0, 0}) == 15);
  CHECK(r.history({0, 1}) == 0);
  CHECK(r.probability({0, 0}, -1, StepPhase::decode, ledger) == Approx(3.0 / 4.0));
  CHECK(r.probability({0, 1}, -1, StepPhase::decode, ledger) == Approx(2.0 / 21.0));
  // Never seen in prefill, nor layer 1 at all: the prior.
  CHECK(r.probability({0, 0}, -1, StepPhase::prefill, ledger) == Approx(0.5));
  CHECK(r.probability({1, 0}, -1, StepPhase::decode, ledger) == Approx(0.5));
  // next_use = d + L (1 / p - 1): before layer 0 runs d = 1; after it ran, d = L = 2.
  CHECK(r.next_use({0, 0}, -1, StepPhase::decode, ledger) == Approx(1.0 + 2.0 / 3.0));
  CHECK(r.next_use({0, 1}, -1, StepPhase::decode, ledger) == Approx(1.0 + 2.0 * 9.5));
  CHECK(r.next_use({0, 0}, 0, StepPhase::decode, ledger) == Approx(2.0 + 2.0 / 3.0));
  // With a prediction of the running pass, the rank's own counts answer (none yet: the prior).
  ledger.begin_pass();
  ledger.record(0, ranked({1}));
  CHECK(r.probability({0, 1}, -1, StepPhase::decode, ledger) == Approx(0.5));
  r.observe(0, std::array<ExpertId, 1>{ExpertId{0, 1}}, StepPhase::decode, ledger);  // rank 0 was right
  ledger.begin_pass();
  ledger.record(0, ranked({1}));
  // E1 now has history 1 and rank 0: that cell saw no expert yet (E1 had history 0 then): prior.
  // (E0, not predicted then, had history 15: a cell of its own.)
  CHECK(r.probability({0, 1}, -1, StepPhase::decode, ledger) == Approx(0.5));
  ledger.record(0, ranked({2}));  // E2: history 0, rank 0 (same pass, a second prediction)
  CHECK(r.probability({0, 2}, -1, StepPhase::decode, ledger) == Approx(2.0 / 3.0));  // 1 use of 1
  CHECK(r.probability({0, 3}, -1, StepPhase::decode, ledger) == Approx(1.0 / 4.0));  // history 0, not predicted: 0 of 2
}

TEST_CASE("reuse model: the density score d / p against expected next use", "[policy][reuse]") {
  policy::ReuseModel next;
  policy::ReuseModel dens(false, true);
  next.resize(8, 4);
  dens.resize(8, 4);
  CHECK_FALSE(next.density());
  CHECK(dens.density());
  // A: its layer just ran (d = 8), p = 0.1 (odds 9). B: its layer runs next (d = 1), p = 1/11.1
  // (odds 10.1). Expected next use: A 8 + 8 x 9 = 80, B 1 + 8 x 10.1 = 81.8: B is evicted first.
  // Density: A 8 x 10 = 80 layers held per expected hit, B 1 x 11.1 = 11.1: A is evicted first.
  CHECK(next.expected_layers(8, 9.0) == Approx(80.0));
  CHECK(next.expected_layers(1, 10.1) == Approx(81.8));
  CHECK(dens.expected_layers(8, 9.0) == Approx(80.0));
  CHECK(dens.expected_layers(1, 10.1) == Approx(11.1));
  // Within one layer (the same d) both order by the odds alone, and at p = 1 both give d.
  for (std::int64_t d = 1; d <= 8; ++d) {
    CHECK(dens.expected_layers(d, 0.0) == Approx(static_cast<double>(d)));
    CHECK(next.expected_layers(d, 0.0) == Approx(static_cast<double>(d)));
    CHECK(dens.expected_layers(d, 2.0) < dens.expected_layers(d, 3.0));
  }
  // next_use() goes through the same score: a never-seen layer has the prior p = 1/2 (odds 1).
  policy::PredictionLedger ledger;
  ledger.resize(8, 4);
  CHECK(dens.next_use({3, 0}, 0, StepPhase::decode, ledger) == Approx(3.0 * 2.0));
  CHECK(next.next_use({3, 0}, 0, StepPhase::decode, ledger) == Approx(3.0 + 8.0));
}

TEST_CASE("reuse model: frequency classes split the histories by long-run asks", "[policy][reuse]") {
  policy::PredictionLedger ledger;
  ledger.resize(1, 4);
  policy::ReuseModel on(true);
  policy::ReuseModel off(false);
  on.resize(1, 4);
  off.resize(1, 4);
  // Turns ask for E0, E1, E0. With frequency on (a x E against the layer's asks T):
  //   turn 1: T = 0, every expert class 3, history 0: cell (0, 3) 1 use of 4.
  //   turn 2: T = 1: E0 (history 1) class 3: cell (1, 3) 0 of 1; E1..E3 (history 0) class 0: (0, 0) 1 of 3.
  //   turn 3: T = 2: E0 (history 2) class 3: (2, 3) 1 of 1; E1 (history 1) 4 >= 2 x 2: class 3:
  //           (1, 3) 0 of 1 more; E2, E3 class 0: (0, 0) 0 of 2 more.
  //   after: T = 3: E0 8 >= 6: class 3; E1 4 in [3, 6): class 2; E2, E3: class 0.
  for (const std::uint16_t e : std::array<std::uint16_t, 3>{0, 1, 0}) {
    ledger.begin_pass();
    const std::array<ExpertId, 1> need{ExpertId{0, e}};
    on.observe(0, need, StepPhase::decode, ledger);
    off.observe(0, need, StepPhase::decode, ledger);
  }
  CHECK(on.frequency_class({0, 0}) == 3);
  CHECK(on.frequency_class({0, 1}) == 2);
  CHECK(on.frequency_class({0, 2}) == 0);
  CHECK(off.frequency_class({0, 0}) == 0);
  CHECK(on.history({0, 0}) == 5);
  CHECK(on.history({0, 1}) == 2);
  using R = policy::ReuseModel;
  const std::uint32_t marginal = R::kCells * R::kBuckets;
  CHECK(on.state({0, 2}, false, ledger) == marginal + 0);
  CHECK(on.state({0, 1}, false, ledger) == marginal + 2 * R::kFrequencies + 2);
  // E2: cell (0, 0), 1 use of 5: 2/7. Without classes its history 0 saw 2 uses of 9: 3/11.
  CHECK(on.probability({0, 2}, -1, StepPhase::decode, ledger) == Approx(2.0 / 7.0));
  CHECK(off.probability({0, 2}, -1, StepPhase::decode, ledger) == Approx(3.0 / 11.0));
  // The cells counted: (0, 3) 1 of 4, (1, 3) 0 of 2, (2, 3) 1 of 1; E0 and E1 are in unseen cells.
  const auto decode_p = [&](std::uint32_t hist, std::uint32_t cls) {
    return on.state_probability(0, marginal + hist * R::kFrequencies + cls, StepPhase::decode);
  };
  CHECK(decode_p(0, 3) == Approx(2.0 / 6.0));
  CHECK(decode_p(1, 3) == Approx(1.0 / 4.0));
  CHECK(decode_p(2, 3) == Approx(2.0 / 3.0));
  CHECK(on.probability({0, 0}, -1, StepPhase::decode, ledger) == Approx(0.5));
  CHECK(on.probability({0, 1}, -1, StepPhase::decode, ledger) == Approx(0.5));
}

TEST_CASE("prefetch queue: early preemption can be switched off", "[policy][prefetch_queue]") {
  for (bool preempt : {true, false}) {
    CAPTURE(preempt);
    ArchetypeExecutor e(2, 4, 4);
    policy::PrefetchQueue q({.depth = 4, .preempt = preempt});
    q.begin_pass(e, decode(0));
    CHECK(q.push(e, 1, ranked({0, 1})));
    CHECK(e.residency({1, 1}) == Residency::queued);
    const std::array<ExpertId, 1> g1{ExpertId{1, 0}};
    q.gate(e, 1, g1);
    // On: the unasked queued guess is cancelled (its slot freed); off: it stays.
    CHECK(e.residency({1, 1}) == (preempt ? Residency::absent : Residency::queued));
    CHECK(e.free_slots() == (preempt ? 3U : 2U));
    CHECK(e.residency({1, 0}) == Residency::queued);  // asked: kept (promoted when on)
  }
}

TEST_CASE("prefetch queue: a prefetch touches a resident candidate only with touch on", "[policy][prefetch_queue]") {
  // 2 layers x 4 experts, 4 slots (2 per layer). Layer 0 holds E0 (older) and E1. A prediction
  // for layer 0 names E0 (resident) then E2 (absent): with touch, E0 becomes the newest and E1 is
  // the layer's LRU victim; without, E0 is.
  for (bool touch : {true, false}) {
    CAPTURE(touch);
    ArchetypeExecutor e(2, 4, 4);
    policy::PrefetchQueue q({.depth = 2, .victim = policy::PrefetchVictim::layer_lru, .touch = touch});
    q.begin_pass(e, decode(0));
    run_layer(q, e, 0, std::array<ExpertId, 2>{ExpertId{0, 0}, ExpertId{0, 1}});
    run_layer(q, e, 1, std::array<ExpertId, 2>{ExpertId{1, 0}, ExpertId{1, 1}});
    REQUIRE(e.free_slots() == 0);
    q.begin_pass(e, decode(1));
    CHECK(q.push(e, 0, ranked({0, 2})));
    CHECK(e.residency({0, 2}) == Residency::queued);
    CHECK(e.residency({0, 0}) == (touch ? Residency::resident : Residency::absent));
    CHECK(e.residency({0, 1}) == (touch ? Residency::absent : Residency::resident));
    CHECK(e.residency({1, 0}) == Residency::resident);  // layer 1 untouched: its own share
  }
}

TEST_CASE("prefetch queue: layer-LRU victims stay in the predicted layer, layer-clock victims do not",
          "[policy][prefetch_queue]") {
  for (auto rule : {policy::PrefetchVictim::layer_lru, policy::PrefetchVictim::layer_clock}) {
    ArchetypeExecutor e(2, 4, 4);
    policy::PrefetchQueue q({.depth = 2, .victim = rule});
    q.begin_pass(e, decode(0));
    run_layer(q, e, 0, std::array<ExpertId, 2>{ExpertId{0, 0}, ExpertId{0, 1}});
    run_layer(q, e, 1, std::array<ExpertId, 2>{ExpertId{1, 0}, ExpertId{1, 1}});
    q.begin_pass(e, decode(1));
    CHECK(q.push(e, 0, ranked({2})));
    // Layer clock: layer 1's turn is furthest from the start of a pass: its LRU expert goes.
    const bool lru = rule == policy::PrefetchVictim::layer_lru;
    CHECK(e.residency({0, 0}) == (lru ? Residency::absent : Residency::resident));
    CHECK(e.residency({1, 0}) == (lru ? Residency::resident : Residency::absent));
  }
}

TEST_CASE("prefetch queue: the cutoff and batched depth", "[policy][prefetch_queue]") {
  ArchetypeExecutor e(4, 4, 16);
  policy::PrefetchQueue q({.depth = 1});
  q.begin_pass(e, decode(0));
  q.set_depth(8);      // batched: everything at once
  q.set_cutoff(2, 1);  // layers 0-1 at any distance, later ones one layer ahead
  CHECK(q.push(e, 1, ranked({0, 1})));
  CHECK(q.push(e, 3, ranked({0})));
  CHECK(q.push(e, 2, ranked({0})));
  CHECK(e.residency({1, 0}) == Residency::queued);
  CHECK(e.residency({1, 1}) == Residency::queued);  // depth 8, not 1
  CHECK(e.residency({2, 0}) == Residency::absent);  // beyond the cutoff: not before layer 1 runs
  CHECK(e.residency({3, 0}) == Residency::absent);
  run_layer(q, e, 0, std::array<ExpertId, 1>{ExpertId{0, 3}});
  CHECK(e.residency({2, 0}) == Residency::absent);
  run_layer(q, e, 1, std::array<ExpertId, 1>{ExpertId{1, 0}});
  CHECK(e.residency({2, 0}) == Residency::queued);  // running layer 1: layer 2 is one ahead
  CHECK(e.residency({3, 0}) == Residency::absent);
  run_layer(q, e, 2, std::array<ExpertId, 1>{ExpertId{2, 0}});
  CHECK(e.residency({3, 0}) == Residency::queued);
  // The next pass lifts the cutoff and restores the depth.
  q.begin_pass(e, decode(1));
  CHECK(q.cutoff() == policy::PrefetchQueue::kNoCutoff);
  CHECK(q.depth() == 1);
  // beyond = 0: later layers never.
  q.set_cutoff(1, 0);
  CHECK(q.push(e, 1, ranked({2})));
  run_layer(q, e, 0, std::array<ExpertId, 1>{ExpertId{0, 3}});
  CHECK(e.residency({1, 2}) == Residency::absent);
}

TEST_CASE("prefetch queue: utility victims and admission", "[policy][prefetch_queue][reuse]") {
  // Layer 0 has asked for E0 six times, layer 1 for E2 six times: P(L0/E0) = P(L1/E2) = 3/4,
  // every other expert 2/21 (see the reuse model's test). 2 slots.
  policy::PredictionLedger ledger;
  ledger.resize(2, 4);
  policy::ReuseModel r;
  r.resize(2, 4);
  for (int i = 0; i < 6; ++i) {
    r.observe(0, std::array<ExpertId, 1>{ExpertId{0, 0}}, StepPhase::decode, ledger);
    r.observe(1, std::array<ExpertId, 1>{ExpertId{1, 2}}, StepPhase::decode, ledger);
  }
  ArchetypeExecutor e(2, 4, 2);
  policy::PrefetchQueue q({.depth = 2, .victim = policy::PrefetchVictim::utility});
  q.begin_pass(e, decode(0));
  q.set_utility(&r, &ledger, StepPhase::decode);
  run_layer(q, e, 0, std::array<ExpertId, 2>{ExpertId{0, 0}, ExpertId{0, 1}});
  // Running layer 0 (gated): L0/E0's next use 2 + 2 x 1/3 = 2.67, L0/E1's 2 + 2 x 9.5 = 21. L1/E2:
  // 1 + 2 x 1/3 = 1.67 < 21: admitted, evicting L0/E1 (not the older L0/E0).
  CHECK(q.push(e, 1, ranked({2})));
  CHECK(e.residency({1, 2}) == Residency::queued);
  CHECK(e.residency({0, 1}) == Residency::absent);
  CHECK(e.residency({0, 0}) == Residency::resident);
  // L1/E3: 1 + 19 = 20, not below L0/E0's 2.67 (L1/E2, an unused prefetch, is spared): declined.
  CHECK(q.push(e, 1, ranked({3})));
  CHECK(e.residency({1, 3}) == Residency::absent);
  CHECK(q.declined() == 1);
  CHECK(q.pending(1).empty());
  // A demand copy evicts by the same score. Layer 1's gate asks for E1 only: L1/E2's guess was
  // wrong and its layer has run, so its next use is 2 + 2/3, L0/E0's 1 + 2/3 (its turn comes
  // first): L1/E2 goes, although it landed last.
  Control::land(e, {1, 2});
  q.copy_done(e, {1, 2});
  q.gate(e, 1, std::array<ExpertId, 1>{ExpertId{1, 1}});
  CHECK(e.residency({1, 1}) == Residency::queued);
  CHECK(e.residency({1, 2}) == Residency::absent);
  CHECK(e.residency({0, 0}) == Residency::resident);
}

TEST_CASE("table jobs: ready points, lead, tags, stale results", "[policy][table_jobs]") {
  policy::PredictionTable t("hand");
  t.begin_pass();
  t.add({3, 0, 0, 0, 0}, std::array<std::uint16_t, 2>{1, 2});   // layer 3 after layer 0
  t.add({1, -1, 2, 0, 0}, std::array<std::uint16_t, 1>{0});     // layer 1 after draft token 2
  t.add({0, -1, 0, 0, 0}, std::array<std::uint16_t, 1>{3});     // layer 0 at the pass start
  t.begin_pass();
  auto ready = [&](std::uint32_t lead, std::uint16_t draft_len) {
    ArchetypeExecutor e(4, 4, 4);
    policy::TableJobs jobs(t, 5us, runtime::JobResource::gpu_stream, 7U << 24U);
    jobs.submit(e, PassInfo{0, StepPhase::verify, 3, 1, draft_len}, lead);
    std::vector<runtime::ReadyPoint> out;
    for (const auto& j : Control::jobs(e)) {
      CHECK(jobs.owns(j.tag));
      CHECK(j.cost == 5us);
      CHECK(j.where == runtime::JobResource::gpu_stream);
      out.push_back(j.ready);
    }
    return out;
  };
  using K = runtime::ReadyPoint::Kind;
  // Sorted by (after, draft tokens, layer): layer 0 (start), layer 1 (draft 2), layer 3 (after 0).
  auto as_recorded = ready(0, 2);
  REQUIRE(as_recorded.size() == 3);
  CHECK(as_recorded[0].kind == K::pass_start);
  CHECK(as_recorded[1].kind == K::after_draft);
  CHECK(as_recorded[1].index == 2);
  CHECK(as_recorded[2].kind == K::after_layer);
  CHECK(as_recorded[2].index == 0);
  // lead 1: layer 3 no earlier than after layer 2; layer 1 after layer 0; layer 0 unchanged.
  auto lead1 = ready(1, 2);
  CHECK(lead1[0].kind == K::pass_start);
  CHECK(lead1[1].kind == K::after_layer);
  CHECK(lead1[1].index == 0);
  CHECK(lead1[2].index == 2);
  // lead 3 is at least what was recorded: no change.
  auto lead3 = ready(3, 2);
  CHECK(lead3[1].kind == K::after_draft);
  CHECK(lead3[2].index == 0);
  // A result is handed back with its set; after the pass, it is stale.
  ArchetypeExecutor e(4, 4, 4);
  policy::TableJobs jobs(t, 0ns, runtime::JobResource::cpu_worker);
  jobs.submit(e, decode(0));
  auto j = Control::jobs(e).back();
  const std::uint32_t n = j.predict(j.predictor, j.input, j.out);
  const auto r = jobs.take(j.tag, n);
  REQUIRE(r.set != nullptr);
  CHECK(r.set->layer == 3);
  REQUIRE(r.ranked.size() == 2);
  CHECK(r.ranked[0].expert == 1);
  jobs.submit(e, decode(1));
  const auto first = Control::jobs(e).front();
  CHECK(jobs.take(first.tag, 1).set == nullptr);
  CHECK(jobs.stale() == 1);
  CHECK_FALSE(jobs.owns(1U << 24U));
}

TEST_CASE("cutoff rules: solver, closed form, fixed, all", "[policy][cutoff]") {
  // The hand-computed case of test_cutoff.cpp: L = 4, k = 1, t_io = 400, t_l = 300, T_draft = 1000.
  const policy::AnalyticalLatency m{.copy_fixed = 0ns, .link_bytes_per_ns = 1.0, .expert = Bytes{400}, .dense = 300ns,
                                    .draft_step = 250ns};
  const policy::CutoffInputs in{.layers = 4, .tokens = 5, .draft_window = m.draft_window_time(4),
                                .experts_per_layer = 1.0, .free_memory = Bytes{4000}};
  CHECK(policy::choose_cutoff(policy::CutoffRule::solver, 0, m, in) == 4);  // copies past the window still pay
  CHECK(policy::choose_cutoff(policy::CutoffRule::closed_form, 0, m, in) == 2);
  CHECK(policy::choose_cutoff(policy::CutoffRule::fixed, 3, m, in) == 3);
  CHECK(policy::choose_cutoff(policy::CutoffRule::fixed, 9, m, in) == 4);
  CHECK(policy::choose_cutoff(policy::CutoffRule::all, 0, m, in) == 4);
}
