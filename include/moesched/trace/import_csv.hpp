#pragma once
/// CSV routing dumps (what llama.cpp-based tracing scripts write), read into the importer's
/// JSON records (trace/import.hpp does the rest).
///
///   auto table = moesched::trace::import_detail::read_csv(text, "dump.csv", false);
///   moesched::trace::import_detail::CsvLayout layout(table, fields, "dump.csv");
///   nlohmann::json record = layout.record(table.rows[0]);
///
/// Two layouts, a header row first (delimiter ',', tab or ';', whichever the header uses):
///  (a) one row per (token, layer):   request,token,layer,expert_0,expert_1,weight_0,weight_1
///      or one list column:           request,token,layer,experts,weights      ("1;7", "1 7", "[1, 7]")
///  (b) one row per token, one column per layer:
///                                    request,token,phase,layer_0,layer_1,...   ("1;7", "1|7", "[1,7]")
///      with optional weight columns layer_0_weights, ... An empty layer cell: that layer is missing.
/// Column names use the field spellings of ImportFieldNames, compared case-insensitively; a slot
/// column is a spelling (or its singular) followed by a number (expert_0, topk_ids_1, prob_0), a
/// layer column a layer spelling and a number (layer_3, moe_layer_3). Cells may be quoted ("" is
/// a quote); an unquoted cell that starts with '[' or '(' runs to its closing bracket, so
/// `[1, 7]` needs no quotes. Errors name the file, the line, the column and the value.

#include "moesched/core/error.hpp"
#include "moesched/io/json_reader.hpp"
#include "moesched/trace/import_options.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <system_error>
#include <tuple>
#include <utility>
#include <vector>

namespace moesched::trace::import_detail {

inline std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

inline std::string_view trim(std::string_view s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string_view::npos) return {};
  const auto e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

/// `s` as an integer: digits with an optional sign, or an integral decimal such as "5.0" (what
/// pandas writes for an integer column holding a NaN).
inline std::optional<std::int64_t> parse_integer(std::string_view s) {
  s = trim(s);
  if (s.empty()) return std::nullopt;
  std::string_view digits = s.front() == '+' ? s.substr(1) : s;
  std::int64_t v = 0;
  const auto r = std::from_chars(digits.data(), digits.data() + digits.size(), v);
  if (r.ec == std::errc{} && r.ptr == digits.data() + digits.size()) return v;
  double d = 0;
  const auto rd = std::from_chars(digits.data(), digits.data() + digits.size(), d);
  if (rd.ec == std::errc{} && rd.ptr == digits.data() + digits.size() && std::isfinite(d) && d == std::floor(d) && std::abs(d) < 9.0e15) {
    return static_cast<std::int64_t>(d);
  }
  return std::nullopt;
}

inline std::optional<double> parse_number(std::string_view s) {
  s = trim(s);
  if (!s.empty() && s.front() == '+') s.remove_prefix(1);
  if (s.empty()) return std::nullopt;
  double d = 0;
  const auto r = std::from_chars(s.data(), s.data() + s.size(), d);
  if (r.ec != std::errc{} || r.ptr != s.data() + s.size()) return std::nullopt;
  return d;
}

/// The items of a list cell: "1;7", "1|7", "1 7", "1,7", "[1, 7]", "(1, 7)"; empty: none.
inline std::vector<std::string_view> split_list_cell(std::string_view cell) {
  cell = trim(cell);
  if (cell.size() >= 2 && ((cell.front() == '[' && cell.back() == ']') || (cell.front() == '(' && cell.back() == ')'))) {
    cell = trim(cell.substr(1, cell.size() - 2));
  }
  std::vector<std::string_view> items;
  std::size_t i = 0;
  auto sep = [](char c) { return c == ';' || c == '|' || c == ',' || c == ' ' || c == '\t'; };
  while (i < cell.size()) {
    while (i < cell.size() && sep(cell[i])) ++i;
    std::size_t j = i;
    while (j < cell.size() && !sep(cell[j])) ++j;
    if (j > i) items.push_back(cell.substr(i, j - i));
    i = j;
  }
  return items;
}

/// Whether `s` is well-formed UTF-8 (no overlong forms, surrogates or code points past U+10FFFF).
inline bool valid_utf8(std::string_view s) noexcept {
  std::size_t i = 0;
  auto cont = [&](std::size_t k, unsigned lo, unsigned hi) {
    if (i + k >= s.size()) return false;
    const auto c = static_cast<unsigned char>(s[i + k]);
    return c >= lo && c <= hi;
  };
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t len = 0;
    if (c < 0x80) {
      len = 1;
    } else if (c >= 0xC2 && c <= 0xDF) {
      len = cont(1, 0x80, 0xBF) ? 2 : 0;
    } else if (c >= 0xE0 && c <= 0xEF) {
      const unsigned lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
      len = cont(1, lo, hi) && cont(2, 0x80, 0xBF) ? 3 : 0;
    } else if (c >= 0xF0 && c <= 0xF4) {
      const unsigned lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
      len = cont(1, lo, hi) && cont(2, 0x80, 0xBF) && cont(3, 0x80, 0xBF) ? 4 : 0;
    }
    if (len == 0) return false;
    i += len;
  }
  return true;
}

