#pragma once
/// PrefetchQueue: the per-layer prefetch queue and cache of a predictive policy (ProMoE's
/// mechanism, arXiv 2410.22134), separate from where its candidates come from.
///
///   moesched::policy::PrefetchQueue q(/*depth=*/2, /*lookahead=*/0);
///   q.begin_pass(exec, pass);                          // on_pass_begin
///   q.push(exec, /*layer=*/3, ranked);                 // a predictor's candidates for layer 3
///   q.gate(exec, layer, needed);                       // on_gate: early preemption + demand
///   q.copy_done(exec, id); q.expert_done(exec, id); q.layer_done(exec, layer);
///
/// What it does (one behaviour, one place: policy::Prefetch and policy::Predictive use it):
/// - Candidates wait per layer of the running pass, nearest layer first and in arrival order
///   within a layer. They are issued as low-priority copies while fewer than `depth` copies are
///   outstanding (the running layer's demand copies count) and within `lookahead` layers of the
///   running one (0 = any later layer), so speculation never queues ahead of the link nor evicts
///   for a copy that could not start soon. A candidate already resident or in flight is touched in
///   the cache, not copied again; a candidate of a layer whose gate ran is refused (push() says so).
/// - Cache: ProMoE's per-layer LRU (LayerLru: equal shares, borrowing) for demand copies, which
///   spare this pass's unused prefetches while anything else can go; a prefetch touches its entry.
/// - A prefetch evicts by Belady's rule with layers as the clock (victim()): from the layer whose
///   next turn is furthest, and never an expert needed sooner than the one it brings, nor one
///   prefetched for this pass and not yet used; with no such victim the prefetch waits (retried
///   when a copy lands or a layer ends).
/// - Early preemption at the gate: the layer's queued low copies that the gate did not ask for
///   are cancelled, the asked ones still queued or moving are promoted to high, and the absent ones
///   are copied at high priority (demand).
/// Every mechanism can be switched on its own (PrefetchQueueOptions), for the published policies
/// and their ablations:
/// - `victim`: layer_clock (above), layer_lru (ProMoE's and Mixtral-offloading's cache: a prefetch
///   evicts like a demand copy of its layer, LayerLru::victim), or utility (the ReuseModel: demand
///   and prefetch evict the held expert expected to be needed last, and a prefetch is issued only
///   when its candidate is expected to be needed before that victim; set_utility() gives the model).
/// - `preempt`: early preemption at the gate (off: the layer's speculative copies run on, at low
///   priority, whether asked or not).
/// - `touch`: a candidate already resident or in flight is touched in the per-layer LRU (ProMoE's
///   "a prefetch touches the entry"), and with `layer_lru` victims a resident candidate still
///   pending is never the victim of a prefetch (whatever its rank); off: its place in the LRU
///   order is left alone.
/// - set_cutoff(c, beyond) (per pass, SP-MoE): layers below c may be prefetched at any distance,
///   layers from c on only within `beyond` layers of the running one (0: never).
/// - set_depth(d) (per pass or phase): batched submission, e.g. every drafting-time copy at once.
/// State is sized at the first begin_pass (layers x experts); afterwards nothing allocates except
/// a per-layer candidate list growing past its high-water mark (push() appends; replace() keeps at
/// most the candidates of one prediction).

#include "moesched/core/config.hpp"
#include "moesched/core/expert_id.hpp"
#include "moesched/core/routing.hpp"
#include "moesched/policy/baseline.hpp"
#include "moesched/policy/prediction_ledger.hpp"
#include "moesched/policy/recency_list.hpp"
#include "moesched/policy/reuse_model.hpp"
#include "moesched/runtime/executor.hpp"
#include "moesched/runtime/jobs.hpp"

#include <algorithm>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

namespace moesched::policy {

/// How a prefetch (and, for `utility`, a demand copy) chooses what to evict.
enum class PrefetchVictim : std::uint8_t {
  layer_clock,  ///< Belady with layers as the clock, LRU within a layer (demand: per-layer LRU)
  layer_lru,    ///< the predicted layer's own LRU share, borrowing (ProMoE, Mixtral-offloading)
  utility,      ///< the ReuseModel's score (ReuseModel::next_use), for prefetch and demand alike (moesched)
};

/// The queue's switches (see the header comment); the defaults are the original mechanism.
struct PrefetchQueueOptions {
  std::uint32_t depth = 2;      ///< copies outstanding (demand of the running layer included), at least 1
  std::uint32_t lookahead = 0;  ///< issue only for the next N layers after the running one (0 = any)
  PrefetchVictim victim = PrefetchVictim::layer_clock;
  bool preempt = true;          ///< early preemption at the gate
  bool touch = true;            ///< a resident or in-flight candidate is touched in the LRU
  /// `utility`: find each victim by a scan of every held expert instead of the incremental
  /// UtilityOrder (the reference the tests compare it with; same decisions, slower).
  bool scan_victims = false;
};

/// UtilityOrder: the held experts of every layer in the order the `utility` victim rule reads
/// them, kept incrementally, so that a victim costs O(layers) instead of a scan of every held
/// expert computing its expected next use.
///
///   moesched::policy::UtilityOrder order;  order.resize(layers, experts);
///   lru.touch(id, per);  order.touch(id.flat(per), ctx);     // mirror every change of the LRU lists
///   lru.forget(id, per); order.remove(id.flat(per));
///   auto [flat, next_use] = order.best(lru, ctx, [&](std::uint32_t f) { return evictable(f); });
///
/// Per layer, its held experts sorted by the odds term of ReuseModel::next_use (1 / p - 1, p
/// from the expert's reuse-model state: the turn distance is the same for the whole layer), ties
/// least recently used first. An expert's state changes only when the model observes its layer
/// or the ledger records a prediction for it (their per-layer versions say so), when the running
/// layer passes it (its prediction is no longer read) or with the phase: such a layer is sorted
/// again at the next query, O(its held experts). best() reads each layer's first entry (its
/// latest next use) and walks only layers that could beat the best so far.
/// best() returns exactly what a scan of every held expert would (layers in order, each least
/// recently used first, keeping the first strictly latest ReuseModel::next_use among those
/// `pass` accepts): the same doubles are compared (ReuseModel's expected_layers over the same
/// odds), and entries of a layer whose next uses round to the same double are ordered by recency.
/// Nothing allocates after resize().
class UtilityOrder {
 public:
  /// What the order is read against: the model, the ledger, the last gated layer of the running
  /// pass (-1 before its first gate) and the pass's phase.
  struct Context {
    const ReuseModel* model = nullptr;
    const PredictionLedger* ledger = nullptr;
    std::int64_t current = -1;
    StepPhase phase = StepPhase::decode;
  };

