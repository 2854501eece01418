#pragma once
/// ReuseModel: the probability that an expert is needed at its layer's next turn, learned online
/// from the gates, and from it the expected number of MoE layers until its next use: one utility
/// for both eviction (evict what is expected to be needed last, Belady's rule with expectations)
/// and prefetch admission (bring a candidate only if it is expected to be needed before what it
/// evicts). The unified score of `moesched` (MoE-SpAc's idea of one score for both decisions).
///
///   moesched::policy::PredictionLedger ledger;   ledger.resize(8, 8);
///   moesched::policy::ReuseModel reuse;          reuse.resize(8, 8);
///   reuse.observe(/*layer=*/3, needed, StepPhase::decode, ledger);   // every layer's first gate
///   reuse.probability({3, 5}, /*running layer=*/1, StepPhase::decode, ledger);
///   reuse.next_use({3, 5}, 1, StepPhase::decode, ledger);            // layers until L3/E5 is used
///
/// The model, per MoE layer and pass phase (prefill, decode, verify): an expert's state is whether
/// its layer's gate asked for it at each of the layer's last four turns (16 histories), with
/// `frequency` on its frequency class (how often the gate asked for it over all the layer's turns
/// so far against the layer's mean per expert: below half, below 1x, below 2x, 2x or more) and,
/// when the running pass has a prediction for the layer, the expert's rank in it (0, 1, 2, 3 or
/// more, or not predicted). P(needed | state) is counted at every gate with a uniform prior (one use, one
/// non-use): nothing is fitted offline, and no weight or decay is chosen by hand. A layer whose
/// prediction for this pass has not arrived yet is read with the history alone (its own counts).
/// next_use = d + L x (1 / p - 1): d = layers until the expert's layer runs again (1..L), then a
/// geometric number of further turns with probability p each. With `density` the score is d / p
/// = d x (1 + odds) instead: the layers a slot is held per expected hit at the expert's next turn,
/// the inverse of its hit density (Beckmann et al., "LHD", NSDI 2018). The two agree within a layer
/// (the same d) and where p is near 1; where p is small, next_use is dominated by L / p and evicts
/// an expert needed at the very next layer with probability p over one of the layer just run with
/// a slightly higher p, which holds its slot L times longer for that chance. Evicting the largest
/// score is Belady's rule with expectations either way.
/// Cost: observe() O(experts of the layer): every expert is counted in its cell (history and
/// frequency class) and its cell moved on, plus O(|needed| + predicted); probability() and
/// next_use() O(1); nothing allocates after resize().

#include "moesched/core/config.hpp"
#include "moesched/core/expert_id.hpp"
#include "moesched/core/routing.hpp"
#include "moesched/policy/prediction_ledger.hpp"

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

namespace moesched::policy {

class ReuseModel {
 public:
  static constexpr std::uint32_t kHistoryBits = 4;  ///< turns of the layer remembered per expert
  static constexpr std::uint32_t kHistories = 1U << kHistoryBits;
  static constexpr std::uint32_t kBuckets = 5;    ///< rank 0, 1, 2, 3+, not predicted
  static constexpr std::uint32_t kPhases = 3;     ///< prefill, decode, verify
  static constexpr std::uint32_t kFrequencies = 4;  ///< frequency classes: < 0.5x, < 1x, < 2x, >= 2x the layer's mean
  /// Cells: history x frequency class (cell = history x kFrequencies + class; class 0 with
  /// `frequency` off).
  static constexpr std::uint32_t kCells = kHistories * kFrequencies;

  ReuseModel() = default;
  /// `frequency`: the state includes the expert's frequency class; `density`: the score is d / p,
  /// not the expected layers to next use (see the header comment).
  explicit ReuseModel(bool frequency, bool density = false) noexcept : frequency_(frequency), density_(density) {}
  [[nodiscard]] bool frequency() const noexcept { return frequency_; }
  [[nodiscard]] bool density() const noexcept { return density_; }

  void resize(std::uint32_t layers, std::uint32_t experts) {
    if (layers == layers_ && experts == experts_) return;
    layers_ = layers;
    experts_ = experts;
    // Before any turn the layer's mean is 0 and every expert at or above it: class 3 (or 0 off).
    cell_.assign(std::size_t{layers} * experts, static_cast<std::uint8_t>(frequency_class(0, 0)));
    asks_.assign(std::size_t{layers} * experts, 0);
    layer_asks_.assign(layers, 0);
    used_.assign(experts, 0);
    asked_.assign(experts, 0);
    marginal_.assign(std::size_t{layers} * kPhases * kCells, Count{});
    joint_.assign(std::size_t{layers} * kPhases * kCells * kBuckets, Count{});
    version_.assign(layers, ++clock_);
  }
  [[nodiscard]] std::uint32_t layers() const noexcept { return layers_; }