/// A CSV file split into cells, with the line each row starts on.
struct CsvTable {
  struct Row {
    std::uint64_t line = 0;
    std::vector<std::string> cells;
  };
  std::vector<std::string> header;
  std::uint64_t header_line = 0;
  std::vector<Row> rows;
  char delimiter = ',';
  /// The file ends without a line end inside a row that cannot be read (too few cells, an open
  /// quote): that row, on line `cut_line`, was left out.
  bool cut_last = false;
  std::uint64_t cut_line = 0;
};

/// Split `text` into a header and rows. `tolerate_cut_last`: a last row cut short (see CsvTable)
/// is left out instead of being an error.
inline CsvTable read_csv(std::string_view text, const std::string& file, bool tolerate_cut_last) {
  CsvTable t;
  if (text.size() >= 3 && text.substr(0, 3) == "\xEF\xBB\xBF") text.remove_prefix(3);  // UTF-8 byte order mark
  // delimiter: the most frequent of ',', tab, ';' on the first non-blank line (quotes skipped)
  {
    std::size_t b = text.find_first_not_of(" \t\r\n");
    const std::size_t e = std::min(text.find('\n', b == std::string_view::npos ? text.size() : b), text.size());
    std::size_t counts[3] = {0, 0, 0};
    bool q = false;
    for (std::size_t i = b == std::string_view::npos ? e : b; i < e; ++i) {
      if (text[i] == '"') q = !q;
      if (q) continue;
      if (text[i] == ',') ++counts[0];
      if (text[i] == '\t') ++counts[1];
      if (text[i] == ';') ++counts[2];
    }
    const char options[3] = {',', '\t', ';'};
    std::size_t best = 0;
    for (std::size_t k = 1; k < 3; ++k) {
      if (counts[k] > counts[best]) best = k;
    }
    t.delimiter = options[best];
  }
  const char delim = t.delimiter;
  const bool ends_with_newline = !text.empty() && text.back() == '\n';
  auto fail = [&](std::uint64_t line, std::size_t column, const std::string& value, const std::string& why) {
    throw ConfigError(file, "line " + std::to_string(line) + (column > 0 ? ", column " + std::to_string(column) : std::string()), value, why);
  };
  std::size_t i = 0;
  std::uint64_t line = 1;
  const std::size_t n = text.size();
  while (i < n) {
    CsvTable::Row row;
    row.line = line;
    bool any_quoted = false;
    bool cut = false;
    while (true) {  // one cell per round
      std::string cell;
      if (i < n && text[i] == '"') {
        any_quoted = true;
        const std::uint64_t start_line = line;
        ++i;
        bool closed = false;
        while (i < n) {
          const char c = text[i];
          if (c == '"') {
            if (i + 1 < n && text[i + 1] == '"') {
              cell += '"';
              i += 2;
              continue;
            }
            ++i;
            closed = true;
            break;
          }
          if (c == '\n') ++line;
          cell += c;
          ++i;
        }
        if (!closed) {
          if (tolerate_cut_last && !ends_with_newline && line == start_line && !t.header.empty() && !t.rows.empty()) {
            cut = true;
            break;
          }
          fail(start_line, row.cells.size() + 1, "", "a quoted cell is never closed");
        }
        while (i < n && (text[i] == ' ' || text[i] == '\r' || (text[i] == '\t' && delim != '\t'))) ++i;
        if (i < n && text[i] != delim && text[i] != '\n') {
          fail(line, row.cells.size() + 1, io::render_json_value(nlohmann::json(std::string(1, text[i]))), "text after the closing quote of a cell");
        }
      } else {
        const std::size_t b = i;
        while (i < n && (text[i] == ' ' || (text[i] == '\t' && delim != '\t'))) ++i;
        const bool bracketed = i < n && (text[i] == '[' || text[i] == '(');  // a list: delimiters inside do not split
        int depth = 0;
        while (i < n && text[i] != '\n') {
          const char c = text[i];
          if (bracketed && (c == '[' || c == '(')) ++depth;
          if (bracketed && (c == ']' || c == ')') && depth > 0) --depth;
          if (c == delim && depth == 0) break;
          ++i;
        }
        cell = std::string(trim(text.substr(b, i - b)));
      }
      if (!valid_utf8(cell)) fail(row.line, row.cells.size() + 1, "", "not UTF-8 text (save the file as UTF-8)");
      row.cells.push_back(std::move(cell));
      if (i < n && text[i] == delim) {
        ++i;
        continue;
      }
      if (i < n && text[i] == '\n') {
        ++i;
        ++line;
      }
      break;
    }
    if (!cut && row.cells.size() == 1 && row.cells[0].empty() && !any_quoted) continue;  // blank line
    if (t.header.empty() && !cut) {
      t.header = std::move(row.cells);
      t.header_line = row.line;
      continue;
    }
    const bool last = i >= n;
    // trailing empty cells beyond the header (a delimiter at the end of the line) are harmless
    while (row.cells.size() > t.header.size() && row.cells.back().empty()) row.cells.pop_back();
    if (cut || row.cells.size() != t.header.size()) {
      if (tolerate_cut_last && last && !ends_with_newline && !t.rows.empty() && (cut || row.cells.size() < t.header.size())) {
        t.cut_last = true;
        t.cut_line = row.line;
        break;
      }
      fail(row.line, 0, std::to_string(row.cells.size()) + " cells", "the header (line " + std::to_string(t.header_line) + ") has " +
                                                                        std::to_string(t.header.size()) + " columns");
    }
    t.rows.push_back(std::move(row));
  }
  if (t.header.empty()) throw ConfigError(file, "", "", "the file is empty");
  return t;
}