  void resize(std::uint32_t layers, std::uint32_t experts) {
    L_ = layers;
    E_ = experts;
    const std::size_t cells = std::size_t{layers} * experts;
    ids_.assign(cells, 0);
    odds_.assign(cells, 0.0);
    n_.assign(layers, 0);
    in_.assign(cells, 0);
    stamp_.assign(cells, 0);
    key_.assign(layers, Key{});
    dirty_.assign(layers, 1);
    gen_.assign(layers, 1);
    memo_key_.assign(layers, MemoKey{~std::uint64_t{0}, 0});
    memo_.assign(std::size_t{layers} * kStates, 0.0);
    memo_gen_.assign(std::size_t{layers} * kStates, 0);
    scratch_ids_.assign(experts, 0);
    scratch_states_.assign(experts, 0);
    any_dirty_ = true;
    restamp_ = true;
  }
  [[nodiscard]] bool sized() const noexcept { return !n_.empty(); }

  /// The LRU lists changed in ways not told (touch/remove): everything is rebuilt from them at
  /// the next query.
  void invalidate() noexcept { restamp_ = true; }
  /// Flat id `f` became the most recently used of its layer (inserted when not held).
  void touch(std::uint32_t f, const Context& c) {
    stamp_[f] = ++clock_;
    if (restamp_) return;
    const std::uint32_t l = f / E_;
    if (dirty_[l] != 0) return;
    if (c.model == nullptr || c.model != model_ || c.ledger != ledger_) {
      mark_dirty(l);
      return;
    }
    // Every key was checked at the last query: unchanged if nothing it reads changed since.
    if (!(seen(c) == seen_) && !(key(l, c) == key_[l])) {
      mark_dirty(l);  // sorted again (with `f`) at the next query
      return;
    }
    if (in_[f] != 0) erase(l, f);
    insert(l, f, odds(l, c.model->state_at(f, key_[l].joint != 0, *c.ledger), c));
  }
  /// Flat id `f` left its layer's LRU list.
  void remove(std::uint32_t f) {
    if (restamp_) return;
    const std::uint32_t l = f / E_;
    if (dirty_[l] != 0 || in_[f] == 0) return;
    erase(l, f);
  }

  /// The held expert (of `lru`'s lists) with the latest next use that `pass(flat id)` accepts,
  /// ties to the lowest layer then the least recently used, with its next use; {kNone, -1} when
  /// `pass` accepts none.
  template <class Pass>
  std::pair<std::uint32_t, double> best(const LayerLru& lru, const Context& c, const Pass& pass) {
    sync(lru, c);
    const ReuseModel& m = *c.model;
    std::uint32_t best = RecencyList::kNone;
    double worst = -1.0;
    for (std::uint32_t l = 0; l < L_; ++l) {
      const std::uint32_t n = n_[l];
      if (n == 0) continue;
      const std::uint32_t* ids = ids_.data() + std::size_t{l} * E_;
      const double* x = odds_.data() + std::size_t{l} * E_;
      const std::int64_t d = m.turn_distance(l, c.current);
      if (!(m.expected_layers(d, x[0]) > worst)) continue;  // nothing of this layer can be later
      std::uint32_t i = 0;
      while (i < n && !pass(ids[i])) ++i;
      if (i == n) continue;
      const double t = m.expected_layers(d, x[i]);
      if (!(t > worst)) continue;
      // Later entries of the same odds are more recently used; one of other odds whose next use
      // rounds to the same double competes by recency.
      std::uint32_t pick = ids[i];
      for (std::uint32_t j = i + 1; j < n; ++j) {
        if (x[j] == x[i]) continue;
        if (m.expected_layers(d, x[j]) != t) break;
        if (stamp_[ids[j]] < stamp_[pick] && pass(ids[j])) pick = ids[j];
      }
      best = pick;
      worst = t;
    }
    return {best, worst};
  }
  /// The `k` best (best() order) that `pass` accepts, best first, into `out` (fewer when `pass`
  /// accepts fewer): what k best() calls would return, each one's pick excluded from the next.
  template <class Pass>
  void best_k(const LayerLru& lru, const Context& c, std::uint32_t k, const Pass& pass,
              std::vector<std::pair<std::uint32_t, double>>& out) {
    out.clear();
    if (k == 0) return;
    sync(lru, c);
    const ReuseModel& m = *c.model;
    for (std::uint32_t l = 0; l < L_; ++l) {
      const std::uint32_t n = n_[l];
      const std::uint32_t* ids = ids_.data() + std::size_t{l} * E_;
      const double* x = odds_.data() + std::size_t{l} * E_;
      const std::int64_t d = m.turn_distance(l, c.current);
      const std::uint32_t base = l * E_;  // the picks so far are of layers <= l: of l iff >= base
      for (std::uint32_t i = 0; i < n; ++i) {
        const double t = m.expected_layers(d, x[i]);
        if (out.size() == k) {  // nothing later in this layer enters (ties: lower layers first)
          if (t < out.back().second || (t == out.back().second && out.back().first < base)) break;
        }
        if (!pass(ids[i])) continue;
        // After every pick at least as good: a later next use, or the same from a lower layer or
        // less recently used in this one.
        const std::uint64_t st = stamp_[ids[i]];
        std::size_t at = out.size();
        while (at > 0 && (out[at - 1].second < t ||
                          (out[at - 1].second == t && out[at - 1].first >= base && stamp_[out[at - 1].first] > st))) {
          --at;
        }
        if (at >= k) {  // lost on recency: so do the later (more recently used) ones of its odds
          while (i + 1 < n && x[i + 1] == x[i]) ++i;
          continue;
        }
        if (out.size() == k) out.pop_back();
        out.insert(out.begin() + static_cast<std::ptrdiff_t>(at), {ids[i], t});
      }
    }
  }

