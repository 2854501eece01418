#pragma once
/// CostModel: how long each piece of work takes on the simulated GPU and link.
///
///   moesched::sim::CostModel cost(model, gpu, {.chunks = 3});
///   cost.expert_time(4);          // FFN of one expert over 4 tokens
///   cost.dense_time(0, pass);     // attention, projections, router, shared experts of MoE layer 0
///   cost.chunk_times();           // the expert's copy, one time per chunk on the link
///
/// All times are first-order roofline estimates from the presets (ComputeSpec::matmul_time: the
/// larger of the FLOP time and the weight-streaming time, plus a fixed cost per kernel) and the
/// measured host-to-device curve (TransferCurve::time per copy), unless CostOptions::measured
/// holds a GPU profile's fitted times (profile/profile.hpp; moesched-profile measures them, `--profile`
/// loads them): then each item below takes its fitted time instead, and copies the profile's
/// measured curve (gpu().h2d is replaced by it). The rules:
/// - Dense part of MoE layer m: every decoder layer after MoE layer m-1 up to and including m's own
///   decoder layer (so leading dense layers and the dense layers between MoE layers are counted
///   once): one weight-streaming kernel over their non-expert weights (attention projections,
///   router, shared experts, dense FFNs) for the pass's tokens, plus one attention kernel reading
///   the KV cache of every member (4 x heads x head_dim FLOPs per query-key pair).
/// - LM head at the end of the pass (decoder layers after the last MoE layer too); logits are
///   computed for every token of the pass.
/// - Expert FFN: three matrix products over the tokens routed to it (expert_ffn_time).
/// - Router GEMV (router_time): hidden x experts in bf16, one kernel; what a gate-based predictor
///   job costs on the compute stream.
/// - Draft (SD): draft_len forwards of the draft model over one token per member. The default
///   draft is the target's dense "upcycling source" (non-expert weights plus one routed-expert-sized
///   FFN per MoE layer: Mistral-7B for Mixtral-8x7B); `draft_token_time` overrides its step time.
/// - Copies: an expert moves as `chunks` copies (1 = whole, 3 = one per matrix, n = equal parts),
///   each timed by the host-to-device curve. Device-to-host traffic running a share `d2h_share` of
///   the time slows them: with one copy engine the directions share it (time / (1 - share)); with
///   two or more they run at once and host-to-device gets what the bidirectional total leaves
///   (time x (1 - share + share x slowdown)).
/// - Measured: expert FFN = the fit at its tokens; the dense part of MoE layer m = the fit of one
///   MoE decoder layer at the pass's (tokens, KV tokens, query-key pairs), scaled by m's non-expert
///   bytes over the last MoE layer's (leading dense layers count in proportion to their weights);
///   head = its fit at the tokens (plus layers after the last MoE layer, scaled alike); a draft
///   step = its fit at the sequences drafting; router = its fit.
/// - Kernels beside copies (compute_slowdown_under_copy()): the profile's `gemm_slowdown_under_copy`
///   (expert FFN time with a host-to-device copy running / alone; 1.32 for the mix model on an
///   H100); SimBackend stretches the part of a kernel that overlaps the link's busy time by it.
///   1 (no interference) for roofline costs; FixedCosts sets it for tests.
/// - Host time (host()): what the executor's driver thread spends submitting each kind of order,
///   an idle stream's delay from a submission to its first kernel, the delay from an item's end
///   to the driver receiving its completion, the driver's own work per completion (its
///   bookkeeping and the policy's hooks), and an idle link's delay from a copy's submission to its
///   first chunk (SimBackend charges them all). Zero with roofline costs (an
///   ideal host); the profile's measured values when it has them; FixedCosts::host when fixed.

#include "moesched/core/config.hpp"
#include "moesched/core/error.hpp"
#include "moesched/core/hardware.hpp"
#include "moesched/core/model.hpp"
#include "moesched/core/sizing.hpp"
#include "moesched/core/units.hpp"
#include "moesched/profile/profile.hpp"
#include "moesched/workload/workload.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

