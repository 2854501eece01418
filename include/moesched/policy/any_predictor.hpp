#pragma once
/// AnyRoutingPredictor: one of the routing-only predictors (popularity, cross-layer transitions,
/// MoE-Infinity's activation matrix), chosen at run time; itself an ExpertPredictor. What a policy
/// that "takes its predictor by name" holds, so that it is compiled once, not once per predictor.
///
///   moesched::policy::AnyRoutingPredictor p(moesched::policy::TransitionPredictor{2});
///   p.label();                 // "transition"
///   p.resize(8, 8); p.observe(0, needed); p.predict(1, out);
///
/// Each call forwards to the held predictor (std::visit over three alternatives); the costs are
/// the held predictor's.

#include "moesched/core/config.hpp"
#include "moesched/core/expert_id.hpp"
#include "moesched/policy/activation_matrix_predictor.hpp"
#include "moesched/policy/expert_predictor.hpp"
#include "moesched/policy/popularity_predictor.hpp"
#include "moesched/policy/transition_predictor.hpp"
#include "moesched/runtime/executor.hpp"
#include "moesched/runtime/jobs.hpp"

#include <cstdint>
#include <span>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

namespace moesched::policy {

class AnyRoutingPredictor {
 public:
  [[nodiscard]] static constexpr std::string_view name() noexcept { return "routing"; }

  AnyRoutingPredictor() = default;
  AnyRoutingPredictor(TransitionPredictor p) : p_(std::move(p)) {}          // NOLINT: implicit by design
  AnyRoutingPredictor(PopularityPredictor p) : p_(std::move(p)) {}          // NOLINT
  AnyRoutingPredictor(ActivationMatrixPredictor p) : p_(std::move(p)) {}    // NOLINT

  /// The held predictor's name (transition, popularity, activation-matrix).
  [[nodiscard]] std::string_view label() const noexcept {
    return std::visit([](const auto& p) { return std::string_view(std::decay_t<decltype(p)>::name()); }, p_);
  }
  /// The held predictor, if it is a `P`.
  template <class P>
  [[nodiscard]] const P* get() const noexcept {
    return std::get_if<P>(&p_);
  }

  void resize(std::uint32_t layers, std::uint32_t experts) {
    std::visit([&](auto& p) { p.resize(layers, experts); }, p_);
  }
  void begin_pass(const PassInfo& pass) {
    std::visit([&](auto& p) { p.begin_pass(pass); }, p_);
  }
  void observe(std::uint32_t layer, std::span<const ExpertId> needed) {
    std::visit([&](auto& p) { p.observe(layer, needed); }, p_);
  }
  [[nodiscard]] std::uint32_t predict(std::uint32_t layer, std::span<runtime::ScoredExpert> out) const {
    return std::visit([&](const auto& p) { return p.predict(layer, out); }, p_);
  }

 private:
  std::variant<TransitionPredictor, PopularityPredictor, ActivationMatrixPredictor> p_;
};

static_assert(ExpertPredictor<AnyRoutingPredictor>);

}  // namespace moesched::policy