  /// Layer `l`'s held experts (flat ids) in the order best() reads them, brought up to date first.
  [[nodiscard]] std::span<const std::uint32_t> entries(const LayerLru& lru, const Context& c, std::uint32_t l) {
    sync(lru, c);
    return {ids_.data() + std::size_t{l} * E_, n_[l]};
  }

 private:
  static constexpr std::uint32_t kStates = ReuseModel::kStates;
  using State = std::uint16_t;  ///< a state id (or a run of them), 0 .. kStates - 1
  static_assert(kStates <= 65536);
  /// What the keys of every layer are computed from (sync() checks them only when it changed).
  struct Seen {
    std::uint64_t model = ~std::uint64_t{0};
    std::uint64_t ledger = ~std::uint64_t{0};
    std::int64_t current = -2;
    StepPhase phase = StepPhase::decode;
    friend bool operator==(const Seen&, const Seen&) = default;
  };
  [[nodiscard]] static Seen seen(const Context& c) noexcept {
    return {c.model->changes(), c.ledger->changes(), c.current, c.phase};
  }
  /// What a layer's states and odds are computed from (see the class comment).
  struct Key {
    std::uint64_t reuse = 0;   // ReuseModel::version(layer)
    std::uint64_t pass = 0;    // joint: the ledger's pass and the layer's version
    std::uint64_t ledger = 0;
    std::uint8_t joint = 0;
    std::uint8_t phase = 0;
    friend bool operator==(const Key&, const Key&) = default;
  };
  [[nodiscard]] static Key key(std::uint32_t l, const Context& c) noexcept {
    Key k;
    k.reuse = c.model->version(l);
    k.phase = static_cast<std::uint8_t>(c.phase);
    if (ReuseModel::joint(l, c.current, *c.ledger)) {
      k.joint = 1;
      k.pass = c.ledger->pass();
      k.ledger = c.ledger->version(l);
    }
    return k;
  }
  void mark_dirty(std::uint32_t l) noexcept {
    dirty_[l] = 1;
    any_dirty_ = true;
  }
  /// The odds term of an expert of layer `l` in `state` (memoised per sort of the layer).
  double odds(std::uint32_t l, std::uint32_t state, const Context& c) {
    const std::size_t i = std::size_t{l} * kStates + state;
    if (memo_gen_[i] != gen_[l]) {
      memo_gen_[i] = gen_[l];
      memo_[i] = 1.0 / c.model->state_probability(l, state, c.phase) - 1.0;
    }
    return memo_[i];
  }
  /// Inserts `f` as the most recently used of its odds: after every entry with odds >= x.
  void insert(std::uint32_t l, std::uint32_t f, double x) {
    std::uint32_t* ids = ids_.data() + std::size_t{l} * E_;
    double* odds = odds_.data() + std::size_t{l} * E_;
    std::uint32_t i = n_[l];
    while (i > 0 && odds[i - 1] < x) {
      ids[i] = ids[i - 1];
      odds[i] = odds[i - 1];
      --i;
    }
    ids[i] = f;
    odds[i] = x;
    ++n_[l];
    in_[f] = 1;
  }
  void erase(std::uint32_t l, std::uint32_t f) {
    std::uint32_t* ids = ids_.data() + std::size_t{l} * E_;
    double* odds = odds_.data() + std::size_t{l} * E_;
    const std::uint32_t n = n_[l];
    std::uint32_t i = 0;
    while (ids[i] != f) ++i;
    for (; i + 1 < n; ++i) {
      ids[i] = ids[i + 1];
      odds[i] = odds[i + 1];
    }
    n_[l] = n - 1;
    in_[f] = 0;
  }
  /// Brings every layer up to date before a query.
  void sync(const LayerLru& lru, const Context& c) {
    if (restamp_) {
      restamp_ = false;
      for (std::uint32_t l = 0; l < L_; ++l) {
        const RecencyList& list = lru.order(l);
        for (std::uint32_t v = list.oldest(); v != RecencyList::kNone; v = list.newer(v)) stamp_[v] = ++clock_;
        mark_dirty(l);
      }
    }
    if (c.model != model_ || c.ledger != ledger_) {
      model_ = c.model;
      ledger_ = c.ledger;
      for (std::uint32_t l = 0; l < L_; ++l) mark_dirty(l);
    }
    const Seen now = seen(c);
    if (now == seen_ && !any_dirty_) return;
    const bool check_keys = !(now == seen_);
    for (std::uint32_t l = 0; l < L_; ++l) {
      if (dirty_[l] != 0) {
        sort_layer(lru, l, key(l, c), c);
      } else if (check_keys) {
        const Key k = key(l, c);
        if (!(k == key_[l])) sort_layer(lru, l, k, c);
      }
    }
    seen_ = now;
    any_dirty_ = false;
  }
  /// Layer `l` from its LRU list: states, odds, sorted (odds descending, then least recently used).
  void sort_layer(const LayerLru& lru, std::uint32_t l, const Key& k, const Context& c) {
    key_[l] = k;
    dirty_[l] = 0;
    if (!(memo_key_[l] == MemoKey{k.reuse, k.phase})) {  // the odds change with the counts and the phase
      memo_key_[l] = MemoKey{k.reuse, k.phase};
      ++gen_[l];
    }
    std::uint32_t* ids = ids_.data() + std::size_t{l} * E_;
    double* odds_out = odds_.data() + std::size_t{l} * E_;
    const std::uint32_t held = n_[l];
    for (std::uint32_t i = 0; i < held; ++i) in_[ids[i]] = 0;
    ++sorts_;
    // The states of the held experts, least recently used first; the distinct ones with their odds.
    std::uint32_t n = 0;
    std::uint32_t distinct = 0;
    const bool joint = k.joint != 0;
    const RecencyList& list = lru.order(l);
    for (std::uint32_t v = list.oldest(); v != RecencyList::kNone; v = list.newer(v)) {
      const std::uint32_t s = c.model->state_at(v, joint, *c.ledger);
      if (seen_gen_[s] != sorts_) {
        seen_gen_[s] = sorts_;
        count_[s] = 0;
        distinct_odds_[distinct] = odds(l, s, c);
        states_[distinct++] = static_cast<State>(s);
      }
      ++count_[s];
      scratch_ids_[n] = v;
      scratch_states_[n] = static_cast<State>(s);
      ++n;
    }
    for (std::uint32_t i = 1; i < distinct; ++i) {  // insertion sort by odds: a handful of states
      const State s = states_[i];
      const double x = distinct_odds_[i];
      std::uint32_t j = i;
      for (; j > 0 && distinct_odds_[j - 1] < x; --j) {
        states_[j] = states_[j - 1];
        distinct_odds_[j] = distinct_odds_[j - 1];
      }
      states_[j] = s;
      distinct_odds_[j] = x;
    }
    // States of equal odds share one run (kept least recently used first); runs by odds.
    std::uint32_t pos = 0;
    std::uint32_t runs = 0;
    for (std::uint32_t i = 0; i < distinct; ++runs) {
      start_[runs] = pos;
      run_odds_[runs] = distinct_odds_[i];
      std::uint32_t j = i;
      for (; j < distinct && distinct_odds_[j] == distinct_odds_[i]; ++j) {
        run_of_[states_[j]] = static_cast<State>(runs);
        pos += count_[states_[j]];
      }
      i = j;
    }
    for (std::uint32_t i = 0; i < n; ++i) {
      const State r = run_of_[scratch_states_[i]];
      const std::uint32_t at = start_[r]++;
      ids[at] = scratch_ids_[i];
      odds_out[at] = run_odds_[r];
    }
    for (std::uint32_t i = 0; i < n; ++i) in_[ids[i]] = 1;
    n_[l] = n;
  }


