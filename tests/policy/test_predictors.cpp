// Routing-only expert predictors: each one's ranking on a hand-made history, the concept's
// negative cases, and warming from a training workload.
#include "support/catch.hpp"
#include "support/routing.hpp"

#include <moesched/policy/activation_matrix_predictor.hpp>
#include <moesched/policy/expert_predictor.hpp>
#include <moesched/policy/popularity_predictor.hpp>
#include <moesched/policy/transition_predictor.hpp>

#include <moesched/core/random.hpp>

#include <algorithm>
#include <array>
#include <vector>

using namespace moesched;
using runtime::ScoredExpert;

namespace {

struct NoPredict {  // lacks predict(): not a predictor
  static constexpr std::string_view name() { return "x"; }
  void resize(std::uint32_t, std::uint32_t) {}
  void begin_pass(const PassInfo&) {}
  void observe(std::uint32_t, std::span<const ExpertId>) {}
};
static_assert(!policy::ExpertPredictor<NoPredict>);
struct MutatingPredict {  // predict() not callable on a const predictor: not a predictor
  static constexpr std::string_view name() { return "x"; }
  void resize(std::uint32_t, std::uint32_t) {}
  void begin_pass(const PassInfo&) {}
  void observe(std::uint32_t, std::span<const ExpertId>) {}
  std::uint32_t predict(std::uint32_t, std::span<ScoredExpert>) { return 0; }
};
static_assert(!policy::ExpertPredictor<MutatingPredict>);

/// The experts of `ranked`, in order.
std::vector<std::uint16_t> ids(std::span<const ScoredExpert> ranked) {
  std::vector<std::uint16_t> v;
  for (const auto& r : ranked) v.push_back(r.expert);
  return v;
}

template <class P>
std::vector<std::uint16_t> rank(const P& p, std::uint32_t layer, std::size_t n = 4) {
  std::array<ScoredExpert, 16> out{};
  const std::uint32_t k = p.predict(layer, std::span<ScoredExpert>(out.data(), n));
  return ids(std::span<const ScoredExpert>(out.data(), k));
}

template <class P>
void see(P& p, std::uint32_t layer, std::initializer_list<std::uint16_t> experts) {
  std::vector<ExpertId> v;
  for (auto e : experts) v.push_back({static_cast<std::uint16_t>(layer), e});
  p.observe(layer, std::span<const ExpertId>(v));
}

PassInfo pass(std::uint64_t i, StepPhase phase = StepPhase::decode) { return PassInfo{i, phase, 1, 1, 0}; }

}  // namespace

TEST_CASE("popularity: decayed counts, ties to the lower id, nothing before any evidence", "[policy][predictor]") {
  policy::PopularityPredictor p(0.5);
  p.resize(1, 4);
  CHECK(rank(p, 0).empty());  // cold: no blind guesses
  see(p, 0, {1});
  see(p, 0, {2});
  see(p, 0, {2, 3});
  // e1 = 0.25, e2 = 0.5 + 1 = 1.5, e3 = 1, e0 = 0 (not ranked).
  std::array<ScoredExpert, 4> out{};
  REQUIRE(p.predict(0, out) == 3);
  CHECK(ids(std::span<const ScoredExpert>(out.data(), 3)) == std::vector<std::uint16_t>{2, 3, 1});
  CHECK(out[0].score == Approx(1.5));
  CHECK(out[1].score == Approx(1.0));
  CHECK(out[2].score == Approx(0.25));
  CHECK(rank(p, 0, 1) == std::vector<std::uint16_t>{2});  // only out.size() are written

  policy::PopularityPredictor lfu(1.0);  // plain frequency: e2 = 2, e1 = e3 = 1 (tie: lower id)
  lfu.resize(1, 4);
  see(lfu, 0, {1});
  see(lfu, 0, {2});
  see(lfu, 0, {2, 3});
  CHECK(rank(lfu, 0) == std::vector<std::uint16_t>{2, 1, 3});
}

TEST_CASE("transition counts: co-occurrence first, then destination popularity, then the lower id", "[policy][predictor]") {
  policy::TransitionCounts c(4);
  c.add(std::array<std::uint16_t, 2>{0, 1}, std::array<std::uint16_t, 2>{2, 3});
  c.add(std::array<std::uint16_t, 1>{1}, std::array<std::uint16_t, 1>{2});
  c.add(std::array<std::uint16_t, 1>{0}, std::array<std::uint16_t, 1>{3});
  // count(0,2) = 1, count(0,3) = 2, count(1,2) = 2, count(1,3) = 1; to(2) = to(3) = 2.
  CHECK(c.count(0, 3) == 2);
  CHECK(c.to_count(2) == 2);
  std::array<ScoredExpert, 4> out{};
  REQUIRE(c.rank(std::array<std::uint16_t, 1>{0}, out) == 4);
  CHECK(ids(out) == std::vector<std::uint16_t>{3, 2, 0, 1});
  CHECK(out[0].score == Approx(2.0));
  CHECK(out[1].score == Approx(1.0));
  CHECK(out[2].score == Approx(0.0));
  c.rank(std::array<std::uint16_t, 1>{1}, out);
  CHECK(ids(out) == std::vector<std::uint16_t>{2, 3, 0, 1});
  c.rank(std::array<std::uint16_t, 2>{0, 1}, out);  // 3 against 3, to() ties: the lower id
  CHECK(ids(out) == std::vector<std::uint16_t>{2, 3, 0, 1});
  c.rank({}, out);  // no source: destination popularity (score = to_count)
  CHECK(ids(out) == std::vector<std::uint16_t>{2, 3, 0, 1});
  CHECK(out[0].score == Approx(2.0));
  std::array<ScoredExpert, 1> one{};
  CHECK(c.rank(std::array<std::uint16_t, 1>{0}, one) == 1);
  CHECK(one[0].expert == 3);
  c.clear();
  CHECK(c.count(0, 3) == 0);
}

