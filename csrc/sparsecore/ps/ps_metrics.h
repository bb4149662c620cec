// PsMetricsServer: a PsServer's statistics as Prometheus text (exposition format 0.0.4),
// served at GET /metrics by an HttpServer (rpc/http_server.h) beside the RPC port.
//
// Families (every one with HELP and TYPE lines):
//   sparsecore_table_<field>{table, shard}  each TableStats field (table/table_stats.h) of each
//                                           table of each shard; counters end in _total
//   sparsecore_shard_up{shard}              1 when the shard answered in time, else 0
//   sparsecore_shard_{pull,push}_requests_total{shard}
//   sparsecore_rpc_*                        the transport's counters (requests, errors, bytes,
//                                           connections; rpc_server.h TransportStats)
//   sparsecore_metrics_*                    this endpoint's own connections, timeouts, requests
//   process_resident_memory_bytes, process_virtual_memory_bytes, process_open_fds
//
// Thread-safety: start() and stop() from one thread; stop it before its PsServer stops.
#pragma once

#include <memory>
#include <string>

#include "sparsecore/ps/ps_server.h"
#include "sparsecore/rpc/http_server.h"

namespace sparsecore::ps {

// The exposition text of `server` (and of `http`, the endpoint serving it, when given).
std::string render_metrics(PsServer& server, const rpc::HttpServer* http, int shard_timeout_ms);

class PsMetricsServer {
 public:
  // options.address defaults to loopback, as the RPC port does.
  PsMetricsServer(PsServer& server, rpc::HttpServerOptions options);
  ~PsMetricsServer();
  void start();  // IoError when the address cannot be bound
  void stop();   // idempotent
  int port() const { return http_.port(); }

 private:
  PsServer& server_;
  rpc::HttpServer http_;
};

}  // namespace sparsecore::ps
