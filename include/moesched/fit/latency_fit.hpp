#pragma once
/// fit_profile: least-squares fits (Eigen) of the per-item time functions of a measured hardware
/// profile, with the fit error of each, for sim::CostModel and the latency model.
///
///   moesched::profile::HardwareProfile p = moesched::io::read_profile("h200.profile.json");
///   moesched::profile::MeasuredCosts m = moesched::fit::fit_profile(p);
///   for (const auto& f : m.fits) std::puts(moesched::profile::describe(f).c_str());
///   //  expert_ffn: 7 samples, error rms 1.10% max 2.40%; 48.3 us + 0.61 us x tokens
///
/// Each item is ns = c0 + sum_i c_i x_i over its drivers (profile/profile.hpp lists them). The
/// fit minimises the relative error (each sample's row is divided by its time, so a 5 us kernel
/// counts as much as a 5 ms one) with every coefficient non-negative: exact non-negative least
/// squares by trying every subset of the (at most four) terms, solving each by column-pivoting
/// QR, keeping the best subset whose coefficients are all >= 0. A term whose driver never varies
/// in the samples (no context lengths profiled, say) drops out on its own; the report's formula
/// shows the terms kept. The copy curve is not fitted: its medians become TransferCurve knots,
/// made non-decreasing (a measured median may dip by noise; the report counts the ones raised).
/// Eigen only here and in predictor math; never in a header nvcc compiles.

#include "moesched/core/error.hpp"
#include "moesched/core/hardware.hpp"
#include "moesched/profile/profile.hpp"

#include <Eigen/Dense>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

