#pragma once
/// LayerDriver: the one implementation of a forward pass as the policies see it, driving any
/// backend (the simulator in virtual time, the host backend or the CUDA executor in real time).
///
///   moesched::sim::SimBackend backend(cost, workload.shape(), {.slots = 40});
///   moesched::runtime::LayerDriver driver(workload, backend, {.check_invariants = true});
///   moesched::policy::LayerLru lru;
///   if (auto s = driver.run(lru); !s) std::fprintf(stderr, "%s\n", driver.fault_text().c_str());
///   driver.metrics().tpot_ms.mean;
///
/// Per pass (ARCHITECTURE.md, "Layer driver", has the picture):
///   on_pass_begin; ready point pass_start
///   SD: draft steps 1..g, each a kernel; after step d the ready point after_draft(d)
///   per MoE layer l:
///     dense kernel (attention, projections, router); when it ends, the gate: the layer's needed
///       experts (the workload's union over the pass's tokens) are counted (cache hit, prefetch
///       hit, late, miss), pinned, and handed to on_gate
///     reordered inference: whenever the stream has room, the first needed expert that is
///       resident (in use order) is submitted; with none resident and the stream idle, the pass
///       stalls until a copy lands (the experts' outputs are summed, so order is free); after every
///       completion the still-absent needed experts go back to on_gate (memory may have freed)
///     each expert kernel's end: unpinned, on_expert_done; the layer's last: ready point
///       after_layer(l), on_layer_done
///   LM head kernel; its end ends the pass (TPOT, TTFT samples) and starts the next one
/// Completions arrive through the backend's wait() on the driver's thread, and every hook runs
/// there: that is the threading rule of moesched/runtime/executor.hpp. Landed copies call
/// on_copy_done; finished predictor jobs call on_job_done (JobPolicy).
///
/// `compute_ahead` bounds the kernels submitted and not finished: 1 chooses each kernel when the
/// previous one ends (the simulator's default, and what the golden numbers use); a real GPU
/// backend wants more, so that launch latency hides behind the running kernel. The choice rule is
/// the same; only when it is applied moves.
///
/// After the last LM head the driver stops calling hooks and drains the backend (queued copies and
/// jobs are cancelled, running ones finish); metrics count what finished by the last head.
/// Invariants (check_invariants; tests and Debug builds): no expert computed unless resident, a
/// copy lands only with all its bytes, slots held equal slots used and stay within the budget, no
/// work ends before it starts. A violation throws InvariantError (a bug in moesched or a backend);
/// a policy that breaks the contract ends the run with a Status and fault_text().

#include "moesched/core/config.hpp"
#include "moesched/core/error.hpp"
#include "moesched/core/expert_id.hpp"
#include "moesched/core/units.hpp"
#include "moesched/runtime/backend.hpp"
#include "moesched/runtime/executor.hpp"
#include "moesched/runtime/machine.hpp"
#include "moesched/runtime/metrics.hpp"
#include "moesched/runtime/status.hpp"
#include "moesched/runtime/timeline.hpp"
#include "moesched/workload/workload.hpp"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace moesched::runtime {

/// moesched or a backend broke one of its own invariants (a bug).
class InvariantError : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};
/// A policy broke the executor contract (thrown by front ends such as sim::replay from the
/// driver's fault status; the driver itself returns the Status).
class PolicyError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

#ifdef NDEBUG
inline constexpr bool kCheckInvariantsByDefault = false;
#else
inline constexpr bool kCheckInvariantsByDefault = true;
#endif

struct DriverOptions {
  bool check_invariants = kCheckInvariantsByDefault;
  Timeline* timeline = nullptr;        ///< record kernels, copies, stalls and jobs here when set
  std::uint64_t timeline_passes = 64;  ///< record only the first passes (files stay openable)
  std::uint32_t compute_ahead = 1;     ///< kernels submitted and not finished, 1..64
};