  std::uint32_t L_ = 0;
  std::uint32_t E_ = 0;
  std::vector<std::uint32_t> ids_;    // [layer * E + i]: held flat ids, sorted (see sort_layer)
  std::vector<double> odds_;          // beside ids_: each one's odds term
  std::vector<std::uint32_t> n_;      // per layer: entries
  std::vector<std::uint8_t> in_;      // per flat id: in its layer's entries
  std::vector<std::uint64_t> stamp_;  // per flat id: when last touched (the LRU order)
  std::vector<Key> key_;              // per layer: what its entries were sorted under
  std::vector<std::uint8_t> dirty_;   // per layer: entries stale whatever the key
  std::vector<std::uint64_t> gen_;    // per layer: sorts so far (memo_gen_ matches: memo_ valid)
  std::vector<double> memo_;          // [layer * kStates + state]: odds
  std::vector<std::uint64_t> memo_gen_;
  std::vector<std::uint32_t> scratch_ids_;
  std::vector<State> scratch_states_;
  std::uint32_t count_[kStates] = {};
  std::uint32_t start_[kStates] = {};   // per run of equal odds: next free entry
  State run_of_[kStates] = {};
  std::uint64_t seen_gen_[kStates] = {};  // == sorts_: the state was met in this sort
  std::uint64_t sorts_ = 0;
  struct MemoKey {
    std::uint64_t reuse = 0;
    std::uint8_t phase = 0;
    friend bool operator==(const MemoKey&, const MemoKey&) = default;
  };
  std::vector<MemoKey> memo_key_;     // per layer: what memo_ was computed under
  State states_[kStates] = {};
  double distinct_odds_[kStates] = {};  // sort_layer: beside states_, each one's odds
  double run_odds_[kStates] = {};       // per run: its odds
  std::uint64_t clock_ = 0;
  const ReuseModel* model_ = nullptr;
  const PredictionLedger* ledger_ = nullptr;
  Seen seen_;
  bool any_dirty_ = true;
  bool restamp_ = true;
};

class PrefetchQueue {
 public:
  /// No cutoff (set_cutoff): every layer may be prefetched at any distance.
  static constexpr std::uint32_t kNoCutoff = ~std::uint32_t{0};

