#pragma once
// TextTable: a plain-text table with right-aligned numeric columns, for the command-line tools.
//
//   TextTable t({"model", "MB/expert"});
//   t.add({"mixtral-8x7b", "352.3"});
//   std::fputs(t.render().c_str(), stdout);
#include <algorithm>
#include <cctype>
#include <cstddef>
#include <string>
#include <vector>

namespace moesched::tools {

class TextTable {
 public:
  explicit TextTable(std::vector<std::string> header) : header_(std::move(header)) {}

  void add(std::vector<std::string> row) {
    row.resize(header_.size());
    rows_.push_back(std::move(row));
  }
  /// A horizontal rule between groups of rows.
  void separator() { rows_.emplace_back(); }

  [[nodiscard]] std::string render() const {
    std::vector<std::size_t> width(header_.size());
    std::vector<bool> numeric(header_.size(), true);
    for (std::size_t c = 0; c < header_.size(); ++c) width[c] = header_[c].size();
    for (const auto& r : rows_) {
      for (std::size_t c = 0; c < r.size(); ++c) {
        width[c] = std::max(width[c], r[c].size());
        if (!r[c].empty() && !looks_numeric(r[c])) numeric[c] = false;
      }
    }
    std::string out;
    auto line = [&](const std::vector<std::string>& r) {
      for (std::size_t c = 0; c < header_.size(); ++c) {
        const std::string& cell = c < r.size() ? r[c] : std::string();
        const std::string pad(width[c] - cell.size(), ' ');
        out += c == 0 ? "" : "  ";
        out += numeric[c] && c > 0 ? pad + cell : cell + pad;
      }
      while (!out.empty() && out.back() == ' ') out.pop_back();
      out += '\n';
    };
    auto rule = [&] {
      std::size_t total = 0;
      for (std::size_t c = 0; c < width.size(); ++c) total += width[c] + (c ? 2 : 0);
      out += std::string(total, '-') + '\n';
    };
    line(header_);
    rule();
    for (const auto& r : rows_) {
      if (r.empty()) {
        rule();
      } else {
        line(r);
      }
    }
    return out;
  }

 private:
  static bool looks_numeric(const std::string& s) {
    return std::any_of(s.begin(), s.end(), [](char ch) { return std::isdigit(static_cast<unsigned char>(ch)); }) &&
           std::all_of(s.begin(), s.end(), [](char ch) {
             return std::isdigit(static_cast<unsigned char>(ch)) || ch == '.' || ch == '-' ||
                    ch == '%' || ch == 'x' || ch == ' ' || ch == '/' || ch == '+' || ch == 'e';
           });
  }

  std::vector<std::string> header_;
  std::vector<std::vector<std::string>> rows_;
};

}  // namespace moesched::tools
