#pragma once
/// read_profile / write_profile / profile_to_json: the hardware profile file moesched-profile
/// writes and `moesched-sim --profile` (and moesched-replay) read.
///
///   moesched::profile::HardwareProfile p = moesched::io::read_profile("h200-mixtral.profile.json");
///   moesched::io::write_profile(p, "copy.profile.json");      // atomic
///
/// The file (format "moesched-profile", version 1); times are ns, medians of the repeats:
///   {"format": "moesched-profile", "version": 1, "gpu": "NVIDIA H200", "model": "mixtral-8x7b",
///    "dtype": "bf16",
///    "copy_h2d":   [{"bytes": 65536, "ns": 4100.0}, ...],          sizes strictly increasing
///    "expert_ffn": [{"tokens": 1, "ns": 52000.0}, ...],            tokens routed to one expert
///    "dense":      [{"tokens": 1, "context": 512, "ns": 61000.0}, ...]  one MoE decoder layer
///    "head":       [{"tokens": 1, "ns": 30000.0}, ...],
///    "draft_step": [{"tokens": 1, "ns": 800000.0}, ...],           tokens = sequences drafting
///    "router":     [{"tokens": 1, "ns": 6000.0}, ...],
///    "kernel_launch_ns": 2400.0, "gemm_slowdown_under_copy": 1.02,
///    "host": {"submit_ns": {"dense": 9000.0, "expert": 8000.0, "head": 4000.0, "draft_step": 90000.0},
///             "launch_ns": 6000.0, "notify_ns": 5000.0,              optional: the executor's host
///             "handle_ns": 2500.0, "copy_launch_ns": 9000.0},       costs (profile::HostCosts;
///                                                                   the last two optional, 0 if absent)
///    "notes": ["..."]}                                              optional, ignored
/// Every list needs at least one sample (expert_ffn, dense, head: at least two distinct driver
/// values, so a slope can be fitted; fit/latency_fit.hpp says which). Unknown fields, wrong types,
/// non-positive times and repeated sizes are ConfigError naming the file, the field
/// (`expert_ffn[3].ns`) and the value.

#include "moesched/core/error.hpp"
#include "moesched/io/atomic_file.hpp"
#include "moesched/io/json_reader.hpp"
#include "moesched/io/presets.hpp"
#include "moesched/profile/profile.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace moesched::io {

inline constexpr const char* kProfileFormat = "moesched-profile";
inline constexpr std::uint64_t kProfileVersion = 1;

namespace detail {

template <class Sample, class Fill>
std::vector<Sample> read_samples(JsonObjectReader& r, const std::string& key, Fill fill) {
  const nlohmann::json& v = r.required_raw(key);
  if (!v.is_array()) throw r.error(key, "expected a list of samples, got " + json_type_name(v));
  if (v.empty()) throw r.error(key, "needs at least one sample");
  std::vector<Sample> out;
  for (std::size_t i = 0; i < v.size(); ++i) {
    JsonObjectReader s(v[i], r.source(), r.field(key) + "[" + std::to_string(i) + "]");
    Sample x{};
    fill(s, x);
    x.ns = s.required_number("ns", true);
    s.finish();
    out.push_back(x);
  }
  return out;
}

inline std::vector<profile::TokenSample> read_token_samples(JsonObjectReader& r, const std::string& key) {
  return read_samples<profile::TokenSample>(r, key, [](JsonObjectReader& s, profile::TokenSample& x) {
    x.tokens = static_cast<std::uint32_t>(s.required_uint("tokens", 1, 1U << 20));
  });
}

}  // namespace detail

