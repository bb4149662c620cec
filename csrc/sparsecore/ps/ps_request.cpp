#include "sparsecore/ps/ps_request.h"

#include <cstring>

#include "sparsecore/core/error.h"
#include "sparsecore/core/half.h"
#include "sparsecore/ps/ps_shard.h"

namespace sparsecore::ps {
namespace {

// a * b + c, refused when it overflows 64 bits (hostile counts times dims).
uint64_t checked_mul_add(uint64_t a, uint64_t b, uint64_t c, const char* what) {
  uint64_t product = 0, sum = 0;
  SC_CHECK_ARG(!__builtin_mul_overflow(a, b, &product) && !__builtin_add_overflow(product, c, &sum), what,
               " overflows 64 bits");
  return sum;
}

}  // namespace

TableRequest parse_table_request(std::span<const std::byte> payload, int64_t max_ids) {
  TableRequest t;
  SC_CHECK_ARG(payload.size() >= sizeof(TableHeader), "request of ", payload.size(),
               " bytes is shorter than its header");
  std::memcpy(&t.h, payload.data(), sizeof(TableHeader));
  size_t name_end = sizeof(TableHeader) + padded8(t.h.name_bytes);
  SC_CHECK_ARG(t.h.name_bytes <= kMaxTableNameBytes && name_end <= payload.size(), "bad table name length ",
               t.h.name_bytes);
  SC_CHECK_ARG(t.h.num_ids <= static_cast<uint64_t>(max_ids), "request has ", t.h.num_ids, " ids, limit is ", max_ids);
  t.name.assign(reinterpret_cast<const char*>(payload.data()) + sizeof(TableHeader), t.h.name_bytes);
  t.arrays = payload.data() + name_end;
  t.array_bytes = payload.size() - name_end;
  return t;
}

DensePushRequest parse_dense_push(std::span<const std::byte> payload) {
  DensePushRequest d;
  SC_CHECK_ARG(payload.size() >= sizeof(DenseHeader), "dense push of ", payload.size(),
               " bytes is shorter than its header");
  std::memcpy(&d.h, payload.data(), sizeof(DenseHeader));
  const size_t name_end = sizeof(DenseHeader) + padded8(d.h.name_bytes);
  SC_CHECK_ARG(d.h.name_bytes <= kMaxTableNameBytes && name_end <= payload.size(), "bad dense variable name length ",
               d.h.name_bytes);
  SC_CHECK_ARG(
      d.h.size <= (payload.size() - name_end) / sizeof(float) && payload.size() - name_end == d.h.size * sizeof(float),
      "dense push of ", d.h.size, " values carries ", payload.size() - name_end, " bytes of gradients");
  d.name.assign(reinterpret_cast<const char*>(payload.data()) + sizeof(DenseHeader), d.h.name_bytes);
  d.grads = payload.data() + name_end;
  return d;
}

DenseCreateRequest parse_dense_create(std::span<const std::byte> payload) {
  DenseCreateRequest d;
  SC_CHECK_ARG(payload.size() >= sizeof(DenseCreateHeader), "dense create of ", payload.size(),
               " bytes is shorter than its header");
  std::memcpy(&d.h, payload.data(), sizeof(DenseCreateHeader));
  SC_CHECK_ARG(d.h.name_bytes >= 1 && d.h.name_bytes <= kMaxTableNameBytes, "bad dense variable name length ",
               d.h.name_bytes);
  SC_CHECK_ARG(d.h.config_bytes <= (1u << 16), "dense create: optimizer JSON of ", d.h.config_bytes,
               " bytes (at most 65536)");
  const size_t name_end = sizeof(DenseCreateHeader) + padded8(d.h.name_bytes);
  const size_t config_end = name_end + padded8(d.h.config_bytes);
  SC_CHECK_ARG(config_end <= payload.size() && d.h.size <= (payload.size() - config_end) / sizeof(float) &&
                   payload.size() - config_end == d.h.size * sizeof(float),
               "dense create of ", d.h.size, " values carries ", payload.size(), " bytes");
  d.name.assign(reinterpret_cast<const char*>(payload.data()) + sizeof(DenseCreateHeader), d.h.name_bytes);
  d.config = std::string_view(reinterpret_cast<const char*>(payload.data()) + name_end, d.h.config_bytes);
  d.values = payload.data() + config_end;
  return d;
}

DenseStepRequest parse_dense_step(std::span<const std::byte> payload) {
  DenseStepRequest d;
  SC_CHECK_ARG(payload.size() >= sizeof(DenseStepHeader), "dense step of ", payload.size(),
               " bytes is shorter than its header");
  std::memcpy(&d.h, payload.data(), sizeof(DenseStepHeader));
  SC_CHECK_ARG(d.h.name_bytes >= 1 && d.h.name_bytes <= kMaxTableNameBytes && d.h.reserved == 0,
               "bad dense variable name length ", d.h.name_bytes);
  const size_t name_end = sizeof(DenseStepHeader) + padded8(d.h.name_bytes);
  SC_CHECK_ARG(name_end <= payload.size() && d.h.size <= (payload.size() - name_end) / sizeof(float) &&
                   payload.size() - name_end == d.h.size * sizeof(float),
               "dense step of ", d.h.size, " values carries ", payload.size(), " bytes");
  SC_CHECK_ARG(d.h.num_workers <= kMaxWorkers && (d.h.num_workers == 0 || d.h.worker < d.h.num_workers),
               "dense step: worker ", d.h.worker, " out of range for ", d.h.num_workers, " workers");
  d.name.assign(reinterpret_cast<const char*>(payload.data()) + sizeof(DenseStepHeader), d.h.name_bytes);
  d.grads = payload.data() + name_end;
  return d;
}

TablesRequest parse_tables_request(std::span<const std::byte> payload, bool push, int64_t max_ids,
                                   uint64_t max_reply_bytes, const std::function<int(std::string_view)>& dim_of) {
  TablesRequest t;
  const char* what = push ? "push" : "pull";
  SC_CHECK_ARG(payload.size() >= sizeof(TablesHeader), what, " of ", payload.size(),
               " bytes is shorter than its header");
  std::memcpy(&t.h, payload.data(), sizeof(TablesHeader));
  const uint32_t k = t.h.num_tables;
  SC_CHECK_ARG(k >= 1 && k <= kMaxTablesPerShard, what, " names ", k, " tables; 1 to ", kMaxTablesPerShard,
               " are allowed");
  const size_t entries_end = sizeof(TablesHeader) + size_t{k} * sizeof(TableEntry);
  SC_CHECK_ARG(entries_end <= payload.size(), what, " of ", payload.size(), " bytes is too short for ", k,
               " table entries");
  std::vector<TableEntry> entries(k);
  std::memcpy(entries.data(), payload.data() + sizeof(TablesHeader), size_t{k} * sizeof(TableEntry));
  size_t names_end = entries_end;
  for (uint32_t i = 0; i < k; ++i) {
    const TableEntry& e = entries[i];
    SC_CHECK_ARG(e.name_bytes >= 1 && e.name_bytes <= kMaxTableNameBytes, what, ": table entry ", i,
                 " has a bad name length ", e.name_bytes);
    SC_CHECK_ARG(e.wire_dtype == kWireFloat32 || e.wire_dtype == kWireFloat16, what, ": table entry ", i,
                 " names wire dtype ", e.wire_dtype, "; 0 (float32) and 1 (float16) are known");
    SC_CHECK_ARG(e.num_ids <= static_cast<uint64_t>(max_ids) - t.total_ids, what, " has more than ", max_ids,
                 " ids in all, the server's limit");
    t.total_ids += e.num_ids;
    names_end += padded8(e.name_bytes);  // at most 1024 * 4096 bytes in all
  }
  SC_CHECK_ARG(names_end <= payload.size(), what, " of ", payload.size(), " bytes is too short for its table names");
  size_t at = entries_end;
  uint64_t floats = 0, value_bytes = 0;
  for (uint32_t i = 0; i < k; ++i) {
    t.names.emplace_back(reinterpret_cast<const char*>(payload.data()) + at, entries[i].name_bytes);
    at += padded8(entries[i].name_bytes);
    t.counts.push_back(static_cast<int64_t>(entries[i].num_ids));
    const int dim = dim_of(t.names.back());
    t.dims.push_back(dim);
    const bool half = entries[i].wire_dtype == kWireFloat16;
    t.half.push_back(half);
    t.any_half = t.any_half || half;
    t.value_offsets.push_back(value_bytes);
    const uint64_t values = checked_mul_add(entries[i].num_ids, static_cast<uint64_t>(dim), 0, "rows of the request");
    floats = checked_mul_add(values, 1, floats, "rows of the request");
    value_bytes =
        checked_mul_add(values, half ? sizeof(uint16_t) : sizeof(float), value_bytes, "values of the request");
  }
  t.total_floats = floats;
  t.total_value_bytes = value_bytes;
  const uint64_t id_bytes = t.total_ids * sizeof(int64_t);
  const uint64_t grad_bytes = push ? value_bytes : 0;
  uint64_t expected = 0;
  SC_CHECK_ARG(!__builtin_add_overflow(names_end, id_bytes, &expected) &&
                   !__builtin_add_overflow(expected, grad_bytes, &expected) && expected == payload.size(),
               what, " of ", t.total_ids, " ids in ", k, " tables carries ", payload.size(), " bytes, its layout says ",
               expected);
  if (!push) {
    const uint64_t reply_bytes = value_bytes;
    SC_CHECK_ARG(reply_bytes <= max_reply_bytes, "pull of ", t.total_ids, " ids in ", k, " tables would reply ",
                 reply_bytes, " bytes, above the server's frame limit of ", max_reply_bytes,
                 " bytes; pull fewer ids per request");
  }
  t.ids = payload.data() + names_end;
  t.grads = push ? t.ids + id_bytes : nullptr;
  return t;
}

const float* wire_values_to_floats(const std::byte* bytes, size_t n, bool half, PodVector<float>& copy) {
  if (!half) return aligned_view<float>(bytes, n, copy);
  PodVector<uint16_t> halves;
  const uint16_t* h = aligned_view<uint16_t>(bytes, n, halves);
  copy.resize(n);
  halves_to_floats(h, copy.data(), static_cast<int64_t>(n));
  return copy.data();
}

void floats_to_wire_values(const float* values, size_t n, bool half, std::byte* out) {
  if (!half) {
    std::memcpy(out, values, n * sizeof(float));
    return;
  }
  PodVector<uint16_t> halves(n);
  floats_to_halves(values, halves.data(), static_cast<int64_t>(n));
  std::memcpy(out, halves.data(), n * sizeof(uint16_t));
}

}  // namespace sparsecore::ps
