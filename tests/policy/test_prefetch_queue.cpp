// PrefetchQueue driven by hand on the archetype executor: depth, de-duplication against resident
// and in-flight experts, the lookahead, early preemption at the gate, refusal after the gate,
// replacement, and the layer-clock Belady victim rule; the utility victims' incremental order
// (UtilityOrder) against the scan of every held expert, each layer's whole order against a stable
// sort, on random operations, and inside moesched.
#include "support/catch.hpp"

#include <moesched/core/random.hpp>
#include <moesched/policy/moesched_policy.hpp>
#include <moesched/policy/prefetch_queue.hpp>
#include <moesched/runtime/archetype.hpp>

#include <algorithm>
#include <initializer_list>
#include <utility>
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

// ---- UtilityOrder: the incremental order of the `utility` victims against the scan it replaces ----

namespace {
/// The scan UtilityOrder replaces: every held expert, layers in order, least recently used first,
/// keeping the first strictly latest next use among those `pass` accepts.
template <class Pass>
std::pair<std::uint32_t, double> scan_best(const policy::LayerLru& lru, const policy::UtilityOrder::Context& c,
                                           std::uint32_t layers, std::uint32_t per, const Pass& pass) {
  std::uint32_t best = policy::RecencyList::kNone;
  double worst = -1.0;
  for (std::uint32_t l = 0; l < layers; ++l) {
    const policy::RecencyList& list = lru.order(l);
    for (std::uint32_t v = list.oldest(); v != policy::RecencyList::kNone; v = list.newer(v)) {
      if (!pass(v)) continue;
      const double t = c.model->next_use(ExpertId::from_flat(v, per), c.current, c.phase, *c.ledger);
      if (t > worst) {
        worst = t;
        best = v;
      }
    }
  }
  return {best, worst};
}
/// A UtilityOrder over an LRU, a reuse model and a prediction ledger, driven by random operations
/// (the property tests below).
struct OrderRig {
  std::uint32_t L, per;
  ArchetypeExecutor e;
  policy::LayerLru lru;
  policy::ReuseModel model;
  policy::PredictionLedger ledger;
  policy::UtilityOrder order;
  policy::UtilityOrder::Context c{nullptr, nullptr, -1, StepPhase::decode};
  OrderRig(std::uint32_t layers, std::uint32_t experts, bool frequency = false, bool density = false)
      : L(layers), per(experts), e(layers, experts, layers * experts), model(frequency, density) {
    lru.on_pass_begin(e, PassInfo{});
    model.resize(L, per);
    ledger.resize(L, per);
    ledger.begin_pass();
    order.resize(L, per);
    c = {&model, &ledger, -1, StepPhase::decode};
  }
  /// A copy or a touch of flat expert f.
  void touch(std::uint32_t f) {
    lru.touch(ExpertId::from_flat(f, per), per);
    order.touch(f, c);
  }
  void evict(std::uint32_t f) {
    lru.forget(ExpertId::from_flat(f, per), per);
    order.remove(f);
  }
  /// A gate needing each expert with probability p: the model and the ledger observe it, the
  /// running layer moves on (after the last layer, a new pass of a random phase).
  void gate(Rng& rng, double p) {
    if (c.current + 1 == static_cast<std::int64_t>(L)) {
      ledger.begin_pass();
      c.current = -1;
      const double ph = rng.uniform();
      c.phase = ph < 0.2 ? StepPhase::prefill : (ph < 0.6 ? StepPhase::decode : StepPhase::verify);
    }
    const auto layer = static_cast<std::uint32_t>(c.current + 1);
    std::vector<ExpertId> needed;
    for (std::uint32_t x = 0; x < per; ++x) {
      if (rng.chance(p)) needed.push_back({static_cast<std::uint16_t>(layer), static_cast<std::uint16_t>(x)});
    }
    ledger.observe(layer, needed);
    model.observe(layer, needed, c.phase, ledger);
    c.current = layer;
  }
  /// A prediction for a random layer naming each expert with probability p (shuffled: ranks in any order).
  void predict(Rng& rng, double p, bool shuffle) {
    const auto layer = static_cast<std::uint32_t>(rng.below(L));
    std::vector<runtime::ScoredExpert> ranked;
    for (std::uint32_t x = 0; x < per; ++x) {
      if (rng.chance(p)) ranked.push_back({static_cast<std::uint16_t>(x), 1.0f});
    }
    if (shuffle) {
      for (std::size_t i = ranked.size(); i > 1; --i) std::swap(ranked[i - 1], ranked[rng.below(i)]);
    }
    ledger.record(layer, ranked);
  }
};

}  // namespace

