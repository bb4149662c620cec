// A text format that turns one line into one sample (Criteo TSV, libsvm, libffm, CSV).
//
// TextReader owns the files, blocks, threads and positions; a LineFormat only parses. It is
// immutable after construction and parse() is const, so one instance serves every parsing
// thread at once.
#pragma once

#include <charconv>
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>

#include "sparsecore/io/sample_batch.h"

namespace sparsecore::io {

class LineFormat {
 public:
  virtual ~LineFormat() = default;

  // An empty batch with this format's groups, dense width and label flag.
  virtual SampleBatch empty_batch() const = 0;

  // Appends the sample of `line` (no line terminator, never empty) to `out`, ending with
  // out.end_sample(). On a malformed line returns false with `error` set to a short reason;
  // the caller rolls `out` back to its mark, so a parser may leave partial data behind.
  virtual bool parse(std::string_view line, SampleBatch& out, std::string& error) const = 0;

  // Whether the first line of every file is a header to skip (CSV).
  virtual bool has_header() const { return false; }
};

namespace text {

// Whole-field numeric parses: no surrounding blanks, nothing left over. Floats must be finite.
inline bool parse_int64(std::string_view s, int64_t& v) {
  if (!s.empty() && s.front() == '+') s.remove_prefix(1);
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  return ec == std::errc() && p == s.data() + s.size() && !s.empty();
}

inline bool parse_float(std::string_view s, float& v) {
  if (!s.empty() && s.front() == '+') s.remove_prefix(1);
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  return ec == std::errc() && p == s.data() + s.size() && !s.empty() && std::isfinite(v);
}

inline std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// The next blank-separated token of `rest` (consumed from it); empty at the end.
inline std::string_view next_token(std::string_view& rest) {
  size_t b = rest.find_first_not_of(" \t");
  if (b == std::string_view::npos) {
    rest = {};
    return {};
  }
  size_t e = rest.find_first_of(" \t", b);
  std::string_view tok = rest.substr(b, e == std::string_view::npos ? std::string_view::npos : e - b);
  rest = e == std::string_view::npos ? std::string_view{} : rest.substr(e);
  return tok;
}

// A label field: finite number; with `binary`, anything > 0 reads as 1 and the rest as 0
// (so libsvm's -1/+1 files feed logloss directly).
inline bool parse_label(std::string_view s, bool binary, float& v) {
  if (!parse_float(s, v)) return false;
  if (binary) v = v > 0.0f ? 1.0f : 0.0f;
  return true;
}

}  // namespace text
}  // namespace sparsecore::io
