// A strict RFC 4180 reader for the tests: what a spreadsheet or Python's csv module would make of
// the CSV files voxgrad writes (quoted fields may hold commas, doubled quotes and line breaks).
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

namespace voxgrad::test {

inline std::vector<std::vector<std::string>> parse_csv(const std::string& text) {
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> row;
  std::string field;
  std::size_t i = 0;
  auto end_field = [&] {
    row.push_back(field);
    field.clear();
  };
  while (i < text.size()) {
    if (text[i] == '"' && field.empty()) {
      // A quoted field runs to the next lone quote; it must be followed by a separator.
      for (++i;; ++i) {
        if (i >= text.size()) throw std::runtime_error("unterminated quoted field");
        if (text[i] == '"') {
          if (i + 1 < text.size() && text[i + 1] == '"') {
            field += '"';
            ++i;
          } else {
            ++i;
            break;
          }
        } else {
          field += text[i];
        }
      }
      if (i < text.size() && text[i] != ',' && text[i] != '\n' && text[i] != '\r')
        throw std::runtime_error("text after a closing quote");
      continue;
    }
    const char c = text[i++];
    if (c == '"') throw std::runtime_error("quote inside an unquoted field");
    if (c == ',') {
      end_field();
    } else if (c == '\n' || c == '\r') {
      if (c == '\r' && i < text.size() && text[i] == '\n') ++i;
      end_field();
      rows.push_back(row);
      row.clear();
    } else {
      field += c;
    }
  }
  if (!field.empty() || !row.empty()) {
    end_field();
    rows.push_back(row);
  }
  return rows;
}

}  // namespace voxgrad::test
