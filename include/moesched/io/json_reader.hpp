#pragma once
/// JsonObjectReader: strict, error-naming access to one JSON object of a configuration file.
///
///   nlohmann::json j = nlohmann::json::parse(text);
///   moesched::io::JsonObjectReader r(j, "presets/models/x.json");
///   std::uint32_t layers = r.required_uint("decoder_layers");  // errors name file, field, value
///   bool tied = r.optional_bool("tie_embeddings").value_or(false);
///   r.finish();  // rejects fields nobody asked for, suggesting the closest known name
///
/// Every read records the field as known, so finish() can report typos ("hiden_size") instead of
/// silently ignoring them. Errors are ConfigError with the file, the dotted field path and the
/// offending value rendered as JSON.

#include "moesched/core/error.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace moesched::io {

/// Render a JSON value for an error message, shortened to about 80 characters.
[[nodiscard]] inline std::string render_json_value(const nlohmann::json& v) {
  std::string s = v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

/// Name of a JSON value's type, for "expected X, got Y" messages.
[[nodiscard]] inline std::string json_type_name(const nlohmann::json& v) {
  if (v.is_number_integer() || v.is_number_unsigned()) return "integer";
  if (v.is_number_float()) return "number";
  return v.type_name();
}

/// A nlohmann-json exception's message without its "[json.exception.parse_error.101] " prefix,
/// e.g. "parse error at line 3, column 5: ...". Covers parse_error and the out_of_range thrown
/// for numbers too large for a double.
[[nodiscard]] inline std::string json_error_text(const nlohmann::json::exception& e) {
  std::string msg = e.what();
  const auto pos = msg.find("] ");
  return pos == std::string::npos ? msg : msg.substr(pos + 2);
}

/// Levenshtein distance, for "did you mean" suggestions.
[[nodiscard]] inline std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diag = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0U : 1U)});
      diag = up;
    }
  }
  return row[b.size()];
}

/// The candidate closest to `word` if it is close enough to be a plausible typo.
[[nodiscard]] inline std::optional<std::string> closest_match(
    std::string_view word, const std::vector<std::string>& candidates) {
  std::optional<std::string> best;
  std::size_t best_d = std::numeric_limits<std::size_t>::max();
  for (const auto& c : candidates) {
    const std::size_t d = edit_distance(word, c);
    if (d < best_d) {
      best_d = d;
      best = c;
    }
  }
  if (best && best_d <= std::max<std::size_t>(2, word.size() / 3)) return best;
  return std::nullopt;
}

/// Strict reader of one JSON object. See the file comment.
class JsonObjectReader {
 public:
  /// `path` is the dotted path of this object inside the file ("" for the root).
  JsonObjectReader(const nlohmann::json& object, std::string source, std::string path = "")
      : j_(object), source_(std::move(source)), path_(std::move(path)) {
    if (!j_.is_object()) {
      throw ConfigError(source_, path_.empty() ? "(root)" : path_, render_json_value(j_),
                        "expected an object, got " + json_type_name(j_));
    }
  }

  [[nodiscard]] const std::string& source() const noexcept { return source_; }
  [[nodiscard]] bool has(const std::string& key) const { return j_.contains(key); }
  /// Dotted path of `key` inside the file.
  [[nodiscard]] std::string field(const std::string& key) const {
    return path_.empty() ? key : path_ + "." + key;
  }
  /// A ConfigError about `key` with its current value.
  [[nodiscard]] ConfigError error(const std::string& key, const std::string& reason) const {
    return {source_, field(key), j_.contains(key) ? render_json_value(j_.at(key)) : "", reason};
  }

  /// The raw value of `key`, marking it known; nullopt when absent.
  [[nodiscard]] const nlohmann::json* raw(const std::string& key) {
    known_.insert(key);
    auto it = j_.find(key);
    return it == j_.end() ? nullptr : &*it;
  }
  [[nodiscard]] const nlohmann::json& required_raw(const std::string& key) {
    const auto* v = raw(key);
    if (v == nullptr) throw ConfigError(source_, field(key), "", "required field is missing");
    return *v;
  }

  [[nodiscard]] std::optional<std::string> optional_string(const std::string& key) {
    const auto* v = raw(key);
    if (v == nullptr) return std::nullopt;
    if (!v->is_string()) throw error(key, "expected a string, got " + json_type_name(*v));
    return v->get<std::string>();
  }
  [[nodiscard]] std::string required_string(const std::string& key) {
    (void)required_raw(key);
    return *optional_string(key);
  }

  [[nodiscard]] std::optional<bool> optional_bool(const std::string& key) {
    const auto* v = raw(key);
    if (v == nullptr) return std::nullopt;
    if (!v->is_boolean()) throw error(key, "expected true or false, got " + json_type_name(*v));
    return v->get<bool>();
  }