namespace driver_detail {
/// A list of at most `capacity` trivially copyable items, stored once: appending, erasing and
/// clearing never allocate and stay inline on the hot path (the per-layer lists of the driver).
template <class T>
class BoundedList {
 public:
  void set_capacity(std::size_t capacity) {
    buf_.reset(new T[capacity]{});
    n_ = 0;
  }
  MOESCHED_HOT void clear() noexcept { n_ = 0; }
  MOESCHED_HOT void push_back(T v) noexcept {  // callers keep within capacity (checked once per layer)
    buf_[n_++] = v;
  }
  MOESCHED_HOT void erase_at(std::size_t i) noexcept {
    for (std::size_t j = i + 1; j < n_; ++j) buf_[j - 1] = buf_[j];
    --n_;
  }
  [[nodiscard]] MOESCHED_HOT std::size_t size() const noexcept { return n_; }
  [[nodiscard]] MOESCHED_HOT bool empty() const noexcept { return n_ == 0; }
  [[nodiscard]] MOESCHED_HOT T operator[](std::size_t i) const noexcept { return buf_[i]; }
  [[nodiscard]] const T& front() const noexcept { return buf_[0]; }
  [[nodiscard]] const T* begin() const noexcept { return buf_.get(); }
  [[nodiscard]] const T* end() const noexcept { return buf_.get() + n_; }
  [[nodiscard]] std::span<const T> span() const noexcept { return {buf_.get(), n_}; }

 private:
  std::unique_ptr<T[]> buf_;
  std::size_t n_ = 0;
};
}  // namespace driver_detail

template <Backend B>
class LayerDriver {
 public:
  /// Throws ConfigError if the backend's slots cannot hold the most experts one layer of `w`
  /// needs at once, or if the shapes of `w` and the backend differ.
  LayerDriver(const Workload& w, B& backend, const DriverOptions& opt = {})
      : w_(&w), per_(w.shape().experts), b_(&backend), expert_bytes_(backend.expert_bytes()), m_(backend), opt_(opt) {
    if (w.shape().layers != backend.layers() || w.shape().experts != backend.experts_per_layer()) {
      throw ConfigError("", "workload", std::to_string(w.shape().layers) + " x " + std::to_string(w.shape().experts),
                        "differs from the backend's " + std::to_string(backend.layers()) + " MoE layers x " +
                            std::to_string(backend.experts_per_layer()) + " experts");
    }
    if (m_.capacity_slots() < w.max_layer_union()) {
      const Bytes e = backend.expert_bytes();
      throw ConfigError("", "cache_budget", to_text((e * m_.capacity_slots()).gigabytes()) + " GB",
                        "holds " + std::to_string(m_.capacity_slots()) + " experts, but one layer of this workload needs " +
                            std::to_string(w.max_layer_union()) + " at once (" +
                            to_text(static_cast<double>(w.max_layer_union()) * e.gigabytes()) + " GB)");
    }
    if (opt.compute_ahead < 1 || opt.compute_ahead > kMaxAhead) {
      throw ConfigError("", "compute_ahead", std::to_string(opt.compute_ahead), "must be between 1 and 64");
    }
    partial_.assign(std::size_t{w.layers()} * w.shape().experts, Bytes{0});
    // A layer's uses name distinct experts: the per-layer lists never outgrow `per_`, so the
    // hot path only appends within capacity (no allocation, no out-of-line resize).
    needed_.set_capacity(per_);
    unmet_.set_capacity(per_);
    remaining_.set_capacity(per_);
  }
  LayerDriver(Workload&&, B&, const DriverOptions& = {}) = delete;  // keeps pointers: no temporaries
  LayerDriver(const Workload&, B&&, const DriverOptions& = {}) = delete;

  /// Runs every pass of the workload under `pol` (once per driver). Returns ok, the first
  /// contract violation of the policy, or a backend failure; fault_text() says more.
  template <class P>
    requires Policy<P, Machine<B>>
  Status run(P& pol) {
    if (ran_) return Status::fail(StatusCode::bad_argument, "LayerDriver::run (a driver runs once)");
    ran_ = true;
    policy_name_ = std::string(P::name());
    RunMetrics& r = r_;
    r.policy = policy_name_;
    r.layers.assign(w_->layers(), LayerMetrics{});
    r.capacity_slots = m_.capacity_slots();
    r.budget = b_->expert_bytes() * m_.capacity_slots();
    r.requests = w_->request_count();
    r.activations = w_->activations();
    if (w_->pass_count() > 0) {
      begin_pass(pol, b_->now());
      if (faulted()) return finish(pol);
      fill();
    } else {
      cursor_ = Cursor::done;
    }
    Completion c;
    const bool checking = opt_.check_invariants;
    while (cursor_ != Cursor::done) {
      if (!b_->wait(c)) {
        if (!faulted()) unmet_fault();
        break;
      }
      if (checking) check_times(c);
      const bool gated = handle(pol, c);
      if (!gated) reask(pol);
      if (faulted()) break;  // a hook broke the contract (the first fault is the one reported)
      if (inflight_ < opt_.compute_ahead) fill();
      if (checking) check();
    }
    return finish(pol);
  }

