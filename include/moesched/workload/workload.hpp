#pragma once
/// Workload: the forward passes a run executes, built from a routing trace. Neutral ground:
/// policies (the oracle), the layer driver and both executors read it; it depends on core only.
///
///   auto w = moesched::build_workload(trace, {trace.meta().model.moe_layers,
///                                                  trace.meta().model.experts_per_layer,
///                                                  trace.meta().model.top_k},
///                                         {.batch = 2, .sd = moesched::SdReplay{.gamma = 4,
///                                                                      .acceptance = 0.7}});
///   for (std::uint64_t p = 0; p < w.pass_count(); ++p)
///     for (std::uint32_t l = 0; l < w.layers(); ++l)
///       for (auto use : w.uses(p, l)) ...   // expert use.expert runs use.tokens tokens
///
/// A pass is one forward of the target model over a batch: for each MoE layer it needs the union
/// of the experts its tokens route to, each with the number of tokens routed to it.
///
/// Building a pass list from a trace (the rules, also in ARCHITECTURE.md):
/// - Requests are taken in order of first appearance and run in groups of `batch`; a group's
///   members run their prefill steps together (the k-th prefill step of every member in one pass),
///   then their decode steps together (the k-th decode or verify step of every member in one
///   pass). Members that run out of steps drop out; the next group starts when a group ends.
/// - With `sd` unset, steps replay as recorded (verify steps keep their recorded draft length and
///   acceptance).
/// - With `sd` set, every request's decode stream is re-cut into verification windows: the
///   request's output token sequence is rebuilt (a decode step contributes its token; a recorded
///   verify step contributes its first accepted + 1 tokens, the ones that became output), then a
///   window at position i verifies tokens i..i+g (g = min(gamma, tokens left - 1)) and accepts `a`
///   drafts drawn from the acceptance model; the next window starts at i + a + 1.
/// - Rejected drafts (window positions a + 1..g: the first rejected draft and the drafts after it)
///   are tokens that are not the continuation, and the trace has no routing of them. With
///   `RejectedRouting::nearby_token` (the default) each takes the routing of another token of the
///   same request: one of its recorded rejected drafts when the trace has them (a recorded SD
///   trace), else an output token within `rejected_radius` positions of the window but outside it;
///   drawn from their own seeded stream, so the acceptance draws are the same in both modes. With
///   `RejectedRouting::continuation` they take the real continuation's routing (an optimistic
///   approximation: the verification step then needs no experts beyond the ones the next
///   windows need).
/// - Acceptance model: each draft token is accepted with probability `acceptance`, independently,
///   until the first rejection (the i.i.d. model of Leviathan et al.): P(a = j) = p^j (1 - p) for
///   j < g and P(a = g) = p^g. Seeded, deterministic. A model card's acceptance rate (accepted /
///   drafted, what `moesched-trace stats` reports) is E[a] / g; `per_token_acceptance` converts it.
/// - Members of re-cut passes carry their trace tokens (`Workload::member_tokens`), so
///   predictions recorded per token can follow them into the new windows.

#include "moesched/core/config.hpp"
#include "moesched/core/error.hpp"
#include "moesched/core/random.hpp"
#include "moesched/core/routing.hpp"

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