  /// `layer`'s gate asked for `needed` in a pass of `phase` (call once per layer and pass, before
  /// anything of the layer's next turn is predicted): counts every expert of the layer in its state,
  /// then moves the histories and frequency classes on.
  void observe(std::uint32_t layer, std::span<const ExpertId> needed, StepPhase phase, const PredictionLedger& ledger) noexcept {
    if (layer >= layers_) return;
    version_[layer] = ++clock_;
    // The asked experts, each once.
    std::uint32_t k = 0;
    for (ExpertId id : needed) {
      if (id.expert < experts_ && used_[id.expert] == 0) {
        used_[id.expert] = 1;
        asked_[k++] = id.expert;
      }
    }
    const std::uint32_t ph = phase_index(phase);
    std::uint8_t* c = cell_.data() + std::size_t{layer} * experts_;
    std::uint32_t n[kCells] = {};  // experts per cell
    std::uint32_t u[kCells] = {};  // of them asked for
    for (std::uint32_t e = 0; e < experts_; ++e) {
      ++n[c[e]];
      u[c[e]] += used_[e];
    }
    Count* m = marginal_.data() + marginal_index(layer, ph, 0);
    for (std::uint32_t x = 0; x < kCells; ++x) {
      m[x].total += n[x];
      m[x].used += u[x];
    }
    if (ledger.has_prediction(layer)) {
      std::uint32_t pn[kCells] = {};  // predicted experts per cell
      std::uint32_t pu[kCells] = {};  // of them asked for
      for (std::uint16_t e : ledger.predicted(layer)) {
        const std::uint32_t x = c[e];
        const std::uint32_t b = bucket(ledger.rank(ExpertId{static_cast<std::uint16_t>(layer), e}));
        Count& j = joint_[joint_index(layer, ph, x, b)];
        j.total += 1;
        j.used += used_[e];
        ++pn[x];
        pu[x] += used_[e];
      }
      for (std::uint32_t x = 0; x < kCells; ++x) {  // the rest: not predicted
        Count& j = joint_[joint_index(layer, ph, x, kBuckets - 1)];
        j.total += n[x] - pn[x];
        j.used += u[x] - pu[x];
      }
    }
    // The cells move on: the history shifts in this turn, the class is taken with this turn's asks.
    std::uint32_t* a = asks_.data() + std::size_t{layer} * experts_;
    const std::uint64_t total = layer_asks_[layer] += k;
    for (std::uint32_t e = 0; e < experts_; ++e) {
      a[e] += used_[e];
      const std::uint32_t hist = (((c[e] / kFrequencies) << 1U) | used_[e]) & (kHistories - 1U);
      c[e] = static_cast<std::uint8_t>(hist * kFrequencies + frequency_class(a[e], total));
    }
    for (std::uint32_t i = 0; i < k; ++i) used_[asked_[i]] = 0;
  }

  /// P(`id` is needed at its layer's next turn), the running pass having gated up to layer
  /// `current` (-1 before its first gate); `phase` is taken for that turn.
  [[nodiscard]] double probability(ExpertId id, std::int64_t current, StepPhase phase,
                                   const PredictionLedger& ledger) const noexcept {
    return state_probability(id.layer, state(id, current, ledger), phase);
  }

  /// Expected MoE layers until `id` is next needed (see the header comment).
  [[nodiscard]] double next_use(ExpertId id, std::int64_t current, StepPhase phase, const PredictionLedger& ledger) const noexcept {
    const double p = probability(id, current, phase, ledger);
    return expected_layers(turn_distance(id.layer, current), 1.0 / p - 1.0);
  }

  // ---- the pieces of next_use(), for incremental orders (PrefetchQueue's utility victims) ----
  // next_use(id) == expected_layers(turn_distance(id.layer, current), odds) with
  // odds = 1 / state_probability(id.layer, state(id, current, ledger), phase) - 1, computed by
  // the same expressions: an order kept over these pieces compares the very same doubles.

