#pragma once
// Policies by name: the one place where a policy is chosen at run time (moesched-sim's command
// line). It belongs to the application, not the library: everything below it is statically typed.
//
//   for (auto name : moesched::tools::policy_names()) ...            // on-demand, lru, ...
//   auto m = moesched::tools::run_policy("lru", workload, cost, {.budget = b});
///
// `static` needs a popularity profile: by default it counts the replayed workload itself (an
// optimistic static placement: it knows the run's overall popularity in advance); pass
// `PolicyInputs::profile` to use another trace's counts. `prefetch:CHANNEL` needs the channel's
// PredictionTable (moesched/policy/trace_predictions.hpp), its predictor's cost and where it runs.
// `predict:popularity`, `predict:transition` and `moe-infinity` need routing only (policy::Predictive
// over a routing-only ExpertPredictor): they run on any trace, recorded or re-windowed.
//
// The published policies `mixtral-offloading`, `promoe`, `spmoe` and our `moesched` (presets of
// policy::Pipeline) take options in the name, `NAME:key=value:key=value` (composed_options() lists
// them; --help prints them). Each takes its predictor by name (`predictor=`): `auto` (default) uses
// the trace channel the paper's predictor corresponds to when the front end supplies its table
// (policy_channels() says which channels to build), else the routing-only fallback
// (`transition`); `predictor=CHANNEL` demands that channel; `predictor=transition|popularity|
// activation-matrix` a routing-only predictor. The run's label says which predictor ran:
// `promoe [mlp_stride2]`, `promoe [fallback transition]` (PolicyInputs::label_predictor; the
// predictor's name is also returned through PolicyInputs::predictor_out).

#include <moesched/core/error.hpp>
#include <moesched/policy/any_predictor.hpp>
#include <moesched/policy/baseline.hpp>
#include <moesched/policy/cutoff_solver.hpp>
#include <moesched/policy/latency_model.hpp>
#include <moesched/policy/mixtral_offloading.hpp>
#include <moesched/policy/moesched_policy.hpp>
#include <moesched/policy/oracle.hpp>
#include <moesched/policy/promoe.hpp>
#include <moesched/policy/spmoe.hpp>
#include <moesched/policy/predictive.hpp>
#include <moesched/policy/prefetch.hpp>
#include <moesched/runtime/jobs.hpp>
#include <moesched/sim/replay.hpp>
#include <moesched/workload/workload.hpp>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace moesched::tools {

/// Names accepted by run_policy, in the order tables list them. Beside them, `prefetch:CHANNEL`
/// names the predictive policy replaying a trace's prediction channel (policy::Prefetch).
[[nodiscard]] inline std::span<const std::string_view> policy_names() noexcept {
  static constexpr std::array<std::string_view, 5> kNames{"on-demand", "lru", "lfu", "static", "oracle"};
  return kNames;
}

/// Predictive policies that need no prediction channel, and the published policies (which fall
/// back to a routing-only predictor without one): they run on any trace. Not in policy_names(), so
/// compare's default list stays the baselines and the channels.
[[nodiscard]] inline std::span<const std::string_view> predictive_policy_names() noexcept {
  static constexpr std::array<std::string_view, 7> kNames{"predict:popularity", "predict:transition", "moe-infinity",
                                                          "mixtral-offloading", "promoe", "spmoe", "moesched"};
  return kNames;
}

/// Offline references beside `oracle` (they read the run's future; not in compare's default list).
[[nodiscard]] inline std::span<const std::string_view> reference_policy_names() noexcept {
  static constexpr std::array<std::string_view, 1> kNames{"oracle-aggressive"};
  return kNames;
}

/// The published policies, presets of policy::Pipeline that take `:key=value` options.
[[nodiscard]] inline std::span<const std::string_view> composed_policy_names() noexcept {
  static constexpr std::array<std::string_view, 4> kNames{"mixtral-offloading", "promoe", "spmoe", "moesched"};
  return kNames;
}

/// One option of a published policy: key, accepted values, default, meaning.
struct ComposedOption {
  std::string_view key;
  std::string_view values;
  std::string_view fallback;  ///< the default
  std::string_view meaning;
};