  [[nodiscard]] const RunMetrics& metrics() const noexcept { return r_; }
  /// Why run() failed, naming the policy, the call and the expert; empty after success.
  [[nodiscard]] const std::string& fault_text() const noexcept { return fault_text_; }
  [[nodiscard]] Machine<B>& machine() noexcept { return m_; }

 private:
  static constexpr std::uint32_t kNone = std::numeric_limits<std::uint32_t>::max();
  static constexpr std::uint32_t kMaxAhead = 64;

  enum class Cursor : std::uint8_t { draft, dense, wait_gate, experts, head, wait_end, done };
  /// A submitted kernel (8 bytes: the ring is copied on every completion).
  struct InFlight {
    ExpertId id{};               ///< expert: which; dense: {layer, 0}
    std::uint16_t step = 0;      ///< draft step
    ComputeKind kind = ComputeKind::dense;
  };

  // ---- submission ----

  /// Submits kernels while the stream has room and the next one can go.
  MOESCHED_HOT void fill() {
    while (inflight_ < opt_.compute_ahead) {
      switch (cursor_) {
        case Cursor::draft: {
          const std::uint32_t step = draft_next_;
          if (!submit({ComputeKind::draft_step, 0, {}, 0, 0, step, pass_}, {{}, static_cast<std::uint16_t>(step), ComputeKind::draft_step})) return;
          if (step >= pass_->draft_len) {
            cursor_ = Cursor::dense;
          } else {
            ++draft_next_;
          }
          break;
        }
        case Cursor::dense:
          if (!submit({ComputeKind::dense, layer_, {}, 0, 0, 0, pass_}, {{static_cast<std::uint16_t>(layer_), 0}, 0, ComputeKind::dense})) return;
          cursor_ = Cursor::wait_gate;
          break;
        case Cursor::experts: {
          // Reordered inference: the first resident expert still to run.
          std::size_t pick = remaining_.size();
          for (std::size_t i = 0; i < remaining_.size(); ++i) {
            if (m_.state(flat(uses_[remaining_[i]].expert)).state == Residency::resident) {
              pick = i;
              break;
            }
          }
          if (pick < remaining_.size()) {
            end_stall();
            const std::uint32_t use = remaining_[pick];
            remaining_.erase_at(pick);
            const ExpertId id{static_cast<std::uint16_t>(layer_), uses_[use].expert};
            const std::uint32_t f = flat(id.expert);
            if (!submit({ComputeKind::expert, layer_, id, m_.state(f).slot, uses_[use].tokens, 0, pass_},
                        {id, 0, ComputeKind::expert})) {
              return;
            }
            break;
          }
          if (!remaining_.empty()) {
            if (inflight_ == 0 && !stalled_) {
              stalled_ = true;
              stall_since_ = last_compute_end_;
            }
            return;
          }
          // Every expert of the layer is submitted: the next layer's dense part (or the head) may go.
          if (layer_ + 1 < w_->layers()) {
            ++layer_;
            cursor_ = Cursor::dense;
          } else {
            cursor_ = Cursor::head;
          }
          break;
        }
        case Cursor::head:
          if (!submit({ComputeKind::head, 0, {}, 0, 0, 0, pass_}, {{}, 0, ComputeKind::head})) return;
          cursor_ = Cursor::wait_end;
          break;
        case Cursor::wait_gate:
        case Cursor::wait_end:
        case Cursor::done: return;
      }
    }
  }

  /// False when the backend refused (the run then ends with its status).
  MOESCHED_HOT bool submit(const ComputeOrder& k, InFlight item) {
    const Status s = b_->submit_compute(k);
    if (!s) {
      fail_with(s, "backend: ");
      cursor_ = Cursor::done;
      return false;
    }
    ring_[(ring_head_ + inflight_) % kMaxAhead] = item;
    ++inflight_;
    return true;
  }

  MOESCHED_HOT void end_stall() {
    if (stalled_) [[unlikely]] close_stall();
  }
  void close_stall() {
    stalled_ = false;
    const Nanoseconds now = b_->now();
    const Nanoseconds d = now > stall_since_ ? now - stall_since_ : Nanoseconds{0};
    r_.layers[layer_].stall += d;
    r_.stall += d;
    if (pass_->phase != StepPhase::prefill) r_.decode_stall += d;
    if (recording_) opt_.timeline->stall(stall_since_, d, layer_);
  }