TEST_CASE("transition counts: rank() (32-bit keys) equals rank_reference() on random tables", "[policy][predictor]") {
  Rng rng(12);
  for (std::uint32_t round = 0; round < 200; ++round) {
    // few adds over few experts: many equal sums and to_counts; 300 experts: two blocks
    const std::uint32_t experts = round % 10 == 0 ? 300 : 1 + static_cast<std::uint32_t>(rng.below(40));
    policy::TransitionCounts c(experts);
    const auto adds = rng.below(30);
    std::vector<std::uint16_t> from, to;
    auto draw = [&](std::vector<std::uint16_t>& v, std::uint64_t most, bool distinct) {
      v.clear();
      const auto k = rng.below(most + 1);
      for (std::uint64_t i = 0; i < k; ++i) {
        const auto x = static_cast<std::uint16_t>(rng.below(experts));
        if (!distinct || std::find(v.begin(), v.end(), x) == v.end()) v.push_back(x);
      }
    };
    for (std::uint64_t a = 0; a < adds; ++a) {
      draw(from, 6, true);
      draw(to, 6, true);
      c.add(from, to);
    }
    for (std::uint32_t q = 0; q < 5; ++q) {
      draw(from, 8, q == 0);  // a source with repeated ids counts them twice, in both
      const auto cap = 1 + rng.below(experts + 2);
      std::vector<ScoredExpert> a(cap), b(cap);
      const std::uint32_t na = c.rank(from, a);
      const std::uint32_t nb = c.rank_reference(from, b);
      REQUIRE(na == nb);
      for (std::uint32_t i = 0; i < na; ++i) {
        REQUIRE(a[i].expert == b[i].expert);
        REQUIRE(a[i].score == b[i].score);
      }
    }
    if (round % 7 == 0) {
      c.clear();
      std::vector<ScoredExpert> a(experts), b(experts);
      REQUIRE(c.rank({}, a) == c.rank_reference({}, b));
      for (std::uint32_t i = 0; i < experts; ++i) REQUIRE(a[i].expert == b[i].expert);
    }
  }
}

TEST_CASE("transition predictor: learns l -> l+1 online; beats popularity where layers are correlated", "[policy][predictor]") {
  // 2 layers x 4 experts: layer 1 always repeats layer 0's expert; expert 0 is the most popular.
  policy::TransitionPredictor t(1);
  policy::PopularityPredictor pop(1.0);
  t.resize(2, 4);
  pop.resize(2, 4);
  CHECK(rank(t, 1).empty());  // cold
  std::uint64_t i = 0;
  for (std::uint16_t e : std::initializer_list<std::uint16_t>{0, 0, 1, 0, 2, 0, 3}) {
    t.begin_pass(pass(i));
    pop.begin_pass(pass(i++));
    see(t, 0, {e});
    see(t, 1, {e});
    see(pop, 0, {e});
    see(pop, 1, {e});
  }
  t.begin_pass(pass(i));
  see(t, 0, {2});
  see(pop, 0, {2});
  CHECK(rank(t, 1, 1) == std::vector<std::uint16_t>{2});    // 0 -> 1 transitions: 2 -> 2
  CHECK(rank(pop, 1, 1) == std::vector<std::uint16_t>{0});  // the popular one
  // Then by destination popularity: 0 (4 times), 1, 3 (once each; lower id first).
  CHECK(rank(t, 1) == std::vector<std::uint16_t>{2, 0, 1, 3});
  // Layer 0 of the next pass from layer 1 of this one (distance 1, cyclic): from layer 1's {3};
  // 3 -> 2 was learned once (pass 6's layer 1, then pass 7's layer 0).
  see(t, 1, {3});
  CHECK(rank(t, 0, 1) == std::vector<std::uint16_t>{2});
}

