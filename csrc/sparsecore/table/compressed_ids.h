// The id -> component rows mapping of compressed tables (python/sparsecore/compression.py
// documents the kinds). A compressed table keeps no row per id: each id reads a few rows of
// fixed-size component tables, chosen by a stateless hash seeded with a base seed (derived
// from the collection seed, the table name and the compression's seed), so the mapping is the
// same in every process, for any thread count and on every store. This is the one
// implementation of the rule: the Python collection maps batches with it (through the
// binding) and the serving Predictor composes the rows of compressed features with it.
//
// Thread-safety: pure functions. Memory: every pointer is host memory.
#pragma once

#include <cstdint>
#include <string>

#include "sparsecore/core/json.h"

namespace sparsecore {

enum class CompressionKind : uint8_t { kMultiHash, kQuotientRemainder, kBinaryCode, kRandomCoding };
enum class CompressionCombine : uint8_t { kSum, kConcat, kMul };

struct CompressionSpec {
  CompressionKind kind = CompressionKind::kMultiHash;
  CompressionCombine combine = CompressionCombine::kSum;
  int k = 2;                  // multihash: hash functions; random coding: rows per id
  int64_t rows = 0;           // multihash: rows per table; quotient-remainder: remainder rows
  int64_t quotient_rows = 0;  // quotient-remainder (0: rows)
  int bits = 0, block = 0;    // binary code
  int64_t buckets = 0;        // random coding
  bool is_signed = true;      // random coding

  int num_components() const;
  // Rows of component table c, and how many rows of one component an id reads.
  int64_t component_rows(int c) const;
  int keys_per_id() const { return kind == CompressionKind::kRandomCoding ? k : 1; }

  // {"kind": "multihash"|"qr"|"binary"|"random", and the kind's fields as the Python class
  // names them}; InvalidArgument naming the field that is missing or out of range.
  static CompressionSpec from_json(const Json& j);
  void validate() const;
};

// Component c's keys of ids (n): keys (n, keys_per_id) in [0, component_rows(c)) and, for
// signed random coding, signs (n, keys_per_id) of +1 / -1 (else signs is left alone; it may be
// null). `base_seed` is the table's mapping seed.
void compressed_component_keys(const CompressionSpec& spec, int component, uint64_t base_seed, const int64_t* ids,
                               int64_t n, int64_t* keys, float* signs);

}  // namespace sparsecore