  // ---- completions ----

  /// Handles one completion; returns true if it ran a gate.
  template <class P>
  MOESCHED_HOT bool handle(P& pol, const Completion& c) {
    switch (c.kind) {
      case CompletionKind::chunk: on_chunk(pol, c); return false;
      case CompletionKind::job: on_job(pol, c); return false;
      case CompletionKind::compute: break;
    }
    if (inflight_ == 0) throw InvariantError("the backend reported a kernel that was not submitted");
    const InFlight k = ring_[ring_head_];
    ring_head_ = (ring_head_ + 1) % kMaxAhead;
    --inflight_;
    last_compute_end_ = c.end;
    r_.compute_busy += c.end - c.start;
    switch (k.kind) {
      case ComputeKind::draft_step:
        if (recording_) opt_.timeline->compute(c.start, c.end - c.start, TimelineKind::draft, k.step, 0);
        keep(m_.reach(ReadyPoint::after_draft(k.step)));
        return false;
      case ComputeKind::dense:
        if (recording_) opt_.timeline->compute(c.start, c.end - c.start, TimelineKind::dense, k.id.layer, 0);
        gate(pol, k.id.layer);
        return true;
      case ComputeKind::expert: {
        const ExpertId id = k.id;
        if (recording_) opt_.timeline->compute(c.start, c.end - c.start, TimelineKind::expert, id.layer, id.expert);
        auto& s = m_.state(id.flat(per_));
        if (opt_.check_invariants && s.state != Residency::resident) {
          throw InvariantError("computed " + expert_text(id) + " while it was not resident");
        }
        if (s.prefetched && !s.used_since_copy) ++r_.prefetch_used;
        s.used_since_copy = true;
        s.pins = 0;
        pol.on_expert_done(m_, id);
        if (--experts_left_ == 0 && remaining_.empty()) layer_done(pol, id.layer);
        return false;
      }
      case ComputeKind::head:
        if (recording_) opt_.timeline->compute(c.start, c.end - c.start, TimelineKind::head, 0, 0);
        end_pass(pol, c.end);
        return false;
    }
    return false;
  }

  template <class P>
  MOESCHED_HOT void on_chunk(P& pol, const Completion& c) {
    const std::uint32_t f = flat_of(c.expert);
    if (opt_.check_invariants && m_.state(f).state != Residency::queued) {
      throw InvariantError("the backend moved bytes of " + expert_text(c.expert) + ", which has no copy in flight");
    }
    r_.bytes_copied += c.bytes;
    r_.link_busy += c.end - c.start;
    ++r_.chunks_copied;
    partial_[f] += c.bytes;
    if (recording_) opt_.timeline->copy(c.start, c.end - c.start, c.expert, c.chunk, c.chunks, c.high);
    if (!c.landed) return;
    if (partial_[f] != expert_bytes_) {
      throw InvariantError("the backend reported " + expert_text(c.expert) + " landed after " +
                           std::to_string(partial_[f].count) + " of its " + std::to_string(b_->expert_bytes().count) +
                           " bytes");
    }
    partial_[f] = Bytes{0};
    ++r_.experts_copied;
    m_.land(f);
    pol.on_copy_done(m_, c.expert);
  }

  template <class P>
  void on_job(P& pol, const Completion& c) {
    if (c.where == JobResource::cpu_worker) {
      ++r_.cpu_jobs;
      r_.cpu_busy += c.end - c.start;
      r_.cpu_wait += c.start > c.queued ? c.start - c.queued : Nanoseconds{0};
      if (recording_) opt_.timeline->cpu(c.start, c.end - c.start, c.worker, c.tag);
    } else {
      ++r_.gpu_jobs;
      r_.gpu_job_busy += c.end - c.start;
      if (recording_) opt_.timeline->gpu_job(c.start, c.end - c.start, c.tag);
    }
    if constexpr (JobPolicy<P, Machine<B>>) {
      pol.on_job_done(m_, c.tag, c.count);
    } else {
      throw InvariantError("a predictor job ended, but policy '" + policy_name_ + "' takes no job results");
    }
  }

