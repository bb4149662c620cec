// Deduplication of a batch's ids: the worker-side "request union" of the data path (docs/architecture.md).
#pragma once

#include <cstdint>
#include <vector>

namespace sparsecore::io {

// unique: the distinct values of ids (n,), in order of first occurrence; inverse (n,):
// ids[i] == unique[inverse[i]]. Every int64 is a legal id. O(n) expected, single-threaded,
// deterministic. Host memory.
void dedup_ids(const int64_t* ids, int64_t n, std::vector<int64_t>& unique, std::vector<int64_t>& inverse);

}  // namespace sparsecore::io
