// What parameter-server clients and servers agree on: method ids, the request layouts, and
// routing (docs/architecture.md: bucket = top 16 bits of fmix64(key); buckets map to servers and shards).
//
// Global shard g of a cluster of T = num_servers * shards_per_server owns the contiguous
// bucket range {b : (b * T) >> 16 == g}; it is shard g % shards_per_server of server
// g / shards_per_server, served by that server's reactor of the same index.
#pragma once

#include <cstdint>

#include "sparsecore/core/hash.h"

namespace sparsecore::ps {

enum Method : uint16_t {
  kInfo = 10,            // -> json {server_index, num_servers, shards}
  kCreateTable = 11,     // json {table: TableConfig json, seed}
  kPull = 12,            // TableHeader + name + ids int64[n] -> float32[n, dim]
  kPush = 13,            // TableHeader + name + ids int64[n] + grads float32[n, dim]
  kSave = 14,            // json {phase: write|commit|abort, name, save_id, step, overwrite}
  kRestore = 15,         // json {phase: latest|prepare|commit|abort, name, restore_id} -> json {name | step}
  kStats = 16,           // -> json
  kKvPut = 17,           // json {key, value}
  kKvGet = 18,           // json {key} -> json {value} (null when absent)
  kBarrier = 19,         // json {name, count}: replies once `count` callers arrived
  kDensePull = 20,       // json {name, size, init} -> float32[size]
  kDensePush = 21,       // DenseHeader + name + float32 grads[size] -> applies w -= lr * g
  kJoin = 22,            // json {worker}: a synchronous worker's connection to a shard says its rank
  kPullTables = 23,      // TablesHeader + TableEntry[k] + names + ids -> float32 rows of every table, in order
  kPushTables = 24,      // TablesHeader + TableEntry[k] + names + ids + grads (per table (n, dim), in order)
  kExpire = 25,          // json {table} -> json {expired}: the shard removes the rows its expiry rules name
  kErase = 26,           // TableHeader + name + ids int64[n] (ids of this shard) -> json {erased}
  kExport = 27,          // json {stream, kind: full|delta, since, version, dtype} -> json {rows, deleted}
  kDenseCreate = 28,     // DenseCreateHeader + name + optimizer json + float32 values[size]
  kDenseStep = 29,       // DenseStepHeader + name + float32 grads[size] -> float32 values[size] once applied
  kPruneSnapshots = 30,  // json {prefix, keep, protect: [names]} -> json {removed: [names]} (ps_snapshot.h)
};

// Fixed part of pull and push requests; the table name (name_bytes, padded to 8) follows,
// then the arrays.
struct TableHeader {
  uint32_t name_bytes;
  uint32_t flags;  // pull: kPullTrain; push: unused
  uint64_t num_ids;
  int64_t step;          // push: the worker's step (synchronous mode)
  uint32_t worker;       // push: worker rank
  uint32_t num_workers;  // push: >0 synchronous (apply when all have pushed), 0 asynchronous
};
static_assert(sizeof(TableHeader) == 32);
inline constexpr uint32_t kPullTrain = 1;

// Several tables in one request (kPullTables, kPushTables): this header, then one TableEntry
// per table, then every table's name (each padded to 8 bytes), then every table's ids
// (int64[num_ids], table after table), then for a push every table's summed gradients
// (float32[num_ids, dim], table after table). A pull replies every table's rows, table after
// table. The payload is exactly that long; 1 <= num_tables <= kMaxTablesPerShard.
// A table's entry may name float16 for its values on the wire (kWireFloat16): its pushed
// gradients and its pulled rows are then IEEE binary16 (round to nearest even, core/half.h)
// instead of float32, and the server converts to and from its float32 rows.
struct TablesHeader {
  uint32_t num_tables;
  uint32_t flags;        // pull: kPullTrain; push: 0
  int64_t step;          // push: the worker's step (synchronous mode)
  uint32_t worker;       // push: worker rank
  uint32_t num_workers;  // push: >0 synchronous (apply when all have pushed), 0 asynchronous
};
static_assert(sizeof(TablesHeader) == 24);
struct TableEntry {
  uint32_t name_bytes;
  uint32_t wire_dtype;  // kWireFloat32 or kWireFloat16: the dtype of this table's values
  uint64_t num_ids;
};
static_assert(sizeof(TableEntry) == 16);
inline constexpr uint32_t kWireFloat32 = 0;
inline constexpr uint32_t kWireFloat16 = 1;
inline constexpr uint32_t kMaxTableNameBytes = 4096;

// kDensePush: this header, the name (padded to 8), then float32 grads[size].
struct DenseHeader {
  uint32_t name_bytes;
  float lr;  // finite and >= 0
  uint64_t size;
};
static_assert(sizeof(DenseHeader) == 16);
// kDenseCreate: this header, the name (padded to 8), the optimizer's JSON (padded to 8), then
// the initial float32 values[size]. A variable that exists with the same size and optimizer
// is left as it is.
struct DenseCreateHeader {
  uint32_t name_bytes;
  uint32_t config_bytes;
  uint64_t size;
};
static_assert(sizeof(DenseCreateHeader) == 16);

// kDenseStep: this header, the name (padded to 8), then float32 grads[size]; the variable's
// optimizer applies them (synchronous: the sum of every worker's, in worker order, once all
// num_workers pushed `step`) and the reply carries the variable's values after that update.
struct DenseStepHeader {
  uint32_t name_bytes;
  uint32_t reserved;  // 0
  uint64_t size;
  int64_t step;
  uint32_t worker;
  uint32_t num_workers;  // > 0 synchronous, 0 applied at once
};
static_assert(sizeof(DenseStepHeader) == 32);

inline constexpr uint32_t kMaxWorkers = 1u << 16;  // synchronous workers of one cluster

inline constexpr uint64_t padded8(uint64_t n) { return (n + 7) & ~uint64_t{7}; }

inline int global_shard_of_bucket(uint32_t bucket, int total_shards) {
  return static_cast<int>((static_cast<uint64_t>(bucket) * static_cast<uint64_t>(total_shards)) >> kBucketBits);
}
inline int global_shard_of_key(int64_t key, int total_shards) {
  return global_shard_of_bucket(key_bucket(key), total_shards);
}

}  // namespace sparsecore::ps
