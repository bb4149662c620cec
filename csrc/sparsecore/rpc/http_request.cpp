#include "sparsecore/rpc/http_request.h"

#include <algorithm>

namespace sparsecore::rpc {

namespace {

// RFC 9110 5.6.2: tchar.
bool is_tchar(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  switch (c) {
    case '!':
    case '#':
    case '$':
    case '%':
    case '&':
    case '\'':
    case '*':
    case '+':
    case '-':
    case '.':
    case '^':
    case '_':
    case '`':
    case '|':
    case '~':
      return true;
    default:
      return false;
  }
}

bool is_token(std::string_view s) { return !s.empty() && std::all_of(s.begin(), s.end(), is_tchar); }

// A field value's characters: VCHAR, SP, HTAB and obs-text (bytes >= 0x80).
bool is_field_char(char c) {
  auto u = static_cast<unsigned char>(c);
  return u == '\t' || (u >= 0x20 && u != 0x7f);
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

HttpParse error(int status, std::string reason) {
  HttpParse p;
  p.state = HttpParse::State::kError;
  p.status = status;
  p.reason = std::move(reason);
  return p;
}

// Whether `list` (a comma-separated header value) names `token`, case-insensitively.
bool lists_token(std::string_view list, std::string_view token) {
  while (!list.empty()) {
    size_t comma = list.find(',');
    std::string_view item = trim(list.substr(0, comma));
    if (lower(item) == token) return true;
    if (comma == std::string_view::npos) break;
    list.remove_prefix(comma + 1);
  }
  return false;
}

HttpParse parse_request_line(std::string_view line, HttpRequest& out) {
  size_t sp1 = line.find(' ');
  size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != std::string_view::npos)
    return error(400, "the request line is not 'METHOD TARGET VERSION'");
  std::string_view method = line.substr(0, sp1), target = line.substr(sp1 + 1, sp2 - sp1 - 1),
                   version = line.substr(sp2 + 1);
  if (!is_token(method)) return error(400, "the method is not a token");
  if (target.empty() || target.front() != '/') return error(400, "the target must be a path starting with '/'");
  for (char c : target) {
    auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f) return error(400, "the target holds a character that is not visible ASCII");
  }
  if (version.size() != 8 || version.substr(0, 5) != "HTTP/" || version[6] != '.' || version[5] < '0' ||
      version[5] > '9' || version[7] < '0' || version[7] > '9')
    return error(400, "the version is not HTTP/d.d");
  if (version != "HTTP/1.1" && version != "HTTP/1.0") return error(505, "only HTTP/1.1 and HTTP/1.0 are served");
  out.method = std::string(method);
  out.target = std::string(target);
  size_t q = target.find('?');
  out.path = std::string(target.substr(0, q));
  out.query = q == std::string_view::npos ? std::string() : std::string(target.substr(q + 1));
  out.minor_version = version[7] - '0';
  return {};
}

}  // namespace

const std::string* HttpRequest::header(std::string_view name) const {
  for (const auto& [k, v] : headers)
    if (k == name) return &v;
  return nullptr;
}

