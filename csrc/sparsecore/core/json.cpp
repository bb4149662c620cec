#include "sparsecore/core/json.h"

#include <charconv>
#include <cmath>
#include <cstdio>

#include "sparsecore/core/error.h"

namespace sparsecore {
namespace {

const char* type_name(const Json& j) {
  if (j.is_null()) return "null";
  if (j.is_bool()) return "bool";
  if (j.is_number()) return "number";
  if (j.is_string()) return "string";
  if (j.is_array()) return "array";
  return "object";
}

void escape_to(std::string& out, const std::string& s) {
  out.push_back('"');
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out.push_back(c);
        }
    }
  }
  out.push_back('"');
}

class Parser {
 public:
  explicit Parser(std::string_view text) : s_(text) {}

  Json parse_document() {
    Json v = parse_value(0);
    skip_ws();
    if (pos_ != s_.size()) fail("trailing characters");
    return v;
  }

 private:
  [[noreturn]] void fail(const char* what) const {
    throw CorruptData(detail::concat("malformed JSON at byte ", pos_, ": ", what));
  }
  void skip_ws() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\t' || s_[pos_] == '\r')) ++pos_;
  }
  bool consume(char c) {
    skip_ws();
    if (pos_ < s_.size() && s_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  void expect(char c) {
    if (!consume(c)) fail("unexpected character");
  }
  bool match_word(std::string_view w) {
    if (s_.substr(pos_, w.size()) == w) {
      pos_ += w.size();
      return true;
    }
    return false;
  }

  Json parse_value(int depth) {
    if (depth > 64) fail("nesting too deep");
    skip_ws();
    if (pos_ >= s_.size()) fail("unexpected end");
    char c = s_[pos_];
    if (c == '{') {
      ++pos_;
      Json::Object obj;
      if (consume('}')) return Json(std::move(obj));
      do {
        skip_ws();
        std::string key = parse_string();
        expect(':');
        obj[key] = parse_value(depth + 1);
      } while (consume(','));
      expect('}');
      return Json(std::move(obj));
    }
    if (c == '[') {
      ++pos_;
      Json::Array arr;
      if (consume(']')) return Json(std::move(arr));
      do {
        arr.push_back(parse_value(depth + 1));
      } while (consume(','));
      expect(']');
      return Json(std::move(arr));
    }
    if (c == '"') return Json(parse_string());
    if (match_word("true")) return Json(true);
    if (match_word("false")) return Json(false);
    if (match_word("null")) return Json(nullptr);
    return parse_number();
  }

  std::string parse_string() {
    if (pos_ >= s_.size() || s_[pos_] != '"') fail("expected string");
    ++pos_;
    std::string out;
    while (pos_ < s_.size() && s_[pos_] != '"') {
      char c = s_[pos_++];
      if (c != '\\') {
        out.push_back(c);
        continue;
      }
      if (pos_ >= s_.size()) fail("unterminated escape");
      char e = s_[pos_++];
      switch (e) {
        case '"':
          out.push_back('"');
          break;
        case '\\':
          out.push_back('\\');
          break;
        case '/':
          out.push_back('/');
          break;
        case 'n':
          out.push_back('\n');
          break;
        case 'r':
          out.push_back('\r');
          break;
        case 't':
          out.push_back('\t');
          break;
        case 'b':
          out.push_back('\b');
          break;
        case 'f':
          out.push_back('\f');
          break;
        case 'u': {
          if (pos_ + 4 > s_.size()) fail("short \\u escape");
          unsigned code = 0;
          auto r = std::from_chars(s_.data() + pos_, s_.data() + pos_ + 4, code, 16);
          if (r.ec != std::errc() || r.ptr != s_.data() + pos_ + 4) fail("bad \\u escape");
          pos_ += 4;
          if (code < 0x80) {
            out.push_back(static_cast<char>(code));
          } else if (code < 0x800) {
            out.push_back(static_cast<char>(0xC0 | (code >> 6)));
            out.push_back(static_cast<char>(0x80 | (code & 0x3F)));
          } else {
            out.push_back(static_cast<char>(0xE0 | (code >> 12)));
            out.push_back(static_cast<char>(0x80 | ((code >> 6) & 0x3F)));
            out.push_back(static_cast<char>(0x80 | (code & 0x3F)));
          }
          break;
        }
        default:
          fail("unknown escape");
      }
    }
    if (pos_ >= s_.size()) fail("unterminated string");
    ++pos_;
    return out;
  }

  Json parse_number() {
    size_t start = pos_;
    bool is_float = false;
    if (pos_ < s_.size() && (s_[pos_] == '-' || s_[pos_] == '+')) ++pos_;
    while (pos_ < s_.size()) {
      char c = s_[pos_];
      if (c >= '0' && c <= '9') {
        ++pos_;
      } else if (c == '.' || c == 'e' || c == 'E' || c == '-' || c == '+') {
        is_float = true;
        ++pos_;
      } else {
        break;
      }
    }
    if (start == pos_) fail("expected value");
    std::string_view tok = s_.substr(start, pos_ - start);
    if (!is_float) {
      int64_t v = 0;
      auto r = std::from_chars(tok.data(), tok.data() + tok.size(), v);
      if (r.ec == std::errc() && r.ptr == tok.data() + tok.size()) return Json(v);
      uint64_t u = 0;  // uint64 written by a producer that uses unsigned (bit-cast)
      r = std::from_chars(tok.data(), tok.data() + tok.size(), u);
      if (r.ec == std::errc() && r.ptr == tok.data() + tok.size()) return Json(u);
    }
    double d = 0;
    auto r = std::from_chars(tok.data(), tok.data() + tok.size(), d);
    if (r.ec != std::errc() || r.ptr != tok.data() + tok.size()) fail("bad number");
    return Json(d);
  }

  std::string_view s_;
  size_t pos_ = 0;
};

}  // namespace

