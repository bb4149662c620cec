// Stateless 64-bit mixing functions.
//
// fmix64 (MurmurHash3's finalizer) routes keys to buckets, shards and hash-table slots;
// splitmix64 drives the counter-based generator behind initial values. Both are
// `constexpr` and usable from CUDA device code (SC_HOST_DEVICE), so every backend and
// every sharding computes the same bits.
#pragma once

#include <cstdint>
#include <string_view>

#include "sparsecore/core/host_device.h"

namespace sparsecore {

SC_HOST_DEVICE constexpr uint64_t fmix64(uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdULL;
  k ^= k >> 33;
  k *= 0xc4ceb9fe1a85ec53ULL;
  k ^= k >> 33;
  return k;
}

SC_HOST_DEVICE constexpr uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

SC_HOST_DEVICE constexpr uint64_t hash_combine(uint64_t a, uint64_t b) {
  return splitmix64(a ^ (splitmix64(b) + 0x632be59bd9b4e019ULL));
}

// The routing hash of a key: the routing contract fixes bucket = top 16 bits of fmix64(key).
SC_HOST_DEVICE constexpr uint64_t key_hash(int64_t key) { return fmix64(static_cast<uint64_t>(key)); }

inline constexpr int kBucketBits = 16;
inline constexpr uint32_t kNumBuckets = 1u << kBucketBits;

SC_HOST_DEVICE constexpr uint32_t key_bucket(int64_t key) {
  return static_cast<uint32_t>(key_hash(key) >> (64 - kBucketBits));
}

// The shard of a key's hash when `shards` (1 .. 2^16) split the buckets into contiguous
// ranges: shard g holds buckets {b : (b * shards) >> 16 == g}. For shards = 2^k this is the
// top k bits of the hash (a hash table's shard); for any count it is the parameter servers'
// global shard of the key. One rule, so a plan grouped by shard fits either.
SC_HOST_DEVICE constexpr int shard_of_hash(uint64_t hash, int shards) {
  return static_cast<int>(((hash >> (64 - kBucketBits)) * static_cast<uint64_t>(shards)) >> kBucketBits);
}

// 64-bit FNV-1a over bytes, for table names (seed derivation); not for bulk data.
constexpr uint64_t fnv1a64(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (char c : s) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ULL;
  }
  return h;
}

}  // namespace sparsecore
