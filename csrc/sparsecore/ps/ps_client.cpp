#include "sparsecore/ps/ps_client.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <new>
#include <set>
#include <tuple>
#include <utility>

#include "sparsecore/core/error.h"
#include "sparsecore/core/file.h"
#include "sparsecore/core/half.h"
#include "sparsecore/ps/ps_protocol.h"
#include "sparsecore/ps/ps_shard.h"
#include "sparsecore/ps/ps_snapshot.h"
#include "sparsecore/rpc/rpc_error.h"

namespace sparsecore::ps {
namespace {

Json parse_reply(const rpc::Response& r) {
  return Json::parse(std::string_view(reinterpret_cast<const char*>(r.data.data()), r.bytes));
}

const char kZeros[8] = {};

}  // namespace

// Buffers of one pull or push, reused between calls (PsClient keeps a free list). Shard g's
// part of slice t is entry g * K + t (K slices).
struct PsClient::CallScratch {
  std::vector<ShardedIds> ids;                   // per slice: its ids deduplicated, grouped by shard
  std::vector<int64_t> dims;                     // per slice
  std::vector<std::pair<float*, int64_t>> outs;  // pull: per slice, its rows and number of ids
  std::string names;                             // every slice's table name, padded to 8, in order
  std::vector<TablesHeader> headers;             // per shard
  std::vector<TableEntry> entries;               // (shard, slice)
  std::vector<uint64_t> reply_bytes;             // pull: per shard
  std::vector<size_t> base;                      // (shard, slice): first float of its rows in `rows`
  std::vector<PodVector<int64_t>> source;        // pull: per slice, float offset in `rows` of grouped row j
  PodVector<float> rows;                         // pull: replies shard after shard; push: grads per slice, grouped
  std::vector<char> in_order;                    // per slice: its ids distinct and already grouped by shard
  std::vector<char> half;                        // per slice: float16 values on the wire
  PodVector<uint16_t> halves;                    // the float16 values of the call, (shard, slice) after another
  // pull: where each float16 part of the reply goes, as (offset in halves, floats, count)
  std::vector<std::tuple<size_t, float*, size_t>> widen;
};

std::unique_ptr<PsClient::CallScratch> PsClient::take_scratch() {
  {
    std::lock_guard<std::mutex> lock(scratch_mutex_);
    if (!free_scratch_.empty()) {
      auto s = std::move(free_scratch_.back());
      free_scratch_.pop_back();
      return s;
    }
  }
  return std::make_unique<CallScratch>();
}

void PsClient::give_back(std::unique_ptr<CallScratch> scratch) {
  std::lock_guard<std::mutex> lock(scratch_mutex_);
  if (free_scratch_.size() < 64) free_scratch_.push_back(std::move(scratch));
}

PsClient::PendingPull::PendingPull(PendingPull&& other) noexcept
    : client_(std::exchange(other.client_, nullptr)),
      scratch_(std::move(other.scratch_)),
      calls_(std::move(other.calls_)) {}

PsClient::PendingPull& PsClient::PendingPull::operator=(PendingPull&& other) noexcept {
  if (this != &other) {
    this->~PendingPull();
    new (this) PendingPull(std::move(other));
  }
  return *this;
}

PsClient::PendingPull::~PendingPull() {
  if (!client_) return;
  try {
    wait();  // replies may still land in the scratch: never hand it back before they have
  } catch (...) {
  }
}

void PsClient::PendingPull::wait() {
  SC_CHECK_ARG(client_ != nullptr, "PendingPull::wait on an empty or finished pull");
  PsClient* client = client_;
  client_ = nullptr;
  std::unique_ptr<CallScratch> scratch = std::move(scratch_);
  std::exception_ptr error;
  for (size_t g = 0; g < calls_.size(); ++g) {
    if (!calls_[g].valid()) continue;
    try {
      rpc::Response r = calls_[g].get();
      const uint64_t expect = scratch->reply_bytes[g];
      SC_CHECK(r.in_caller_buffer && r.bytes == expect, RpcProtocolError, "pull reply of ", r.bytes,
               " bytes from shard ", g, ", expected ", expect);
    } catch (...) {
      if (!error) error = std::current_exception();  // keep reading the other shards' replies
    }
  }
  calls_.clear();
  if (!error)
    for (const auto& [at, out, count] : scratch->widen)
      halves_to_floats(scratch->halves.data() + at, out, static_cast<int64_t>(count));
  if (!error) {
    // Scatter the slices whose rows did not land in place: the row of id i of slice t is the
    // reply row of its unique id.
    for (size_t t = 0; t < scratch->outs.size(); ++t) {
      if (scratch->in_order[t]) continue;
      const auto [out, n] = scratch->outs[t];
      const ShardedIds& ids = scratch->ids[t];
      const size_t dim = static_cast<size_t>(scratch->dims[t]);
      const int64_t* source = scratch->source[t].data();
      for (int64_t i = 0; i < n; ++i)
        std::memcpy(out + static_cast<size_t>(i) * dim,
                    scratch->rows.data() + source[ids.inverse[static_cast<size_t>(i)]], dim * sizeof(float));
    }
  }
  if (client) client->give_back(std::move(scratch));
  if (error) std::rethrow_exception(error);
}

PsClient::PsClient(const std::vector<std::string>& addresses, PsClientOptions options) : options_(options) {
  rpc::ClientOptions co;
  co.token = options_.token;
  co.call_timeout_ms = options_.timeout_ms;
  co.connect_timeout_ms = options_.connect_timeout_ms;
  co.heartbeat_ms = options_.heartbeat_ms;
  co.poll_us = options_.poll_us;
  transport_ = std::make_unique<RpcShardTransport>(addresses, co);
  total_shards_ = transport_->num_shards();
  if (options_.num_workers > 0) {  // tell every shard which rank these connections are
    SC_CHECK_ARG(options_.worker < options_.num_workers, "worker ", options_.worker, " out of range for ",
                 options_.num_workers, " workers");
    Json j = Json::object();
    j["worker"] = static_cast<int64_t>(options_.worker);
    if (options_.staleness >= 0) {
      j["num_workers"] = static_cast<int64_t>(options_.num_workers);
      j["staleness"] = options_.staleness;
    }
    call_json(kJoin, j);
  }
}

PsClient::PsClient(PsServer& embedded, PsClientOptions options) : options_(options) {
  SC_CHECK_ARG(options_.num_workers == 0, "an embedded server serves one asynchronous worker; num_workers must be 0");
  transport_ = std::make_unique<LocalShardTransport>(embedded);
  total_shards_ = transport_->num_shards();
}

PsClient::~PsClient() = default;

void PsClient::create_table(const TableConfig& config, uint64_t seed) {
  config.validate();
  Json j = Json::object();
  j["table"] = config.to_json();
  j["seed"] = seed;
  call_json(kCreateTable, j);
  std::lock_guard<std::mutex> lock(dims_mutex_);
  dims_[config.name] = config.dim;
}

void PsClient::set_wire_dtype(const std::string& table, const std::string& dtype) {
  SC_CHECK_ARG(dtype == "float32" || dtype == "float16", "wire dtype of ",
               table.empty() ? std::string("the tables") : "table '" + table + "'",
               " must be 'float32' or 'float16', got '", dtype, "'");
  std::lock_guard<std::mutex> lock(dims_mutex_);
  wire_half_[table] = dtype == "float16";
}

std::string PsClient::wire_dtype(const std::string& table) const { return wire_half(table) ? "float16" : "float32"; }

bool PsClient::wire_half(const std::string& table) const {
  std::lock_guard<std::mutex> lock(const_cast<std::mutex&>(dims_mutex_));
  auto it = wire_half_.find(table);
  if (it == wire_half_.end()) it = wire_half_.find(std::string());
  return it != wire_half_.end() && it->second;
}

int PsClient::dim(const std::string& table) const {
  std::lock_guard<std::mutex> lock(const_cast<std::mutex&>(dims_mutex_));
  auto it = dims_.find(table);
  if (it == dims_.end()) throw NotFound("table '" + table + "' was not created through this client");
  return it->second;
}

void PsClient::pull(const std::string& table, const int64_t* ids, int64_t n, bool train, float* out) {
  pull_async(table, ids, n, train, out).wait();
}

PsClient::PendingPull PsClient::pull_async(const std::string& table, const int64_t* ids, int64_t n, bool train,
                                           float* out) {
  return pull_tables({TableSlice{table, ids, n, out, nullptr}}, train);
}

namespace {

// Checks what every slice of a pull or push must satisfy; returns each slice's dim.
void check_slices(const std::vector<TableSlice>& slices, bool push, int total_shards) {
  SC_CHECK_ARG(slices.size() <= kMaxTablesPerShard, "a request carries at most ", kMaxTablesPerShard, " tables, got ",
               slices.size());
  for (const TableSlice& s : slices) {
    SC_CHECK_ARG(s.n >= 0 && s.n < (int64_t{1} << 31), "table '", s.table,
                 "': number of ids must be in [0, 2^31), got ", s.n);
    SC_CHECK_ARG(s.n == 0 || (s.ids && (push ? s.grads != nullptr : s.rows != nullptr)), "table '", s.table,
                 "': null ids or ", push ? "gradients" : "rows");
    if (s.shard_starts) {
      bool ok = s.shard_starts[0] == 0 && s.shard_starts[total_shards] == s.n;
      for (int g = 0; ok && g < total_shards; ++g) ok = s.shard_starts[g] <= s.shard_starts[g + 1];
      SC_CHECK_ARG(ok, "table '", s.table, "': shard_starts must rise from 0 to the number of ids (", s.n, ") over ",
                   total_shards, " shards");
    }
  }
  if (push) {
    std::set<std::string_view> seen;
    for (const TableSlice& s : slices)
      SC_CHECK_ARG(seen.insert(s.table).second, "table '", s.table,
                   "' appears in more than one slice of a push; pass its ids in one slice");
  }
}

}  // namespace

PsClient::PendingPull PsClient::pull_tables(const std::vector<TableSlice>& slices, bool train) {
  check_slices(slices, false, total_shards_);
  const size_t K = slices.size();
  const size_t T = static_cast<size_t>(total_shards_);
  // The pull is armed (client_ set, so that wait() scatters) only once every request is out;
  // until then a failure waits for the requests already sent, whose replies land in `s`.
  PendingPull p;
  p.scratch_ = take_scratch();
  CallScratch& s = *p.scratch_;
  s.ids.resize(std::max(s.ids.size(), K));
  s.source.resize(std::max(s.source.size(), K));
  s.dims.assign(K, 0);
  s.outs.assign(K, {nullptr, 0});
  s.in_order.assign(K, 0);
  s.half.assign(K, 0);
  s.widen.clear();
  s.names.clear();
  s.base.assign(T * K, 0);
  s.reply_bytes.assign(T, 0);
  for (size_t t = 0; t < K; ++t) {
    s.dims[t] = dim(slices[t].table);
    s.half[t] = wire_half(slices[t].table);
    s.outs[t] = {slices[t].rows, slices[t].n};
    if (slices[t].shard_starts) {
      s.ids[t].adopt(slices[t].shard_starts, total_shards_);
      s.in_order[t] = 1;
    } else {
      s.ids[t].build(slices[t].ids, slices[t].n, total_shards_);
      s.in_order[t] = s.ids[t].in_given_order(slices[t].n);
    }
    s.names.append(slices[t].table).append(padded8(slices[t].table.size()) - slices[t].table.size(), '\0');
  }
  // Shard g replies its rows of every slice, slice after slice: straight into the slice's
  // rows where its ids are in shard order, else into a region of `rows` and scattered by wait().
  // A float16 part lands in `halves` and is widened by wait() into its place.
  size_t floats = 0, halves = 0;
  for (size_t g = 0; g < T; ++g)
    for (size_t t = 0; t < K; ++t) {
      const size_t part =
          static_cast<size_t>(s.ids[t].shard_size(static_cast<int>(g))) * static_cast<size_t>(s.dims[t]);
      s.reply_bytes[g] += part * (s.half[t] ? sizeof(uint16_t) : sizeof(float));
      if (s.half[t]) {
        s.widen.emplace_back(halves, nullptr, part);
        halves += part;
      }
      if (s.in_order[t]) continue;
      s.base[g * K + t] = floats;
      floats += part;
    }
  s.rows.resize(floats);
  s.halves.resize(halves);
  for (size_t t = 0; t < K; ++t) {
    if (s.in_order[t]) continue;
    const ShardedIds& ids = s.ids[t];
    PodVector<int64_t>& source = s.source[t];
    source.resize(static_cast<size_t>(ids.num_unique()));
    for (size_t g = 0; g < T; ++g) {
      const int64_t first = ids.starts[g];
      for (int64_t j = first; j < ids.starts[g + 1]; ++j)
        source[static_cast<size_t>(j)] = static_cast<int64_t>(s.base[g * K + t]) + (j - first) * s.dims[t];
    }
  }
  TablesHeader h{};
  h.num_tables = static_cast<uint32_t>(K);
  h.flags = train ? kPullTrain : 0;
  s.headers.assign(T, h);
  s.entries.assign(T * K, TableEntry{});
  p.calls_.resize(T);
  std::vector<iovec> segs, into;
  size_t next_widen = 0;
  for (size_t g = 0; g < T; ++g) {
    if (s.reply_bytes[g] == 0) {  // a shard that owns none of the ids gets no request
      for (size_t t = 0; t < K; ++t) next_widen += s.half[t];
      continue;
    }
    segs.assign({{&s.headers[g], sizeof(TablesHeader)},
                 {&s.entries[g * K], K * sizeof(TableEntry)},
                 {s.names.data(), s.names.size()}});
    into.clear();
    for (size_t t = 0; t < K; ++t) {
      const ShardedIds& ids = s.ids[t];
      const int64_t first = ids.starts[g], count = ids.shard_size(static_cast<int>(g));
      const size_t d = static_cast<size_t>(s.dims[t]);
      s.entries[g * K + t] = {static_cast<uint32_t>(slices[t].table.size()), s.half[t] ? kWireFloat16 : kWireFloat32,
                              static_cast<uint64_t>(count)};
      const int64_t* shard_ids = s.in_order[t] ? slices[t].ids + first : ids.shard_ids(static_cast<int>(g));
      segs.push_back({const_cast<int64_t*>(shard_ids), static_cast<size_t>(count) * sizeof(int64_t)});
      float* rows = s.in_order[t] ? slices[t].rows + static_cast<size_t>(first) * d : s.rows.data() + s.base[g * K + t];
      if (s.half[t]) {
        auto& [at, out, values] = s.widen[next_widen++];
        out = rows;
        into.push_back({s.halves.data() + at, values * sizeof(uint16_t)});
      } else {
        into.push_back({rows, static_cast<size_t>(count) * d * sizeof(float)});
      }
    }
    try {
      p.calls_[g] = transport_->call(static_cast<int>(g), kPullTables, segs, into);
    } catch (...) {
      for (ShardCall& c : p.calls_) {
        try {
          if (c.valid()) c.get();
        } catch (...) {  // the send's error is the one to report
        }
      }
      throw;
    }
  }
  p.client_ = this;
  return p;
}

void PsClient::push(const std::string& table, const int64_t* ids, int64_t n, const float* grads, int64_t step) {
  push_slices({TableSlice{table, ids, n, nullptr, grads}}, step, true);
}

void PsClient::push_tables(const std::vector<TableSlice>& slices, int64_t step) { push_slices(slices, step, false); }

void PsClient::push_slices(const std::vector<TableSlice>& slices, int64_t step, bool sum_duplicates) {
  check_slices(slices, true, total_shards_);
  if (slices.empty()) return;
  const size_t K = slices.size();
  const size_t T = static_cast<size_t>(total_shards_);
  std::unique_ptr<CallScratch> scratch = take_scratch();
  CallScratch& s = *scratch;
  s.ids.resize(std::max(s.ids.size(), K));
  s.dims.assign(K, 0);
  s.names.clear();
  s.base.assign(K, 0);
  std::vector<char> direct(K, 0);
  size_t floats = 0;
  for (size_t t = 0; t < K; ++t) {
    const TableSlice& slice = slices[t];
    s.dims[t] = dim(slice.table);
    ShardedIds& ids = s.ids[t];
    if (slice.shard_starts)
      ids.adopt(slice.shard_starts, total_shards_);
    else
      ids.build(slice.ids, slice.n, total_shards_);
    if (!slice.shard_starts && ids.num_unique() != slice.n && !sum_duplicates) {
      for (int64_t i = 0; i < slice.n; ++i)
        SC_CHECK_ARG(ids.inverse[static_cast<size_t>(i)] == i, "push of table '", slice.table, "' names id ",
                     slice.ids[i], " more than once; sum its gradients into one row first");
    }
    // Refused here as well as by each shard: a NaN that one shard refuses must not leave the
    // other shards' parts applied.
    const int64_t floats_of_slice = slice.n * s.dims[t];
    for (int64_t i = 0; i < floats_of_slice; ++i)
      SC_CHECK_ARG(std::isfinite(slice.grads[i]), "gradients of table '", slice.table,
                   "' contain NaN or Inf; nothing was pushed");
    direct[t] =
        slice.shard_starts != nullptr || ids.in_given_order(slice.n);  // the caller's ids and gradients go as they are
    s.base[t] = floats;
    if (!direct[t]) floats += static_cast<size_t>(ids.num_unique()) * static_cast<size_t>(s.dims[t]);
    s.names.append(slice.table).append(padded8(slice.table.size()) - slice.table.size(), '\0');
  }
  s.rows.resize(floats);
  for (size_t t = 0; t < K; ++t) {
    if (direct[t]) continue;
    // Each id's gradient in its grouped row; a repeated id's gradients summed in position
    // order (a fixed order).
    const ShardedIds& ids = s.ids[t];
    const size_t d = static_cast<size_t>(s.dims[t]);
    float* grouped = s.rows.data() + s.base[t];
    const bool repeated = ids.num_unique() != slices[t].n;
    if (repeated) std::fill(grouped, grouped + static_cast<size_t>(ids.num_unique()) * d, 0.f);
    for (int64_t i = 0; i < slices[t].n; ++i) {
      float* dst = grouped + static_cast<size_t>(ids.inverse[static_cast<size_t>(i)]) * d;
      const float* src = slices[t].grads + static_cast<size_t>(i) * d;
      if (repeated)
        for (size_t k = 0; k < d; ++k) dst[k] += src[k];
      else
        std::memcpy(dst, src, d * sizeof(float));
    }
  }
  // float16 tables: every grouped gradient rounded once, refused when it would not fit.
  s.half.assign(K, 0);
  std::vector<size_t> half_base(K, 0);
  size_t halves = 0;
  for (size_t t = 0; t < K; ++t) {
    s.half[t] = wire_half(slices[t].table);
    half_base[t] = halves;
    if (s.half[t]) halves += static_cast<size_t>(s.ids[t].starts[T]) * static_cast<size_t>(s.dims[t]);
  }
  s.halves.resize(halves);
  for (size_t t = 0; t < K; ++t) {
    if (!s.half[t]) continue;
    const size_t count = static_cast<size_t>(s.ids[t].starts[T]) * static_cast<size_t>(s.dims[t]);
    const float* grads = direct[t] ? slices[t].grads : s.rows.data() + s.base[t];
    uint16_t* out = s.halves.data() + half_base[t];
    floats_to_halves(grads, out, static_cast<int64_t>(count));
    for (size_t i = 0; i < count; ++i)
      SC_CHECK_ARG((out[i] & 0x7fff) != 0x7c00, "gradients of table '", slices[t].table, "' hold ", grads[i],
                   ", beyond the range of float16 (+-65504), its wire dtype; nothing was pushed");
  }
  TablesHeader h{};
  h.num_tables = static_cast<uint32_t>(K);
  h.step = step;
  h.worker = options_.worker;
  h.num_workers = options_.staleness >= 0 ? 0 : options_.num_workers;  // bounded staleness: applied at once
  s.headers.assign(T, h);
  s.entries.assign(T * K, TableEntry{});
  std::vector<ShardCall> calls(T);
  std::vector<iovec> segs;
  // Every shard gets the push, with every table, empty or not: in synchronous mode each
  // shard counts the workers, and every push advances each table's step on every shard
  // alike (the step of global-step optimizers, as one embedded backward advances it).
  for (size_t g = 0; g < T; ++g) {
    segs.assign({{&s.headers[g], sizeof(TablesHeader)},
                 {&s.entries[g * K], K * sizeof(TableEntry)},
                 {s.names.data(), s.names.size()}});
    for (size_t t = 0; t < K; ++t) {
      const int64_t count = s.ids[t].shard_size(static_cast<int>(g));
      s.entries[g * K + t] = {static_cast<uint32_t>(slices[t].table.size()), s.half[t] ? kWireFloat16 : kWireFloat32,
                              static_cast<uint64_t>(count)};
      const int64_t* ids = direct[t] ? slices[t].ids + s.ids[t].starts[g] : s.ids[t].shard_ids(static_cast<int>(g));
      segs.push_back({const_cast<int64_t*>(ids), static_cast<size_t>(count) * sizeof(int64_t)});
    }
    for (size_t t = 0; t < K; ++t) {
      const int64_t count = s.ids[t].shard_size(static_cast<int>(g));
      const size_t d = static_cast<size_t>(s.dims[t]);
      const size_t first = static_cast<size_t>(s.ids[t].starts[g]) * d;
      if (s.half[t]) {
        segs.push_back({s.halves.data() + half_base[t] + first, static_cast<size_t>(count) * d * sizeof(uint16_t)});
        continue;
      }
      const float* grads = (direct[t] ? slices[t].grads : s.rows.data() + s.base[t]) + first;
      segs.push_back({const_cast<float*>(grads), static_cast<size_t>(count) * d * sizeof(float)});
    }
    calls[g] = transport_->call(static_cast<int>(g), kPushTables, segs);
  }
  std::exception_ptr error;
  for (auto& c : calls) {
    try {
      c.get();
    } catch (...) {
      if (!error) error = std::current_exception();
    }
  }
  give_back(std::move(scratch));
  if (error) std::rethrow_exception(error);
}

std::vector<Json> PsClient::call_json(uint16_t method, const Json& body, int only) {
  std::string text = body.dump();
  std::vector<Json> out;
  std::vector<ShardCall> calls;
  for (int g = 0; g < total_shards_; ++g) {
    if (only >= 0 && g != only) continue;
    iovec seg{text.data(), text.size()};
    calls.push_back(transport_->call(g, method, {&seg, 1}));
  }
  // Every reply is awaited before the first error is rethrown: a phased call (save,
  // restore) must know that no shard is still working before its next phase.
  std::exception_ptr first_error;
  for (auto& c : calls) {
    try {
      rpc::Response r = c.get();
      out.push_back(r.bytes ? parse_reply(r) : Json());
    } catch (...) {
      if (!first_error) first_error = std::current_exception();
      out.push_back(Json());
    }
  }
  if (first_error) std::rethrow_exception(first_error);
  return out;
}

Json PsClient::export_rows(const std::string& stream, bool delta, int64_t since, int64_t version,
                           const std::string& dtype) {
  SC_CHECK_ARG(is_plain_name(stream), "export stream '", stream, "' must be a plain name (no '/', not '.' or '..')");
  SC_CHECK_ARG(version >= 0, "export version must be >= 0, got ", version);
  SC_CHECK_ARG(!delta || (since >= 0 && since <= version), "export_delta: since must be in [0, version ", version,
               "], got ", since);
  Json j = Json::object();
  j["stream"] = stream;
  j["kind"] = delta ? "delta" : "full";
  j["since"] = since;
  j["version"] = version;
  j["dtype"] = dtype;
  int64_t rows = 0, deleted = 0;
  for (const Json& part : call_json(kExport, j)) {
    rows += part.at("rows").as_int("rows");
    deleted += part.at("deleted").as_int("deleted");
  }
  Json out = Json::object();
  out["rows"] = rows;
  out["deleted"] = deleted;
  return out;
}

std::string PsClient::save(const std::string& name, int64_t step, bool overwrite) {
  check_snapshot_name(name);
  Json j = Json::object();
  j["phase"] = "write";
  j["name"] = name;
  j["save_id"] = random_suffix();
  j["step"] = step;
  j["overwrite"] = overwrite;
  // A failed write or commit (e.g. another save of the same name committed first) removes
  // every server's staged part of this save; a commit that renamed the staging directory into
  // place is not undone by the abort, which only removes staging directories.
  try {
    call_json(kSave, j);
    j["phase"] = "commit";
    call_json(kSave, j, 0);
  } catch (...) {
    j["phase"] = "abort";
    try {
      call_json(kSave, j, 0);
    } catch (const std::exception&) {  // the write's or commit's error is the one to report
    }
    throw;
  }
  return name;
}

int64_t PsClient::restore(const std::string& requested) {
  std::string name = requested;
  Json j = Json::object();
  if (name.empty()) {
    j["phase"] = "latest";
    name = call_json(kRestore, j, 0)[0].at("name").as_string();
    SC_CHECK(!name.empty(), NotFound, "no complete snapshot in the servers' snapshot directory");
  }
  check_snapshot_name(name);
  j["phase"] = "prepare";
  j["name"] = name;
  j["restore_id"] = random_suffix();
  std::vector<Json> prepared;
  try {
    prepared = call_json(kRestore, j);
  } catch (...) {
    j["phase"] = "abort";
    try {
      call_json(kRestore, j);
    } catch (const std::exception&) {  // the prepare's error is the one to report
    }
    throw;
  }
  const int64_t step = prepared[0].at("step").as_int();
  j["phase"] = "commit";
  call_json(kRestore, j);
  return step;
}

std::vector<std::string> PsClient::prune_snapshots(const std::string& prefix, int64_t keep,
                                                   const std::vector<std::string>& protect) {
  Json j = Json::object();
  j["prefix"] = prefix;
  j["keep"] = keep;
  Json names = Json::array();
  for (const std::string& name : protect) names.push_back(name);
  j["protect"] = std::move(names);
  const Json reply = call_json(kPruneSnapshots, j, 0)[0];
  std::vector<std::string> removed;
  for (const Json& name : reply.at("removed").as_array("removed")) removed.push_back(name.as_string("removed name"));
  return removed;
}

void PsClient::kv_put(const std::string& key, const Json& value) {
  Json j = Json::object();
  j["key"] = key;
  j["value"] = value;
  call_json(kKvPut, j, 0);
}

Json PsClient::kv_get(const std::string& key) {
  Json j = Json::object();
  j["key"] = key;
  return call_json(kKvGet, j, 0)[0].at("value");
}

void PsClient::barrier(const std::string& name, int count) {
  Json j = Json::object();
  j["name"] = name;
  j["count"] = count;
  if (options_.num_workers > 0) j["worker"] = static_cast<int64_t>(options_.worker);
  call_json(kBarrier, j, 0);
}

int64_t PsClient::erase(const std::string& table, const int64_t* ids, int64_t n) {
  SC_CHECK_ARG(n >= 0 && n < (int64_t{1} << 31), "erase of table '", table,
               "': number of ids must be in [0, 2^31), got ", n);
  SC_CHECK_ARG(n == 0 || ids, "erase of table '", table, "': null ids");
  SC_CHECK_ARG(table.size() <= kMaxTableNameBytes, "table name of ", table.size(), " bytes (at most ",
               kMaxTableNameBytes, ")");
  ShardedIds grouped;
  grouped.build(ids, n, total_shards_);
  std::vector<TableHeader> headers(static_cast<size_t>(total_shards_));
  std::vector<ShardCall> calls;
  for (int g = 0; g < total_shards_; ++g) {
    if (grouped.shard_size(g) == 0) continue;
    TableHeader& h = headers[static_cast<size_t>(g)];
    h = TableHeader{};
    h.name_bytes = static_cast<uint32_t>(table.size());
    h.num_ids = static_cast<uint64_t>(grouped.shard_size(g));
    iovec segs[4] = {{&h, sizeof(h)},
                     {const_cast<char*>(table.data()), table.size()},
                     {const_cast<char*>(kZeros), padded8(table.size()) - table.size()},
                     {const_cast<int64_t*>(grouped.shard_ids(g)), h.num_ids * sizeof(int64_t)}};
    calls.push_back(transport_->call(g, kErase, segs));
  }
  int64_t erased = 0;
  std::exception_ptr first_error;
  for (auto& c : calls) {
    try {
      erased += parse_reply(c.get()).at("erased").as_int("erased");
    } catch (...) {
      if (!first_error) first_error = std::current_exception();
    }
  }
  if (first_error) std::rethrow_exception(first_error);
  return erased;
}

int64_t PsClient::expire(const std::string& table) {
  Json j = Json::object();
  j["table"] = table;
  int64_t expired = 0;
  for (const Json& r : call_json(kExpire, j)) expired += r.at("expired").as_int("expired");
  return expired;
}

Json PsClient::stats() {
  Json out = Json::array();
  for (Json& j : call_json(kStats, Json::object())) out.push_back(std::move(j));
  return out;
}

}  // namespace sparsecore::ps