namespace moesched::sim {

struct CostOptions {
  std::uint32_t chunks = 1;        ///< copies per expert: 1, 3 (per matrix) or 2..64 equal parts
  double d2h_share = 0.0;          ///< share of time device-to-host traffic runs, in [0, 1)
  std::optional<Nanoseconds> draft_token_time{};///< override the default draft's step time
  std::optional<Bytes> draft_bytes{};           ///< override the default draft's size
  /// Measured times of this GPU and model (fit::fit_profile of a moesched-profile file), or null.
  std::shared_ptr<const profile::MeasuredCosts> measured{};
};

/// The executor's host-side time the simulator charges (profile::HostCosts, in whole ns).
struct HostTimes {
  Nanoseconds submit_dense{};   ///< the driver thread's time to submit a dense order
  Nanoseconds submit_expert{};  ///< ... an expert order
  Nanoseconds submit_head{};    ///< ... the LM head
  Nanoseconds submit_draft{};   ///< ... one draft step
  Nanoseconds launch{};         ///< an idle stream: submission begins -> its first kernel starts
  Nanoseconds notify{};         ///< an item ends -> the driver receives its completion
  Nanoseconds handle{};         ///< the driver thread's own work per completion it receives
  Nanoseconds copy_launch{};    ///< an idle link: submit_copy -> the copy's first chunk starts
  [[nodiscard]] bool any() const noexcept {
    return submit_dense.count() > 0 || submit_expert.count() > 0 || submit_head.count() > 0 ||
           submit_draft.count() > 0 || launch.count() > 0 || notify.count() > 0 || handle.count() > 0 ||
           copy_launch.count() > 0;
  }
};

/// Explicit per-item times, for hand-computed scenarios and "what if a layer took X" studies.
struct FixedCosts {
  Nanoseconds dense{};        ///< dense part of every MoE layer, whatever the pass
  Nanoseconds expert{};       ///< one expert's FFN, whatever its token count
  Nanoseconds expert_per_token{};  ///< added per token routed to the expert
  Nanoseconds head{};         ///< end of every pass
  Nanoseconds draft_step{};   ///< one draft step (SD)
  Nanoseconds router{};       ///< one router GEMV (a gate predictor on the stream)
  std::vector<Nanoseconds> chunk_times{};///< link time of each chunk of one expert copy
  Bytes expert_bytes{};
  HostTimes host{};           ///< the executor's host time (zero: an ideal host)
  double compute_slowdown_under_copy = 1.0;  ///< kernel time while the link is busy / alone (>= 1)
};

class CostModel {
 public:
  /// A cost model with the given times (no presets involved).
  [[nodiscard]] static CostModel fixed(FixedCosts f) {
    if (f.chunk_times.empty() || f.expert_bytes.count == 0) {
      throw ConfigError("", "chunk_times", "[]", "a fixed cost model needs chunk times and expert bytes");
    }
    CostModel c;
    c.fixed_ = true;
    c.fixed_costs_ = f;
    const Bytes each{f.expert_bytes.count / f.chunk_times.size()};
    for (std::size_t i = 0; i < f.chunk_times.size(); ++i) {
      c.chunk_bytes_.push_back(i + 1 < f.chunk_times.size() ? each
                                                            : f.expert_bytes - each * (f.chunk_times.size() - 1));
      c.chunk_times_.push_back(f.chunk_times[i]);
      c.copy_time_ += f.chunk_times[i];
    }
    c.min_copy_time_ = c.copy_time_;
    c.host_ = f.host;
    c.compute_slowdown_ = checked_slowdown(f.compute_slowdown_under_copy, "compute_slowdown_under_copy");
    return c;
  }