namespace registry_detail {
inline constexpr ComposedOption kPredictor{"predictor", "auto|CHANNEL|transition|popularity|activation-matrix|none", "auto",
                                           "auto: the paper's trace channel when there is one, else transition; none: no prefetch"};
inline constexpr ComposedOption kTop{"top", "N", "0", "candidates per prediction (0: the channel's, or the last gate size)"};
inline constexpr ComposedOption kDepth{"depth", "N", "2", "copies outstanding before another prefetch"};
inline constexpr ComposedOption kPreempt{"preempt", "on|off", "on", "early preemption: cancel unasked speculative copies at the gate"};
inline constexpr std::array<ComposedOption, 8> kMixtral{
    kPredictor,
    ComposedOption{"speculate", "on|off", "on", "load the next layer's guessed experts (off: per-layer LRU)"},
    ComposedOption{"preempt", "on|off", "off", "early preemption (not in the original)"},
    ComposedOption{"touch", "on|off", "on", "a guess already resident is touched in its layer's LRU"},
    ComposedOption{"lookahead", "N", "1", "layers ahead of the running one a guess may be for"},
    kDepth,
    kTop,
    ComposedOption{"chunks", "N", "0", "copies per expert (0: --chunks)"}};
inline constexpr std::array<ComposedOption, 8> kPromoe{
    kPredictor,
    ComposedOption{"stride", "N", "2", "layers of lead a prediction may have (1: no stride)"},
    ComposedOption{"chunks", "N", "3", "copies per expert, 3 = one per matrix (0: --chunks)"},
    kPreempt,
    ComposedOption{"touch", "on|off", "on", "a prefetch touches its per-layer LRU entry"},
    ComposedOption{"lookahead", "N", "2", "bounded lookahead: layers ahead a prefetch may be for (0: any)"},
    kDepth,
    kTop};
inline constexpr std::array<ComposedOption, 8> kSpmoe{
    kPredictor,
    ComposedOption{"cutoff", "solver|closed|all|N", "solver", "how deep drafting-time prefetch goes"},
    ComposedOption{"batch", "on|off", "on", "drafting: submit every copy up to the cutoff at once"},
    ComposedOption{"beyond", "N", "1", "beyond the cutoff: layers ahead during verification (0: none)"},
    kPreempt,
    kDepth,
    kTop,
    ComposedOption{"chunks", "N", "0", "copies per expert (0: --chunks)"}};
inline constexpr std::array<ComposedOption, 14> kMoesched{
    ComposedOption{"predictor", "auto|CHANNEL|transition|popularity|activation-matrix|none", "transition",
                   "transition: routing only, inline (no stream time); auto: the best channel the trace has"},
    ComposedOption{"utility", "on|off", "on", "one learned reuse score for eviction and prefetch admission"},
    ComposedOption{"link", "on|off", "on", "utility: prefetch only what is used with a probability above the link's measured load"},
    ComposedOption{"freq", "on|off", "on", "utility: each expert's long-run frequency class (against its layer's mean) is part of its state"},
    ComposedOption{"density", "on|off", "on", "utility: evict by layers held per expected hit at the next turn (d / p), not by expected layers to next use"},
    ComposedOption{"cutoff", "solver|closed|all|off|N", "solver", "SD: how deep drafting-time prefetch goes"},
    ComposedOption{"batch", "on|off", "on", "drafting: submit every copy up to the cutoff at once"},
    ComposedOption{"beyond", "N", "2", "beyond the cutoff: layers ahead during verification"},
    ComposedOption{"chunks", "auto|N", "auto",
                   "copies per expert (auto: per matrix when splitting adds at most 2% to a copy's link time, else whole)"},
    kPreempt,
    ComposedOption{"horizon", "N", "2", "routing fallback: layers ranked ahead after each gate"},
    ComposedOption{"lookahead", "N", "0", "layers ahead a prefetch may be for (0: any)"},
    kDepth,
    kTop};
}  // namespace registry_detail

/// The options of published policy `base` (empty for other names).
[[nodiscard]] inline std::span<const ComposedOption> composed_options(std::string_view base) noexcept {
  if (base == "mixtral-offloading") return registry_detail::kMixtral;
  if (base == "promoe") return registry_detail::kPromoe;
  if (base == "spmoe") return registry_detail::kSpmoe;
  if (base == "moesched") return registry_detail::kMoesched;
  return {};
}

/// A published policy's name split: the base and its options in the order given.
struct ComposedName {
  std::string base;
  std::vector<std::pair<std::string, std::string>> options;
  /// The value of `key`, or its default.
  [[nodiscard]] std::string get(std::string_view key) const {
    for (auto it = options.rbegin(); it != options.rend(); ++it) {
      if (it->first == key) return it->second;
    }
    for (const auto& o : composed_options(base)) {
      if (o.key == key) return std::string(o.fallback);
    }
    return {};
  }
};