/// What each CSV column holds, and how a row becomes an importer record.
class CsvLayout {
 public:
  CsvLayout(const CsvTable& t, const ImportFieldNames& f, std::string file) : file_(std::move(file)), line_(t.header_line) {
    experts_key_ = f.experts.empty() ? "experts" : f.experts.front();
    weights_key_ = f.weights.empty() ? "weights" : f.weights.front();
    layers_key_ = f.layers.empty() ? "layers" : f.layers.front();
    auto stems = [](const std::vector<std::string>& names, std::initializer_list<const char*> more) {
      std::set<std::string> s;
      for (const auto& n : names) {
        s.insert(lower(n));
        if (n.size() > 1 && n.back() == 's') s.insert(lower(n.substr(0, n.size() - 1)));
      }
      for (const char* m : more) s.insert(m);
      return s;
    };
    const auto expert_stems = stems(f.experts, {"expert"});
    const auto weight_stems = stems(f.weights, {"weight", "prob"});
    std::set<std::string> layer_stems;
    for (const auto& n : f.layer) layer_stems.insert(lower(n));
    // every spelling of a scalar field, lower-cased -> the spelling (the record's key)
    std::map<std::string, std::string> scalar;
    for (const auto* list : {&f.request, &f.request_key, &f.token, &f.position, &f.layer, &f.phase, &f.step, &f.draft_len, &f.accepted, &f.token_id}) {
      for (const auto& n : *list) scalar.emplace(lower(n), n);
    }
    std::set<std::string> seen;
    std::map<std::int64_t, std::size_t> expert_slots, weight_slots;
    for (std::size_t c = 0; c < t.header.size(); ++c) {
      const std::string& h = t.header[c];
      const std::string l = lower(trim(h));
      if (l.empty()) fail_header(c, h, "a column needs a name");
      if (!seen.insert(l).second) fail_header(c, h, "column name given twice");
      Column col{Role::scalar, c, 0, h, h};
      if (contains_lower(f.experts, l)) {
        col.role = Role::experts_list;
      } else if (contains_lower(f.weights, l)) {
        col.role = Role::weights_list;
      } else if (auto it = scalar.find(l); it != scalar.end()) {
        col.key = it->second;
      } else if (auto parts = numbered(l)) {
        const auto& [prefix, number, suffix] = *parts;
        if (suffix.empty() && expert_stems.count(prefix) != 0) {
          col.role = Role::expert_slot;
        } else if (suffix.empty() && weight_stems.count(prefix) != 0) {
          col.role = Role::weight_slot;
        } else if (layer_stems.count(prefix) != 0 && (suffix.empty() || expert_stems.count(suffix) != 0)) {
          col.role = Role::layer_experts;
        } else if (layer_stems.count(prefix) != 0 && weight_stems.count(suffix) != 0) {
          col.role = Role::layer_weights;
        }
        col.number = number;
      }
      if (col.role == Role::expert_slot && !expert_slots.emplace(col.number, c).second) fail_header(c, h, "expert slot given twice");
      if (col.role == Role::weight_slot && !weight_slots.emplace(col.number, c).second) fail_header(c, h, "weight slot given twice");
      if (col.role == Role::layer_experts && !layer_cols_.emplace(col.number, c).second) fail_header(c, h, "layer given twice");
      if (col.role == Role::layer_weights && !layer_weight_cols_.emplace(col.number, c).second) fail_header(c, h, "layer weights given twice");
      if (col.role == Role::experts_list) experts_list_ = c;
      if (col.role == Role::weights_list) weights_list_ = c;
      if (col.role == Role::scalar) scalars_.push_back(c);
      cols_.push_back(std::move(col));
    }
    for (const auto& [_, c] : expert_slots) expert_slots_.push_back(c);
    for (const auto& [_, c] : weight_slots) weight_slots_.push_back(c);
    const bool per_token_layer = experts_list_ || !expert_slots_.empty();
    if (per_token_layer && !layer_cols_.empty()) {
      fail_header(layer_cols_.begin()->second, t.header[layer_cols_.begin()->second],
                  "mixes the two CSV layouts: expert columns (one row per token and layer) and per-layer columns (one row per token)");
    }
    if (experts_list_ && !expert_slots_.empty()) fail_header(expert_slots_.front(), t.header[expert_slots_.front()], "both an experts list column and expert slot columns");
    if (weights_list_ && !weight_slots_.empty()) fail_header(weight_slots_.front(), t.header[weight_slots_.front()], "both a weights list column and weight slot columns");
    if (!per_token_layer && layer_cols_.empty()) {
      throw ConfigError(file_, "line " + std::to_string(line_), "", "no expert columns: expected an experts list column (" + join(f.experts) +
                                                                         "), expert_0..expert_K-1, or one column per layer (layer_0, layer_1, ...)");
    }
    for (const auto& [l, c] : layer_weight_cols_) {
      if (layer_cols_.count(l) == 0) fail_header(c, t.header[c], "weights for a layer that has no experts column");
    }
    per_layer_ = !layer_cols_.empty();
    // where each record key came from, for messages
    for (std::size_t c : scalars_) where_[cols_[c].key] = column_name(c);
    if (experts_list_) where_[experts_key_] = column_name(*experts_list_);
    if (!expert_slots_.empty()) where_[experts_key_] = column_range(expert_slots_);
    if (weights_list_) where_[weights_key_] = column_name(*weights_list_);
    if (!weight_slots_.empty()) where_[weights_key_] = column_range(weight_slots_);
    for (const auto& [l, c] : layer_cols_) where_[layers_key_ + "[" + std::to_string(l) + "]"] = column_name(c);
  }

