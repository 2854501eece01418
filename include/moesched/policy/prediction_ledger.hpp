#pragma once
/// PredictionLedger: what the predictors said for each layer of the running pass, checked against
/// what the gates then asked for: per-layer recall and precision (per rank), and how many distinct
/// experts a layer's predictions name per pass. A component of predictive policies: SP-MoE's cutoff
/// takes its confidence and its expected experts per layer from here, the ReuseModel its ranks.
///
///   moesched::policy::PredictionLedger ledger;
///   ledger.resize(/*layers=*/8, /*experts=*/8);
///   ledger.begin_pass();
///   ledger.record(/*layer=*/3, ranked);          // a predictor's candidates for layer 3, best first
///   ledger.rank({3, 5});                         // best rank of L3/E5 in this pass, or kNotPredicted
///   ledger.observe(3, needed);                   // layer 3's gate: the predictions are scored
///   ledger.recall(3);                            // share of needed experts that were predicted
///
/// A candidate named by several predictions of the pass (the draft tokens of an SD window, two
/// channels) keeps its best rank. Statistics count only layers that had a prediction in the pass
/// and use a uniform prior (one hit and one miss), so a layer never seen reads 0.5. observe() is
/// meant for a layer's first gate of the pass (later calls of the same layer add nothing).
/// Cost: record() O(candidates), observe() O(|needed| + predicted); nothing allocates after resize().

#include "moesched/core/config.hpp"
#include "moesched/core/expert_id.hpp"
#include "moesched/runtime/jobs.hpp"

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

namespace moesched::policy {

class PredictionLedger {
 public:
  static constexpr std::uint32_t kNotPredicted = ~std::uint32_t{0};
  /// Ranks at or beyond this share one precision counter.
  static constexpr std::uint32_t kRanks = 8;

  void resize(std::uint32_t layers, std::uint32_t experts) {
    if (layers == layers_ && experts == experts_) return;
    layers_ = layers;
    experts_ = experts;
    const std::size_t cells = std::size_t{layers} * experts;
    rank_.assign(cells, 0);
    stamp_.assign(cells, 0);
    layer_stamp_.assign(layers, 0);
    layer_count_.assign(layers, 0);
    named_.assign(cells, 0);
    observed_.assign(layers, 0);
    hits_.assign(layers, 0);
    needed_.assign(layers, 0);
    predicted_.assign(layers, 0);
    passes_.assign(layers, 0);
    rank_hits_.assign(std::size_t{layers} * kRanks, 0);
    rank_total_.assign(std::size_t{layers} * kRanks, 0);
    pass_ = 0;
    version_.assign(layers, ++clock_);
  }
  [[nodiscard]] std::uint32_t layers() const noexcept { return layers_; }

  /// A new pass: the previous pass's predictions are forgotten (the statistics stay).
  void begin_pass() noexcept {
    ++pass_;
    ++clock_;
  }

  /// A prediction for `layer` of the running pass: candidates best first.
  void record(std::uint32_t layer, std::span<const runtime::ScoredExpert> ranked) noexcept {
    if (layer >= layers_) return;
    version_[layer] = ++clock_;
    if (layer_stamp_[layer] != pass_) {
      layer_stamp_[layer] = pass_;
      layer_count_[layer] = 0;
    }
    for (std::uint32_t r = 0; r < ranked.size(); ++r) {
      if (ranked[r].expert >= experts_) continue;
      const std::size_t c = std::size_t{layer} * experts_ + ranked[r].expert;
      if (stamp_[c] != pass_) {
        stamp_[c] = pass_;
        rank_[c] = r;
        named_[std::size_t{layer} * experts_ + layer_count_[layer]++] = ranked[r].expert;
      } else {
        rank_[c] = std::min(rank_[c], r);
      }
    }
  }

  /// Whether `layer` has a prediction in the running pass.
  [[nodiscard]] bool has_prediction(std::uint32_t layer) const noexcept {
    return layer < layers_ && layer_stamp_[layer] == pass_ && pass_ != 0;
  }
  /// Best rank of `id` in the running pass's predictions, or kNotPredicted.
  [[nodiscard]] std::uint32_t rank(ExpertId id) const noexcept {
    const std::size_t c = id.flat(experts_);
    return pass_ != 0 && stamp_[c] == pass_ ? rank_[c] : kNotPredicted;
  }
  /// rank() by flat id (layer x experts + expert).
  [[nodiscard]] std::uint32_t rank_at(std::size_t flat) const noexcept {
    return pass_ != 0 && stamp_[flat] == pass_ ? rank_[flat] : kNotPredicted;
  }
  /// The running pass (1-based; 0 before the first begin_pass()).
  [[nodiscard]] std::uint64_t pass() const noexcept { return pass_; }
  /// Changes whenever record(`layer`) ran; with pass(), what has_prediction(`layer`) and the
  /// rank() of its experts depend on. Values never repeat, across resize() too.
  [[nodiscard]] std::uint64_t version(std::uint32_t layer) const noexcept { return version_[layer]; }
  /// Changes whenever any layer's version() or the pass does.
  [[nodiscard]] std::uint64_t changes() const noexcept { return clock_; }
  /// Distinct experts the running pass's predictions name for `layer`.
  [[nodiscard]] std::uint32_t predicted_count(std::uint32_t layer) const noexcept {
    return has_prediction(layer) ? layer_count_[layer] : 0;
  }
  /// The experts the running pass's predictions name for `layer`, each once, in the order first
  /// named (predicted_count() of them).
  [[nodiscard]] std::span<const std::uint16_t> predicted(std::uint32_t layer) const noexcept {
    return {named_.data() + std::size_t{layer} * experts_, predicted_count(layer)};
  }