/// Splits `NAME:key=value:...` when NAME is a published policy; nullopt for other names. Throws
/// ConfigError (field `policies`) on an unknown key or a malformed value.
[[nodiscard]] inline std::optional<ComposedName> parse_composed(std::string_view name) {
  const std::size_t colon = name.find(':');
  const std::string_view base = name.substr(0, colon);
  const auto opts = composed_options(base);
  if (opts.empty()) return std::nullopt;
  ComposedName out;
  out.base = std::string(base);
  std::string_view rest = colon == std::string_view::npos ? std::string_view{} : name.substr(colon + 1);
  auto fail = [&](const std::string& why) { throw ConfigError("", "policies", std::string(name), why); };
  auto keys = [&] {
    std::string k;
    for (const auto& o : opts) k += (k.empty() ? "" : ", ") + std::string(o.key) + "=" + std::string(o.values);
    return k;
  };
  while (colon != std::string_view::npos) {
    const std::size_t next = rest.find(':');
    const std::string_view item = rest.substr(0, next);
    const std::size_t eq = item.find('=');
    if (item.empty() || eq == std::string_view::npos || eq == 0 || eq + 1 == item.size()) {
      fail("option '" + std::string(item) + "' is not key=value; " + out.base + " takes " + keys());
    }
    const std::string_view key = item.substr(0, eq);
    const std::string_view value = item.substr(eq + 1);
    const ComposedOption* o = nullptr;
    for (const auto& c : opts) {
      if (c.key == key) o = &c;
    }
    if (o == nullptr) fail("unknown option '" + std::string(key) + "'; " + out.base + " takes " + keys());
    const std::string_view vs = o->values;
    const bool is_bool = vs == "on|off";
    const bool numeric = vs == "N" || vs.ends_with("|N");
    bool ok = vs.starts_with("auto|CHANNEL");  // a predictor name: checked when the run starts
    if (is_bool) ok = value == "on" || value == "off";
    if (!ok && numeric) {
      std::uint32_t n = 0;
      const auto r = std::from_chars(value.data(), value.data() + value.size(), n);
      ok = r.ec == std::errc{} && r.ptr == value.data() + value.size() && n <= 4096;
    }
    if (!ok && !is_bool) {  // a word of the list
      std::string_view list = vs;
      while (!list.empty() && !ok) {
        const std::size_t bar = list.find('|');
        ok = list.substr(0, bar) == value && list.substr(0, bar) != "N";
        list = bar == std::string_view::npos ? std::string_view{} : list.substr(bar + 1);
      }
    }
    if (!ok) fail("option " + std::string(key) + " = '" + std::string(value) + "' is not one of " + std::string(vs));
    out.options.emplace_back(std::string(key), std::string(value));
    if (next == std::string_view::npos) break;
    rest = rest.substr(next + 1);
  }
  return out;
}

/// Whether a channel name is (a variant of) `kind`: equal, or ending in "_" + kind.
[[nodiscard]] inline bool channel_is(std::string_view channel, std::string_view kind) noexcept {
  return channel == kind || (channel.size() > kind.size() && channel.ends_with(kind) &&
                             channel[channel.size() - kind.size() - 1] == '_');
}

/// Routing-only predictor names a published policy takes.
[[nodiscard]] inline bool routing_predictor_name(std::string_view p) noexcept {
  return p == "transition" || p == "popularity" || p == "activation-matrix" || p == "none";
}

/// The prefix of predictive policy names: "prefetch:" + channel.
inline constexpr std::string_view kPrefetchPrefix = "prefetch:";

/// The channel a `prefetch:CHANNEL` name replays, or "" for other names.
[[nodiscard]] inline std::string_view prefetch_channel(std::string_view name) noexcept {
  return name.starts_with(kPrefetchPrefix) ? name.substr(kPrefetchPrefix.size()) : std::string_view{};
}

