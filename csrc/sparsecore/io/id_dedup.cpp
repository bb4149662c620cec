#include "sparsecore/io/id_dedup.h"

#include <bit>

#include "sparsecore/core/error.h"
#include "sparsecore/core/hash.h"

namespace sparsecore::io {

void dedup_ids(const int64_t* ids, int64_t n, std::vector<int64_t>& unique, std::vector<int64_t>& inverse) {
  SC_CHECK_ARG(n >= 0, "dedup_ids: negative length");
  unique.clear();
  inverse.resize(n);
  // Open addressing over slots that hold an index into `unique` (-1 = empty), so no id
  // value is reserved as the empty marker. Load factor <= 1/2.
  const uint64_t capacity = std::bit_ceil(static_cast<uint64_t>(2 * n + 2));
  const uint64_t mask = capacity - 1;
  std::vector<int64_t> slots(capacity, -1);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t id = ids[i];
    uint64_t s = key_hash(id) & mask;
    while (slots[s] >= 0 && unique[slots[s]] != id) s = (s + 1) & mask;
    if (slots[s] < 0) {
      slots[s] = static_cast<int64_t>(unique.size());
      unique.push_back(id);
    }
    inverse[i] = slots[s];
  }
}

}  // namespace sparsecore::io