  CostModel(const ModelDesc& model, const HardwareDesc& gpu, const CostOptions& opt = {})
      : model_(model), gpu_(gpu), opt_(opt), measured_(opt.measured.get()) {
    if (measured_ != nullptr) {
      gpu_.h2d = measured_->copy_h2d;
      const profile::HostCosts& h = measured_->host;
      host_ = {ceil_ns(h.submit_dense_ns), ceil_ns(h.submit_expert_ns), ceil_ns(h.submit_head_ns),
               ceil_ns(h.submit_draft_ns), ceil_ns(h.launch_ns), ceil_ns(h.notify_ns), ceil_ns(h.handle_ns),
               ceil_ns(h.copy_launch_ns)};
      compute_slowdown_ = checked_slowdown(measured_->gemm_slowdown_under_copy, "gemm_slowdown_under_copy");
    }
    if (opt.chunks < 1 || opt.chunks > 64) {
      throw ConfigError("", "chunks", std::to_string(opt.chunks), "must be between 1 and 64");
    }
    if (!(opt.d2h_share >= 0.0 && opt.d2h_share < 1.0)) {
      throw ConfigError("", "d2h_share", to_text(opt.d2h_share), "must be in [0, 1)");
    }
    const ModelShape& s = model.shape;
    const std::uint32_t moe = s.moe_layers();
    // Non-expert weights and decoder-layer counts attributed to each MoE layer's dense part.
    dense_bytes_.assign(moe, Bytes{0});
    dense_params_.assign(moe, 0);
    decoder_layers_of_.assign(moe, 0);
    std::uint32_t m = 0;
    for (std::uint32_t l = 0; l < s.decoder_layers; ++l) {
      const ParamTally t = s.layer_non_expert_tally(model.dtype, l);
      if (m < moe) {
        dense_bytes_[m] += t.bytes;
        dense_params_[m] += t.params;
        decoder_layers_of_[m] += 1;
        if (s.is_moe_layer(l)) ++m;
      } else {
        tail_bytes_ += t.bytes;
        tail_params_ += t.params;
        tail_layers_ += 1;
      }
    }
    const auto& a = s.attention;
    head_dim_sum_ = a.kind == AttentionKind::gqa
                        ? std::uint64_t{a.heads} * a.head_dim
                        : std::uint64_t{a.heads} * (a.qk_nope_head_dim + a.qk_rope_head_dim);
    kv_bytes_per_token_layer_ = Bytes{s.kv_cache_bytes_per_token().count / s.decoder_layers};
    for (std::uint32_t t = 0; t < kExpertTable; ++t) expert_table_[t] = roofline_or_measured_expert(t + 1);
    if (measured_ != nullptr && moe > 0 && dense_bytes_[moe - 1].count > 0) {
      dense_scale_.resize(moe);
      const auto ref = static_cast<double>(dense_bytes_[moe - 1].count);
      for (std::uint32_t i = 0; i < moe; ++i) dense_scale_[i] = static_cast<double>(dense_bytes_[i].count) / ref;
      tail_scale_ = static_cast<double>(tail_bytes_.count) / ref;
    } else if (measured_ != nullptr) {
      dense_scale_.assign(moe, 1.0);
    }
    // Layers whose dense parts are the same work (parameters, bytes, decoder layers) share a twin.
    dense_twin_.resize(moe);
    for (std::uint32_t i = 0; i < moe; ++i) {
      dense_twin_[i] = i;
      for (std::uint32_t j = 0; j < i; ++j) {
        if (dense_params_[j] == dense_params_[i] && dense_bytes_[j] == dense_bytes_[i] &&
            decoder_layers_of_[j] == decoder_layers_of_[i]) {
          dense_twin_[i] = j;
          break;
        }
      }
    }

    // Copy chunks.
    const Bytes total = model.expert_bytes();
    if (opt.chunks == 3) {
      for (Bytes b : s.expert_matrices(model.dtype).bytes) chunk_bytes_.push_back(b);
    } else {
      const Bytes each{(total.count + opt.chunks - 1) / opt.chunks};
      Bytes left = total;
      while (left.count > 0) {
        const Bytes piece = std::min(each, left);
        chunk_bytes_.push_back(piece);
        left -= piece;
      }
    }
    const double slow = copy_slowdown();
    for (Bytes b : chunk_bytes_) {
      const Nanoseconds t = gpu_.h2d.time(b);
      chunk_times_.push_back(ceil_ns(static_cast<double>(t.count()) * slow));
      copy_time_ += chunk_times_.back();
    }
    // The fastest any supported chunking moves one expert, with no device-to-host traffic: the
    // copy cost the lower bound may assume.
    min_copy_time_ = gpu_.h2d.time(total);
    Nanoseconds per_matrix{0};
    for (Bytes b : s.expert_matrices(model.dtype).bytes) per_matrix += gpu_.h2d.time(b);
    min_copy_time_ = std::min(min_copy_time_, per_matrix);
    for (std::uint32_t n = 2; n <= 64; ++n) {
      min_copy_time_ = std::min(min_copy_time_, moesched::expert_copy_time(model, gpu_, n));
    }
    draft_bytes_ = opt.draft_bytes.value_or(model.non_expert_bytes() + model.expert_bytes() * moe);
  }

  [[nodiscard]] const ModelDesc& model() const noexcept { return model_; }
  [[nodiscard]] const HardwareDesc& gpu() const noexcept { return gpu_; }
  [[nodiscard]] const CostOptions& options() const noexcept { return opt_; }
  /// The measured profile the times come from, or null (roofline estimates).
  [[nodiscard]] const profile::MeasuredCosts* measured() const noexcept { return measured_; }

