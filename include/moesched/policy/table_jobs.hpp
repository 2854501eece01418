#pragma once
/// TableJobs: a PredictionTable run as predictor jobs: each predicted set of a pass becomes one job
/// whose ready point is where the set's input exists, and whose result comes back in on_job_done.
/// The predictor source of policy::Prefetch and of the published policies (policy::Pipeline).
///
///   moesched::policy::TableJobs jobs(table, moesched::Nanoseconds{200'000},
///                                   moesched::runtime::JobResource::cpu_worker);
///   jobs.submit(exec, pass);                        // on_pass_begin: one job per set of the pass
///   if (auto r = jobs.take(tag, count); r.set)      // on_job_done (owns(tag))
///     queue.push(exec, r.set->layer, r.ranked);     // ranked stays valid until the next submit/take
///
/// Ready points: after MoE layer `after` of the pass, after draft step `draft_tokens` of an SD pass
/// (a draft-gate prediction), or the pass start. `lead` (0 = as recorded) releases a prediction
/// for layer t no earlier than after layer t - lead: `lead = 1` keeps a stride-2 predictor's
/// accuracy but takes away its extra layer of lead time (ProMoE's stride ablation). The job runs
/// where the predictor runs (`where`) and costs `latency` there; its candidates are the set's, in
/// rank order (PredictionTable::predict). A result whose pass is over is counted as too late.
/// Tags are `tag_base` + a block index, so several TableJobs of one policy keep theirs apart
/// (owns()). Result blocks are reused once their job ended; no allocation once the largest number
/// of jobs in flight has been seen.

#include "moesched/core/config.hpp"
#include "moesched/core/units.hpp"
#include "moesched/policy/prediction_table.hpp"
#include "moesched/runtime/executor.hpp"
#include "moesched/runtime/jobs.hpp"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

namespace moesched::policy {

class TableJobs {
 public:
  /// Tags a TableJobs may use: [tag_base, tag_base + kTagSpan).
  static constexpr std::uint32_t kTagSpan = 1U << 24U;

  /// `table` must outlive the jobs and have one entry per pass of the replay.
  TableJobs(const PredictionTable& table, Nanoseconds latency, runtime::JobResource where, std::uint32_t tag_base = 0)
      : table_(&table), latency_(latency), where_(where), tag_base_(tag_base) {
    for (std::uint64_t i = 0; i < table.set_count(); ++i) block_size_ = std::max(block_size_, table.set(i).count);
    block_size_ = std::max<std::uint32_t>(block_size_, 1);
  }
  TableJobs(PredictionTable&&, Nanoseconds, runtime::JobResource, std::uint32_t = 0) = delete;  // keeps a pointer

  [[nodiscard]] const PredictionTable& table() const noexcept { return *table_; }
  [[nodiscard]] Nanoseconds latency() const noexcept { return latency_; }
  [[nodiscard]] runtime::JobResource where() const noexcept { return where_; }
  /// Results that came back after their pass ended.
  [[nodiscard]] std::uint64_t stale() const noexcept { return stale_; }
  [[nodiscard]] bool owns(std::uint32_t tag) const noexcept { return tag >= tag_base_ && tag - tag_base_ < kTagSpan; }

  /// The pass starts: one job per predicted set of the pass (see the header comment).
  template <JobExecutor E>
  void submit(E& e, const PassInfo& pass, std::uint32_t lead = 0) {
    pass_ = pass.index;
    if (pass_ >= table_->pass_count()) return;
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
      std::int64_t after = s.after;
      if (lead > 0 && static_cast<std::int64_t>(s.layer) - static_cast<std::int64_t>(lead) > after) {
        after = static_cast<std::int64_t>(s.layer) - static_cast<std::int64_t>(lead);
      }
      if (after >= 0) {
        job.ready = runtime::ReadyPoint::after_layer(static_cast<std::uint32_t>(after));
        job.input.source = runtime::InputSource::layer_boundary;
      } else if (pass.draft_len > 0 && s.draft_tokens > 0) {
        job.ready = runtime::ReadyPoint::after_draft(std::min<std::uint32_t>(s.draft_tokens, pass.draft_len));
        job.input.source = runtime::InputSource::draft_state;
      } else {
        job.ready = runtime::ReadyPoint::pass_start();
        job.input.source = runtime::InputSource::layer_boundary;
      }
      const std::uint32_t b = take_block(i);
      job.tag = tag_base_ + b;
      job.out = {blocks_[b].get(), block_size_};
      if (!e.submit_job(job)) free_blocks_.push_back(b);
    }
  }

  /// What a finished job predicted.
  struct Result {
    const PredictedSet* set = nullptr;             ///< null: the job's pass is over (stale)
    std::span<const runtime::ScoredExpert> ranked; ///< best first
  };
  /// Takes the result of job `tag` (owns(tag)) that wrote `count` candidates and frees its block.
  /// The candidates stay readable until the next submit() or take().
  Result take(std::uint32_t tag, std::uint32_t count) {
    const std::uint32_t b = tag - tag_base_;
    const std::uint64_t set = block_set_[b];
    free_blocks_.push_back(b);
    if (pass_ >= table_->pass_count() || set < table_->pass_begin(pass_) || set >= table_->pass_end(pass_)) {
      ++stale_;
      return {};
    }
    return {&table_->set(set), std::span<const runtime::ScoredExpert>(blocks_[b].get(), std::min(count, block_size_))};
  }

 private:
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

  const PredictionTable* table_;
  Nanoseconds latency_;
  runtime::JobResource where_;
  std::uint32_t tag_base_ = 0;
  std::uint32_t block_size_ = 1;                                  // candidates of the largest set
  std::vector<std::unique_ptr<runtime::ScoredExpert[]>> blocks_;  // job results, one block per job in flight
  std::vector<std::uint64_t> block_set_;                          // the set each block's job predicts
  std::vector<std::uint32_t> free_blocks_;
  std::uint64_t pass_ = 0;
  std::uint64_t stale_ = 0;
};

}  // namespace moesched::policy