/// The prediction channels policy `name` replays when the trace offers `available` (channels whose
/// recorded predictions can be replayed: none in an SD replay re-cut with --gamma): prefetch:C ->
/// {C}; a published policy with predictor=CHANNEL -> {CHANNEL} (whether or not available: the
/// front end then reports it missing); with predictor=auto, the channel its paper's predictor
/// corresponds to, if available (mixtral-offloading: skip_gate; promoe: an mlp channel, mlp_stride2
/// first; spmoe: draft_gate; moesched: draft_gate, else an mlp channel, else skip_gate). Other
/// names: none. A front end builds these tables and passes them in PolicyInputs::tables.
[[nodiscard]] inline std::vector<std::string> policy_channels(std::string_view name, std::span<const std::string> available) {
  if (const std::string_view c = prefetch_channel(name); !c.empty()) return {std::string(c)};
  const auto parsed = parse_composed(name);
  if (!parsed) return {};
  const std::string pred = parsed->get("predictor");
  if (pred != "auto") {
    if (routing_predictor_name(pred)) return {};
    return {pred};
  }
  auto first = [&](auto&& match) -> std::vector<std::string> {
    for (const auto& c : available) {
      if (match(std::string_view(c))) return {c};
    }
    return {};
  };
  auto is_mlp = [](std::string_view c) { return c.find("mlp") != std::string_view::npos; };
  auto mlp = [&]() {
    auto exact = first([](std::string_view c) { return channel_is(c, "mlp_stride2"); });
    return exact.empty() ? first(is_mlp) : exact;
  };
  const std::string& b = parsed->base;
  if (b == "mixtral-offloading") return first([](std::string_view c) { return channel_is(c, "skip_gate"); });
  if (b == "promoe") return mlp();
  if (b == "spmoe") return first([](std::string_view c) { return channel_is(c, "draft_gate"); });
  // moesched: the most accurate predictor available earliest.
  auto d = first([](std::string_view c) { return channel_is(c, "draft_gate"); });
  if (!d.empty()) return d;
  auto m = mlp();
  if (!m.empty()) return m;
  return first([](std::string_view c) { return channel_is(c, "skip_gate"); });
}

namespace registry_detail {
inline std::string_view base_summary(std::string_view name) noexcept;
/// The summary of a published policy followed by its options.
inline std::string summary_with_options(std::string_view name) {
  std::string s(base_summary(name));
  s += ". Options (" + std::string(name) + ":key=value:...):";
  for (const auto& o : composed_options(name)) {
    s += " " + std::string(o.key) + "=" + std::string(o.values) + " [" + std::string(o.fallback) + "] " +
         std::string(o.meaning) + ";";
  }
  s.back() = '.';
  return s;
}
}  // namespace registry_detail

/// One-line description of a policy, for --help (the published policies list their options).
[[nodiscard]] inline std::string_view policy_summary(std::string_view name) {
  static const std::array<std::string, 4> kComposed{
      registry_detail::summary_with_options("mixtral-offloading"), registry_detail::summary_with_options("promoe"),
      registry_detail::summary_with_options("spmoe"), registry_detail::summary_with_options("moesched")};
  const auto names = composed_policy_names();
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (names[i] == name) return kComposed[i];
  }
  return registry_detail::base_summary(name);
}

namespace registry_detail {
inline std::string_view base_summary(std::string_view name) noexcept {
  if (name == "on-demand") return "copy on miss; the budget is one LRU cache over all layers";
  if (name == "lru") return "per-layer LRU with equal shares (Mixtral-offloading, ProMoE's cache)";
  if (name == "lfu") return "evict the least frequently used expert (ties: least recently used)";
  if (name == "static") return "pin the most used experts at start, stage misses through LRU slots";
  if (name == "oracle") return "perfect future knowledge: Belady eviction, copies as early as memory allows";
  if (name == "oracle-aggressive") {
    return "time-aware offline reference: whenever the link may take more, fetch the next expert the future "
           "needs in place of the one used furthest ahead, if that use comes later (Cao et al.'s aggressive)";
  }
  if (name == "predict:popularity") {
    return "prefetch each layer's most used experts (decayed counts, routing only) for the next layers";
  }
  if (name == "predict:transition") {
    return "prefetch from cross-layer transitions learned online (layer l's experts -> l+1's, l+2's; routing only)";
  }
  if (name == "moe-infinity") {
    return "MoE-Infinity: the request's expert activation matrix matched (cosine) against stored ones "
           "predicts every later layer; prefetch nearest layer first (routing only)";
  }
  if (name == "mixtral-offloading") {
    return "Mixtral-offloading: per-layer LRU + speculative loading of the next layer's experts from the skip "
           "gate (channel skip_gate; fallback: routing-only transition)";
  }
  if (name == "promoe") {
    return "ProMoE: learned predictor with stride (channel mlp_stride2; fallback: transition), chunked copies, early "
           "preemption, per-layer LRU touched by prefetch, bounded lookahead";
  }
  if (name == "spmoe") {
    return "SP-MoE: during drafting, batched prefetch of the draft-gate predictions (channel draft_gate; fallback: "
           "transition) up to the cutoff layer (solver over the latency model); beyond it, layer-ahead prefetch";
  }
  if (name == "moesched") {
    return "moesched: one utility, layers a slot is held per expected hit (probabilities learned online from the "
           "gates, each expert's long-run frequency and the predictor's ranks), for eviction and prefetch admission, "
           "prefetch only when likelier to be used than the link is loaded, early "
           "preemption, chunked copies when free, SD cutoff from the solver; routing-only transitions by default "
           "(predictor=auto: the best channel the trace has, draft_gate, mlp, skip_gate)";
  }
  if (name == "composed") {
    return "mixtral-offloading, promoe, spmoe, moesched take options in the name, NAME:key=value:key=value "
           "(e.g. promoe:stride=1:preempt=off); predictor=auto|CHANNEL|transition|popularity|activation-matrix";
  }
  if (name == "prefetch") {
    return "prefetch:CHANNEL replays the trace's prediction channel CHANNEL through predictor jobs (CPU "
           "workers for MLP channels, the compute stream for gate channels), prefetching at low priority "
           "with early preemption (ProMoE's mechanism). Routing-only predictors (any trace): "
           "predict:popularity, predict:transition, moe-infinity";
  }
  return "";
}
}  // namespace registry_detail