  /// `depth`: copies (demand copies of the running layer included) kept outstanding before another
  /// prefetch is issued (at least 1). `lookahead`: prefetch only for the next `lookahead` layers
  /// after the running one (ProMoE's bounded lookahead; 0 = any later layer of the pass).
  explicit PrefetchQueue(std::uint32_t depth = 2, std::uint32_t lookahead = 0)
      : PrefetchQueue(PrefetchQueueOptions{.depth = depth, .lookahead = lookahead}) {}
  explicit PrefetchQueue(const PrefetchQueueOptions& opt)
      : opt_(opt), depth_(opt.depth < 1 ? 1 : opt.depth), lookahead_(opt.lookahead) {
    opt_.depth = depth_;
  }

  [[nodiscard]] std::uint32_t depth() const noexcept { return depth_; }
  [[nodiscard]] std::uint32_t lookahead() const noexcept { return lookahead_; }
  [[nodiscard]] const PrefetchQueueOptions& options() const noexcept { return opt_; }
  /// Copies kept outstanding from now on (batched submission; at least 1). begin_pass() restores
  /// the configured depth.
  void set_depth(std::uint32_t depth) noexcept { depth_ = depth < 1 ? 1 : depth; }
  /// For the running pass: layers below `cutoff` may be prefetched at any distance, later layers
  /// only within `beyond` layers of the running one (0: never). begin_pass() lifts it.
  void set_cutoff(std::uint32_t cutoff, std::uint32_t beyond) noexcept {
    cutoff_ = cutoff;
    beyond_ = beyond;
  }
  [[nodiscard]] std::uint32_t cutoff() const noexcept { return cutoff_; }
  /// The model the `utility` victim rule reads, and the phase of the running pass (call at every
  /// pass start; the pointers must stay valid while the queue runs).
  void set_utility(const ReuseModel* model, const PredictionLedger* ledger, StepPhase phase) noexcept {
    reuse_ = model;
    ledger_ = ledger;
    phase_ = phase;
  }
  /// For the `utility` rule: the share of time the link is busy (0..1). A candidate is issued only
  /// when its probability of being used exceeds it: a wrong copy costs its link time when the link
  /// is the bottleneck (about `load` of the time), a right one hides a demand copy's wait when it
  /// is not (about 1 - `load`), so a copy used with probability q gains q (1 - load) - (1 - q) load
  /// copy times, positive iff q > load. 0 (the default): link cost ignored.
  void set_link_load(double load) noexcept { load_ = load < 0.0 ? 0.0 : (load > 1.0 ? 1.0 : load); }
  [[nodiscard]] double link_load() const noexcept { return load_; }
  /// Prefetch candidates dropped because they were not expected to be needed before their victim
  /// (or, with a link load, not likely enough to be used).
  [[nodiscard]] std::uint64_t declined() const noexcept { return declined_; }
  /// Copies the queue submitted: prefetches and the gates' demand copies.
  [[nodiscard]] std::uint64_t copies() const noexcept { return copies_; }
  /// The last gated layer of the running pass, -1 before its first gate.
  [[nodiscard]] std::int64_t gated_layer() const noexcept { return layer_; }
  /// The cache (per-layer LRU order) the queue keeps.
  [[nodiscard]] const LayerLru& cache() const noexcept { return cache_; }
  /// Candidates waiting for `layer` (not yet issued).
  [[nodiscard]] std::span<const std::uint16_t> pending(std::uint32_t layer) const noexcept { return pending_[layer]; }

  /// A pass starts: sizes the state at the first call; drops every pending candidate.
  template <Executor E>
  void begin_pass(E& e, const PassInfo& pass) {
    cache_.on_pass_begin(e, pass);
    if (marks_.empty()) {
      const std::uint32_t per = e.experts_per_layer();
      marks_.assign(std::size_t{e.layers()} * per, 0);
      low_flight_.assign(marks_.size(), 0);
      low_.assign(e.layers(), {});
      pending_.assign(e.layers(), {});
      for (auto& q : pending_) q.reserve(per);
      for (auto& q : low_) q.reserve(per);
      needed_.reserve(per);
      victims_.reserve(per);
      if (opt_.victim == PrefetchVictim::utility && !opt_.scan_victims) order_.resize(e.layers(), per);
    }
    pass_ = pass.index;
    layer_ = -1;
    depth_ = opt_.depth;
    cutoff_ = kNoCutoff;
    beyond_ = 0;
    for (auto& q : pending_) q.clear();
    first_pending_ = e.layers();
    needed_.clear();
  }