TEST_CASE("transition predictor: distance 2 and the popularity fallback beyond it", "[policy][predictor]") {
  // 3 layers x 4 experts; layer 2 = layer 0's expert + 1, layer 1 unrelated (always 3).
  policy::TransitionPredictor t(2);
  t.resize(3, 4);
  for (std::uint16_t e : std::initializer_list<std::uint16_t>{0, 1, 2, 0, 1}) {
    see(t, 0, {e});
    see(t, 1, {3});
    see(t, 2, {static_cast<std::uint16_t>(e + 1)});
  }
  see(t, 0, {2});
  // Layer 2 is 2 layers after the layer seen last (0): from layer 0's {2}, the 0 -> 2 counts say 3.
  CHECK(rank(t, 2, 1) == std::vector<std::uint16_t>{3});
  CHECK(t.counts(2, 2).count(2, 3) == 1);
  CHECK(t.counts(1, 2).count(3, 2) == 2);  // 1 -> 2 (distance 1): 3 with {1, 2, 3, 1, 2}
  // Layer 0 of the next pass is 3 layers on (beyond distance 2): layer 0's popularity in the
  // distance-2 transitions into it (1 twice, 2 twice, 0 once; the first set had no source).
  const auto fallback = rank(t, 0);
  REQUIRE(fallback.size() == 3);
  CHECK(fallback == std::vector<std::uint16_t>{1, 2, 0});
}

TEST_CASE("activation matrices: the most similar stored request predicts later layers", "[policy][predictor]") {
  // 2 layers x 4 experts, two stored requests: A uses (0, 1) at (layer 0, layer 1), B uses (2, 3).
  policy::ActivationMatrixPredictor p(2);
  p.resize(2, 4);
  std::uint64_t i = 0;
  auto request = [&](std::uint16_t e0, std::uint16_t e1) {
    for (StepPhase ph : {StepPhase::prefill, StepPhase::decode}) {
      p.begin_pass(pass(i++, ph));
      see(p, 0, {e0});
      see(p, 1, {e1});
    }
  };
  request(0, 1);  // A
  CHECK(p.stored() == 0);
  request(2, 3);  // B: its prefill stored A
  CHECK(p.stored() == 1);
  p.begin_pass(pass(i++, StepPhase::prefill));  // C: stores B
  CHECK(p.stored() == 2);
  CHECK(p.best_match() == policy::ActivationMatrixPredictor::kNone);
  CHECK(rank(p, 1).empty());  // nothing observed yet in C, nothing matches
  see(p, 0, {2});
  CHECK(p.best_match() == 1);  // B
  // cos(C, B) = (1 x 2) / (1 x sqrt(2^2 + 2^2)); A shares nothing with C.
  CHECK(p.similarity(1) == Approx(2.0 / std::sqrt(8.0)));
  CHECK(p.similarity(0) == Approx(0.0));
  std::array<ScoredExpert, 4> out{};
  REQUIRE(p.predict(1, out) == 1);  // B's layer 1: expert 3 (share 1)
  CHECK(out[0].expert == 3);
  CHECK(out[0].score == Approx(1.0));
  // Layer 0: C's own row (2: share 1) plus B's (2: share 1).
  REQUIRE(p.predict(0, out) == 1);
  CHECK(out[0].score == Approx(2.0));
  // C then turns to A's experts at layer 0: A becomes the better match.
  see(p, 0, {0});
  see(p, 0, {0});
  CHECK(p.best_match() == 0);
  CHECK(rank(p, 1, 1) == std::vector<std::uint16_t>{1});
  // A fourth request replaces the oldest stored matrix (A) with C's.
  p.begin_pass(pass(i++, StepPhase::decode));  // decode after prefill: still C
  CHECK(p.stored() == 2);
  p.begin_pass(pass(i++, StepPhase::prefill));
  CHECK(p.stored() == 2);
  see(p, 0, {0});
  CHECK(p.best_match() == 0);  // slot 0 now holds C (which used 0 at layer 0)
  CHECK(rank(p, 1).empty());   // C never reached layer 1: the match has nothing there
}

TEST_CASE("warm: a training workload teaches every predictor", "[policy][predictor]") {
  // 2 layers x 4 experts: layer 1's expert = layer 0's; requests alternate 1 and 3.
  test::VecRouting r;
  r.layers = 2;
  r.top_k = 1;
  for (std::uint32_t q = 0; q < 4; ++q) {
    const auto e = static_cast<std::uint16_t>(q % 2 == 0 ? 1 : 3);
    r.add({.request = q, .phase = StepPhase::prefill, .tokens = 1}, {e, e});
    r.add({.request = q, .phase = StepPhase::decode, .tokens = 1}, {e, e});
  }
  const Workload train = build_workload(r, {2, 4, 1});
  policy::TransitionPredictor t;
  policy::warm(t, train);
  see(t, 0, {3});
  CHECK(rank(t, 1, 1) == std::vector<std::uint16_t>{3});
  policy::PopularityPredictor pop(1.0);
  policy::warm(pop, train);
  CHECK(rank(pop, 1) == std::vector<std::uint16_t>{1, 3});  // 4 uses each: the lower id first
  policy::ActivationMatrixPredictor m(8);
  policy::warm(m, train);
  CHECK(m.stored() == 3);  // the 4th request is still running
  m.begin_pass(pass(0, StepPhase::prefill));
  CHECK(m.stored() == 4);
}