  template <class P>
  void gate(P& pol, std::uint32_t layer) {
    uses_ = w_->uses(p_, layer);
    const auto n = static_cast<std::uint32_t>(uses_.size());
    if (n > per_) [[unlikely]] throw InvariantError("a layer of the workload uses more experts than the layer has");
    needed_.clear();
    remaining_.clear();
    LayerMetrics& lm = r_.layers[layer];
    for (std::uint32_t i = 0; i < n; ++i) {
      const ExpertId id{static_cast<std::uint16_t>(layer), uses_[i].expert};
      needed_.push_back(id);
      remaining_.push_back(i);
      auto& s = m_.state(flat(id.expert));
      ++lm.uses;
      switch (s.state) {
        case Residency::resident:
          if (!s.used_since_copy && s.prefetched) ++lm.prefetch_hits; else ++lm.cache_hits;
          break;
        case Residency::queued:
        case Residency::copying:
          if (s.prefetched) ++lm.late; else ++lm.misses;
          break;
        case Residency::absent: ++lm.misses; break;
      }
      // Pinned from the gate until its FFN ran, whether it is resident yet or not (an expert
      // appears once per layer).
      s.pins = 1;
    }
    experts_left_ = static_cast<std::uint32_t>(uses_.size());
    cursor_ = Cursor::experts;
    pol.on_gate(m_, layer, needed_.span());
    if (opt_.check_invariants) check();
    if (experts_left_ == 0) layer_done(pol, layer);
  }

  /// The still-absent needed experts of the gated layer go back to the policy.
  template <class P>
  MOESCHED_HOT void reask(P& pol) {
    if (cursor_ != Cursor::experts || remaining_.empty()) return;
    unmet_.clear();
    for (std::uint32_t i : remaining_) {
      if (m_.state(flat(uses_[i].expert)).state == Residency::absent) {
        unmet_.push_back({static_cast<std::uint16_t>(layer_), uses_[i].expert});
      }
    }
    if (!unmet_.empty()) pol.on_gate(m_, layer_, unmet_.span());
  }

  template <class P>
  void layer_done(P& pol, std::uint32_t layer) {
    keep(m_.reach(ReadyPoint::after_layer(layer)));
    pol.on_layer_done(m_, layer);
  }

  template <class P>
  void begin_pass(P& pol, Nanoseconds start) {
    pass_ = &w_->pass(p_);
    pass_start_ = start;
    if (pass_->batch_index != current_batch_) {
      current_batch_ = pass_->batch_index;
      batch_start_ = start;
    }
    recording_ = opt_.timeline != nullptr && p_ < opt_.timeline_passes;
    m_.begin_pass(pass_->draft_len);
    keep(m_.reach(ReadyPoint::pass_start()));
    layer_ = 0;
    uses_ = {};
    remaining_.clear();
    experts_left_ = 0;
    draft_next_ = 1;
    cursor_ = pass_->draft_len > 0 ? Cursor::draft : Cursor::dense;
    pol.on_pass_begin(m_, PassInfo{p_, pass_->phase, pass_->tokens, pass_->member_count, pass_->draft_len});
  }

  template <class P>
  void end_pass(P& pol, Nanoseconds end) {
    const Nanoseconds d = end - pass_start_;
    ++r_.passes;
    const double ms = to_ms(d);
    if (pass_->phase == StepPhase::prefill) {
      r_.prefill_time += d;
      const double since = to_ms(end - batch_start_);
      for (const PassMember& mem : w_->members(*pass_)) first_token_ms_[mem.request] = since;
    } else {
      r_.decode_time += d;
      ++r_.decode_passes;
      for (const PassMember& mem : w_->members(*pass_)) {
        if (mem.emitted == 0) continue;
        tpot_.emplace_back(ms / mem.emitted, mem.emitted);
        r_.decode_tokens += mem.emitted;
      }
    }
    end_time_ = end;
    if (++p_ < w_->pass_count()) {
      begin_pass(pol, end);
    } else {
      cursor_ = Cursor::done;
    }
  }

  // ---- end of the run ----

  template <class P>
  Status finish(P&) {
    (void)faulted();
    const Status drained = b_->drain();
    if (!drained && fault_.ok()) fail_with(drained, "backend: ");
    RunMetrics& r = r_;
    r.total_time = end_time_;
    r.peak_expert_memory = b_->expert_bytes() * m_.counters().peak_slots;
    r.prefetch_copies = m_.counters().prefetch_copies;
    r.evictions = m_.counters().evictions;
    r.cancelled = m_.counters().cancelled;
    r.wasted_bytes = m_.counters().wasted_bytes;
    for (const auto& lm : r.layers) {
      r.uses += lm.uses;
      r.cache_hits += lm.cache_hits;
      r.prefetch_hits += lm.prefetch_hits;
      r.late += lm.late;
      r.misses += lm.misses;
    }
    r.link_busy_share = r.total_time.count() == 0 ? 0.0
                                                 : static_cast<double>(r.link_busy.count()) /
                                                       static_cast<double>(r.total_time.count());
    r.tokens_per_s = r.decode_time.count() == 0 ? 0.0
                                                : static_cast<double>(r.decode_tokens) /
                                                      (static_cast<double>(r.decode_time.count()) * 1e-9);
    std::vector<std::pair<double, std::uint32_t>> ttft;
    for (const auto& [req, ms] : first_token_ms_) {
      (void)req;
      ttft.emplace_back(ms, 1U);
    }
    r.tpot_ms = summarize(tpot_);
    r.ttft_ms = summarize(ttft);
    return fault_;
  }

