#include "sparsecore/table/compressed_ids.h"

#include "sparsecore/core/error.h"
#include "sparsecore/core/hash.h"
#include "sparsecore/core/thread_pool.h"

namespace sparsecore {
namespace {

constexpr int64_t kMaxRows = int64_t{1} << 40;

uint64_t seeded(uint64_t seed, int64_t id) { return hash_combine(seed, key_hash(id)); }

// Seed of hash function j of a table: the seeded hash of j itself.
uint64_t function_seed(uint64_t base_seed, int j) { return seeded(base_seed, j); }

// id itself when it lies in [0, size), else its seeded hash into that range.
uint64_t into_range(int64_t id, uint64_t size, uint64_t seed) {
  if (id >= 0 && static_cast<uint64_t>(id) < size) return static_cast<uint64_t>(id);
  return seeded(seed, id) % size;
}

int64_t int_field(const Json& j, const char* key, int64_t fallback) {
  const Json* v = j.get(key);
  return v ? v->as_int(key) : fallback;
}

}  // namespace

int CompressionSpec::num_components() const {
  switch (kind) {
    case CompressionKind::kMultiHash:
      return k;
    case CompressionKind::kQuotientRemainder:
      return 2;
    case CompressionKind::kBinaryCode:
      return block > 0 ? bits / block : 0;
    case CompressionKind::kRandomCoding:
      return 1;
  }
  return 0;
}

int64_t CompressionSpec::component_rows(int c) const {
  switch (kind) {
    case CompressionKind::kMultiHash:
      return rows;
    case CompressionKind::kQuotientRemainder:
      return c == 0 ? rows : (quotient_rows > 0 ? quotient_rows : rows);
    case CompressionKind::kBinaryCode:
      return int64_t{1} << block;
    case CompressionKind::kRandomCoding:
      return buckets;
  }
  return 0;
}

void CompressionSpec::validate() const {
  switch (kind) {
    case CompressionKind::kMultiHash:
      SC_CHECK_ARG(k >= 1 && k <= 64, "MultiHash: k must be in [1, 64], got ", k);
      SC_CHECK_ARG(rows >= 1 && rows <= kMaxRows, "MultiHash: rows must be in [1, 2^40], got ", rows);
      break;
    case CompressionKind::kQuotientRemainder: {
      SC_CHECK_ARG(rows >= 1 && rows <= kMaxRows, "QuotientRemainder: rows must be in [1, 2^40], got ", rows);
      const int64_t q = component_rows(1);
      SC_CHECK_ARG(q >= 1 && q <= kMaxRows, "QuotientRemainder: quotient_rows must be in [1, 2^40], got ", q);
      SC_CHECK_ARG(rows <= (int64_t{1} << 62) / q, "QuotientRemainder: rows * quotient_rows must be at most 2^62");
      break;
    }
    case CompressionKind::kBinaryCode:
      SC_CHECK_ARG(bits >= 1 && bits <= 64, "BinaryCodeHash: bits must be in [1, 64], got ", bits);
      SC_CHECK_ARG(block >= 1 && block <= 30, "BinaryCodeHash: block must be in [1, 30], got ", block);
      SC_CHECK_ARG(bits % block == 0, "BinaryCodeHash: bits (", bits, ") must be a multiple of block (", block, ")");
      break;
    case CompressionKind::kRandomCoding:
      SC_CHECK_ARG(buckets >= 1 && buckets <= kMaxRows, "RandomCoding: buckets must be in [1, 2^40], got ", buckets);
      SC_CHECK_ARG(k >= 1 && k <= 64, "RandomCoding: k must be in [1, 64], got ", k);
      SC_CHECK_ARG(combine == CompressionCombine::kSum, "RandomCoding: combine must be sum");
      break;
  }
}

CompressionSpec CompressionSpec::from_json(const Json& j) {
  CompressionSpec s;
  const std::string& kind = j.at("kind").as_string("compression kind");
  if (kind == "multihash")
    s.kind = CompressionKind::kMultiHash;
  else if (kind == "qr")
    s.kind = CompressionKind::kQuotientRemainder;
  else if (kind == "binary")
    s.kind = CompressionKind::kBinaryCode;
  else if (kind == "random")
    s.kind = CompressionKind::kRandomCoding;
  else
    throw InvalidArgument("unknown compression kind '" + kind + "' (known: multihash, qr, binary, random)");
  const Json* combine = j.get("combine");
  const std::string mode = combine ? combine->as_string("combine") : "sum";
  if (mode == "sum")
    s.combine = CompressionCombine::kSum;
  else if (mode == "concat")
    s.combine = CompressionCombine::kConcat;
  else if (mode == "mul")
    s.combine = CompressionCombine::kMul;
  else
    throw InvalidArgument("compression combine must be sum, concat or mul, got '" + mode + "'");
  const int64_t k = int_field(j, "k", 2), bits = int_field(j, "bits", 0), block = int_field(j, "block", 0);
  SC_CHECK_ARG(k >= 0 && k <= 64 && bits >= 0 && bits <= 64 && block >= 0 && block <= 64,
               "compression k, bits or block out of range");
  s.k = static_cast<int>(k);
  s.bits = static_cast<int>(bits);
  s.block = static_cast<int>(block);
  s.rows = int_field(j, "rows", 0);
  s.quotient_rows = int_field(j, "quotient_rows", 0);
  s.buckets = int_field(j, "buckets", 0);
  if (const Json* v = j.get("signed")) s.is_signed = v->as_bool("signed");
  s.validate();
  return s;
}

namespace {

void keys_of_range(const CompressionSpec& spec, int component, uint64_t base_seed, const int64_t* ids, int64_t n,
                   int64_t* keys, float* signs) {
  switch (spec.kind) {
    case CompressionKind::kMultiHash: {
      const uint64_t seed = function_seed(base_seed, component), rows = static_cast<uint64_t>(spec.rows);
      for (int64_t i = 0; i < n; ++i) keys[i] = static_cast<int64_t>(seeded(seed, ids[i]) % rows);
      return;
    }
    case CompressionKind::kQuotientRemainder: {
      const uint64_t seed = function_seed(base_seed, 0), rows = static_cast<uint64_t>(spec.rows);
      const uint64_t size = rows * static_cast<uint64_t>(spec.component_rows(1));
      for (int64_t i = 0; i < n; ++i) {
        const uint64_t x = into_range(ids[i], size, seed);
        keys[i] = static_cast<int64_t>(component == 0 ? x % rows : x / rows);
      }
      return;
    }
    case CompressionKind::kBinaryCode: {
      const uint64_t seed = function_seed(base_seed, 0);
      const uint64_t mask = (uint64_t{1} << spec.block) - 1;
      const int shift = component * spec.block;
      for (int64_t i = 0; i < n; ++i) {
        const uint64_t code =
            spec.bits >= 63 ? seeded(seed, ids[i]) : into_range(ids[i], uint64_t{1} << spec.bits, seed);
        keys[i] = static_cast<int64_t>((code >> shift) & mask);
      }
      return;
    }
    case CompressionKind::kRandomCoding: {
      const int k = spec.k;
      const uint64_t buckets = static_cast<uint64_t>(spec.buckets);
      for (int j = 0; j < k; ++j) {
        const uint64_t seed = function_seed(base_seed, j);
        for (int64_t i = 0; i < n; ++i) {
          const uint64_t h = seeded(seed, ids[i]);
          keys[i * k + j] = static_cast<int64_t>(h % buckets);
          if (spec.is_signed && signs) signs[i * k + j] = (h >> 63) ? -1.0f : 1.0f;
        }
      }
      return;
    }
  }
}

}  // namespace

void compressed_component_keys(const CompressionSpec& spec, int component, uint64_t base_seed, const int64_t* ids,
                               int64_t n, int64_t* keys, float* signs) {
  SC_CHECK_ARG(component >= 0 && component < spec.num_components(), "compression component ", component,
               " out of range [0, ", spec.num_components(), ")");
  // Each id's keys depend on the id alone, so chunks map independently on the compute pool.
  const int m = spec.keys_per_id();
  parallel_for(n, 8192, [&](int64_t begin, int64_t end) {
    keys_of_range(spec, component, base_seed, ids + begin, end - begin, keys + begin * m,
                  signs ? signs + begin * m : nullptr);
  });
}

}  // namespace sparsecore
