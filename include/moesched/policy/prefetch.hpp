#pragma once
/// Prefetch: a predictive policy fed by a PredictionTable through predictor jobs.
///
///   moesched::policy::Prefetch pol(table, moesched::Nanoseconds{200'000});  // 200 us a prediction
///   auto m = moesched::sim::replay(workload, cost, pol, {.budget = moesched::Bytes::gib(8)});
///
/// The mechanism is ProMoE's (arXiv 2410.22134), with the predictor abstracted to a table:
/// - Every predicted set of the pass becomes one predictor job (moesched/runtime/jobs.hpp) whose
///   ready point is where the set's input exists: after MoE layer `after` of the pass, after
///   draft step `draft_tokens` of an SD pass, or the pass start. The job runs where the predictor
///   runs (`where`: CPU workers for an MLP, the compute stream for a router GEMV) and costs
///   `latency` there; it returns the set's ranked candidates (PredictionTable::predict), whose
///   absent members are then copied at low priority, in rank order, unless the predicted layer's
///   gate already ran (too late: dropped).
/// - The cache is ProMoE's per-layer LRU (LayerLru: equal shares, borrowing) for demand copies,
///   which spare this pass's unused prefetches while anything else can go; a prefetch touches its
///   entry. A prefetch evicts by Belady's rule with layers as the clock
///   (see victim()): from the layer whose next turn is furthest, and never an expert needed
///   sooner than the one it brings, nor one prefetched for this pass and not yet used; with no
///   such victim the prefetch waits.
/// - Prefetch queue: candidates wait per layer, nearest layer first and in arrival order within a
///   layer, and are issued while fewer than `depth` copies are outstanding (the running layer's
///   demand copies count) and within `lookahead` layers of the running one, so speculation never
///   queues ahead of the link nor evicts for a copy that could not start soon. A candidate whose
///   layer's gate ran is dropped.
/// - Early preemption at the gate: the layer's queued low copies that the gate did not ask for
///   are cancelled, the asked ones still queued or moving are promoted to high, and the absent
///   ones are copied at high priority (demand, as OnDemand).
/// Needs a JobExecutor (every runtime::Machine is one).

#include "moesched/core/config.hpp"
#include "moesched/core/expert_id.hpp"
#include "moesched/core/units.hpp"
#include "moesched/policy/baseline.hpp"
#include "moesched/policy/prediction_table.hpp"
#include "moesched/policy/recency_list.hpp"
#include "moesched/runtime/archetype.hpp"
#include "moesched/runtime/executor.hpp"
#include "moesched/runtime/jobs.hpp"

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

namespace moesched::policy {

class Prefetch {
 public:
  [[nodiscard]] static constexpr std::string_view name() noexcept { return "prefetch"; }

  /// `table` must outlive the policy and have one entry per pass of the replay. `depth`: copies
  /// (demand copies of the running layer included) the policy keeps outstanding before it issues
  /// another prefetch.
  /// `lookahead`: prefetch only for the next `lookahead` layers after the running one (ProMoE's
  /// bounded lookahead; 0 = any later layer of the pass).
  /// `where`: where the predictor runs (its `latency` is charged there).
  Prefetch(const PredictionTable& table, Nanoseconds latency, std::uint32_t depth = 2, std::uint32_t lookahead = 0,
           runtime::JobResource where = runtime::JobResource::cpu_worker)
      : table_(&table), latency_(latency), depth_(depth < 1 ? 1 : depth), lookahead_(lookahead), where_(where) {
    for (std::uint64_t i = 0; i < table.set_count(); ++i) block_size_ = std::max(block_size_, table.set(i).count);
    block_size_ = std::max<std::uint32_t>(block_size_, 1);
  }
  Prefetch(PredictionTable&&, Nanoseconds, std::uint32_t = 2, std::uint32_t = 0,
           runtime::JobResource = runtime::JobResource::cpu_worker) = delete;  // keeps a pointer

  /// Predictor jobs that ended after the gate of the layer they predicted (or after their pass).
  [[nodiscard]] std::uint64_t too_late() const noexcept { return too_late_; }