  /// States an expert can be in: kCells x kBuckets with its layer's prediction (joint), then
  /// kCells without (marginal); with `frequency` off only those of class 0 occur.
  static constexpr std::uint32_t kStates = kCells * kBuckets + kCells;
  /// Whether `layer`'s experts are read with the running pass's prediction (joint counts): the
  /// layer is still to run (after `current`) and has a prediction.
  [[nodiscard]] static bool joint(std::uint32_t layer, std::int64_t current, const PredictionLedger& ledger) noexcept {
    return static_cast<std::int64_t>(layer) > current && ledger.has_prediction(layer);
  }
  /// `id`'s state (0 .. kStates - 1): all that probability() reads of it besides its layer.
  [[nodiscard]] std::uint32_t state(ExpertId id, std::int64_t current, const PredictionLedger& ledger) const noexcept {
    return state(id, joint(id.layer, current, ledger), ledger);
  }
  /// As above, with joint(id.layer, current, ledger) given.
  [[nodiscard]] std::uint32_t state(ExpertId id, bool joint, const PredictionLedger& ledger) const noexcept {
    const std::uint32_t x = cell_[id.flat(experts_)];
    if (joint) return x * kBuckets + bucket(ledger.rank(id));
    return kCells * kBuckets + x;
  }
  /// As above, by flat id (`layer` x experts + expert, the ledger's too).
  [[nodiscard]] std::uint32_t state_at(std::uint32_t flat, bool joint, const PredictionLedger& ledger) const noexcept {
    const std::uint32_t x = cell_[flat];
    if (joint) return x * kBuckets + bucket(ledger.rank_at(flat));
    return kCells * kBuckets + x;
  }
  /// P(needed at the next turn) of an expert of `layer` in `state` (see state()).
  [[nodiscard]] double state_probability(std::uint32_t layer, std::uint32_t state, StepPhase phase) const noexcept {
    const std::uint32_t ph = phase_index(phase);
    if (state < kCells * kBuckets) {
      return joint_[joint_index(layer, ph, state / kBuckets, state % kBuckets)].probability();
    }
    return marginal_[marginal_index(layer, ph, state - kCells * kBuckets)].probability();
  }
  /// Layers until `layer` runs again (1..L) when the pass has gated up to `current`.
  [[nodiscard]] std::int64_t turn_distance(std::uint32_t layer, std::int64_t current) const noexcept {
    const auto L = static_cast<std::int64_t>(layers_);
    const std::int64_t l = layer;
    return l > current ? l - current : l - current + L;
  }
  /// d + L x odds: the expected layers until next use at turn distance d, odds = 1 / p - 1 (with
  /// `density`: d x (1 + odds) = d / p).
  [[nodiscard]] double expected_layers(std::int64_t d, double odds) const noexcept {
    if (density_) return static_cast<double>(d) * (1.0 + odds);
    return static_cast<double>(d) + static_cast<double>(static_cast<std::int64_t>(layers_)) * odds;
  }
  /// Changes whenever observe(`layer`) ran (its counts and its experts' histories moved on);
  /// values never repeat, across resize() too.
  [[nodiscard]] std::uint64_t version(std::uint32_t layer) const noexcept { return version_[layer]; }
  /// Changes whenever any layer's version() does.
  [[nodiscard]] std::uint64_t changes() const noexcept { return clock_; }

  /// The history bits of `id` (bit 0: asked at its layer's last turn; bit 1: at the one before).
  [[nodiscard]] std::uint32_t history(ExpertId id) const noexcept { return cell_[id.flat(experts_)] / kFrequencies; }
  /// The frequency class of `id` (0 .. kFrequencies - 1; always 0 with `frequency` off): its
  /// asks a over the layer's turns against the layer's asks T over all its E experts, a x E
  /// against T: below T / 2, below T, below 2 T, else 3.
  [[nodiscard]] std::uint32_t frequency_class(ExpertId id) const noexcept { return cell_[id.flat(experts_)] % kFrequencies; }

 private:
  struct Count {
    std::uint64_t used = 0;
    std::uint64_t total = 0;
    [[nodiscard]] double probability() const noexcept {
      return (static_cast<double>(used) + 1.0) / (static_cast<double>(total) + 2.0);
    }
  };
  static std::uint32_t phase_index(StepPhase p) noexcept {
    switch (p) {
      case StepPhase::prefill: return 0;
      case StepPhase::decode: return 1;
      default: return 2;
    }
  }
  /// The class of an expert asked `asks` times of its layer's `total` asks (see frequency_class).
  [[nodiscard]] std::uint32_t frequency_class(std::uint64_t asks, std::uint64_t total) const noexcept {
    if (!frequency_) return 0;
    const std::uint64_t x = asks * experts_;
    return static_cast<std::uint32_t>(2 * x >= total) + static_cast<std::uint32_t>(x >= total) +
           static_cast<std::uint32_t>(x >= 2 * total);
  }
  static std::uint32_t bucket(std::uint32_t rank) noexcept {
    return rank == PredictionLedger::kNotPredicted ? kBuckets - 1 : (rank < kBuckets - 2 ? rank : kBuckets - 2);
  }
  [[nodiscard]] std::size_t marginal_index(std::uint32_t layer, std::uint32_t ph, std::uint32_t cell) const noexcept {
    return (std::size_t{layer} * kPhases + ph) * kCells + cell;
  }
  [[nodiscard]] std::size_t joint_index(std::uint32_t layer, std::uint32_t ph, std::uint32_t cell, std::uint32_t b) const noexcept {
    return marginal_index(layer, ph, cell) * kBuckets + b;
  }

  std::uint32_t layers_ = 0;
  std::uint32_t experts_ = 0;
  bool frequency_ = false;
  bool density_ = false;
  std::vector<std::uint8_t> cell_;     // [layer * experts + expert]: history x kFrequencies + class
  std::vector<std::uint32_t> asks_;    // [layer * experts + expert]: turns its gate asked for it
  std::vector<std::uint64_t> layer_asks_;  // per layer: asks over all its turns and experts
  std::vector<std::uint8_t> used_;     // per expert of the observed layer: asked for (observe only)
  std::vector<std::uint16_t> asked_;   // observe: the asked experts, each once
  std::vector<Count> marginal_;        // [layer][phase][cell]
  std::vector<Count> joint_;           // [layer][phase][cell][bucket]
  std::vector<std::uint64_t> version_; // per layer: clock_ at its last observe() (or resize())
  std::uint64_t clock_ = 0;
};

}  // namespace moesched::policy
