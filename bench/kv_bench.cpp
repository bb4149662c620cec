// C++ side of the KV pull/push benchmark (bench/rpc_bench.py runs it and prints the table).
//
//   sparsecore_kv_bench pull --servers h:p[,h:p...] [--ids 1000] [--dim 18] [--inflight 1] [--requests 2000]
//                      [--poll-us 0]   (client poll mode, rpc::ClientOptions::poll_us)
//   sparsecore_kv_bench push --servers ...           (one push in flight)
//   sparsecore_kv_bench tcp  [--inflight 1]           plain loopback TCP, the same bytes: the transport bound
//
// Prints one JSON line: {"case", "inflight", "requests", "keys_per_s", "p50_us", "p99_us"}.
// Requests use 64 batches of uniform ids in [0, 1e6) (fixed draws), pulled once before timing
// (so the rows exist). With --inflight K, K requests are kept outstanding on one client and
// a latency is the time from a request's send to its completion.
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "sparsecore/ps/ps_client.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Args {
  std::string mode;
  std::vector<std::string> servers;
  int ids = 1000;
  int dim = 18;
  int inflight = 1;
  int requests = 2000;
  int poll_us = 0;
};

Args parse_args(int argc, char** argv) {
  if (argc < 2) throw std::invalid_argument("usage: sparsecore_kv_bench pull|push|tcp [options]");
  Args a;
  a.mode = argv[1];
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--servers") {
      size_t at = 0;
      while (at <= v.size()) {
        size_t comma = v.find(',', at);
        if (comma == std::string::npos) comma = v.size();
        a.servers.push_back(v.substr(at, comma - at));
        at = comma + 1;
      }
    } else if (k == "--ids") {
      a.ids = std::stoi(v);
    } else if (k == "--dim") {
      a.dim = std::stoi(v);
    } else if (k == "--inflight") {
      a.inflight = std::stoi(v);
    } else if (k == "--requests") {
      a.requests = std::stoi(v);
    } else if (k == "--poll-us") {
      a.poll_us = std::stoi(v);
    } else {
      throw std::invalid_argument("unknown option " + k);
    }
  }
  if (a.ids < 1 || a.dim < 1 || a.inflight < 1 || a.requests < 1 || a.poll_us < 0)
    throw std::invalid_argument("--ids, --dim, --inflight and --requests must be >= 1, --poll-us >= 0");
  return a;
}

void report(const Args& a, const std::string& name, std::vector<double> latencies_us, double seconds) {
  std::sort(latencies_us.begin(), latencies_us.end());
  auto pct = [&](double q) {
    return latencies_us[static_cast<size_t>(q * static_cast<double>(latencies_us.size() - 1))];
  };
  std::printf(
      "{\"case\": \"%s\", \"inflight\": %d, \"requests\": %zu, \"keys_per_s\": %.0f, \"p50_us\": %.1f, "
      "\"p99_us\": %.1f}\n",
      name.c_str(), a.inflight, latencies_us.size(), static_cast<double>(latencies_us.size()) * a.ids / seconds,
      pct(0.5), pct(0.99));
}

double micros(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::micro>(b - a).count();
}

// Fixed draws: repeated runs against one server read the same rows (its tables do not grow).
std::vector<std::vector<int64_t>> draw_batches(int ids) {
  std::mt19937_64 rng(1234);
  std::uniform_int_distribution<int64_t> id(0, 999999);
  std::vector<std::vector<int64_t>> batches(64, std::vector<int64_t>(static_cast<size_t>(ids)));
  for (auto& b : batches)
    for (auto& x : b) x = id(rng);
  return batches;
}