  template <JobExecutor E>
  void on_pass_begin(E& e, const PassInfo& pass) {
    cache_.on_pass_begin(e, pass);
    if (marks_.empty()) {
      marks_.assign(std::size_t{e.layers()} * e.experts_per_layer(), 0);
      low_flight_.assign(marks_.size(), 0);
      low_.assign(e.layers(), {});
      pending_.assign(e.layers(), {});
    }
    pass_ = pass.index;
    layer_ = -1;
    for (auto& q : pending_) q.clear();
    first_pending_ = e.layers();
    needed_.clear();
    if (pass_ >= table_->pass_count()) return;
    // One job per predicted set, ready where its input exists.
    for (std::uint64_t i = table_->pass_begin(pass_); i < table_->pass_end(pass_); ++i) {
      const PredictedSet& s = table_->set(i);
      runtime::PredictorJob job;
      job.where = where_;
      job.cost = latency_;
      job.predict = &PredictionTable::predict;
      job.predictor = table_;
      job.input.pass = pass_;
      job.input.layer = s.layer;
      job.input.key = i;
      if (s.after >= 0) {
        job.ready = runtime::ReadyPoint::after_layer(static_cast<std::uint32_t>(s.after));
        job.input.source = runtime::InputSource::layer_boundary;
      } else if (pass.draft_len > 0 && s.draft_tokens > 0) {
        job.ready = runtime::ReadyPoint::after_draft(std::min<std::uint32_t>(s.draft_tokens, pass.draft_len));
        job.input.source = runtime::InputSource::draft_state;
      } else {
        job.ready = runtime::ReadyPoint::pass_start();
        job.input.source = runtime::InputSource::layer_boundary;
      }
      const std::uint32_t b = take_block(i);
      job.tag = b;
      job.out = {blocks_[b].get(), block_size_};
      if (!e.submit_job(job)) free_blocks_.push_back(b);
    }
  }

  template <JobExecutor E>
  void on_gate(E& e, std::uint32_t layer, std::span<const ExpertId> needed) {
    const std::uint32_t per = e.experts_per_layer();
    if (layer_ != static_cast<std::int64_t>(layer)) {  // first call for this layer
      layer_ = layer;
      needed_.assign(needed.begin(), needed.end());
      // Early preemption: this layer's speculative copies the gate did not ask for are dropped,
      // the asked ones become demand copies.
      for (std::uint32_t f : low_[layer]) {
        const ExpertId id = ExpertId::from_flat(f, per);
        const auto r = e.residency(id);
        if (low_flight_[f] == 0 || (r != Residency::queued && r != Residency::copying)) continue;
        bool asked = false;
        for (ExpertId n : needed) asked = asked || n == id;
        if (asked) {
          e.promote(id);
          land(f);
        } else if (e.cancel(id)) {
          land(f);
          forget(e, f);
        }
      }
      low_[layer].clear();
    }
    // Demand as per-layer LRU, sparing this pass's unused prefetches while anything else can go.
    cache_.demand(
        e, layer, needed, [&](std::uint32_t held) { return unused_prefetch(held, per); },
        [&](std::uint32_t evicted) { marks_[evicted] = 0; });
  }

  template <JobExecutor E>
  void on_expert_done(E& e, ExpertId id) {
    marks_[id.flat(e.experts_per_layer())] = 0;
  }
  template <JobExecutor E>
  void on_copy_done(E& e, ExpertId id) {
    land(id.flat(e.experts_per_layer()));
    pump(e);
  }

  template <JobExecutor E>
  void on_layer_done(E& e, std::uint32_t) {
    needed_.clear();
    pump(e);
  }

  /// A predictor job ended: its candidates join the prefetch queue (unless too late).
  template <JobExecutor E>
  void on_job_done(E& e, std::uint32_t tag, std::uint32_t count) {
    const std::uint64_t set = block_set_[tag];
    const runtime::ScoredExpert* out = blocks_[tag].get();
    free_blocks_.push_back(tag);
    if (pass_ >= table_->pass_count() || set < table_->pass_begin(pass_) || set >= table_->pass_end(pass_)) {
      ++too_late_;  // the pass it was for is over
      return;
    }
    const PredictedSet& s = table_->set(set);
    if (static_cast<std::int64_t>(s.layer) <= layer_) {
      ++too_late_;
      return;
    }
    auto& q = pending_[s.layer];
    for (std::uint32_t i = 0; i < count && i < block_size_; ++i) q.push_back(out[i].expert);
    first_pending_ = std::min<std::uint32_t>(first_pending_, s.layer);
    pump(e);
  }