  /// FFN time of one routed expert over `tokens` tokens (tokens >= 1).
  [[nodiscard]] Nanoseconds expert_time(std::uint32_t tokens) const noexcept {
    if (fixed_) return fixed_costs_.expert + fixed_costs_.expert_per_token * tokens;
    return tokens - 1 < kExpertTable ? expert_table_[tokens - 1] : roofline_or_measured_expert(tokens);
  }
  /// Dense part of MoE layer `layer` in a pass (see the header comment).
  [[nodiscard]] Nanoseconds dense_time(std::uint32_t layer, const Pass& p) const noexcept {
    if (fixed_) return fixed_costs_.dense;
    if (measured_ != nullptr) return measured_dense(dense_scale_[layer], p);
    return dense_kernel(dense_params_[layer], dense_bytes_[layer], decoder_layers_of_[layer], p.tokens,
                        p.kv_tokens, p.attention_pairs);
  }
  /// The lowest MoE layer whose dense part is the same work as `layer`'s: dense_time(layer, p) ==
  /// dense_time(dense_twin(layer), p) for every pass (so a caller may compute it once per twin).
  [[nodiscard]] std::uint32_t dense_twin(std::uint32_t layer) const noexcept {
    return layer < dense_twin_.size() ? dense_twin_[layer] : 0;
  }
  /// LM head (and decoder layers after the last MoE layer) at the end of a pass.
  [[nodiscard]] Nanoseconds head_time(const Pass& p) const noexcept {
    if (fixed_) return fixed_costs_.head;
    if (measured_ != nullptr) {
      return measured_->head.at(p.tokens) + (tail_layers_ == 0 ? Nanoseconds{0} : measured_dense(tail_scale_, p));
    }
    return head_kernel(p.tokens) + (tail_layers_ == 0 ? Nanoseconds{0}
                                                      : dense_kernel(tail_params_, tail_bytes_, tail_layers_,
                                                                     p.tokens, p.kv_tokens, p.attention_pairs));
  }
  /// Drafting before an SD verification pass: draft_len steps over one token per member.
  [[nodiscard]] Nanoseconds draft_time(const Pass& p) const noexcept {
    if (p.draft_len == 0) return Nanoseconds{0};
    if (fixed_) return fixed_costs_.draft_step * p.draft_len;
    if (opt_.draft_token_time) return *opt_.draft_token_time * p.draft_len;
    const std::uint32_t seqs = p.member_count;
    if (measured_ != nullptr) return measured_->draft_step.at(seqs) * p.draft_len;
    Nanoseconds step{0};
    for (std::uint32_t m = 0; m < dense_params_.size(); ++m) {
      step += dense_kernel(dense_params_[m], dense_bytes_[m], decoder_layers_of_[m], seqs, p.kv_tokens,
                           p.kv_tokens);
      step += expert_time(seqs);
    }
    step += head_kernel(seqs);
    if (tail_layers_ != 0) step += dense_kernel(tail_params_, tail_bytes_, tail_layers_, seqs, p.kv_tokens, p.kv_tokens);
    return step * p.draft_len;
  }
  /// One router GEMV (hidden x experts, bf16) over `tokens` tokens: what a gate-based predictor
  /// (the skip gate, SP-MoE's draft gate) costs on the compute stream.
  [[nodiscard]] Nanoseconds router_time(std::uint32_t tokens) const noexcept {
    if (fixed_) return fixed_costs_.router;
    if (measured_ != nullptr) return measured_->router.at(tokens);
    const std::uint64_t he = std::uint64_t{model_.shape.hidden} * model_.shape.experts_per_layer;
    return gpu_.compute.matmul_time(2.0 * static_cast<double>(he) * tokens, Bytes{he * 2}, ComputeClass::bf16);
  }
  /// The executor's host time (see the header comment); all zero unless measured or fixed.
  [[nodiscard]] const HostTimes& host() const noexcept { return host_; }
  /// How much slower a kernel runs while a host-to-device copy runs (1: no interference).
  [[nodiscard]] double compute_slowdown_under_copy() const noexcept { return compute_slowdown_; }
  /// Resident bytes of the draft model.
  [[nodiscard]] Bytes draft_bytes() const noexcept { return draft_bytes_; }

  [[nodiscard]] std::span<const Bytes> chunk_bytes() const noexcept { return chunk_bytes_; }
  [[nodiscard]] std::span<const Nanoseconds> chunk_times() const noexcept { return chunk_times_; }
  /// Link time of one whole expert copy as the simulator runs it.
  [[nodiscard]] Nanoseconds expert_copy_time() const noexcept { return copy_time_; }
  /// Least link time any supported chunking needs for one expert (for the lower bound).
  [[nodiscard]] Nanoseconds min_expert_copy_time() const noexcept { return min_copy_time_; }
  [[nodiscard]] Bytes expert_bytes() const noexcept {
    return fixed_ ? fixed_costs_.expert_bytes : model_.expert_bytes();
  }