/// Parse a profile from JSON; `source` names it in errors.
[[nodiscard]] inline profile::HardwareProfile profile_from_json(const nlohmann::json& j, const std::string& source) {
  JsonObjectReader r(j, source);
  const std::string format = r.required_string("format");
  if (format != kProfileFormat) {
    throw r.error("format", std::string("not a hardware profile (expected \"") + kProfileFormat + "\")");
  }
  const std::uint64_t version = r.required_uint("version", 1);
  if (version != kProfileVersion) {
    throw r.error("version", "this build reads version " + std::to_string(kProfileVersion));
  }
  profile::HardwareProfile p;
  p.source = source;
  p.gpu = r.required_string("gpu");
  p.model = r.required_string("model");
  p.dtype = r.optional_string("dtype").value_or("bf16");
  p.copy_h2d = detail::read_samples<profile::CopySample>(r, "copy_h2d", [](JsonObjectReader& s, profile::CopySample& x) {
    x.bytes = s.required_uint("bytes", 1, std::uint64_t{1} << 40);
  });
  for (std::size_t i = 1; i < p.copy_h2d.size(); ++i) {
    if (p.copy_h2d[i].bytes <= p.copy_h2d[i - 1].bytes) {
      throw ConfigError(source, "copy_h2d[" + std::to_string(i) + "].bytes", std::to_string(p.copy_h2d[i].bytes),
                        "copy sizes must be strictly increasing");
    }
  }
  p.expert_ffn = detail::read_token_samples(r, "expert_ffn");
  p.dense = detail::read_samples<profile::DenseSample>(r, "dense", [](JsonObjectReader& s, profile::DenseSample& x) {
    x.tokens = static_cast<std::uint32_t>(s.required_uint("tokens", 1, 1U << 20));
    x.context = s.required_uint("context", 0, std::uint64_t{1} << 24);
  });
  p.head = detail::read_token_samples(r, "head");
  p.draft_step = detail::read_token_samples(r, "draft_step");
  p.router = detail::read_token_samples(r, "router");
  p.kernel_launch_ns = r.optional_number("kernel_launch_ns", false).value_or(0.0);
  p.gemm_slowdown_under_copy = r.optional_number("gemm_slowdown_under_copy", true).value_or(1.0);
  if (r.has("host")) {
    JsonObjectReader h = r.object("host");
    JsonObjectReader sub = h.object("submit_ns");
    p.host.submit_dense_ns = sub.required_number("dense", false);
    p.host.submit_expert_ns = sub.required_number("expert", false);
    p.host.submit_head_ns = sub.required_number("head", false);
    p.host.submit_draft_ns = sub.required_number("draft_step", false);
    sub.finish();
    p.host.launch_ns = h.required_number("launch_ns", false);
    p.host.notify_ns = h.required_number("notify_ns", false);
    p.host.handle_ns = h.optional_number("handle_ns", false).value_or(0.0);
    p.host.copy_launch_ns = h.optional_number("copy_launch_ns", false).value_or(0.0);
    h.finish();
  }
  (void)r.optional_string_list("notes");
  r.finish();
  return p;
}

/// Read a profile file (errors name the file, the field and the value).
[[nodiscard]] inline profile::HardwareProfile read_profile(const std::filesystem::path& path) {
  return profile_from_json(read_json_file(path), path.string());
}

/// The profile as JSON (what write_profile writes; profile_from_json reads it back unchanged).
[[nodiscard]] inline nlohmann::json profile_to_json(const profile::HardwareProfile& p,
                                                    const std::vector<std::string>& notes = {}) {
  nlohmann::json j;
  j["format"] = kProfileFormat;
  j["version"] = kProfileVersion;
  j["gpu"] = p.gpu;
  j["model"] = p.model;
  j["dtype"] = p.dtype;
  auto tokens = [](const std::vector<profile::TokenSample>& v) {
    nlohmann::json a = nlohmann::json::array();
    for (const auto& s : v) a.push_back({{"tokens", s.tokens}, {"ns", s.ns}});
    return a;
  };
  nlohmann::json copy = nlohmann::json::array();
  for (const auto& s : p.copy_h2d) copy.push_back({{"bytes", s.bytes}, {"ns", s.ns}});
  j["copy_h2d"] = copy;
  j["expert_ffn"] = tokens(p.expert_ffn);
  nlohmann::json dense = nlohmann::json::array();
  for (const auto& s : p.dense) dense.push_back({{"tokens", s.tokens}, {"context", s.context}, {"ns", s.ns}});
  j["dense"] = dense;
  j["head"] = tokens(p.head);
  j["draft_step"] = tokens(p.draft_step);
  j["router"] = tokens(p.router);
  j["kernel_launch_ns"] = p.kernel_launch_ns;
  j["gemm_slowdown_under_copy"] = p.gemm_slowdown_under_copy;
  if (p.host.measured()) {
    j["host"] = {{"submit_ns",
                  {{"dense", p.host.submit_dense_ns},
                   {"expert", p.host.submit_expert_ns},
                   {"head", p.host.submit_head_ns},
                   {"draft_step", p.host.submit_draft_ns}}},
                 {"launch_ns", p.host.launch_ns},
                 {"notify_ns", p.host.notify_ns},
                 {"handle_ns", p.host.handle_ns},
                 {"copy_launch_ns", p.host.copy_launch_ns}};
  }
  if (!notes.empty()) j["notes"] = notes;
  return j;
}

/// Write a profile file atomically.
inline void write_profile(const profile::HardwareProfile& p, const std::filesystem::path& path,
                          const std::vector<std::string>& notes = {}) {
  const std::string text = profile_to_json(p, notes).dump(1) + "\n";
  write_file_atomically(path, text.data(), text.size());
}

}  // namespace moesched::io
