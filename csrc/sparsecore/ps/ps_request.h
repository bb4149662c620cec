// Checked views of the parameter server's binary requests (ps_protocol.h): every length,
// count and size is checked against the payload and the server's limits before a view is
// returned, so a handler never reads past a frame or sizes a buffer from an unchecked field.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sparsecore/core/pod_vector.h"
#include "sparsecore/ps/ps_protocol.h"

namespace sparsecore::ps {

// kPull / kPush: header, name, then the arrays (array_bytes of them, not yet checked).
struct TableRequest {
  TableHeader h;
  std::string name;
  const std::byte* arrays = nullptr;
  size_t array_bytes = 0;
};
TableRequest parse_table_request(std::span<const std::byte> payload, int64_t max_ids);

// kDensePush: header, name, grads.
struct DensePushRequest {
  DenseHeader h;
  std::string name;
  const std::byte* grads = nullptr;  // float32[h.size], maybe unaligned
};
DensePushRequest parse_dense_push(std::span<const std::byte> payload);

// kDenseCreate: header, name, optimizer JSON text, initial values.
struct DenseCreateRequest {
  DenseCreateHeader h;
  std::string name;
  std::string_view config;            // into the payload
  const std::byte* values = nullptr;  // float32[h.size], maybe unaligned
};
DenseCreateRequest parse_dense_create(std::span<const std::byte> payload);

// kDenseStep: header, name, grads.
struct DenseStepRequest {
  DenseStepHeader h;
  std::string name;
  const std::byte* grads = nullptr;  // float32[h.size], maybe unaligned
};
DenseStepRequest parse_dense_step(std::span<const std::byte> payload);

// kPullTables / kPushTables, sized from each table's dim (`dim_of` throws NotFound for a
// table that does not exist). Exactly as long as the layout says, at most `max_ids` ids in
// all, and for a pull a reply of at most `max_reply_bytes`.
struct TablesRequest {
  TablesHeader h;
  std::vector<std::string_view> names;  // into the payload
  std::vector<int64_t> counts;          // ids per table
  std::vector<int> dims;
  std::vector<char> half;               // per table: its values are float16 on the wire
  std::vector<uint64_t> value_offsets;  // per table: byte offset of its values in grads / the reply
  const std::byte* ids = nullptr;       // int64 of every table, table after table (maybe unaligned)
  const std::byte* grads = nullptr;     // push: (n, dim) values of every table (maybe unaligned)
  uint64_t total_ids = 0;
  uint64_t total_floats = 0;       // sum of counts[t] * dims[t]
  uint64_t total_value_bytes = 0;  // the values' bytes: 4 per float32 value, 2 per float16 one
  bool any_half = false;
};
TablesRequest parse_tables_request(std::span<const std::byte> payload, bool push, int64_t max_ids,
                                   uint64_t max_reply_bytes, const std::function<int(std::string_view)>& dim_of);

// A table's values on the wire (ps_protocol.h): `n` float32 or float16 values at `bytes`
// (maybe unaligned) as floats, in place when they are aligned float32, else converted or
// copied into `copy`.
const float* wire_values_to_floats(const std::byte* bytes, size_t n, bool half, PodVector<float>& copy);
// `n` floats written at `out` (maybe unaligned) as float32, or as float16 rounded to nearest
// even (a value beyond the float16 range becomes +-inf).
void floats_to_wire_values(const float* values, size_t n, bool half, std::byte* out);

// `count` values of T at `bytes`: in place when suitably aligned, else copied into `copy`.
// Frames lie back to back in the connection's read buffer, so a payload after one whose
// length is not a multiple of 8 starts misaligned; reading it through a T* would be UB.
template <typename T>
const T* aligned_view(const std::byte* bytes, size_t count, PodVector<T>& copy) {
  if (reinterpret_cast<uintptr_t>(bytes) % alignof(T) == 0) return reinterpret_cast<const T*>(bytes);
  copy.resize(count);
  std::memcpy(copy.data(), bytes, count * sizeof(T));
  return copy.data();
}

}  // namespace sparsecore::ps