void run_ps(const Args& a) {
  if (a.servers.empty()) throw std::invalid_argument("--servers is required");
  sparsecore::ps::PsClientOptions options;
  options.poll_us = a.poll_us;
  sparsecore::ps::PsClient client(a.servers, options);
  sparsecore::TableConfig cfg;
  cfg.name = "kv_cpp";
  cfg.dim = a.dim;
  client.create_table(cfg, 1);
  auto batches = draw_batches(a.ids);
  const size_t row_floats = static_cast<size_t>(a.ids) * static_cast<size_t>(a.dim);
  std::vector<std::vector<float>> out(static_cast<size_t>(a.inflight), std::vector<float>(row_floats));
  for (auto& b : batches) client.pull("kv_cpp", b.data(), a.ids, true, out[0].data());
  std::vector<double> lat;
  lat.reserve(static_cast<size_t>(a.requests));
  Clock::time_point start = Clock::now();
  if (a.mode == "push") {
    std::vector<float> grads(row_floats, 1e-3f);
    for (int r = 0; r < a.requests; ++r) {
      Clock::time_point t = Clock::now();
      client.push("kv_cpp", batches[static_cast<size_t>(r) % batches.size()].data(), a.ids, grads.data(), 0);
      lat.push_back(micros(t, Clock::now()));
    }
  } else {
    struct InFlight {
      sparsecore::ps::PsClient::PendingPull pull;
      Clock::time_point sent;
    };
    std::deque<InFlight> window;
    int sent = 0;
    while (static_cast<int>(lat.size()) < a.requests) {
      while (sent < a.requests && static_cast<int>(window.size()) < a.inflight) {
        const auto& b = batches[static_cast<size_t>(sent) % batches.size()];
        Clock::time_point t = Clock::now();
        window.push_back(
            {client.pull_async("kv_cpp", b.data(), a.ids, true, out[static_cast<size_t>(sent % a.inflight)].data()),
             t});
        ++sent;
      }
      window.front().pull.wait();
      lat.push_back(micros(window.front().sent, Clock::now()));
      window.pop_front();
    }
  }
  double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  report(a,
         "sparsecore C++ " + a.mode +
             (a.servers.size() > 1 ? " (" + std::to_string(a.servers.size()) + " servers)" : "") +
             (a.poll_us > 0 ? " (poll mode)" : ""),
         std::move(lat), seconds);
}

void send_all(int fd, const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n) {
    ssize_t w = ::send(fd, c, n, MSG_NOSIGNAL);
    if (w <= 0) throw std::runtime_error("send failed");
    c += w;
    n -= static_cast<size_t>(w);
  }
}

bool recv_all(int fd, void* p, size_t n) {
  char* c = static_cast<char*>(p);
  while (n) {
    ssize_t r = ::recv(fd, c, n, 0);
    if (r <= 0) return false;
    c += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

// The transport bound: the client sends the ids' bytes, a server thread answers with the
// rows' bytes, both with blocking sockets and TCP_NODELAY, nothing else done.
void run_tcp(const Args& a) {
  const size_t request_bytes = static_cast<size_t>(a.ids) * sizeof(int64_t);
  const size_t reply_bytes = static_cast<size_t>(a.ids) * static_cast<size_t>(a.dim) * sizeof(float);
  int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || ::listen(listener, 1) != 0 ||
      ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
    throw std::runtime_error("cannot listen on loopback");
  std::thread server([&] {
    int fd = ::accept(listener, nullptr, nullptr);
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    std::vector<char> in(request_bytes), out(reply_bytes);
    while (recv_all(fd, in.data(), in.size())) send_all(fd, out.data(), out.size());
    ::close(fd);
  });
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) throw std::runtime_error("connect failed");
  std::vector<char> request(request_bytes), reply(reply_bytes);
  std::vector<double> lat;
  std::deque<Clock::time_point> window;
  int sent = 0;
  Clock::time_point start = Clock::now();
  while (static_cast<int>(lat.size()) < a.requests) {
    while (sent < a.requests && static_cast<int>(window.size()) < a.inflight) {
      window.push_back(Clock::now());
      send_all(fd, request.data(), request.size());
      ++sent;
    }
    if (!recv_all(fd, reply.data(), reply.size())) throw std::runtime_error("server closed");
    lat.push_back(micros(window.front(), Clock::now()));
    window.pop_front();
  }
  double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  ::shutdown(fd, SHUT_RDWR);
  ::close(fd);
  server.join();
  ::close(listener);
  report(a, "plain TCP C++", std::move(lat), seconds);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    Args a = parse_args(argc, argv);
    if (a.mode == "tcp")
      run_tcp(a);
    else if (a.mode == "pull" || a.mode == "push")
      run_ps(a);
    else
      throw std::invalid_argument("unknown mode '" + a.mode + "' (pull, push or tcp)");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sparsecore_kv_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
