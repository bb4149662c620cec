// Fuzz target for the HTTP/1.1 request parser (parse_http_request), bounded in time.
//
// Streams of pipelined requests are built valid, then mutated (bit flips, spliced garbage,
// deleted bytes, CR/LF games, huge lengths) and parsed as a server buffers them: every prefix
// the random chunking produces is parsed, then the requests are taken off its front.
// Invariants: no crash and no exception; a complete request lies inside the input, its path
// starts with '/' and its body has its Content-Length; a prefix that completes gives the same
// request as the whole input; a prefix refused stays refused with more bytes; an unmutated
// stream yields exactly its requests.
// Usage: sparsecore_fuzz_http_parser [--seconds S] [--seed N]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>
#include "fuzz_args.h"

#include "sparsecore/rpc/http_request.h"

using namespace sparsecore::rpc;

namespace {

struct Made {
  std::string path;
  std::string body;
};

std::string make_stream(std::mt19937_64& rng, std::vector<Made>* made) {
  static const char* kMethods[] = {"GET", "POST", "PUT", "HEAD", "X-Y"};
  std::string s;
  int n = 1 + static_cast<int>(rng() % 4);
  for (int i = 0; i < n; ++i) {
    Made m;
    m.path = "/p" + std::to_string(rng() % 1000);
    if (rng() % 2) m.path += "?q=" + std::to_string(rng());
    m.body = std::string(rng() % 3 == 0 ? rng() % 200 : 0, static_cast<char>('a' + rng() % 26));
    s += std::string(kMethods[rng() % 5]) + " " + m.path + (rng() % 5 ? " HTTP/1.1\r\n" : " HTTP/1.0\r\n");
    s += "Host: h" + std::to_string(rng() % 10) + "\r\n";
    for (int h = static_cast<int>(rng() % 5); h > 0; --h) s += "X-" + std::to_string(h) + ":  v \t\r\n";
    if (!m.body.empty() || rng() % 2) s += "Content-Length: " + std::to_string(m.body.size()) + "\r\n";
    s += "\r\n" + m.body;
    m.path = m.path.substr(0, m.path.find('?'));
    made->push_back(m);
  }
  return s;
}

void mutate(std::mt19937_64& rng, std::string& s) {
  static const char* kPieces[] = {"\r",
                                  "\n",
                                  "\r\n",
                                  "\r\n\r\n",
                                  " ",
                                  ":",
                                  "\t",
                                  "\x01",
                                  "\x80",
                                  "Content-Length: 99999999999999999999\r\n",
                                  "Transfer-Encoding: chunked\r\n",
                                  "Content-Length: 3\r\nContent-Length: 4\r\n",
                                  "HTTP/9.9",
                                  "Host: a\r\n"};
  int edits = 1 + static_cast<int>(rng() % 4);
  for (int e = 0; e < edits && !s.empty(); ++e) {
    size_t at = rng() % s.size();
    switch (rng() % 4) {
      case 0:
        s[at] = static_cast<char>(s[at] ^ (1 << (rng() % 8)));
        break;
      case 1:
        s.insert(at, kPieces[rng() % (sizeof(kPieces) / sizeof(*kPieces))]);
        break;
      case 2:
        s.erase(at, 1 + rng() % 8);
        break;
      default:
        s.insert(at, std::string(rng() % 12000, static_cast<char>(rng())));
        break;
    }
  }
}

[[noreturn]] void fail(const char* what, uint64_t seed) {
  std::fprintf(stderr, "http parser fuzz: %s (seed %llu)\n", what, static_cast<unsigned long long>(seed));
  std::exit(1);
}

// Parses `s` as a server buffering it in random chunks; returns the requests taken off it.
std::vector<HttpRequest> consume(std::mt19937_64& rng, const std::string& s, const HttpLimits& limits, uint64_t seed) {
  std::vector<HttpRequest> out;
  size_t start = 0, have = 0;
  while (start < s.size()) {
    have = std::min(s.size(), have + 1 + rng() % 300);
    std::string_view buffered(s.data() + start, have - start);
    HttpRequest r;
    HttpParse p = parse_http_request(buffered, limits, r);
    HttpRequest whole_r;
    HttpParse whole = parse_http_request(std::string_view(s).substr(start), limits, whole_r);
    if (p.state == HttpParse::State::kError && whole.state != HttpParse::State::kError)
      fail("a refused prefix was accepted with more bytes", seed);
    if (p.state == HttpParse::State::kIncomplete) {
      if (have == s.size()) break;  // the stream ends inside a request
      continue;
    }
    if (p.state == HttpParse::State::kError) break;  // a server answers and closes
    if (whole.state != HttpParse::State::kComplete || whole.consumed != p.consumed || whole_r.body != r.body)
      fail("a complete prefix parses otherwise with more bytes", seed);
    if (p.consumed == 0 || p.consumed > buffered.size()) fail("consumed outside the input", seed);
    if (r.path.empty() || r.path.front() != '/') fail("a path not starting with '/'", seed);
    if (const std::string* cl = r.header("content-length"); cl && std::stoull(*cl) != r.body.size())
      fail("a body of another length than its Content-Length", seed);
    if (r.body.size() > limits.max_body_bytes) fail("a body over the limit", seed);
    out.push_back(std::move(r));
    start += p.consumed;
    have = start;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  const FuzzArgs args = parse_fuzz_args(argc, argv);
  const double seconds = args.seconds;
  uint64_t seed = args.seed;
  HttpLimits limits;
  limits.max_header_bytes = 4096;
  limits.max_body_bytes = 150;
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  uint64_t runs = 0;
  std::mt19937_64 rng(seed);
  while (std::chrono::steady_clock::now() < end) {
    const uint64_t run_seed = rng();
    std::mt19937_64 r(run_seed);
    std::vector<Made> made;
    std::string s = make_stream(r, &made);
    const bool mutated = r() % 4 != 0;
    if (mutated) mutate(r, s);
    std::vector<HttpRequest> got = consume(r, s, limits, run_seed);
    if (!mutated) {
      // Only bodies over the limit stop a valid stream (413, then the connection closes).
      size_t expect = 0;
      while (expect < made.size() && made[expect].body.size() <= limits.max_body_bytes) ++expect;
      if (got.size() != expect) fail("a valid stream did not yield its requests", run_seed);
      for (size_t i = 0; i < got.size(); ++i)
        if (got[i].path != made[i].path || got[i].body != made[i].body) fail("a request parsed wrong", run_seed);
    }
    ++runs;
  }
  std::printf("http parser fuzz: %llu streams, seed %llu, no failure\n", static_cast<unsigned long long>(runs),
              static_cast<unsigned long long>(seed));
  return 0;
}