  /// Appends `ranked` (best first) to `layer`'s pending candidates and issues what it can.
  /// Returns false (nothing queued) when `layer`'s gate already ran in this pass.
  template <Executor E>
  bool push(E& e, std::uint32_t layer, std::span<const runtime::ScoredExpert> ranked) {
    if (static_cast<std::int64_t>(layer) <= layer_) return false;
    auto& q = pending_[layer];
    for (const runtime::ScoredExpert& c : ranked) q.push_back(c.expert);
    first_pending_ = std::min<std::uint32_t>(first_pending_, layer);
    pump(e);
    return true;
  }
  /// As push(), but a newer prediction replaces `layer`'s candidates not yet issued.
  template <Executor E>
  bool replace(E& e, std::uint32_t layer, std::span<const runtime::ScoredExpert> ranked) {
    if (static_cast<std::int64_t>(layer) <= layer_) return false;
    pending_[layer].clear();
    return push(e, layer, ranked);
  }

  /// The gate of `layer` asked for `needed` (on_gate): the first call of a layer preempts its
  /// speculative copies; every call copies the absent needed experts at high priority.
  template <Executor E>
  void gate(E& e, std::uint32_t layer, std::span<const ExpertId> needed) {
    const std::uint32_t per = e.experts_per_layer();
    if (layer_ != static_cast<std::int64_t>(layer)) {  // first call for this layer
      layer_ = layer;
      needed_.assign(needed.begin(), needed.end());
      for (std::uint32_t f : low_[layer]) {
        const ExpertId id = ExpertId::from_flat(f, per);
        const auto r = e.residency(id);
        if (low_flight_[f] == 0 || (r != Residency::queued && r != Residency::copying)) continue;
        bool asked = false;
        for (ExpertId n : needed) asked = asked || n == id;
        if (asked) {
          if (opt_.preempt) e.promote(id);
          land(f);  // counted with the layer's demand from now on
        } else if (opt_.preempt && e.cancel(id)) {
          land(f);
          forget(e, f);
        }
      }
      low_[layer].clear();
    }
    std::uint32_t absent_before = 0;
    for (ExpertId id : needed) absent_before += e.residency(id) == Residency::absent ? 1U : 0U;
    demand(e, layer, needed);
    for (ExpertId id : needed) absent_before -= e.residency(id) == Residency::absent ? 1U : 0U;
    copies_ += absent_before;
  }

 private:
  /// The gate's demand copies under the configured victim rule.
  template <Executor E>
  void demand(E& e, std::uint32_t layer, std::span<const ExpertId> needed) {
    const std::uint32_t per = e.experts_per_layer();
    if (opt_.victim == PrefetchVictim::utility && reuse_ != nullptr) {
      for (ExpertId id : needed) {
        if (e.residency(id) != Residency::absent) touch(id, per);
      }
      // One scan for the gate's evictions: the worst `absent` held experts in the order repeated
      // utility_victim(e, true) calls would return them (each eviction and demand copy in
      // between leaves the others' next use and scan order as they were), then single scans.
      std::uint32_t absent = 0;
      for (ExpertId id : needed) absent += e.residency(id) == Residency::absent ? 1U : 0U;
      bool scanned = false;
      std::size_t next = 0;
      baseline_detail::demand(
          e, needed,
          [&] {
            if (!scanned) {
              utility_victims(e, absent, victims_);
              scanned = true;
            }
            if (next < victims_.size()) return victims_[next++].first;
            const std::uint32_t v = utility_victim(e, true).first;
            return v != RecencyList::kNone ? v : utility_victim(e, false).first;
          },
          [&](ExpertId id, bool in) {
            if (in) {
              touch(id, per);
            } else {
              forget(e, id.flat(per));
            }
          });
      return;
    }
    if (order_.sized()) order_.invalidate();  // the lists change behind its back
    cache_.demand(
        e, layer, needed, [&](std::uint32_t held) { return unused_prefetch(held, per); },
        [&](std::uint32_t evicted) { marks_[evicted] = 0; });
  }

 public:
  template <Executor E>
  void expert_done(E& e, ExpertId id) {
    marks_[id.flat(e.experts_per_layer())] = 0;
  }
  template <Executor E>
  void copy_done(E& e, ExpertId id) {
    land(id.flat(e.experts_per_layer()));
    pump(e);
  }
  template <Executor E>
  void layer_done(E& e, std::uint32_t) {
    needed_.clear();
    pump(e);
  }

