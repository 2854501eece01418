#pragma once
/// ConfigError: the one exception type for bad configuration (presets, options, trace metadata).
///
///   try { auto m = ModelShape{...}; m.validate(); }
///   catch (const moesched::ConfigError& e) { std::cerr << e.what(); }
///   // "models/x.json: field 'top_k' = 9: must be <= experts_per_layer (8)"
///
/// Every error names where the bad value came from (a file, when known), the field (a dotted
/// path such as `h2d.points[2].gbps`) and the offending value, so a user can fix the input without
/// reading source code. Exceptions are used only at configuration time, never on the hot path.

#include "moesched/core/config.hpp"

#include <charconv>
#include <stdexcept>
#include <string>
#include <utility>

namespace moesched {

/// Shortest text that reads back as `v` ("0.9", not "0.900000"), for messages.
[[nodiscard]] inline std::string to_text(double v) {
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return r.ec == std::errc{} ? std::string(buf, r.ptr) : std::string("?");
}

/// Invalid configuration input: names the source (file), the field, the value and the reason.
class ConfigError : public std::runtime_error {
 public:
  ConfigError(std::string source, std::string field, std::string value, std::string reason)
      : std::runtime_error(compose(source, field, value, reason)),
        source_(std::move(source)),
        field_(std::move(field)),
        value_(std::move(value)),
        reason_(std::move(reason)) {}

  /// The file (or other origin) the value came from; empty when not known yet.
  [[nodiscard]] const std::string& source() const noexcept { return source_; }
  /// Dotted path of the offending field, for example `attention.kv_heads`.
  [[nodiscard]] const std::string& field() const noexcept { return field_; }
  /// The offending value as text (JSON-like rendering).
  [[nodiscard]] const std::string& value() const noexcept { return value_; }
  /// Why the value is rejected.
  [[nodiscard]] const std::string& reason() const noexcept { return reason_; }

  /// The same error attributed to `source` (kept if one is already set).
  [[nodiscard]] ConfigError in_source(const std::string& source) const {
    return {source_.empty() ? source : source_, field_, value_, reason_};
  }
  /// The same error with `prefix.` put before the field path (for nested objects).
  [[nodiscard]] ConfigError under(const std::string& prefix) const {
    return {source_, field_.empty() ? prefix : prefix + "." + field_, value_, reason_};
  }

 private:
  static std::string compose(const std::string& source, const std::string& field,
                             const std::string& value, const std::string& reason) {
    std::string out;
    if (!source.empty()) out += source + ": ";
    if (!field.empty()) {
      out += "field '" + field + "'";
      if (!value.empty()) out += " = " + value;
      out += ": ";
    } else if (!value.empty()) {
      out += value + ": ";
    }
    out += reason;
    return out;
  }

  std::string source_;
  std::string field_;
  std::string value_;
  std::string reason_;
};

}  // namespace moesched
