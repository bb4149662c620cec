// Rows of hash-table tests that hold their own key in their first 8 bytes, so a test can check
// that every key's row is its own.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace sparsecore::test_support {

inline void fill_key(int64_t key, std::byte* row) { std::memcpy(row, &key, sizeof(key)); }

inline int64_t row_key(const std::byte* row) {
  int64_t k;
  std::memcpy(&k, row, sizeof(k));
  return k;
}

}  // namespace sparsecore::test_support