namespace moesched {

/// Routing dimensions of a workload.
struct RoutingShape {
  std::uint32_t layers = 0;  ///< MoE layers
  std::uint32_t experts = 0; ///< routed experts per layer
  std::uint32_t top_k = 0;
};

/// What routing the rejected drafts of a re-cut window take (see the header comment).
enum class RejectedRouting : std::uint8_t {
  nearby_token,  ///< another token of the request: a recorded rejected draft, else a nearby output token
  continuation,  ///< the real continuation's (optimistic)
};

/// Re-cut decode streams into SD verification windows (see the header comment).
struct SdReplay {
  std::uint32_t gamma = 4;    ///< draft tokens per window
  double acceptance = 0.7;    ///< per-draft-token acceptance probability
  std::uint64_t seed = 1;
  RejectedRouting rejected = RejectedRouting::nearby_token;
  std::uint32_t rejected_radius = 64;  ///< nearby_token: output positions on each side to draw from
};

/// E[accepted] / g for per-token acceptance `p` with `g` drafts (accepting until the first
/// rejection): the acceptance rate a model card reports.
[[nodiscard]] constexpr double acceptance_rate_of(double p, std::uint32_t g) noexcept {
  if (g == 0) return 0.0;
  double e = 0.0, x = 1.0;
  for (std::uint32_t i = 0; i < g; ++i) e += (x *= p);
  return e / g;
}

/// The per-token acceptance probability whose acceptance rate with `g` drafts is `rate`
/// (the inverse of acceptance_rate_of, by bisection; rate in [0, 1], g >= 1).
[[nodiscard]] constexpr double per_token_acceptance(double rate, std::uint32_t g) noexcept {
  double lo = 0.0, hi = 1.0;
  for (int i = 0; i < 60; ++i) {
    const double mid = 0.5 * (lo + hi);
    (acceptance_rate_of(mid, g) < rate ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

struct WorkloadOptions {
  std::uint32_t batch = 1;       ///< requests decoding together
  std::optional<SdReplay> sd{};  ///< re-window decoding as SD; unset = replay steps as recorded
  bool prefill = true;           ///< include prefill passes (they count for TTFT, not TPOT)
  std::uint32_t max_requests = 0;  ///< 0 = all requests of the trace
};

/// One expert a layer of a pass needs, with the tokens routed to it.
struct ExpertUse {
  std::uint16_t expert = 0;
  std::uint32_t tokens = 0;
};

/// No trace step (a pass member re-cut by SD replay).
inline constexpr std::uint64_t kNoStep = ~std::uint64_t{0};

/// A request's share of a pass.
struct PassMember {
  std::uint32_t request = 0;
  std::uint32_t emitted = 0;   ///< output tokens this pass produces for the request
  std::uint64_t step = kNoStep;///< the trace step it replays; kNoStep when SD replay re-cut it
  std::uint64_t token_begin = 0;///< re-cut members: into Workload::member_tokens
  std::uint32_t token_count = 0;///< re-cut members: trace tokens run, in window order; else 0
};

/// One forward pass of the target model.
struct Pass {
  StepPhase phase = StepPhase::decode;
  std::uint32_t tokens = 0;         ///< tokens run (all members)
  std::uint16_t draft_len = 0;      ///< SD: drafts per member (the longest member's)
  std::uint32_t member_begin = 0;   ///< into Workload::members()
  std::uint32_t member_count = 0;
  std::uint64_t kv_tokens = 0;      ///< sum over members of the context each attends to
  std::uint64_t attention_pairs = 0;///< sum over members of tokens x context (query-key pairs)
  std::uint64_t batch_index = 0;    ///< which request group the pass belongs to
};

/// The passes of a replay, with per-layer expert unions.
class Workload {
 public:
  Workload() = default;
  Workload(RoutingShape shape) : shape_(shape) { group_begin_.push_back(0); }

  [[nodiscard]] const RoutingShape& shape() const noexcept { return shape_; }
  [[nodiscard]] std::uint32_t layers() const noexcept { return shape_.layers; }
  [[nodiscard]] std::uint64_t pass_count() const noexcept { return passes_.size(); }
  [[nodiscard]] const Pass& pass(std::uint64_t p) const noexcept { return passes_[p]; }
  [[nodiscard]] const std::vector<Pass>& passes() const noexcept { return passes_; }
  [[nodiscard]] std::span<const PassMember> members(const Pass& p) const noexcept {
    return {members_.data() + p.member_begin, p.member_count};
  }
  /// The trace tokens a re-cut member runs, in window order (token 0: the last accepted token;
  /// then the drafts); empty for members that replay a recorded step.
  [[nodiscard]] std::span<const std::uint64_t> member_tokens(const PassMember& m) const noexcept {
    return {member_tokens_.data() + m.token_begin, m.token_count};
  }
  /// Group index of (pass, layer): pass * layers + layer.
  [[nodiscard]] std::uint64_t group(std::uint64_t pass, std::uint32_t layer) const noexcept {
    return pass * shape_.layers + layer;
  }
  [[nodiscard]] std::uint64_t group_count() const noexcept { return group_begin_.size() - 1; }
  /// Index of the first use of group g in uses(); group_begin(group_count()) = use count.
  [[nodiscard]] std::uint64_t group_begin(std::uint64_t g) const noexcept { return group_begin_[g]; }
  [[nodiscard]] std::span<const ExpertUse> group_uses(std::uint64_t g) const noexcept {
    return {uses_.data() + group_begin_[g], group_begin_[g + 1] - group_begin_[g]};
  }
  [[nodiscard]] std::span<const ExpertUse> uses(std::uint64_t pass, std::uint32_t layer) const noexcept {
    return group_uses(group(pass, layer));
  }
  [[nodiscard]] const std::vector<ExpertUse>& all_uses() const noexcept { return uses_; }
  /// Routed expert activations (token x layer x top_k) the passes contain.
  [[nodiscard]] std::uint64_t activations() const noexcept { return activations_; }
  [[nodiscard]] std::uint32_t request_count() const noexcept { return requests_; }
  /// Largest number of distinct experts one layer needs in one pass.
  [[nodiscard]] std::uint32_t max_layer_union() const noexcept { return max_union_; }
  /// Output tokens of decode and verify passes (the TPOT denominator).
  [[nodiscard]] std::uint64_t decode_tokens() const noexcept { return decode_tokens_; }

  // --- building (used by build_workload and by tests that write passes by hand) ---

  /// Stores a re-cut member's trace tokens; returns the member's token_begin.
  std::uint64_t add_member_tokens(std::span<const std::uint64_t> tokens) {
    const std::uint64_t begin = member_tokens_.size();
    member_tokens_.insert(member_tokens_.end(), tokens.begin(), tokens.end());
    return begin;
  }
  /// Appends a pass; then call add_layer() once per layer, in layer order.
  void begin_pass(Pass p, std::span<const PassMember> members) {
    p.member_begin = static_cast<std::uint32_t>(members_.size());
    p.member_count = static_cast<std::uint32_t>(members.size());
    for (const auto& m : members) {
      if (m.token_begin + m.token_count > member_tokens_.size()) {
        throw ConfigError("", "member tokens", std::to_string(m.token_begin) + "+" + std::to_string(m.token_count),
                          "beyond the tokens added with add_member_tokens");
      }
    }
    members_.insert(members_.end(), members.begin(), members.end());
    passes_.push_back(p);
    std::uint32_t emitted = 0;
    for (const auto& m : members) emitted += m.emitted;
    if (p.phase != StepPhase::prefill) decode_tokens_ += emitted;
    activations_ += std::uint64_t{p.tokens} * shape_.layers * shape_.top_k;
  }
  /// The next layer's uses for the pass begun last (each expert once, tokens >= 1).
  void add_layer(std::span<const ExpertUse> uses) {
    uses_.insert(uses_.end(), uses.begin(), uses.end());
    group_begin_.push_back(uses_.size());
    max_union_ = std::max(max_union_, static_cast<std::uint32_t>(uses.size()));
  }
  void set_request_count(std::uint32_t n) noexcept { requests_ = n; }

 private:
  RoutingShape shape_{};
  std::vector<Pass> passes_;
  std::vector<PassMember> members_;
  std::vector<std::uint64_t> member_tokens_;
  std::vector<std::uint64_t> group_begin_;
  std::vector<ExpertUse> uses_;
  std::uint64_t activations_ = 0;
  std::uint64_t decode_tokens_ = 0;
  std::uint32_t requests_ = 0;
  std::uint32_t max_union_ = 0;
};

/// How often each expert (flat id: layer x experts + expert) is used in `w`, over every pass.
[[nodiscard]] inline std::vector<std::uint64_t> expert_use_counts(const Workload& w) {
  std::vector<std::uint64_t> c(std::size_t{w.layers()} * w.shape().experts, 0);
  for (std::uint64_t g = 0; g < w.group_count(); ++g) {
    const std::size_t base = (g % w.layers()) * w.shape().experts;
    for (const ExpertUse& u : w.group_uses(g)) ++c[base + u.expert];
  }
  return c;
}

/// What build_workload reads: io::Trace models it.
template <class S>
concept RoutingSource = requires(const S& s, std::uint64_t i, std::uint16_t* out) {
  { s.step_count() } -> std::convertible_to<std::uint64_t>;
  { s.step(i) } -> std::same_as<StepInfo>;
  s.token_experts(i, out);
};

namespace workload_detail {

/// One pass of one request before batching: a run of trace tokens.
struct Unit {
  StepPhase phase = StepPhase::decode;
  std::uint64_t first = 0;      ///< first trace token
  std::uint32_t tokens = 0;
  std::uint16_t draft_len = 0;
  std::uint32_t emitted = 0;
  std::vector<std::uint64_t> token_list;  ///< used instead of first/tokens when non-contiguous
  std::uint64_t step = kNoStep;           ///< trace step replayed as recorded
};

struct RequestUnits {
  std::uint32_t id = 0;
  std::vector<Unit> prefill;
  std::vector<Unit> decode;
};

/// Accepted drafts out of `g` under the i.i.d. acceptance model.
inline std::uint32_t draw_accepted(Rng& rng, std::uint32_t g, double p) {
  std::uint32_t a = 0;
  while (a < g && rng.chance(p)) ++a;
  return a;
}

}  // namespace workload_detail

/// Builds the passes of `src` (see the header comment for the rules). Throws ConfigError for
/// options out of range.
template <RoutingSource S>
[[nodiscard]] Workload build_workload(const S& src, RoutingShape shape, const WorkloadOptions& opt = {}) {
  using workload_detail::Unit;
  if (opt.batch < 1 || opt.batch > 4096) {
    throw ConfigError("", "batch", std::to_string(opt.batch), "must be between 1 and 4096");
  }
  if (opt.sd) {
    if (opt.sd->gamma < 1 || opt.sd->gamma > 64) {
      throw ConfigError("", "gamma", std::to_string(opt.sd->gamma), "must be between 1 and 64");
    }
    if (!(opt.sd->acceptance >= 0.0 && opt.sd->acceptance <= 1.0)) {
      throw ConfigError("", "acceptance", to_text(opt.sd->acceptance), "must be between 0 and 1");
    }
  }
  // 1. Split steps by request, in order of first appearance.
  std::vector<workload_detail::RequestUnits> reqs;
  std::unordered_map<std::uint32_t, std::size_t> index;
  const std::uint64_t steps = src.step_count();
  for (std::uint64_t s = 0; s < steps; ++s) {
    const StepInfo st = src.step(s);
    auto [it, fresh] = index.try_emplace(st.request, reqs.size());
    if (fresh) {
      if (opt.max_requests != 0 && reqs.size() >= opt.max_requests) {
        index.erase(it);
        continue;
      }
      reqs.push_back({st.request, {}, {}});
    }
    auto& r = reqs[it->second];
    Unit u{st.phase, st.first_token, st.tokens, st.draft_len, st.emitted_tokens(), {}, s};
    if (st.phase == StepPhase::prefill) {
      if (opt.prefill) r.prefill.push_back(std::move(u));
    } else {
      r.decode.push_back(std::move(u));
    }
  }
  // 2. SD re-windowing of each request's output token stream.
  if (opt.sd) {
    Rng rng(opt.sd->seed);
    Rng pick(opt.sd->seed ^ 0x9e3779b97f4a7c15ULL);  // rejected-draft stand-ins: their own stream
    const std::uint64_t radius = opt.sd->rejected_radius;
    for (auto& r : reqs) {
      std::vector<std::uint64_t> out;
      // Recorded rejected drafts, with the output position they were drafted at.
      std::vector<std::pair<std::uint64_t, std::uint64_t>> drafted_out;
      for (const Unit& u : r.decode) {
        const std::uint32_t n = u.phase == StepPhase::verify ? u.emitted : 1U;
        const std::uint64_t at = out.size();
        for (std::uint32_t i = 0; i < n; ++i) out.push_back(u.first + i);
        if (u.phase == StepPhase::verify) {
          for (std::uint32_t i = n; i < u.tokens; ++i) drafted_out.emplace_back(at + i, u.first + i);
        }
      }
      // A step's drafts can reach past the next step's start: order by position for the searches.
      std::sort(drafted_out.begin(), drafted_out.end());
      // A token that was not the continuation, for a rejected draft of the window [i, i + g].
      auto stand_in = [&](std::size_t i, std::uint32_t g, std::uint64_t fallback) {
        const std::uint64_t lo = i > radius ? i - radius : 0;
        const std::uint64_t hi = std::min<std::uint64_t>(out.size(), i + g + 1 + radius);
        const auto first = std::lower_bound(drafted_out.begin(), drafted_out.end(), std::make_pair(lo, std::uint64_t{0}));
        const auto last = std::lower_bound(first, drafted_out.end(), std::make_pair(hi, std::uint64_t{0}));
        if (first != last) return (first + static_cast<std::ptrdiff_t>(pick.below(static_cast<std::uint64_t>(last - first))))->second;
        const std::uint64_t left = i - lo, right = hi - (i + g + 1);
        if (left + right == 0) return fallback;
        const std::uint64_t k = pick.below(left + right);
        return out[k < left ? lo + k : i + g + 1 + (k - left)];
      };
      std::vector<Unit> windows;
      std::size_t i = 0;
      while (i < out.size()) {
        const auto g = static_cast<std::uint32_t>(std::min<std::size_t>(opt.sd->gamma, out.size() - i - 1));
        Unit w;
        if (g == 0) {
          w = Unit{StepPhase::decode, out[i], 1, 0, 1, {}, kNoStep};
        } else {
          const std::uint32_t a = workload_detail::draw_accepted(rng, g, opt.sd->acceptance);
          w = Unit{StepPhase::verify, 0, g + 1, static_cast<std::uint16_t>(g), a + 1,
                   std::vector<std::uint64_t>(out.begin() + static_cast<std::ptrdiff_t>(i),
                                              out.begin() + static_cast<std::ptrdiff_t>(i + g + 1)), kNoStep};
          if (opt.sd->rejected == RejectedRouting::nearby_token) {
            for (std::uint32_t j = a + 1; j <= g; ++j) w.token_list[j] = stand_in(i, g, w.token_list[j]);
          }
        }
        i += w.emitted;
        windows.push_back(std::move(w));
      }
      r.decode = std::move(windows);
    }
  }
  // 3. Batch groups of requests; per pass and layer, the union of the experts of its tokens.
  Workload w(shape);
  w.set_request_count(static_cast<std::uint32_t>(reqs.size()));
  const std::uint32_t lk = shape.layers * shape.top_k;
  std::vector<std::uint16_t> ids(lk);
  std::vector<std::uint32_t> count(std::size_t{shape.layers} * shape.experts, 0);
  std::vector<std::vector<std::uint16_t>> order(shape.layers);
  std::vector<ExpertUse> layer_uses;
  std::vector<PassMember> members;
  std::vector<std::uint64_t> context(reqs.size(), 0);
  std::vector<const Unit*> units;
  std::vector<std::size_t> unit_req;
  std::vector<std::uint64_t> run;  // a re-cut member's tokens

  auto emit_pass = [&](StepPhase phase, std::uint64_t batch) {
    Pass p;
    p.phase = phase;
    p.batch_index = batch;
    members.clear();
    for (auto& o : order) o.clear();
    for (std::size_t m = 0; m < units.size(); ++m) {
      const Unit& u = *units[m];
      p.tokens += u.tokens;
      p.draft_len = std::max(p.draft_len, u.draft_len);
      const std::uint64_t ctx = context[unit_req[m]] + u.tokens;
      p.kv_tokens += ctx;
      p.attention_pairs += std::uint64_t{u.tokens} * ctx;
      // Decode: the emitted tokens join the context. Prefill: the whole prompt does.
      context[unit_req[m]] += phase == StepPhase::prefill ? u.tokens : u.emitted;
      PassMember pm{reqs[unit_req[m]].id, u.emitted, u.step, 0, 0};
      if (u.step == kNoStep) {
        run.clear();
        for (std::uint32_t t = 0; t < u.tokens; ++t) run.push_back(u.token_list.empty() ? u.first + t : u.token_list[t]);
        pm.token_begin = w.add_member_tokens(run);
        pm.token_count = u.tokens;
      }
      members.push_back(pm);
      for (std::uint32_t t = 0; t < u.tokens; ++t) {
        const std::uint64_t tok = u.token_list.empty() ? u.first + t : u.token_list[t];
        src.token_experts(tok, ids.data());
        for (std::uint32_t l = 0; l < shape.layers; ++l) {
          std::uint32_t* c = count.data() + std::size_t{l} * shape.experts;
          for (std::uint32_t k = 0; k < shape.top_k; ++k) {
            const std::uint16_t e = ids[std::size_t{l} * shape.top_k + k];
            if (c[e]++ == 0) order[l].push_back(e);
          }
        }
      }
    }
    if (p.phase == StepPhase::verify && p.draft_len == 0) p.phase = StepPhase::decode;
    w.begin_pass(p, members);
    for (std::uint32_t l = 0; l < shape.layers; ++l) {
      std::uint32_t* c = count.data() + std::size_t{l} * shape.experts;
      layer_uses.clear();
      for (std::uint16_t e : order[l]) {
        layer_uses.push_back({e, c[e]});
        c[e] = 0;
      }
      w.add_layer(layer_uses);
    }
  };

  for (std::size_t g0 = 0, batch = 0; g0 < reqs.size(); g0 += opt.batch, ++batch) {
    const std::size_t g1 = std::min(reqs.size(), g0 + opt.batch);
    for (int stage = 0; stage < 2; ++stage) {
      std::size_t longest = 0;
      for (std::size_t r = g0; r < g1; ++r) {
        longest = std::max(longest, stage == 0 ? reqs[r].prefill.size() : reqs[r].decode.size());
      }
      for (std::size_t k = 0; k < longest; ++k) {
        units.clear();
        unit_req.clear();
        bool verify = false;
        for (std::size_t r = g0; r < g1; ++r) {
          const auto& list = stage == 0 ? reqs[r].prefill : reqs[r].decode;
          if (k >= list.size()) continue;
          units.push_back(&list[k]);
          unit_req.push_back(r);
          verify = verify || list[k].phase == StepPhase::verify;
        }
        emit_pass(stage == 0 ? StepPhase::prefill : verify ? StepPhase::verify : StepPhase::decode, batch);
      }
    }
  }
  return w;
}

}  // namespace moesched