 private:
  /// Issues pending prefetches, nearest layer first, while fewer than depth_ copies are
  /// outstanding and within the lookahead.
  template <JobExecutor E>
  void pump(E& e) {
    const std::uint32_t per = e.experts_per_layer();
    const std::uint64_t mark = pass_ + 1;
    const auto L = static_cast<std::uint32_t>(pending_.size());
    const auto next_layer = static_cast<std::uint32_t>(layer_ + 1);  // layer_ >= -1
    first_pending_ = std::min(L, std::max(first_pending_, next_layer));
    const std::uint32_t last = lookahead_ == 0 ? L : std::min(L, next_layer + lookahead_);
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
          cache_.touch(id, per);
          continue;
        }
        if (e.free_slots() == 0) {
          const std::uint32_t v = victim(e, l);
          if (v == RecencyList::kNone) break;  // retried when a copy lands or a layer ends
          if (!e.evict(ExpertId::from_flat(v, per))) break;
          forget(e, v);
        }
        if (!e.copy(id, CopyPriority::low)) break;
        cache_.touch(id, per);
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
  /// used are kept.
  template <Executor E>
  std::uint32_t victim(const E& e, std::uint32_t layer) const {
    const std::uint32_t per = e.experts_per_layer();
    const std::int64_t L = e.layers();
    const std::int64_t cur = layer_;  // -1 before the first gate
    auto skip = [&](std::uint32_t held) { return unused_prefetch(held, per); };
    const std::int64_t need = static_cast<std::int64_t>(layer) - cur;  // turns until `layer` runs
    for (std::int64_t d = L; d > need; --d) {  // turn distance d: layer (cur + d) mod L
      const auto x = static_cast<std::uint32_t>(((cur + d) % L + L) % L);
      const std::uint32_t v = cache_.oldest_of_layer(e, x, skip);
      if (v != RecencyList::kNone) return v;
    }
    return RecencyList::kNone;
  }

  /// Flat id `held` was prefetched for a layer of this pass still to run.
  [[nodiscard]] bool unused_prefetch(std::uint32_t held, std::uint32_t per) const noexcept {
    return marks_[held] == pass_ + 1 && static_cast<std::int64_t>(held / per) > layer_;
  }

  /// A result block for a job of set `set` (reused once its job ended).
  std::uint32_t take_block(std::uint64_t set) {
    if (free_blocks_.empty()) {
      free_blocks_.push_back(static_cast<std::uint32_t>(blocks_.size()));
      blocks_.push_back(std::make_unique<runtime::ScoredExpert[]>(block_size_));
      block_set_.push_back(0);
    }
    const std::uint32_t b = free_blocks_.back();
    free_blocks_.pop_back();
    block_set_[b] = set;
    return b;
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
    marks_[f] = 0;
  }

  const PredictionTable* table_;
  Nanoseconds latency_;
  std::uint32_t depth_;
  std::uint32_t lookahead_;
  runtime::JobResource where_;
  std::uint32_t block_size_ = 1;                // candidates of the largest set
  std::vector<std::unique_ptr<runtime::ScoredExpert[]>> blocks_;  // job results, one block per job in flight
  std::vector<std::uint64_t> block_set_;        // the set each block's job predicts
  std::vector<std::uint32_t> free_blocks_;
  LayerLru cache_;
  std::vector<std::uint64_t> marks_;            // pass + 1 while prefetched and not yet used
  std::vector<std::uint8_t> low_flight_;        // a low copy is queued or moving
  std::vector<std::vector<std::uint32_t>> low_; // per layer: low copies submitted for it
  std::vector<std::vector<std::uint16_t>> pending_;  // per layer: candidates not yet copied
  std::uint32_t first_pending_ = 0;             // no pending candidates below this layer
  std::vector<ExpertId> needed_;                // the running layer's experts (from its gate)
  std::uint32_t low_count_ = 0;
  std::uint64_t pass_ = 0;
  std::int64_t layer_ = -1;                     // last gated layer of the pass, -1 before
  std::uint64_t too_late_ = 0;
};

static_assert(JobPolicy<Prefetch, runtime::ArchetypeExecutor>);

}  // namespace moesched::policy