  /// `layer`'s gate asked for `needed`: scores the pass's predictions of the layer (once a pass).
  void observe(std::uint32_t layer, std::span<const ExpertId> needed) noexcept {
    if (layer >= layers_ || observed_[layer] == pass_) return;
    observed_[layer] = pass_;
    if (!has_prediction(layer)) return;
    std::uint32_t hit = 0;
    for (ExpertId id : needed) {
      const std::uint32_t r = rank(id);
      if (r == kNotPredicted) continue;
      ++hit;
      ++rank_hits_[std::size_t{layer} * kRanks + std::min(r, kRanks - 1)];
    }
    // Every predicted expert counts once towards its rank's total.
    const std::uint32_t* first = rank_.data() + std::size_t{layer} * experts_;
    const std::uint64_t* st = stamp_.data() + std::size_t{layer} * experts_;
    for (std::uint32_t e = 0; e < experts_; ++e) {
      if (st[e] == pass_) ++rank_total_[std::size_t{layer} * kRanks + std::min(first[e], kRanks - 1)];
    }
    hits_[layer] += hit;
    needed_[layer] += needed.size();
    predicted_[layer] += layer_count_[layer];
    ++passes_[layer];
  }

  /// Share of `layer`'s needed experts its predictions named (uniform prior).
  [[nodiscard]] double recall(std::uint32_t layer) const noexcept {
    return layer < layers_ ? (static_cast<double>(hits_[layer]) + 1.0) / (static_cast<double>(needed_[layer]) + 2.0) : 0.5;
  }
  /// Share of `layer`'s predicted experts the gate asked for (uniform prior).
  [[nodiscard]] double precision(std::uint32_t layer) const noexcept {
    return layer < layers_ ? (static_cast<double>(hits_[layer]) + 1.0) / (static_cast<double>(predicted_[layer]) + 2.0)
                           : 0.5;
  }
  /// Share of `layer`'s candidates of rank `rank` (ranks >= kRanks pooled) the gate asked for.
  [[nodiscard]] double precision_at(std::uint32_t layer, std::uint32_t rank) const noexcept {
    if (layer >= layers_) return 0.5;
    const std::size_t c = std::size_t{layer} * kRanks + std::min(rank, kRanks - 1);
    return (static_cast<double>(rank_hits_[c]) + 1.0) / (static_cast<double>(rank_total_[c]) + 2.0);
  }
  /// Mean distinct experts `layer`'s predictions named per pass that had one (0 before any).
  [[nodiscard]] double mean_predicted(std::uint32_t layer) const noexcept {
    return layer < layers_ && passes_[layer] > 0
               ? static_cast<double>(predicted_[layer]) / static_cast<double>(passes_[layer])
               : 0.0;
  }
  /// Passes in which `layer` had a prediction by its gate.
  [[nodiscard]] std::uint64_t scored_passes(std::uint32_t layer) const noexcept {
    return layer < layers_ ? passes_[layer] : 0;
  }

 private:
  std::uint32_t layers_ = 0;
  std::uint32_t experts_ = 0;
  std::uint64_t pass_ = 0;                // 1-based stamp of the running pass (0: none yet)
  std::vector<std::uint32_t> rank_;       // [layer * experts + expert]: best rank this pass
  std::vector<std::uint64_t> stamp_;      // the pass `rank_` belongs to
  std::vector<std::uint64_t> layer_stamp_;// per layer: pass of its latest prediction
  std::vector<std::uint32_t> layer_count_;// distinct predicted experts this pass
  std::vector<std::uint16_t> named_;      // [layer * experts + i]: those experts, first named first
  std::vector<std::uint64_t> observed_;   // per layer: pass of its last scored gate
  std::vector<std::uint64_t> hits_, needed_, predicted_, passes_;
  std::vector<std::uint64_t> rank_hits_, rank_total_;  // [layer * kRanks + rank]
  std::vector<std::uint64_t> version_;    // per layer: clock_ at its last record() (or resize())
  std::uint64_t clock_ = 0;
};

}  // namespace moesched::policy