/// Throws ConfigError (field `policies`) unless `name` is a known policy or `prefetch:CHANNEL`.
inline void check_policy_name(std::string_view name) {
  for (auto n : policy_names()) {
    if (n == name) return;
  }
  for (auto n : predictive_policy_names()) {
    if (n == name) return;
  }
  for (auto n : reference_policy_names()) {
    if (n == name) return;
  }
  if (!prefetch_channel(name).empty()) return;
  if (parse_composed(name)) return;  // throws on a bad option
  std::string list;
  for (auto n : policy_names()) list += (list.empty() ? "" : ", ") + std::string(n);
  for (auto n : predictive_policy_names()) list += ", " + std::string(n);
  for (auto n : reference_policy_names()) list += ", " + std::string(n);
  throw ConfigError("", "policies", std::string(name), "unknown policy; known: " + list + ", prefetch:CHANNEL");
}

/// What some policies need besides the workload.
struct PolicyInputs {
  /// `static`: use counts per flat expert id; null = count the replayed workload itself.
  const std::vector<std::uint64_t>* profile = nullptr;
  /// `prefetch:CHANNEL`: the channel's predictions for the workload's passes (required).
  const policy::PredictionTable* predictions = nullptr;
  /// `prefetch:CHANNEL`: time of one predictor call, and where it runs.
  Nanoseconds predictor_latency{200'000};
  runtime::JobResource predictor_where = runtime::JobResource::cpu_worker;
  /// `prefetch:CHANNEL`: copies kept outstanding, and layers ahead it may prefetch (0 = any).
  std::uint32_t prefetch_depth = 2;
  std::uint32_t lookahead = 0;
  /// Routing-only predictive policies: candidates per ranking (0 = the layer's last gate size),
  /// layers ranked ahead after each gate (0 = every later layer; moe-infinity always uses 0), and
  /// an optional training split the predictor learns before the run (policy::warm).
  std::uint32_t predict_top = 0;
  std::uint32_t horizon = 2;
  const Workload* training = nullptr;
  /// Published policies: the tables of the channels policy_channels() named that the trace has,
  /// each with its predictor's cost and where it runs. Empty: the routing-only fallback.
  std::vector<policy::TableInput> tables;
  /// Published policies: append " [PREDICTOR]" (or " [fallback PREDICTOR]") to the run's label.
  bool label_predictor = true;
  /// Published policies: set to the predictor that ran (e.g. "mlp_stride2", "transition").
  std::string* predictor_out = nullptr;
};

/// The analytical latency model of `cost` on `w`'s passes (what the cutoff solver reasons with):
/// copy time = the simulator's whole-expert copy, a layer's dense part and expert FFNs from the
/// first verification pass (else the first decode pass), one draft step of that pass.
[[nodiscard]] inline policy::AnalyticalLatency latency_model(const sim::CostModel& cost, const Workload& w) {
  policy::AnalyticalLatency m;
  m.expert = cost.expert_bytes();
  const auto copy = static_cast<double>(std::max<std::int64_t>(cost.expert_copy_time().count(), 1));
  m.link_bytes_per_ns = static_cast<double>(m.expert.count) / copy;
  m.top_k = w.shape().top_k;
  const Pass* ref = nullptr;
  for (const Pass& p : w.passes()) {
    if (p.draft_len > 0) {
      ref = &p;
      break;
    }
  }
  if (ref == nullptr) {
    for (const Pass& p : w.passes()) {
      if (p.phase == StepPhase::decode) {
        ref = &p;
        break;
      }
    }
  }
  if (ref == nullptr && w.pass_count() > 0) ref = &w.pass(0);
  if (ref != nullptr && w.layers() > 0) {
    Nanoseconds dense{0};
    for (std::uint32_t l = 0; l < w.layers(); ++l) dense += cost.dense_time(l, *ref);
    m.dense = dense / w.layers();
    if (ref->draft_len > 0) m.draft_step = cost.draft_time(*ref) / ref->draft_len;
  }
  const Nanoseconds one = cost.expert_time(1);
  const Nanoseconds two = cost.expert_time(2);
  m.expert_per_token = two > one ? two - one : Nanoseconds{0};
  m.expert_ffn = one - m.expert_per_token;
  return m;
}

/// What a policy run says of itself beside its metrics (visit_policy fills it; label_run applies it).
struct PolicyRun {
  std::string name;       ///< the name it was asked by
  bool composed = false;  ///< a published policy (its label names its predictor)
  bool fell_back = false; ///< composed, predictor=auto, and the trace had none of its channels
  std::string predictor;  ///< composed: the predictor that ran
  std::uint64_t late = 0; ///< predictions that came after their gate
};

namespace registry_detail {

/// Learns `in.training` (when given) into `predictor`.
template <class Pred>
void warm_from(Pred& predictor, const Workload& w, const PolicyInputs& in) {
  if (in.training == nullptr) return;
  if (in.training->shape().layers != w.shape().layers || in.training->shape().experts != w.shape().experts) {
    throw ConfigError("", "train_trace", std::to_string(in.training->shape().layers) + " x " +
                                             std::to_string(in.training->shape().experts),
                      "differs from the replayed workload's layers x experts");
  }
  policy::warm(predictor, *in.training);
}

template <class Pred, class Run>
void visit_predictive(Pred predictor, std::uint32_t horizon, const Workload& w, const sim::CostModel& cost,
                      const PolicyInputs& in, Run&& run) {
  warm_from(predictor, w, in);
  policy::Predictive<Pred> p(std::move(predictor),
                             {.depth = in.prefetch_depth, .lookahead = in.lookahead, .horizon = horizon, .top = in.predict_top});
  run(p, cost);
}
}  // namespace registry_detail

namespace registry_detail {

inline std::uint32_t number(const ComposedName& n, std::string_view key) {
  const std::string v = n.get(key);
  std::uint32_t x = 0;
  (void)std::from_chars(v.data(), v.data() + v.size(), x);
  return x;
}
inline bool flag(const ComposedName& n, std::string_view key) { return n.get(key) == "on"; }

inline policy::AnyRoutingPredictor routing_predictor(std::string_view p) {
  if (p == "popularity") return policy::PopularityPredictor{};
  if (p == "activation-matrix") return policy::ActivationMatrixPredictor{};
  return policy::TransitionPredictor{};
}

/// `cutoff=` as a rule and a fixed depth.
inline std::pair<policy::CutoffRule, std::uint32_t> cutoff_rule(const std::string& v) {
  if (v == "solver") return {policy::CutoffRule::solver, 0};
  if (v == "closed") return {policy::CutoffRule::closed_form, 0};
  if (v == "all") return {policy::CutoffRule::all, 0};
  std::uint32_t x = 0;
  (void)std::from_chars(v.data(), v.data() + v.size(), x);
  return {policy::CutoffRule::fixed, x};
}

/// `chunks=auto` (and `--chunks 0`): auto_copy_chunks (core/hardware.hpp) on `cost`'s copy times.
inline std::uint32_t auto_chunks(const sim::CostModel& cost) {
  sim::CostOptions one = cost.options();
  one.chunks = 1;
  sim::CostOptions three = cost.options();
  three.chunks = 3;
  return auto_copy_chunks(sim::CostModel(cost.model(), cost.gpu(), one).expert_copy_time(),
                          sim::CostModel(cost.model(), cost.gpu(), three).expert_copy_time());
}

/// The copies per expert a published policy's `chunks=` asks for with `cost` (0: the cost model's
/// own). Only a preset-built cost model is re-chunked (a hand-made one keeps its copy time).
inline std::uint32_t composed_chunks(const ComposedName& n, const sim::CostModel& cost) {
  const bool preset_cost = !cost.model().name.empty() && cost.model().expert_bytes() == cost.expert_bytes();
  std::uint32_t chunks = number(n, "chunks");
  if (n.get("chunks") == "auto") chunks = preset_cost ? auto_chunks(cost) : 0;
  return preset_cost ? chunks : 0;
}

template <class Run>
PolicyRun visit_composed(std::string_view name, const ComposedName& n, const Workload& w, const sim::CostModel& cost,
                         const PolicyInputs& in, Run&& run) {
  const std::string pred = n.get("predictor");
  std::vector<policy::TableInput> tables;
  if (pred == "auto" || !routing_predictor_name(pred)) {
    for (const auto& t : in.tables) {
      if (t.table == nullptr) continue;
      if (t.table->pass_count() != w.pass_count()) {
        throw ConfigError("", "policies", std::string(name),
                          "the predictions of channel '" + t.table->channel() + "' cover " +
                              std::to_string(t.table->pass_count()) + " passes, the workload has " +
                              std::to_string(w.pass_count()));
      }
      tables.push_back(t);
    }
  }
  if (pred != "auto" && !routing_predictor_name(pred)) {
    const bool given = std::any_of(tables.begin(), tables.end(), [&](const auto& t) { return t.table->channel() == pred; });
    if (!given) {
      throw ConfigError("", "policies", std::string(name),
                        "no predictions of channel '" + pred + "' were given (the front end builds the tables "
                        "policy_channels() names and passes them in PolicyInputs::tables)");
    }
  }
  policy::AnyRoutingPredictor fallback = routing_predictor(pred == "auto" ? "transition" : pred);
  const bool no_predictor = pred == "none" || n.get("speculate") == "off";
  warm_from(fallback, w, in);
  // Chunked copies are the copy engine's: a preset-built cost model is rebuilt with the policy's
  // (an executor runs its copies with composed_chunks too).
  const std::uint32_t chunks = composed_chunks(n, cost);
  std::optional<sim::CostModel> rechunked;
  if (chunks != 0 && chunks != cost.options().chunks) {
    sim::CostOptions co = cost.options();
    co.chunks = chunks;
    rechunked.emplace(cost.model(), cost.gpu(), co);
  }
  const sim::CostModel& c = rechunked ? *rechunked : cost;
  const policy::AnalyticalLatency lat = latency_model(c, w);
  const std::uint32_t top = number(n, "top");
  const std::uint32_t depth = std::max<std::uint32_t>(number(n, "depth"), 1);
  PolicyRun out{std::string(name), true, false, {}, 0};
  auto go = [&](auto& p) {
    if (no_predictor) p.drop_predictors();
    run(p, c);
    out.predictor = p.predictor_label();
    out.late = p.too_late();
  };
  if (n.base == "mixtral-offloading") {
    policy::MixtralOffloading p(tables, std::move(fallback),
                                {.speculate = flag(n, "speculate"), .preempt = flag(n, "preempt"), .touch = flag(n, "touch"),
                                 .depth = depth, .lookahead = number(n, "lookahead"), .top = top});
    go(p);
  } else if (n.base == "promoe") {
    policy::ProMoE p(tables, std::move(fallback),
                     {.stride = std::max<std::uint32_t>(number(n, "stride"), 1), .preempt = flag(n, "preempt"),
                      .touch = flag(n, "touch"), .depth = depth, .lookahead = number(n, "lookahead"), .top = top});
    go(p);
  } else if (n.base == "spmoe") {
    const auto [rule, fixed] = cutoff_rule(n.get("cutoff"));
    policy::SpMoE p(tables, std::move(fallback), lat,
                    {.cutoff = rule, .fixed_cutoff = fixed, .batch = flag(n, "batch"), .beyond = number(n, "beyond"),
                     .preempt = flag(n, "preempt"), .depth = depth, .top = top});
    go(p);
  } else {
    const std::string cut = n.get("cutoff");
    const auto [rule, fixed] = cutoff_rule(cut == "off" ? std::string("all") : cut);
    policy::Moesched p(tables, std::move(fallback), lat,
                       {.utility = flag(n, "utility"), .link_aware = flag(n, "link"), .frequency = flag(n, "freq"), .density = flag(n, "density"), .preempt = flag(n, "preempt"), .cutoff = cut != "off",
                        .cutoff_rule = rule, .fixed_cutoff = fixed, .batch = flag(n, "batch"),
                        .beyond = number(n, "beyond"), .depth = depth, .lookahead = number(n, "lookahead"),
                        .horizon = number(n, "horizon"), .top = top});
    go(p);
  }

  out.fell_back = pred == "auto" && tables.empty() && out.predictor != "none";
  return out;
}

}  // namespace registry_detail

/// Builds the policy called `name` for `w` and calls `run(policy, cost)` once with it, `cost`
/// being the cost model the policy plans with (a published policy's `chunks=` may re-chunk
/// `cost`; an executor copies with policy_chunks). Every executor runs policies through this:
/// the simulator (run_policy) and moesched-replay's CUDA backend.
template <class Run>
PolicyRun visit_policy(std::string_view name, const Workload& w, const sim::CostModel& cost, const PolicyInputs& in,
                       Run&& run) {
  check_policy_name(name);
  PolicyRun out{std::string(name), false, false, {}, 0};
  if (name == "on-demand") {
    policy::OnDemand p;
    run(p, cost);
  } else if (name == "lru") {
    policy::LayerLru p;
    run(p, cost);
  } else if (name == "lfu") {
    policy::Lfu p;
    run(p, cost);
  } else if (name == "static") {
    policy::StaticPopular p(in.profile != nullptr ? *in.profile : expert_use_counts(w), w.max_layer_union());
    run(p, cost);
  } else if (name == "oracle") {
    policy::Oracle p(w);
    run(p, cost);
  } else if (name == "oracle-aggressive") {
    policy::AggressiveOracle p(w);
    run(p, cost);
  } else if (name == "predict:popularity") {
    registry_detail::visit_predictive(policy::PopularityPredictor{}, in.horizon, w, cost, in, run);
  } else if (name == "predict:transition") {
    registry_detail::visit_predictive(policy::TransitionPredictor{}, in.horizon, w, cost, in, run);
  } else if (name == "moe-infinity") {
    registry_detail::visit_predictive(policy::ActivationMatrixPredictor{}, 0, w, cost, in, run);
  } else if (const auto composed = parse_composed(name)) {
    return registry_detail::visit_composed(name, *composed, w, cost, in, run);
  } else {
    const std::string_view channel = prefetch_channel(name);
    if (in.predictions == nullptr || in.predictions->channel() != channel) {
      throw ConfigError("", "policies", std::string(name), "no predictions of channel '" + std::string(channel) + "' were given");
    }
    if (in.predictions->pass_count() != w.pass_count()) {
      throw ConfigError("", "policies", std::string(name),
                        "the predictions cover " + std::to_string(in.predictions->pass_count()) + " passes, the workload has " +
                            std::to_string(w.pass_count()));
    }
    policy::Prefetch p(*in.predictions, in.predictor_latency, in.prefetch_depth, in.lookahead, in.predictor_where);
    run(p, cost);
    out.late = p.too_late();
  }
  return out;
}

/// The copies per expert the policy called `name` asks the copy engine for (0: the scenario's).
[[nodiscard]] inline std::uint32_t policy_chunks(std::string_view name, const sim::CostModel& cost) {
  const auto composed = parse_composed(name);
  return composed ? registry_detail::composed_chunks(*composed, cost) : 0;
}

/// Names `m` after the run: the requested name, and for a published policy " [PREDICTOR]" (or
/// " [fallback PREDICTOR]") when `in.label_predictor`; reports the predictor to in.predictor_out.
inline void label_run(const PolicyRun& r, const PolicyInputs& in, runtime::RunMetrics& m) {
  m.policy = r.name;
  m.predictions_late = r.late;
  if (!r.composed) return;
  if (in.predictor_out != nullptr) *in.predictor_out = r.predictor;
  if (in.label_predictor) m.policy += " [" + std::string(r.fell_back ? "fallback " : "") + r.predictor + "]";
}

/// Replays `w` under the policy called `name` in the simulator.
[[nodiscard]] inline runtime::RunMetrics run_policy(std::string_view name, const Workload& w,
                                                    const sim::CostModel& cost, const sim::SimOptions& opt,
                                                    const PolicyInputs& in = {}) {
  runtime::RunMetrics m;
  const PolicyRun r = visit_policy(name, w, cost, in, [&](auto& p, const sim::CostModel& c) { m = sim::replay(w, c, p, opt); });
  label_run(r, in, m);
  return m;
}

}  // namespace moesched::tools
