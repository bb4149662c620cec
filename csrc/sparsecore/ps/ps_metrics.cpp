#include "sparsecore/ps/ps_metrics.h"

#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <vector>

#include "sparsecore/table/table_stats.h"

namespace sparsecore::ps {

namespace {

// Label values escape backslash, double quote and newline (the exposition format's rule).
std::string label_value(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

// One metric family: its HELP and TYPE lines, then its samples, grouped as the format wants.
class Exposition {
 public:
  void family(const std::string& name, const char* type, const std::string& help) {
    out_ += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
  }
  void sample(const std::string& name, const std::string& labels, int64_t value) {
    out_ += name;
    if (!labels.empty()) out_ += "{" + labels + "}";
    out_ += " " + std::to_string(value) + "\n";
  }
  std::string take() { return std::move(out_); }

 private:
  std::string out_;
};

std::string shard_label(int64_t shard) { return "shard=\"" + std::to_string(shard) + "\""; }

// Pages of the process (from /proc/self/statm): {virtual, resident}; zeros if unreadable.
std::pair<int64_t, int64_t> process_memory() {
  long long size = 0, resident = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%lld %lld", &size, &resident) != 2) size = resident = 0;
    std::fclose(f);
  }
  const int64_t page = ::sysconf(_SC_PAGESIZE);
  return {size * page, resident * page};
}

int64_t open_fds() {
  int64_t n = 0;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (dirent* e = ::readdir(d))
      if (e->d_name[0] != '.') ++n;
    ::closedir(d);
    --n;  // the directory stream's own descriptor
  }
  return n;
}

}  // namespace

std::string render_metrics(PsServer& server, const rpc::HttpServer* http, int shard_timeout_ms) {
  Exposition x;
  const std::vector<Json> shards = server.shard_stats(shard_timeout_ms);
  // shard (global index) -> table -> stats, for the shards that answered.
  std::map<int64_t, std::map<std::string, TableStats>> tables;
  std::vector<std::pair<int64_t, const Json*>> answered;
  const int64_t first = int64_t{server.options().server_index} * server.num_shards();
  for (size_t i = 0; i < shards.size(); ++i) {
    const Json& s = shards[i];
    const int64_t g = first + static_cast<int64_t>(i);
    if (!s.is_object()) continue;
    answered.emplace_back(g, &s);
    if (const Json* t = s.get("tables"))
      for (const auto& [name, e] : t->as_object()) tables[g][name] = TableStats::from_json(e);
  }
  x.family("sparsecore_shard_up", "gauge", "1 when the shard answered the scrape in time, else 0");
  for (size_t i = 0; i < shards.size(); ++i) {
    x.sample("sparsecore_shard_up", shard_label(first + static_cast<int64_t>(i)), shards[i].is_object() ? 1 : 0);
  }
  TableStats{}.for_each([&](const char* field, const char* kind, const char* help, int64_t) {
    const bool counter = std::string(kind) == "counter";
    const std::string name = std::string("sparsecore_table_") + field + (counter ? "_total" : "");
    x.family(name, kind, std::string("Per table and shard: ") + help);
    for (const auto& [g, by_table] : tables)
      for (const auto& [table, st] : by_table) {
        int64_t value = 0;
        st.for_each([&](const char* f, const char*, const char*, int64_t v) {
          if (std::string(f) == field) value = v;
        });
        x.sample(name, "table=\"" + label_value(table) + "\"," + shard_label(g), value);
      }
  });
  for (const char* kind : {"pull", "push"}) {
    const std::string key = std::string(kind) + "_requests";
    const std::string name = "sparsecore_shard_" + key + "_total";
    x.family(name, "counter", std::string("Row ") + kind + " requests the shard received (refused ones included)");
    for (const auto& [g, s] : answered)
      if (const Json* v = s->get(key)) x.sample(name, shard_label(g), v->as_int(key));
  }
  const rpc::TransportStats t = server.transport_stats();
  // A family of one unlabelled sample.
  auto single = [&](const char* name, const char* type, const char* help, uint64_t v) {
    x.family(name, type, help);
    x.sample(name, "", static_cast<int64_t>(v));
  };
  single("sparsecore_rpc_requests_total", "counter", "RPC request frames handled", t.requests);
  single("sparsecore_rpc_errors_total", "counter", "RPC replies with an error status", t.error_replies);
  single("sparsecore_rpc_received_bytes_total", "counter", "Bytes received on RPC connections", t.bytes_received);
  single("sparsecore_rpc_sent_bytes_total", "counter", "Bytes sent on RPC connections", t.bytes_sent);
  single("sparsecore_rpc_connections_accepted_total", "counter", "RPC connections accepted", t.connections_accepted);
  single("sparsecore_rpc_connections_open", "gauge", "RPC connections open", t.open_connections);
  single("sparsecore_rpc_frames_rejected_total", "counter",
         "RPC frames rejected (bad or oversized frames, failed handshakes, unknown methods)", t.frames_rejected);
  single("sparsecore_rpc_memory_refusals_total", "counter", "RPC requests refused for lack of memory budget",
         t.memory_refusals);
  single("sparsecore_rpc_memory_reserved_bytes", "gauge", "Request payload bytes being received",
         t.memory_reserved_bytes);
  if (http) {
    const rpc::HttpServerStats h = http->stats();
    single("sparsecore_metrics_connections_open", "gauge", "Connections open on this metrics endpoint",
           h.connections_open);
    single("sparsecore_metrics_connections_refused_total", "counter",
           "Metrics connections refused over the connection limit", h.connections_refused);
    single("sparsecore_metrics_timeouts_total", "counter", "Metrics connections closed past their deadline",
           h.timeouts);
    single("sparsecore_metrics_requests_total", "counter", "HTTP requests parsed by this endpoint", h.requests);
    single("sparsecore_metrics_bad_requests_total", "counter", "Malformed HTTP requests refused", h.bad_requests);
  }
  const auto [virt, rss] = process_memory();
  single("process_resident_memory_bytes", "gauge", "Resident memory of the server process", rss);
  single("process_virtual_memory_bytes", "gauge", "Virtual memory of the server process", virt);
  single("process_open_fds", "gauge", "Open file descriptors of the server process", open_fds());
  return x.take();
}

PsMetricsServer::PsMetricsServer(PsServer& server, rpc::HttpServerOptions options)
    : server_(server), http_(std::move(options)) {
  // A shard busy for longer than this (a save) is reported down for that scrape.
  const int shard_timeout_ms = std::max(1, http_.options().timeout_ms / 2);
  http_.route("GET", "/metrics", [this, shard_timeout_ms](const rpc::HttpRequest&) {
    rpc::HttpResponse r;
    r.content_type = "text/plain; version=0.0.4; charset=utf-8";
    r.body = render_metrics(server_, &http_, shard_timeout_ms);
    return r;
  });
}

PsMetricsServer::~PsMetricsServer() { stop(); }

void PsMetricsServer::start() { http_.start(); }

void PsMetricsServer::stop() { http_.stop(); }

}  // namespace sparsecore::ps
