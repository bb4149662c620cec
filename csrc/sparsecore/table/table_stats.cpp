#include "sparsecore/table/table_stats.h"

#include "sparsecore/core/error.h"
#include "sparsecore/table/embedding_table.h"
#include "sparsecore/table/expiry.h"

namespace sparsecore {

TableStats& TableStats::operator+=(const TableStats& other) {
#define SPARSECORE_TABLE_STATS_ADD(name, kind, help) name += other.name;
  SPARSECORE_TABLE_STATS_FIELDS(SPARSECORE_TABLE_STATS_ADD)
#undef SPARSECORE_TABLE_STATS_ADD
  return *this;
}

Json TableStats::to_json() const {
  Json j = Json::object();
  for_each([&](const char* name, const char*, const char*, int64_t value) { j[name] = value; });
  return j;
}

TableStats TableStats::from_json(const Json& j) {
  SC_CHECK_ARG(j.is_object(), "table statistics must be a JSON object");
  TableStats s;
#define SPARSECORE_TABLE_STATS_READ(name, kind, help) \
  if (j.contains(#name)) s.name = j.at(#name).as_int("table statistic " #name);
  SPARSECORE_TABLE_STATS_FIELDS(SPARSECORE_TABLE_STATS_READ)
#undef SPARSECORE_TABLE_STATS_READ
  return s;
}

TableStats table_stats(const EmbeddingTable& table) {
  return table_stats(static_cast<int64_t>(table.size()), static_cast<int64_t>(table.memory_bytes()), table.admission(),
                     table.expiry());
}

TableStats table_stats(int64_t rows, int64_t bytes, const Admission* admission, const Expiry* expiry) {
  TableStats s;
  s.rows = rows;
  s.bytes = bytes;
  if (admission) {
    const AdmissionStats st = admission->stats();
    s.admitted = st.admitted;
    s.rejected = st.rejected;
    s.pending = st.pending;
    s.dropped_gradients = st.dropped_gradients;
  }
  if (expiry) {
    const ExpiryStats st = expiry->stats();
    s.expired = st.expired;
    s.evicted = st.evicted;
    s.refused = st.refused;
    s.dropped_gradients += st.dropped_gradients;  // refused ids of a table without admission
  }
  return s;
}

}  // namespace sparsecore