 private:
  CostModel() = default;

  static constexpr std::uint32_t kExpertTable = 256;

  /// A measured ratio below 1 (a kernel faster beside a copy) is noise: it counts as 1.
  static double checked_slowdown(double v, const char* field) {
    if (!(v > 0.0 && v <= 16.0)) throw ConfigError("", field, to_text(v), "must be in (0, 16]");
    return std::max(1.0, v);
  }

  [[nodiscard]] double copy_slowdown() const noexcept {
    const double f = opt_.d2h_share;
    if (f <= 0.0) return 1.0;
    if (gpu_.copy_engines < 2) return 1.0 / (1.0 - f);
    if (!gpu_.bidirectional_total) return 1.0;
    const double h = gpu_.h2d.asymptotic_bandwidth().value;
    const double d = gpu_.d2h.knots().empty() ? h : gpu_.d2h.asymptotic_bandwidth().value;
    const double r = std::max(1.0, (h + d) / gpu_.bidirectional_total->value);
    return 1.0 - f + f * r;
  }

  [[nodiscard]] Nanoseconds roofline_or_measured_expert(std::uint32_t tokens) const noexcept {
    return measured_ != nullptr ? measured_->expert.at(tokens) : expert_ffn_time(model_, gpu_, tokens);
  }
  [[nodiscard]] Nanoseconds measured_dense(double scale, const Pass& p) const noexcept {
    const Nanoseconds one = measured_->dense.at(p.tokens, static_cast<double>(p.kv_tokens),
                                                static_cast<double>(p.attention_pairs));
    return ceil_ns(static_cast<double>(one.count()) * scale);
  }

  [[nodiscard]] Nanoseconds dense_kernel(std::uint64_t params, Bytes bytes, std::uint32_t decoder_layers,
                                         std::uint32_t tokens, std::uint64_t kv_tokens,
                                         std::uint64_t pairs) const noexcept {
    const ComputeClass c = dtype_info(model_.dtype).compute;
    const double weight_flops = 2.0 * static_cast<double>(params) * tokens;
    const double attn_flops = 4.0 * static_cast<double>(head_dim_sum_) * static_cast<double>(pairs) * decoder_layers;
    const Bytes kv{kv_bytes_per_token_layer_.count * kv_tokens * decoder_layers};
    return gpu_.compute.matmul_time(weight_flops, bytes, c) +
           gpu_.compute.matmul_time(attn_flops, kv, ComputeClass::bf16);
  }
  [[nodiscard]] Nanoseconds head_kernel(std::uint32_t tokens) const noexcept {
    const std::uint64_t hv = std::uint64_t{model_.shape.vocab} * model_.shape.hidden;
    return gpu_.compute.matmul_time(2.0 * static_cast<double>(hv) * tokens, Bytes{hv * 2}, ComputeClass::bf16);
  }

  bool fixed_ = false;
  FixedCosts fixed_costs_;
  ModelDesc model_;
  HardwareDesc gpu_;
  CostOptions opt_;
  const profile::MeasuredCosts* measured_ = nullptr;  ///< owned by opt_.measured
  std::vector<double> dense_scale_;                  ///< measured: MoE layer m's dense bytes / the last's
  double tail_scale_ = 0.0;
  std::vector<Bytes> dense_bytes_;
  std::vector<std::uint64_t> dense_params_;
  std::vector<std::uint32_t> decoder_layers_of_;
  std::vector<std::uint32_t> dense_twin_;          ///< per MoE layer (empty for fixed costs: all alike)
  Bytes tail_bytes_{};
  std::uint64_t tail_params_ = 0;
  std::uint32_t tail_layers_ = 0;
  std::uint64_t head_dim_sum_ = 0;
  Bytes kv_bytes_per_token_layer_{};
  Nanoseconds expert_table_[kExpertTable]{};
  std::vector<Bytes> chunk_bytes_;
  std::vector<Nanoseconds> chunk_times_;
  Nanoseconds copy_time_{0};
  Nanoseconds min_copy_time_{0};
  Bytes draft_bytes_{};
  HostTimes host_{};
  double compute_slowdown_ = 1.0;
};

}  // namespace moesched::sim