HttpParse parse_http_request(std::string_view data, const HttpLimits& limits, HttpRequest& out) {
  // Empty lines before the request line are skipped; they count towards the head's limit.
  size_t start = 0;
  while (start + 1 < data.size() && data[start] == '\r' && data[start + 1] == '\n') start += 2;
  const size_t window = std::min(data.size(), limits.max_header_bytes);
  size_t end = data.substr(0, window).find("\r\n\r\n", start);
  if (end == std::string_view::npos) {
    // No end of head yet: refuse at once what no continuation can make valid.
    if (data.size() >= limits.max_header_bytes)
      return error(431, "the request head exceeds " + std::to_string(limits.max_header_bytes) + " bytes");
    for (size_t i = start; i < data.size(); ++i) {
      if (data[i] == '\n' && (i == 0 || data[i - 1] != '\r')) return error(400, "a line ends in a bare LF");
      if (data[i] == '\r' && i + 1 < data.size() && data[i + 1] != '\n') return error(400, "a bare CR");
      if (data[i] == '\0') return error(400, "a NUL byte in the request head");
    }
    return {};
  }
  HttpRequest req;
  std::string_view head = data.substr(start, end - start);
  // Every line ends in CRLF: a CR or LF anywhere but in a CRLF pair is refused.
  for (size_t i = 0; i < head.size(); ++i) {
    if (head[i] == '\r' && (i + 1 >= head.size() || head[i + 1] != '\n')) return error(400, "a bare CR");
    if (head[i] == '\n' && (i == 0 || head[i - 1] != '\r')) return error(400, "a line ends in a bare LF");
  }
  size_t eol = head.find("\r\n");
  HttpParse line = parse_request_line(head.substr(0, eol), req);
  if (line.state == HttpParse::State::kError) return line;
  bool has_length = false, has_host = false;
  uint64_t length = 0;
  // The head ends before its final CRLF CRLF: the last header line has no CRLF of its own.
  std::string_view rest = eol == std::string_view::npos ? std::string_view() : head.substr(eol + 2);
  while (eol != std::string_view::npos) {
    eol = rest.find("\r\n");
    std::string_view field = rest.substr(0, eol);
    if (eol != std::string_view::npos) rest.remove_prefix(eol + 2);
    if (field.empty()) return error(400, "an empty header line");
    if (field.front() == ' ' || field.front() == '\t') return error(400, "obs-fold (a header line continued)");
    if (req.headers.size() >= limits.max_headers)
      return error(431, "more than " + std::to_string(limits.max_headers) + " header lines");
    size_t colon = field.find(':');
    if (colon == std::string_view::npos) return error(400, "a header line without ':'");
    std::string_view name = field.substr(0, colon), value = trim(field.substr(colon + 1));
    if (!is_token(name)) return error(400, "a header name is not a token (or has space before ':')");
    if (!std::all_of(value.begin(), value.end(), is_field_char))
      return error(400, "a header value holds a control character");
    std::string key = lower(name);
    if (key == "host") {
      if (has_host) return error(400, "more than one Host header");
      has_host = true;
    } else if (key == "transfer-encoding") {
      return error(501, "Transfer-Encoding is not supported (send a Content-Length)");
    } else if (key == "content-length") {
      if (value.empty() || value.size() > 19 ||
          !std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; }))
        return error(400, "Content-Length is not a number");
      uint64_t v = std::stoull(std::string(value));
      if (has_length && v != length) return error(400, "conflicting Content-Length headers");
      has_length = true;
      length = v;
    }
    req.headers.emplace_back(std::move(key), std::string(value));
  }
  if (req.minor_version == 1 && !has_host) return error(400, "an HTTP/1.1 request without a Host header");
  if (length > limits.max_body_bytes)
    return error(413, "the body of " + std::to_string(length) + " bytes exceeds " +
                          std::to_string(limits.max_body_bytes) + " bytes");
  const size_t body_at = end + 4;
  if (data.size() - body_at < length) return {};
  req.body = std::string(data.substr(body_at, length));
  const std::string* connection = req.header("connection");
  req.keep_alive = req.minor_version == 1 ? !(connection && lists_token(*connection, "close"))
                                          : (connection && lists_token(*connection, "keep-alive"));
  out = std::move(req);
  HttpParse done;
  done.state = HttpParse::State::kComplete;
  done.consumed = body_at + length;
  return done;
}

const char* http_reason_phrase(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 413:
      return "Content Too Large";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 503:
      return "Service Unavailable";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "Unknown";
  }
}

std::string format_http_response(const HttpResponse& r, bool keep_alive, bool head_request) {
  std::string out = "HTTP/1.1 " + std::to_string(r.status) + " " + http_reason_phrase(r.status) + "\r\n";
  out += "Content-Type: " + r.content_type + "\r\n";
  out += "Content-Length: " + std::to_string(r.body.size()) + "\r\n";
  out += keep_alive ? "Connection: keep-alive\r\n" : "Connection: close\r\n";
  for (const auto& [k, v] : r.headers) out += k + ": " + v + "\r\n";
  out += "\r\n";
  if (!head_request) out += r.body;
  return out;
}

}  // namespace sparsecore::rpc