TEST_CASE("utility order: the same victims as a scan of every held expert, on random operations",
          "[policy][prefetch_queue][reuse][property]") {
  struct Shape {
    std::uint32_t layers, experts;
  };
  for (const Shape shape : {Shape{3, 4}, Shape{5, 8}, Shape{4, 16}}) {
    for (std::uint64_t seed = 1; seed <= 6; ++seed) {
      const std::uint32_t L = shape.layers;
      const std::uint32_t per = shape.experts;
      Rng rng(seed * 7919 + L);
      OrderRig rig(L, per, seed % 2 == 0, seed % 3 == 0);  // frequency classes every other seed, density every third
      policy::LayerLru& lru = rig.lru;
      policy::UtilityOrder& order = rig.order;
      const policy::UtilityOrder::Context& c = rig.c;
      std::vector<std::uint8_t> blocked(std::size_t{L} * per, 0);
      auto pass = [&](std::uint32_t f) { return blocked[f] == 0; };
      std::vector<std::pair<std::uint32_t, double>> got;
      std::uint64_t queries = 0;
      for (int step = 0; step < 3000; ++step) {
        const double r = rng.uniform();
        const auto f = static_cast<std::uint32_t>(rng.below(std::uint64_t{L} * per));
        const ExpertId id = ExpertId::from_flat(f, per);
        if (r < 0.30) {  // a copy or a touch
          rig.touch(f);
        } else if (r < 0.42) {  // an eviction
          rig.evict(f);
        } else if (r < 0.47) {
          rig.gate(rng, 0.3);
        } else if (r < 0.53) {  // a prediction for a later layer
          rig.predict(rng, 0.35, false);
        } else if (r < 0.56) {  // the lists change behind its back
          lru.touch(id, per);
          if (rng.chance(0.5)) lru.forget(ExpertId::from_flat(static_cast<std::uint32_t>(rng.below(std::uint64_t{L} * per)), per), per);
          order.invalidate();
        } else if (r < 0.66) {  // evictability changes (in flight, pinned, spared)
          blocked[f] = blocked[f] == 0 ? 1 : 0;
        } else if (r < 0.85) {
          const auto want = scan_best(lru, c, L, per, pass);
          const auto have = order.best(lru, c, pass);
          REQUIRE(have.first == want.first);
          REQUIRE(have.second == want.second);
          ++queries;
        } else {
          // k successive scans, each excluding the picks before it
          const auto k = static_cast<std::uint32_t>(1 + rng.below(6));
          order.best_k(lru, c, k, pass, got);
          std::vector<std::uint8_t> picked(blocked.size(), 0);
          std::size_t i = 0;
          for (; i < k; ++i) {
            const auto want = scan_best(lru, c, L, per, [&](std::uint32_t v) { return pass(v) && picked[v] == 0; });
            if (want.first == policy::RecencyList::kNone) break;
            REQUIRE(i < got.size());
            REQUIRE(got[i].first == want.first);
            REQUIRE(got[i].second == want.second);
            picked[want.first] = 1;
          }
          REQUIRE(got.size() == i);
          ++queries;
        }
      }
      CHECK(queries > 500);
    }
  }
}

