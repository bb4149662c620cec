// TableStats: the statistics of one embedding table (or of one server shard's part of it), in
// one place for the embedded collection, the parameter server's stats request, the Trainer's
// log and the metrics endpoint.
//
// Every field is an int64 counter or gauge listed once in SPARSECORE_TABLE_STATS_FIELDS with
// its kind and a one-line description; the struct, its JSON form, the sum over shards and the
// Prometheus exposition are all generated from that list, so a new statistic is one line there
// (plus the code that counts it).
#pragma once

#include <cstdint>

#include "sparsecore/core/json.h"

namespace sparsecore {

class Admission;
class EmbeddingTable;
class Expiry;

// X(name, kind, help): kind is gauge (a level that goes up and down) or counter (monotonic
// since the table was created or restored with its admission state).
#define SPARSECORE_TABLE_STATS_FIELDS(X)                                                           \
  X(rows, gauge, "rows held by the table")                                                         \
  X(bytes, gauge, "bytes held by the table (index and row records)")                               \
  X(admitted, counter, "ids admitted by feature admission (rows it created)")                      \
  X(rejected, counter, "sightings that feature admission did not admit")                           \
  X(pending, gauge, "ids sighted but not admitted yet (an estimate with a Bloom filter)")          \
  X(dropped_gradients, counter, "gradients of ids without a row, dropped (one per id and update)") \
  X(expired, counter, "rows removed by an expiry rule (TTL, weight norm, predicate)")              \
  X(evicted, counter, "rows removed to make room under the table's capacity")                      \
  X(refused, counter, "inserts refused because the table (or its shard) was full")

struct TableStats {
#define SPARSECORE_TABLE_STATS_MEMBER(name, kind, help) int64_t name = 0;
  SPARSECORE_TABLE_STATS_FIELDS(SPARSECORE_TABLE_STATS_MEMBER)
#undef SPARSECORE_TABLE_STATS_MEMBER

  // Field-wise sum (the statistics of a table split over shards are the sums of the parts).
  TableStats& operator+=(const TableStats& other);
  // {"rows": ..., "bytes": ..., ...}, one key per field.
  Json to_json() const;
  // Fields missing from `j` read as 0 (statistics of an older server); others must be integers.
  static TableStats from_json(const Json& j);

  // Calls f(name, kind, help, value) for each field, in the order of the list.
  template <typename F>
  void for_each(F&& f) const {
#define SPARSECORE_TABLE_STATS_VISIT(name, kind, help) f(#name, #kind, help, name);
    SPARSECORE_TABLE_STATS_FIELDS(SPARSECORE_TABLE_STATS_VISIT)
#undef SPARSECORE_TABLE_STATS_VISIT
  }
};

// The statistics of `table` now. Thread-safety: as EmbeddingTable::size() and the admission's
// stats(): safe beside lookups, approximate while rows are being inserted.
TableStats table_stats(const EmbeddingTable& table);
// The same from the parts: rows and bytes held, and the table's admission and expiry (each
// may be null), for a row store other than an EmbeddingTable (a device store).
TableStats table_stats(int64_t rows, int64_t bytes, const Admission* admission, const Expiry* expiry);

}  // namespace sparsecore