  /// True for layout (b): one row per token, one column per layer.
  [[nodiscard]] bool per_layer_columns() const noexcept { return per_layer_; }
  /// Record key -> "column 3 'layer'", for messages about that key.
  [[nodiscard]] const std::map<std::string, std::string>& columns() const noexcept { return where_; }

  /// What the header says, for the import report.
  [[nodiscard]] std::string describe(char delimiter) const {
    std::string s = std::string("CSV (") + (delimiter == '\t' ? "tab" : delimiter == ';' ? "';'" : "','") + "-separated, header on line " +
                    std::to_string(line_) + "): ";
    if (per_layer_) {
      s += std::to_string(layer_cols_.size()) + " per-layer expert columns " + column_range_names(layer_cols_);
      if (!layer_weight_cols_.empty()) s += " with weight columns " + column_range_names(layer_weight_cols_);
    } else {
      s += "experts in " + where_.at(experts_key_);
      if (where_.count(weights_key_) != 0) s += ", weights in " + where_.at(weights_key_);
    }
    return s;
  }

  /// Row `r` as a record (scalars as text; the importer reads numbers from text).
  [[nodiscard]] nlohmann::json record(const CsvTable::Row& r) const {
    nlohmann::json rec = nlohmann::json::object();
    for (std::size_t c : scalars_) {
      if (!r.cells[c].empty()) rec[cols_[c].key] = r.cells[c];
    }
    if (per_layer_) {
      nlohmann::json layers = nlohmann::json::object();
      for (const auto& [l, c] : layer_cols_) {
        const auto wc = layer_weight_cols_.find(l);
        const bool has_w = wc != layer_weight_cols_.end() && !trim(r.cells[wc->second]).empty();
        if (split_list_cell(r.cells[c]).empty()) {
          if (has_w) fail_cell(r, wc->second, "weights for a layer without experts");
          continue;  // the token has no routing for this layer
        }
        nlohmann::json ids = id_list(r, c);
        if (has_w) {
          layers[std::to_string(l)] = {{experts_key_, std::move(ids)}, {weights_key_, number_list(r, wc->second)}};
        } else {
          layers[std::to_string(l)] = std::move(ids);
        }
      }
      rec[layers_key_] = std::move(layers);
      return rec;
    }
    if (experts_list_) {
      if (split_list_cell(r.cells[*experts_list_]).empty()) fail_cell(r, *experts_list_, "empty: a row needs its experts");
      rec[experts_key_] = id_list(r, *experts_list_);
    } else {
      nlohmann::json ids = nlohmann::json::array();
      for (std::size_t c : expert_slots_) {
        const auto v = parse_integer(r.cells[c]);
        if (!v) fail_cell(r, c, r.cells[c].empty() ? "empty: every expert column needs an id" : "expected an expert id");
        ids.push_back(*v);
      }
      rec[experts_key_] = std::move(ids);
    }
    if (weights_list_) {
      if (!split_list_cell(r.cells[*weights_list_]).empty()) rec[weights_key_] = number_list(r, *weights_list_);
    } else if (!weight_slots_.empty()) {
      std::size_t empty = 0;
      for (std::size_t c : weight_slots_) empty += trim(r.cells[c]).empty() ? 1U : 0U;
      if (empty != weight_slots_.size()) {
        nlohmann::json w = nlohmann::json::array();
        for (std::size_t c : weight_slots_) {
          const auto v = parse_number(r.cells[c]);
          if (!v) fail_cell(r, c, r.cells[c].empty() ? "empty while other weight columns of the row are not" : "expected a number");
          w.push_back(*v);
        }
        rec[weights_key_] = std::move(w);
      }
    }
    return rec;
  }