  /// A non-negative integer within [min, max]; an integral float (4096.0) is accepted.
  [[nodiscard]] std::optional<std::uint64_t> optional_uint(
      const std::string& key, std::uint64_t min = 0,
      std::uint64_t max = std::numeric_limits<std::uint32_t>::max()) {
    const auto* v = raw(key);
    if (v == nullptr) return std::nullopt;
    std::uint64_t out = 0;
    if (v->is_number_unsigned()) {
      out = v->get<std::uint64_t>();
    } else if (v->is_number_integer()) {
      throw error(key, min > 0 ? "must be a positive integer" : "must not be negative");
    } else if (v->is_number_float()) {
      const double d = v->get<double>();
      if (!(d >= 0.0)) throw error(key, min > 0 ? "must be a positive integer" : "must not be negative");
      if (d != std::floor(d) || d > 1.8e19) throw error(key, "expected an integer");
      out = static_cast<std::uint64_t>(d);
    } else {
      throw error(key, "expected an integer, got " + json_type_name(*v));
    }
    if (out < min || out > max) {
      throw error(key, min == 1 && out == 0
                           ? std::string("must be a positive integer")
                           : "must be between " + std::to_string(min) + " and " + std::to_string(max));
    }
    return out;
  }
  [[nodiscard]] std::uint64_t required_uint(
      const std::string& key, std::uint64_t min = 0,
      std::uint64_t max = std::numeric_limits<std::uint32_t>::max()) {
    (void)required_raw(key);
    return *optional_uint(key, min, max);
  }
  [[nodiscard]] std::uint32_t required_u32(const std::string& key, std::uint32_t min = 0) {
    return static_cast<std::uint32_t>(required_uint(key, min));
  }
  [[nodiscard]] std::uint32_t optional_u32(const std::string& key, std::uint32_t fallback,
                                           std::uint32_t min = 0) {
    return static_cast<std::uint32_t>(optional_uint(key, min).value_or(fallback));
  }

  /// A finite number; `positive` rejects zero and negatives, otherwise negatives only.
  [[nodiscard]] std::optional<double> optional_number(const std::string& key, bool positive) {
    const auto* v = raw(key);
    if (v == nullptr) return std::nullopt;
    if (!v->is_number()) throw error(key, "expected a number, got " + json_type_name(*v));
    const double d = v->get<double>();
    if (!std::isfinite(d)) throw error(key, "must be finite");
    if (positive && !(d > 0.0)) throw error(key, "must be positive");
    if (!positive && d < 0.0) throw error(key, "must not be negative");
    return d;
  }
  [[nodiscard]] double required_number(const std::string& key, bool positive) {
    (void)required_raw(key);
    return *optional_number(key, positive);
  }

  /// A list of strings (empty when absent).
  [[nodiscard]] std::vector<std::string> optional_string_list(const std::string& key) {
    const auto* v = raw(key);
    std::vector<std::string> out;
    if (v == nullptr) return out;
    if (!v->is_array()) throw error(key, "expected a list of strings, got " + json_type_name(*v));
    for (std::size_t i = 0; i < v->size(); ++i) {
      const auto& e = (*v)[i];
      if (!e.is_string()) {
        throw ConfigError(source_, field(key) + "[" + std::to_string(i) + "]", render_json_value(e),
                          "expected a string, got " + json_type_name(e));
      }
      out.push_back(e.get<std::string>());
    }
    return out;
  }

  /// One of `choices`; returns its index.
  [[nodiscard]] std::optional<std::size_t> optional_choice(const std::string& key,
                                                           const std::vector<std::string>& choices) {
    auto s = optional_string(key);
    if (!s) return std::nullopt;
    for (std::size_t i = 0; i < choices.size(); ++i) {
      if (choices[i] == *s) return i;
    }
    std::string list;
    for (const auto& c : choices) list += (list.empty() ? "" : ", ") + c;
    throw error(key, "unknown value; expected one of: " + list);
  }

  /// A nested object reader for `key` (which must be an object).
  [[nodiscard]] JsonObjectReader object(const std::string& key) {
    return JsonObjectReader(required_raw(key), source_, field(key));
  }

  /// Throws ConfigError for the first field that was never read (unknown field).
  void finish() const {
    std::vector<std::string> known(known_.begin(), known_.end());
    for (const auto& [key, value] : j_.items()) {
      if (known_.count(key) != 0) continue;
      std::string reason = "unknown field";
      if (auto near = closest_match(key, known)) reason += " (did you mean '" + *near + "'?)";
      reason += "; known fields here: ";
      for (std::size_t i = 0; i < known.size(); ++i) reason += (i ? ", " : "") + known[i];
      throw ConfigError(source_, field(key), render_json_value(value), reason);
    }
  }

 private:
  const nlohmann::json& j_;
  std::string source_;
  std::string path_;
  std::set<std::string> known_;
};

}  // namespace moesched::io
