// The stable id of a categorical value: a file-format contract.
//
// Readers turn every categorical value (a Criteo hex string, a CSV string, a Parquet string
// or integer written as decimal text) into an int64 id by hashing the pair (feature name,
// value text), the "random coding" of very high-dimensional inputs. Checkpoints store ids,
// so this function must never change once data has been trained on. Exactly:
//
//   feature_seed(name) = fnv1a64(name bytes)
//   feature_value_id(seed, v):
//     h = splitmix64(seed ^ len(v))
//     for each 8-byte word w of v (little-endian; the last word zero-padded):
//       h = splitmix64(h ^ w)
//     return int64(h)            (two's complement reinterpretation; every value is legal)
//
// The length enters first, so zero padding never makes two values collide by construction.
// The same value under two feature names gives unrelated ids; the empty string is a value
// like any other (readers treat an empty field as missing and do not hash it).
#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>

#include "sparsecore/core/hash.h"

namespace sparsecore::io {

inline uint64_t feature_seed(std::string_view feature_name) { return fnv1a64(feature_name); }

inline int64_t feature_value_id(uint64_t seed, std::string_view value) {
  uint64_t h = splitmix64(seed ^ static_cast<uint64_t>(value.size()));
  const char* p = value.data();
  size_t left = value.size();
  for (; left >= 8; p += 8, left -= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);  // little-endian hosts only (x86-64, aarch64)
    h = splitmix64(h ^ w);
  }
  if (left > 0) {
    uint64_t w = 0;
    std::memcpy(&w, p, left);
    h = splitmix64(h ^ w);
  }
  return static_cast<int64_t>(h);
}

}  // namespace sparsecore::io