  /// Issues pending prefetches, nearest layer first, while fewer than depth copies are
  /// outstanding and within the lookahead.
  template <Executor E>
  void pump(E& e) {
    const std::uint32_t per = e.experts_per_layer();
    const std::uint64_t mark = pass_ + 1;
    const auto L = static_cast<std::uint32_t>(pending_.size());
    const auto next_layer = static_cast<std::uint32_t>(layer_ + 1);  // layer_ >= -1
    first_pending_ = std::min(L, std::max(first_pending_, next_layer));
    std::uint32_t last = lookahead_ == 0 ? L : std::min(L, next_layer + lookahead_);
    if (cutoff_ != kNoCutoff) {
      const std::uint32_t reach = beyond_ == 0 ? 0 : next_layer + beyond_;
      last = std::min(last, std::max(cutoff_, reach));
    }
    // The utility victim is scanned for once and reused while candidates are declined: a decline
    // changes nothing, and a touch only moves an expert behind those of its layer, which cannot
    // make it win a tie it lost. An eviction makes it stale.
    std::pair<std::uint32_t, double> held_victim{RecencyList::kNone, 0.0};
    bool victim_known = false;
    for (std::uint32_t l = first_pending_; l < last; ++l) {
      auto& q = pending_[l];
      std::size_t i = 0;
      for (; i < q.size(); ++i) {
        std::uint32_t outstanding = low_count_;
        for (ExpertId n : needed_) outstanding += e.residency(n) == Residency::resident ? 0U : 1U;
        if (outstanding >= depth_) break;
        const ExpertId id{static_cast<std::uint16_t>(l), q[i]};
        const std::uint32_t f = id.flat(per);
        if (e.residency(id) != Residency::absent) {
          if (opt_.touch) touch(id, per);
          continue;
        }
        if (opt_.victim == PrefetchVictim::utility && reuse_ != nullptr && load_ > 0.0 &&
            !(reuse_->probability(id, layer_, phase_, *ledger_) > load_)) {
          ++declined_;  // a likely waste of link time
          continue;
        }
        if (e.free_slots() == 0) {
          std::uint32_t v = RecencyList::kNone;
          if (opt_.victim == PrefetchVictim::utility && reuse_ != nullptr) {
            if (!victim_known) {
              held_victim = utility_victim(e, true);
              victim_known = true;
            }
            const auto [u, worst] = held_victim;
            if (u == RecencyList::kNone) break;  // retried when a copy lands or a layer ends
            if (!(reuse_->next_use(id, layer_, phase_, *ledger_) < worst)) {
              ++declined_;  // not expected to be needed before what it would evict
              continue;
            }
            v = u;
            victim_known = false;
          } else {
            v = victim(e, l);
          }
          if (v == RecencyList::kNone) break;  // retried when a copy lands or a layer ends
          if (!e.evict(ExpertId::from_flat(v, per))) break;
          forget(e, v);
        }
        if (!e.copy(id, CopyPriority::low)) break;
        ++copies_;
        touch(id, per);
        marks_[f] = mark;
        low_flight_[f] = 1;
        ++low_count_;
        low_[l].push_back(f);
      }
      q.erase(q.begin(), q.begin() + static_cast<std::ptrdiff_t>(i));
      if (!q.empty()) return;  // blocked: keep the order (nearest layer first)
      first_pending_ = l + 1;
    }
  }

  /// The expert to evict for a prefetch of `layer`: Belady's rule with layers as the clock. The
  /// layers run in a cycle, so an expert's next use is at the earliest its layer's next turn;
  /// evict from the layer whose turn is furthest (the one just run first), least recently used
  /// within it, and only from layers whose turn comes after `layer`'s (else the copy would evict
  /// something needed sooner than what it brings). Experts prefetched for this pass and not yet
  /// used are kept. RecencyList::kNone when there is no such expert.
  /// With `victim = layer_lru`: the predicted layer's LRU victim (LayerLru::victim), sparing this
  /// pass's unused prefetches.
  template <Executor E>
  [[nodiscard]] std::uint32_t victim(const E& e, std::uint32_t layer) const {
    const std::uint32_t per = e.experts_per_layer();
    const std::int64_t L = e.layers();
    const std::int64_t cur = layer_;  // -1 before the first gate
    auto skip = [&](std::uint32_t held) { return unused_prefetch(held, per); };
    if (opt_.victim == PrefetchVictim::layer_lru) {
      // With touch, a prediction keeps all its resident candidates, not only those ranked above
      // the one being copied: a pending candidate of its own layer is not a victim either (else a
      // copy for the prediction's first, absent candidate evicts its second, resident one).
      auto keep = [&](std::uint32_t held) {
        return unused_prefetch(held, per) || (opt_.touch && pending_candidate(held, per));
      };
      return cache_.victim(e, layer, keep);
    }
    const std::int64_t need = static_cast<std::int64_t>(layer) - cur;  // turns until `layer` runs
    for (std::int64_t d = L; d > need; --d) {  // turn distance d: layer (cur + d) mod L
      const auto x = static_cast<std::uint32_t>(((cur + d) % L + L) % L);
      const std::uint32_t v = cache_.oldest_of_layer(e, x, skip);
      if (v != RecencyList::kNone) return v;
    }
    return RecencyList::kNone;
  }

