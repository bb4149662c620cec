// HTTP/1.1 requests: a strict, bounded parser of the request head and body (RFC 9110/9112),
// and the response's wire form. Used by HttpServer; kept apart from any socket so that every
// endpoint (metrics, prediction) shares one parser and it can be tested on bytes alone.
//
// What is accepted: a request line `METHOD SP origin-form SP HTTP/1.1` (or HTTP/1.0) with a
// token method and a target starting with '/' and made of visible ASCII; header lines
// `name: value` with a token name (no space before the colon), a value of visible characters,
// spaces and tabs (trimmed), every line ending in CRLF; a Content-Length of digits (repeated
// only with the same value). Empty lines before the request line are skipped (RFC 9112 2.2).
// What is refused, with the status a server answers before closing the connection:
//   400 a malformed line, a bare CR or LF, obs-fold (a line starting with a space), a missing
//       or repeated Host in HTTP/1.1, a bad or conflicting Content-Length;
//   431 a head longer than max_header_bytes, or more than max_headers header lines;
//   413 a body longer than max_body_bytes;
//   501 a Transfer-Encoding (no chunked bodies);
//   505 another HTTP version.
// Thread-safety: parse_http_request is a pure function of its input.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace sparsecore::rpc {

struct HttpLimits {
  size_t max_header_bytes = 8 << 10;  // request line and headers, CRLFs included
  size_t max_headers = 64;
  size_t max_body_bytes = 1 << 20;
};

struct HttpRequest {
  std::string method;  // as sent (methods are case-sensitive)
  std::string target;  // origin-form: path and query
  std::string path;    // target up to '?'
  std::string query;   // after '?', without it
  int minor_version = 1;
  std::vector<std::pair<std::string, std::string>> headers;  // names lower-cased, values trimmed
  std::string body;
  bool keep_alive = true;  // HTTP/1.1 unless "Connection: close"; HTTP/1.0 only with "keep-alive"

  // The first header named `name` (lower case), or nullptr.
  const std::string* header(std::string_view name) const;
};

struct HttpParse {
  enum class State { kIncomplete, kComplete, kError };
  State state = State::kIncomplete;
  size_t consumed = 0;  // kComplete: bytes of the input that formed the request
  int status = 0;       // kError: the status to answer (400, 413, 431, 501, 505)
  std::string reason;   // kError: what was wrong, for the response body
};

// Parses the request at the front of `data` (the bytes received so far) into `out`. Returns
// kIncomplete while more bytes could complete a valid request, and an error as soon as no
// continuation could (a head over the limit is refused before its end arrives).
HttpParse parse_http_request(std::string_view data, const HttpLimits& limits, HttpRequest& out);

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // extra headers (e.g. Allow)
};

// "OK", "Not Found", ... ("Unknown" for a status this server never sends).
const char* http_reason_phrase(int status);
// The response's bytes: status line, Content-Type, Content-Length, Connection, the extra
// headers, the body (left out for a HEAD request).
std::string format_http_response(const HttpResponse& response, bool keep_alive, bool head_request = false);

}  // namespace sparsecore::rpc