  // ---- faults and checks ----

  /// True once the run has a fault (the machine's contract violations are folded in here).
  MOESCHED_HOT bool faulted() {
    if (fault_.ok() && !m_.fault().ok()) [[unlikely]] fold_machine_fault();
    return !fault_.ok();
  }
  [[gnu::noinline]] void fold_machine_fault() { fail_with(m_.fault(), ""); }
  void keep(const Status& s) {
    if (!s) fail_with(s, "");
  }
  void fail_with(const Status& s, const char* prefix) {
    if (!fault_.ok()) return;
    fault_ = s;
    fault_text_ = "policy '" + policy_name_ + "': " + prefix + s.describe();
  }
  void unmet_fault() {
    unmet_.clear();
    for (std::uint32_t i : remaining_) {
      if (m_.state(flat(uses_[i].expert)).state == Residency::absent) {
        unmet_.push_back({static_cast<std::uint16_t>(layer_), uses_[i].expert});
      }
    }
    fault_ = unmet_.empty() ? Status::fail(StatusCode::unmet_need, "wait")
                            : Status::fail(StatusCode::unmet_need, "wait", unmet_.front());
    fault_text_ = "policy '" + policy_name_ + "' left " + std::to_string(unmet_.size()) + " needed expert(s) of layer " +
                  std::to_string(layer_) + " of pass " + std::to_string(p_) + " absent (first: " +
                  (unmet_.empty() ? std::string("?") : expert_text(unmet_.front())) + ") with nothing in flight";
  }
  void check() const {
    if (const char* what = m_.check_invariants(); what != nullptr) throw InvariantError(what);
  }
  void check_times(const Completion& c) {
    if (c.end < c.start) throw InvariantError("the backend reported work that ended before it started");
  }

  [[nodiscard]] MOESCHED_HOT std::uint32_t flat(std::uint16_t expert) const noexcept { return layer_ * per_ + expert; }
  [[nodiscard]] MOESCHED_HOT std::uint32_t flat_of(ExpertId id) const noexcept { return id.flat(per_); }

  const Workload* w_;
  std::uint32_t per_;  // experts per layer
  B* b_;
  Bytes expert_bytes_;
  Machine<B> m_;
  DriverOptions opt_;
  RunMetrics r_;
  bool ran_ = false;
  std::string policy_name_;
  Status fault_{};
  std::string fault_text_;

  Cursor cursor_ = Cursor::done;
  std::uint64_t p_ = 0;
  const Pass* pass_ = nullptr;
  std::uint32_t layer_ = 0;       // layer being gated or submitted
  std::uint32_t draft_next_ = 1;
  std::span<const ExpertUse> uses_;
  driver_detail::BoundedList<ExpertId> needed_;
  driver_detail::BoundedList<ExpertId> unmet_;
  driver_detail::BoundedList<std::uint32_t> remaining_;  // use indices of the gated layer not yet submitted
  std::uint32_t experts_left_ = 0;        // experts of the gated layer not yet finished
  InFlight ring_[kMaxAhead]{};
  std::uint32_t ring_head_ = 0;
  std::uint32_t inflight_ = 0;
  Nanoseconds last_compute_end_{};
  bool stalled_ = false;
  Nanoseconds stall_since_{};
  Nanoseconds pass_start_{};
  Nanoseconds batch_start_{};
  std::uint64_t current_batch_ = std::numeric_limits<std::uint64_t>::max();
  bool recording_ = false;
  Nanoseconds end_time_{};
  std::vector<Bytes> partial_;  // per flat id: bytes landed of the copy in flight
  std::vector<std::pair<double, std::uint32_t>> tpot_;
  std::unordered_map<std::uint32_t, double> first_token_ms_;
};

}  // namespace moesched::runtime