 private:
  /// The evictable held expert expected to be needed last (ties: the least recently used of the
  /// lowest layer), sparing this pass's unused prefetches when `spare`; with its expected next use.
  template <Executor E>
  [[nodiscard]] std::pair<std::uint32_t, double> utility_victim(const E& e, bool spare) {
    if (opt_.scan_victims) return scan_victim(e, spare);
    const std::uint32_t per = e.experts_per_layer();
    return order_.best(cache_, context(), [&](std::uint32_t v) {
      return !(spare && unused_prefetch(v, per)) && e.evictable(ExpertId::from_flat(v, per));
    });
  }
  /// The `k` evictable held experts expected to be needed last, this pass's unused prefetches
  /// spared, worst first, in the order k successive utility_victim(e, true) calls (each followed by
  /// that victim's eviction) would return them: by next use, descending, ties in scan order.
  template <Executor E>
  void utility_victims(const E& e, std::uint32_t k, std::vector<std::pair<std::uint32_t, double>>& out) {
    if (opt_.scan_victims) {
      scan_victims(e, k, out);
      return;
    }
    out.clear();
    if (k == 0) return;
    const std::uint32_t per = e.experts_per_layer();
    order_.best_k(
        cache_, context(), k,
        [&](std::uint32_t v) { return !unused_prefetch(v, per) && e.evictable(ExpertId::from_flat(v, per)); }, out);
  }
  /// utility_victim() by a scan of every held expert (the reference: scan_victims).
  template <Executor E>
  [[nodiscard]] std::pair<std::uint32_t, double> scan_victim(const E& e, bool spare) const {
    const std::uint32_t per = e.experts_per_layer();
    std::uint32_t best = RecencyList::kNone;
    double worst = -1.0;
    for (std::uint32_t l = 0; l < e.layers(); ++l) {
      const RecencyList& list = cache_.order(l);
      for (std::uint32_t v = list.oldest(); v != RecencyList::kNone; v = list.newer(v)) {
        const ExpertId id = ExpertId::from_flat(v, per);
        if ((spare && unused_prefetch(v, per)) || !e.evictable(id)) continue;
        const double t = reuse_->next_use(id, layer_, phase_, *ledger_);
        if (t > worst) {
          worst = t;
          best = v;
        }
      }
    }
    return {best, worst};
  }
  /// utility_victims() by one scan of every held expert (the reference: scan_victims).
  template <Executor E>
  void scan_victims(const E& e, std::uint32_t k, std::vector<std::pair<std::uint32_t, double>>& out) const {
    out.clear();
    if (k == 0) return;
    const std::uint32_t per = e.experts_per_layer();
    for (std::uint32_t l = 0; l < e.layers(); ++l) {
      const RecencyList& list = cache_.order(l);
      for (std::uint32_t v = list.oldest(); v != RecencyList::kNone; v = list.newer(v)) {
        const ExpertId id = ExpertId::from_flat(v, per);
        if (unused_prefetch(v, per) || !e.evictable(id)) continue;
        const double t = reuse_->next_use(id, layer_, phase_, *ledger_);
        if (out.size() == k && !(t > out.back().second)) continue;
        // After every entry at least as late (earlier in scan order wins ties).
        std::size_t i = out.size();
        while (i > 0 && out[i - 1].second < t) --i;
        if (out.size() == k) out.pop_back();
        out.insert(out.begin() + static_cast<std::ptrdiff_t>(i), {v, t});
      }
    }
  }
  [[nodiscard]] UtilityOrder::Context context() const noexcept { return {reuse_, ledger_, layer_, phase_}; }
  /// `id` becomes its layer's most recently used (the cache and, for `utility`, its order).
  void touch(ExpertId id, std::uint32_t per) {
    cache_.touch(id, per);
    if (order_.sized()) order_.touch(id.flat(per), context());
  }
  /// Flat id `held` was prefetched for a layer of this pass still to run.
  [[nodiscard]] bool unused_prefetch(std::uint32_t held, std::uint32_t per) const noexcept {
    return marks_[held] == pass_ + 1 && static_cast<std::int64_t>(held / per) > layer_;
  }
  /// Flat id `held` is a pending candidate of its own layer, a layer of this pass still to run.
  [[nodiscard]] bool pending_candidate(std::uint32_t held, std::uint32_t per) const noexcept {
    const std::uint32_t l = held / per;
    if (static_cast<std::int64_t>(l) <= layer_) return false;
    const auto x = static_cast<std::uint16_t>(held % per);
    const auto& q = pending_[l];
    return std::find(q.begin(), q.end(), x) != q.end();
  }
  /// A low copy of flat id f landed, was cancelled or became a demand copy.
  void land(std::uint32_t f) {
    if (low_flight_[f] == 0) return;
    low_flight_[f] = 0;
    --low_count_;
  }
  template <Executor E>
  void forget(const E& e, std::uint32_t f) {
    cache_.forget(ExpertId::from_flat(f, e.experts_per_layer()), e.experts_per_layer());
    if (order_.sized()) order_.remove(f);
    marks_[f] = 0;
  }

  PrefetchQueueOptions opt_;
  std::uint32_t depth_;
  std::uint32_t lookahead_;
  std::uint32_t cutoff_ = kNoCutoff;
  std::uint32_t beyond_ = 0;
  const ReuseModel* reuse_ = nullptr;
  const PredictionLedger* ledger_ = nullptr;
  StepPhase phase_ = StepPhase::decode;
  std::uint64_t declined_ = 0;
  std::uint64_t copies_ = 0;
  double load_ = 0.0;
  LayerLru cache_;
  UtilityOrder order_;                               // `utility`: the held experts by next use
  std::vector<std::uint64_t> marks_;                 // pass + 1 while prefetched and not yet used
  std::vector<std::uint8_t> low_flight_;             // a low copy is queued or moving
  std::vector<std::vector<std::uint32_t>> low_;      // per layer: low copies submitted for it
  std::vector<std::vector<std::uint16_t>> pending_;  // per layer: candidates not yet copied
  std::uint32_t first_pending_ = 0;                  // no pending candidates below this layer
  std::vector<ExpertId> needed_;                     // the running layer's experts (from its gate)
  std::vector<std::pair<std::uint32_t, double>> victims_;  // a gate's demand victims (utility_victims)
  std::uint32_t low_count_ = 0;
  std::uint64_t pass_ = 0;
  std::int64_t layer_ = -1;                          // last gated layer of the pass, -1 before
};

}  // namespace moesched::policy
