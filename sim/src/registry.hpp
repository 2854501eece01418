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

#include <moesched/core/error.hpp>
#include <moesched/policy/baseline.hpp>
#include <moesched/policy/oracle.hpp>
#include <moesched/policy/predictive.hpp>
#include <moesched/policy/prefetch.hpp>
#include <moesched/runtime/jobs.hpp>
#include <moesched/sim/replay.hpp>
#include <moesched/workload/workload.hpp>

#include <array>
#include <cstdint>
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

/// Predictive policies over routing-only predictors (policy::Predictive): they run on any trace.
/// Not in policy_names(), so compare's default list stays the baselines and the channels.
[[nodiscard]] inline std::span<const std::string_view> predictive_policy_names() noexcept {
  static constexpr std::array<std::string_view, 3> kNames{"predict:popularity", "predict:transition", "moe-infinity"};
  return kNames;
}

/// The prefix of predictive policy names: "prefetch:" + channel.
inline constexpr std::string_view kPrefetchPrefix = "prefetch:";

/// The channel a `prefetch:CHANNEL` name replays, or "" for other names.
[[nodiscard]] inline std::string_view prefetch_channel(std::string_view name) noexcept {
  return name.starts_with(kPrefetchPrefix) ? name.substr(kPrefetchPrefix.size()) : std::string_view{};
}

/// One-line description of a policy, for --help.
[[nodiscard]] inline std::string_view policy_summary(std::string_view name) noexcept {
  if (name == "on-demand") return "copy on miss; the budget is one LRU cache over all layers";
  if (name == "lru") return "per-layer LRU with equal shares (Mixtral-offloading, ProMoE's cache)";
  if (name == "lfu") return "evict the least frequently used expert (ties: least recently used)";
  if (name == "static") return "pin the most used experts at start, stage misses through LRU slots";
  if (name == "oracle") return "perfect future knowledge: Belady eviction, copies as early as memory allows";
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
  if (name == "prefetch") {
    return "prefetch:CHANNEL replays the trace's prediction channel CHANNEL through predictor jobs (CPU "
           "workers for MLP channels, the compute stream for gate channels), prefetching at low priority "
           "with early preemption (ProMoE's mechanism). Routing-only predictors (any trace): "
           "predict:popularity, predict:transition, moe-infinity";
  }
  return "";
}

/// Throws ConfigError (field `policies`) unless `name` is a known policy or `prefetch:CHANNEL`.
inline void check_policy_name(std::string_view name) {
  for (auto n : policy_names()) {
    if (n == name) return;
  }
  for (auto n : predictive_policy_names()) {
    if (n == name) return;
  }
  if (!prefetch_channel(name).empty()) return;
  std::string list;
  for (auto n : policy_names()) list += (list.empty() ? "" : ", ") + std::string(n);
  for (auto n : predictive_policy_names()) list += ", " + std::string(n);
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
};

namespace registry_detail {
template <class Pred>
runtime::RunMetrics run_predictive(std::string_view name, Pred predictor, std::uint32_t horizon, const Workload& w,
                                   const sim::CostModel& cost, const sim::SimOptions& opt, const PolicyInputs& in) {
  if (in.training != nullptr) {
    if (in.training->shape().layers != w.shape().layers || in.training->shape().experts != w.shape().experts) {
      throw ConfigError("", "train_trace", std::to_string(in.training->shape().layers) + " x " +
                                               std::to_string(in.training->shape().experts),
                        "differs from the replayed workload's layers x experts");
    }
    policy::warm(predictor, *in.training);
  }
  policy::Predictive<Pred> p(std::move(predictor),
                             {.depth = in.prefetch_depth, .lookahead = in.lookahead, .horizon = horizon, .top = in.predict_top});
  runtime::RunMetrics m = sim::replay(w, cost, p, opt);
  m.policy = std::string(name);
  return m;
}
}  // namespace registry_detail

/// Replays `w` under the policy called `name`.
[[nodiscard]] inline runtime::RunMetrics run_policy(std::string_view name, const Workload& w,
                                                    const sim::CostModel& cost, const sim::SimOptions& opt,
                                                    const PolicyInputs& in = {}) {
  check_policy_name(name);
  if (name == "on-demand") {
    policy::OnDemand p;
    return sim::replay(w, cost, p, opt);
  }
  if (name == "lru") {
    policy::LayerLru p;
    return sim::replay(w, cost, p, opt);
  }
  if (name == "lfu") {
    policy::Lfu p;
    return sim::replay(w, cost, p, opt);
  }
  if (name == "static") {
    policy::StaticPopular p(in.profile != nullptr ? *in.profile : expert_use_counts(w), w.max_layer_union());
    return sim::replay(w, cost, p, opt);
  }
  if (name == "oracle") {
    policy::Oracle p(w);
    return sim::replay(w, cost, p, opt);
  }
  if (name == "predict:popularity") {
    return registry_detail::run_predictive(name, policy::PopularityPredictor{}, in.horizon, w, cost, opt, in);
  }
  if (name == "predict:transition") {
    return registry_detail::run_predictive(name, policy::TransitionPredictor{}, in.horizon, w, cost, opt, in);
  }
  if (name == "moe-infinity") {
    return registry_detail::run_predictive(name, policy::ActivationMatrixPredictor{}, 0, w, cost, opt, in);
  }
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
  runtime::RunMetrics m = sim::replay(w, cost, p, opt);
  m.policy = std::string(name);
  m.predictions_late = p.too_late();
  return m;
}

}  // namespace moesched::tools