bool Json::as_bool(std::string_view what) const {
  SC_CHECK(is_bool(), InvalidArgument, what, " must be a bool, got ", type_name(*this));
  return std::get<bool>(value_);
}
int64_t Json::as_int(std::string_view what) const {
  if (auto* d = std::get_if<double>(&value_)) {
    SC_CHECK(std::floor(*d) == *d, InvalidArgument, what, " must be an integer, got ", *d);
    return static_cast<int64_t>(*d);
  }
  SC_CHECK(is_int(), InvalidArgument, what, " must be an integer, got ", type_name(*this));
  return std::get<int64_t>(value_);
}
double Json::as_double(std::string_view what) const {
  if (auto* i = std::get_if<int64_t>(&value_)) return static_cast<double>(*i);
  SC_CHECK(std::holds_alternative<double>(value_), InvalidArgument, what, " must be a number, got ", type_name(*this));
  return std::get<double>(value_);
}
const std::string& Json::as_string(std::string_view what) const {
  SC_CHECK(is_string(), InvalidArgument, what, " must be a string, got ", type_name(*this));
  return std::get<std::string>(value_);
}
const Json::Array& Json::as_array(std::string_view what) const {
  SC_CHECK(is_array(), InvalidArgument, what, " must be an array, got ", type_name(*this));
  return std::get<Array>(value_);
}
const Json::Object& Json::as_object(std::string_view what) const {
  SC_CHECK(is_object(), InvalidArgument, what, " must be an object, got ", type_name(*this));
  return std::get<Object>(value_);
}
Json::Array& Json::as_array(std::string_view what) {
  SC_CHECK(is_array(), InvalidArgument, what, " must be an array, got ", type_name(*this));
  return std::get<Array>(value_);
}
Json::Object& Json::as_object(std::string_view what) {
  SC_CHECK(is_object(), InvalidArgument, what, " must be an object, got ", type_name(*this));
  return std::get<Object>(value_);
}

const Json& Json::at(const std::string& key) const {
  const Json* v = get(key);
  SC_CHECK(v != nullptr, NotFound, "missing key '", key, "'");
  return *v;
}
const Json* Json::get(const std::string& key) const {
  const auto& obj = as_object();
  auto it = obj.find(key);
  return it == obj.end() ? nullptr : &it->second;
}
Json& Json::operator[](const std::string& key) {
  if (is_null()) value_ = Object{};
  return as_object()[key];
}

std::string Json::dump(int indent) const {
  std::string out;
  dump_to(out, indent, 0);
  return out;
}

void Json::dump_to(std::string& out, int indent, int depth) const {
  auto newline = [&](int d) {
    if (indent < 0) return;
    out.push_back('\n');
    out.append(static_cast<size_t>(indent * d), ' ');
  };
  if (is_null()) {
    out += "null";
  } else if (is_bool()) {
    out += std::get<bool>(value_) ? "true" : "false";
  } else if (is_int()) {
    out += std::to_string(std::get<int64_t>(value_));
  } else if (auto* d = std::get_if<double>(&value_)) {
    SC_CHECK(std::isfinite(*d), InvalidArgument, "cannot write a non-finite number to JSON");
    char buf[32];
    auto r = std::to_chars(buf, buf + sizeof(buf), *d);  // shortest round-trip form
    std::string_view text(buf, r.ptr - buf);
    out += text;
    if (text.find_first_of(".eE") == std::string_view::npos) out += ".0";
  } else if (is_string()) {
    escape_to(out, std::get<std::string>(value_));
  } else if (is_array()) {
    const auto& arr = std::get<Array>(value_);
    out.push_back('[');
    for (size_t i = 0; i < arr.size(); ++i) {
      if (i) out.push_back(',');
      newline(depth + 1);
      arr[i].dump_to(out, indent, depth + 1);
    }
    if (!arr.empty()) newline(depth);
    out.push_back(']');
  } else {
    const auto& obj = std::get<Object>(value_);
    out.push_back('{');
    bool first = true;
    for (const auto& [k, v] : obj) {
      if (!first) out.push_back(',');
      first = false;
      newline(depth + 1);
      escape_to(out, k);
      out += indent < 0 ? ":" : ": ";
      v.dump_to(out, indent, depth + 1);
    }
    if (!obj.empty()) newline(depth);
    out.push_back('}');
  }
}

Json Json::parse(std::string_view text) { return Parser(text).parse_document(); }

}  // namespace sparsecore