TEST_CASE("utility order: each layer's entries are its LRU list stably sorted by odds, descending",
          "[policy][prefetch_queue][reuse][property]") {
  // The whole order, not only the victims best() reads: after random touches, evictions, gates,
  // predictions and phase changes, every layer's entries equal the held experts least recently
  // used first, stably sorted by the odds term of ReuseModel::next_use (equal doubles keep recency).
  struct Shape {
    std::uint32_t layers, experts;
  };
  for (const Shape shape : {Shape{3, 8}, Shape{5, 16}, Shape{4, 64}, Shape{2, 128}}) {
    for (std::uint64_t seed = 1; seed <= 5; ++seed) {
      const std::uint32_t L = shape.layers;
      const std::uint32_t per = shape.experts;
      Rng rng(seed * 104729 + per);
      OrderRig rig(L, per, seed % 2 == 0, seed % 3 == 0);  // frequency classes every other seed, density every third
      const policy::LayerLru& lru = rig.lru;
      policy::UtilityOrder& order = rig.order;
      const policy::UtilityOrder::Context& c = rig.c;
      std::uint64_t checked = 0;
      for (int step = 0; step < 1500; ++step) {
        const double r = rng.uniform();
        const auto f = static_cast<std::uint32_t>(rng.below(std::uint64_t{L} * per));
        if (r < 0.35) {  // a copy or a touch
          rig.touch(f);
        } else if (r < 0.45) {  // an eviction
          rig.evict(f);
        } else if (r < 0.55) {  // a gate (sometimes a new pass of another phase)
          rig.gate(rng, 0.25);
        } else if (r < 0.70) {  // a prediction, ranks in any order
          rig.predict(rng, 0.15, true);
        }
        if (!rng.chance(0.3)) continue;  // changes pile up between queries
        for (std::uint32_t l = 0; l < L; ++l) {
          std::vector<std::pair<double, std::uint32_t>> want;
          const policy::RecencyList& list = lru.order(l);
          for (std::uint32_t v = list.oldest(); v != policy::RecencyList::kNone; v = list.newer(v)) {
            const ExpertId x = ExpertId::from_flat(v, per);
            want.push_back({1.0 / rig.model.probability(x, c.current, c.phase, rig.ledger) - 1.0, v});
          }
          std::stable_sort(want.begin(), want.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
          const auto have = order.entries(lru, c, l);
          REQUIRE(have.size() == want.size());
          for (std::size_t i = 0; i < want.size(); ++i) REQUIRE(have[i] == want[i].second);
          checked += want.size();
        }
      }
      CHECK(checked > 1000);
    }
  }
}

TEST_CASE("utility order: moesched decides the same with the incremental order as with the scan",
          "[policy][prefetch_queue][reuse][property]") {
  struct Shape {
    std::uint32_t layers, experts, top_k;
  };
  for (const Shape s : {Shape{4, 8, 2}, Shape{6, 16, 4}}) {
    for (std::uint64_t seed = 1; seed <= 3; ++seed) {
      const std::uint32_t L = s.layers;
      const policy::AnalyticalLatency lat{.copy_fixed = Nanoseconds{3'000}, .link_bytes_per_ns = 25.0,
                                          .expert = Bytes{17'300'000}, .dense = Nanoseconds{60'000},
                                          .expert_ffn = Nanoseconds{35'000}, .top_k = s.top_k,
                                          .draft_step = Nanoseconds{900'000}};
      policy::PipelineOptions fast = policy::Moesched::pipeline_options({});
      policy::PipelineOptions slow = fast;
      slow.queue.scan_victims = true;
      policy::Pipeline a({}, policy::AnyRoutingPredictor{policy::TransitionPredictor{2}}, fast, lat);
      policy::Pipeline b({}, policy::AnyRoutingPredictor{policy::TransitionPredictor{2}}, slow, lat);
      ArchetypeExecutor ea(L, s.experts, L * s.experts / 3);
      ArchetypeExecutor eb(L, s.experts, L * s.experts / 3);
      Rng rng(seed);
      std::uint64_t pass = 0;
      for (std::uint32_t step = 0; step < 400 * L; ++step) {
        const std::uint32_t layer = step % L;
        if (layer == 0) {
          const double ph = rng.uniform();
          const PassInfo info{pass++, ph < 0.1 ? StepPhase::prefill : (ph < 0.7 ? StepPhase::decode : StepPhase::verify),
                              1, 1, static_cast<std::uint16_t>(ph < 0.85 ? 0 : 2)};
          a.on_pass_begin(ea, info);
          b.on_pass_begin(eb, info);
        }
        std::vector<ExpertId> need;
        while (need.size() < s.top_k) {  // skewed: low ids more often
          const auto x = static_cast<std::uint16_t>(rng.below(1 + rng.below(s.experts)));
          bool dup = false;
          for (ExpertId n : need) dup = dup || n.expert == x;
          if (!dup) need.push_back({static_cast<std::uint16_t>(layer), x});
        }
        a.on_gate(ea, layer, need);
        b.on_gate(eb, layer, need);
        // copies land now or stay in flight for a while (not evictable meanwhile)
        if (rng.chance(0.7)) {
          Control::land_all(ea, [&](ExpertId id) { a.on_copy_done(ea, id); });
          Control::land_all(eb, [&](ExpertId id) { b.on_copy_done(eb, id); });
        }
        for (ExpertId id : need) {
          a.on_expert_done(ea, id);
          b.on_expert_done(eb, id);
        }
        a.on_layer_done(ea, layer);
        b.on_layer_done(eb, layer);
        REQUIRE(Control::copies(ea) == Control::copies(eb));
        REQUIRE(a.queue().declined() == b.queue().declined());
        for (std::uint32_t f = 0; f < L * s.experts; ++f) {
          REQUIRE(ea.residency(ExpertId::from_flat(f, s.experts)) == eb.residency(ExpertId::from_flat(f, s.experts)));
        }
      }
      CHECK(Control::copies(ea) > 100);
    }
  }
}