 private:
  enum class Role : std::uint8_t { scalar, experts_list, weights_list, expert_slot, weight_slot, layer_experts, layer_weights };
  struct Column {
    Role role;
    std::size_t index;
    std::int64_t number;
    std::string key;     // the record key (scalars: the matching spelling)
    std::string header;  // as the file spells it
  };

  static bool contains_lower(const std::vector<std::string>& names, const std::string& l) {
    return std::any_of(names.begin(), names.end(), [&](const std::string& n) { return lower(n) == l; });
  }
  static std::string join(const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
    return s;
  }
  /// "layer_3_weights" -> {"layer", 3, "weights"}: the first run of digits splits the name.
  static std::optional<std::tuple<std::string, std::int64_t, std::string>> numbered(const std::string& l) {
    const auto a = l.find_first_of("0123456789");
    if (a == std::string::npos || a == 0) return std::nullopt;
    auto b = l.find_first_not_of("0123456789", a);
    if (b == std::string::npos) b = l.size();
    if (b - a > 6) return std::nullopt;
    auto strip = [](std::string s) {
      while (!s.empty() && (s.back() == '_' || s.back() == ' ' || s.back() == '-' || s.back() == '.')) s.pop_back();
      while (!s.empty() && (s.front() == '_' || s.front() == ' ' || s.front() == '-' || s.front() == '.')) s.erase(0, 1);
      return s;
    };
    return std::make_tuple(strip(l.substr(0, a)), std::stoll(l.substr(a, b - a)), strip(l.substr(b)));
  }
  std::string column_name(std::size_t c) const { return "column " + std::to_string(c + 1) + " (" + cols_[c].header + ")"; }
  std::string column_range(const std::vector<std::size_t>& cs) const {
    if (cs.size() == 1) return column_name(cs.front());
    return "columns " + std::to_string(cs.front() + 1) + "-" + std::to_string(cs.back() + 1) + " (" + cols_[cs.front()].header + ".." +
           cols_[cs.back()].header + ")";
  }
  std::string column_range_names(const std::map<std::int64_t, std::size_t>& m) const {
    return "(" + cols_[m.begin()->second].header + ".." + cols_[m.rbegin()->second].header + ")";
  }
  [[noreturn]] void fail_header(std::size_t c, const std::string& h, const std::string& why) const {
    throw ConfigError(file_, "line " + std::to_string(line_) + ", column " + std::to_string(c + 1), io::render_json_value(nlohmann::json(h)), why);
  }
  [[noreturn]] void fail_cell(const CsvTable::Row& r, std::size_t c, const std::string& why) const {
    throw ConfigError(file_, "line " + std::to_string(r.line) + ", " + column_name(c), io::render_json_value(nlohmann::json(r.cells[c])), why);
  }
  nlohmann::json id_list(const CsvTable::Row& r, std::size_t c) const {
    nlohmann::json out = nlohmann::json::array();
    for (auto item : split_list_cell(r.cells[c])) {
      const auto v = parse_integer(item);
      if (!v) fail_cell(r, c, "expected expert ids separated by ';', '|', ',' or spaces");
      out.push_back(*v);
    }
    return out;
  }
  nlohmann::json number_list(const CsvTable::Row& r, std::size_t c) const {
    nlohmann::json out = nlohmann::json::array();
    for (auto item : split_list_cell(r.cells[c])) {
      const auto v = parse_number(item);
      if (!v) fail_cell(r, c, "expected numbers separated by ';', '|', ',' or spaces");
      out.push_back(*v);
    }
    return out;
  }

  std::string file_;
  std::uint64_t line_;
  std::string experts_key_, weights_key_, layers_key_;
  std::vector<Column> cols_;
  std::vector<std::size_t> scalars_, expert_slots_, weight_slots_;
  std::optional<std::size_t> experts_list_, weights_list_;
  std::map<std::int64_t, std::size_t> layer_cols_, layer_weight_cols_;
  std::map<std::string, std::string> where_;
  bool per_layer_ = false;
};

}  // namespace moesched::trace::import_detail