namespace moesched::fit {

/// One row of a fit: the drivers' values (x[0] is the constant 1) and the measured time.
struct FitRow {
  std::array<double, 4> x{};
  double ns = 0.0;
};

/// The result of fitting one item.
struct ItemFit {
  profile::LinearTime time;
  profile::FitReport report;
};

/// Non-negative, relative-error least squares of `rows` over the first `terms` columns (<= 4).
/// `names` name the drivers of columns 1..terms-1 for the report's formula ("tokens", ...).
/// Throws ConfigError (naming `source` and `item`) when there are no rows or a time is not
/// positive.
[[nodiscard]] inline ItemFit fit_item(const std::vector<FitRow>& rows, std::uint32_t terms,
                                      const std::vector<std::string>& names, const std::string& item,
                                      const std::string& source = "") {
  if (rows.empty()) throw ConfigError(source, item, "[]", "needs at least one sample to fit");
  if (terms < 1 || terms > 4 || names.size() + 1 < terms) {
    throw ConfigError(source, item, std::to_string(terms), "a fit has 1 to 4 terms, each named");
  }
  for (std::size_t i = 0; i < rows.size(); ++i) {
    if (!(rows[i].ns > 0.0) || !std::isfinite(rows[i].ns)) {
      throw ConfigError(source, item + "[" + std::to_string(i) + "].ns", std::to_string(rows[i].ns),
                        "must be a positive time");
    }
  }
  const auto n = static_cast<Eigen::Index>(rows.size());
  double best_err = std::numeric_limits<double>::infinity();
  std::array<double, 4> best{};
  bool found = false;
  // Every non-empty subset of the terms; the constant alone is always feasible (its least-squares
  // value is positive: the mean of positive ratios), so some subset is found.
  for (std::uint32_t mask = 1; mask < (1U << terms); ++mask) {
    std::vector<std::uint32_t> cols;
    for (std::uint32_t c = 0; c < terms; ++c) {
      if ((mask >> c) & 1U) cols.push_back(c);
    }
    const auto k = static_cast<Eigen::Index>(cols.size());
    if (k > n) continue;
    Eigen::MatrixXd a(n, k);
    Eigen::VectorXd b = Eigen::VectorXd::Ones(n);
    for (Eigen::Index r = 0; r < n; ++r) {
      const FitRow& row = rows[static_cast<std::size_t>(r)];
      for (Eigen::Index j = 0; j < k; ++j) a(r, j) = row.x[cols[static_cast<std::size_t>(j)]] / row.ns;
    }
    Eigen::ColPivHouseholderQR<Eigen::MatrixXd> qr(a);
    if (qr.rank() < k) continue;  // a driver that does not vary (or duplicates another)
    const Eigen::VectorXd sol = qr.solve(b);
    if ((sol.array() < 0.0).any() || !sol.allFinite()) continue;
    const double err = (a * sol - b).squaredNorm();
    // prefer fewer terms on a tie (within rounding): the simpler formula
    if (err < best_err * (1.0 - 1e-9) || !found) {
      best_err = err;
      best = {};
      for (Eigen::Index j = 0; j < k; ++j) best[cols[static_cast<std::size_t>(j)]] = sol(j);
      found = true;
    }
  }
  ItemFit out;
  out.time.c = best;
  profile::FitReport& rep = out.report;
  rep.item = item;
  rep.samples = static_cast<std::uint32_t>(rows.size());
  double sq = 0.0;
  for (const FitRow& row : rows) {
    double v = 0.0;
    for (std::uint32_t c = 0; c < 4; ++c) v += best[c] * row.x[c];
    const double rel = std::abs(v - row.ns) / row.ns;
    sq += rel * rel;
    rep.max_relative_error = std::max(rep.max_relative_error, rel);
  }
  rep.rms_relative_error = std::sqrt(sq / static_cast<double>(rows.size()));
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.3f us", best[0] / 1e3);
  rep.terms = buf;
  for (std::uint32_t c = 1; c < terms; ++c) {
    if (best[c] == 0.0) continue;
    if (best[c] >= 100.0) {
      std::snprintf(buf, sizeof buf, " + %.3f us x ", best[c] / 1e3);
    } else {
      std::snprintf(buf, sizeof buf, " + %.4g ns x ", best[c]);
    }
    rep.terms += buf + names[c - 1];
  }
  return out;
}

/// The KV tokens read and the query-key pairs of a single sequence's pass of `tokens` tokens over
/// a cache of `context` tokens, counted as the workload counts them (Pass::kv_tokens = context +
/// tokens, Pass::attention_pairs = tokens x (context + tokens)).
[[nodiscard]] inline std::array<double, 2> attention_drivers(double tokens, double context) noexcept {
  return {context + tokens, tokens * (context + tokens)};
}

/// Fit every item of `p` (see the header comment). Throws ConfigError naming the profile's file.
[[nodiscard]] inline profile::MeasuredCosts fit_profile(const profile::HardwareProfile& p) {
  profile::MeasuredCosts m;
  m.source = p.source;
  m.gpu = p.gpu;
  m.model = p.model;
  m.kernel_launch_ns = p.kernel_launch_ns;
  m.gemm_slowdown_under_copy = p.gemm_slowdown_under_copy;
  m.host = p.host;
  auto tokens_fit = [&](const std::vector<profile::TokenSample>& v, const std::string& item) {
    std::vector<FitRow> rows;
    for (const auto& s : v) rows.push_back({{1.0, static_cast<double>(s.tokens), 0.0, 0.0}, s.ns});
    ItemFit f = fit_item(rows, 2, {"tokens"}, item, p.source);
    m.fits.push_back(f.report);
    return f.time;
  };
  m.expert = tokens_fit(p.expert_ffn, "expert_ffn");
  {
    std::vector<FitRow> rows;
    for (const auto& s : p.dense) {
      const auto t = static_cast<double>(s.tokens);
      const auto d = attention_drivers(t, static_cast<double>(s.context));
      rows.push_back({{1.0, t, d[0], d[1]}, s.ns});
    }
    ItemFit f = fit_item(rows, 4, {"tokens", "KV tokens", "query-key pairs"}, "dense", p.source);
    m.fits.push_back(f.report);
    m.dense = f.time;
  }
  m.head = tokens_fit(p.head, "head");
  m.draft_step = tokens_fit(p.draft_step, "draft_step");
  m.router = tokens_fit(p.router, "router");

  if (p.copy_h2d.empty()) throw ConfigError(p.source, "copy_h2d", "[]", "needs at least one copy size");
  std::vector<TransferCurve::Knot> knots;
  std::uint32_t raised = 0;
  for (const auto& s : p.copy_h2d) {
    auto t = Nanoseconds{static_cast<std::int64_t>(std::ceil(s.ns))};
    if (!knots.empty() && t < knots.back().time) {
      t = knots.back().time;
      ++raised;
    }
    knots.push_back({Bytes{s.bytes}, t});
  }
  try {
    m.copy_h2d = TransferCurve::from_knots(std::move(knots));
  } catch (const ConfigError& e) {
    throw ConfigError(p.source, "copy_h2d", e.value(), e.reason());
  }
  profile::FitReport copy;
  copy.item = "copy_h2d";
  copy.samples = static_cast<std::uint32_t>(p.copy_h2d.size());
  copy.terms = "piecewise linear through the measured medians" +
               (raised == 0 ? std::string() : " (" + std::to_string(raised) + " raised to stay non-decreasing)");
  m.fits.push_back(copy);
  if (p.host.measured()) {
    profile::FitReport host;
    host.item = "host";
    host.samples = 1;
    char buf[320];
    std::snprintf(buf, sizeof buf,
                  "measured constants: submit dense %.1f us, expert %.1f us, head %.1f us, draft step %.1f us; "
                  "launch %.1f us; notify %.1f us; handle %.2f us per completion; copy launch %.1f us",
                  p.host.submit_dense_ns / 1e3, p.host.submit_expert_ns / 1e3, p.host.submit_head_ns / 1e3,
                  p.host.submit_draft_ns / 1e3, p.host.launch_ns / 1e3, p.host.notify_ns / 1e3, p.host.handle_ns / 1e3,
                  p.host.copy_launch_ns / 1e3);
    host.terms = buf;
    m.fits.push_back(host);
  }
  if (p.gemm_slowdown_under_copy > 1.0) {
    profile::FitReport slow;
    slow.item = "gemm_slowdown_under_copy";
    slow.samples = 1;
    char buf[160];
    std::snprintf(buf, sizeof buf, "measured constant: a kernel beside a host-to-device copy takes x%.3f (applied to the part "
                  "that overlaps the link's copies)", p.gemm_slowdown_under_copy);
    slow.terms = buf;
    m.fits.push_back(slow);
  }
  return m;
}

}  // namespace moesched::fit
