#include "sparsecore/table/sharded_dedup.h"

#include <algorithm>

#include "sparsecore/core/cpu_features.h"
#include "sparsecore/core/error.h"
#include "sparsecore/core/hash.h"

namespace sparsecore {
namespace {

constexpr int64_t kDedupAhead = 8;
// run_distinct_first's set starts sized for the previous call's distinct ids, at least this many
// (a reset writes every slot), and doubles when half full.
constexpr int64_t kFirstSetKeys = 128;
constexpr int64_t kFirstBlock = 64;

// key_hash of ids [0, m) into out, in the widest vectors the CPU has (64-bit multiplies
// vectorise with AVX-512).
SC_DISPATCH void hash_ids(const int64_t* __restrict__ ids, int64_t m, uint64_t* __restrict__ out) {
  for (int64_t k = 0; k < m; ++k) out[k] = key_hash(ids[k]);
}

void check_dedup_args(const int64_t* ids, int64_t n, int shards) {
  SC_CHECK_ARG(n >= 0 && n <= INT32_MAX, "dedup: 0 to 2^31 - 1 ids, got ", n);
  SC_CHECK_ARG(shards >= 1 && shards <= static_cast<int>(kNumBuckets), "dedup: shards must be in [1, 65536], got ",
               shards);
  SC_CHECK_ARG(n == 0 || ids != nullptr, "dedup: ids is null");
}

}  // namespace

void ShardedDedup::group(const int64_t* ids, int64_t n, int shards) {
  check_dedup_args(ids, n, shards);
  hashes_.resize(n);
  shard_start_.assign(shards + 1, 0);
  hash_ids(ids, n, hashes_.data());
  for (int64_t i = 0; i < n; ++i) ++shard_start_[shard_of_hash(hashes_[i], shards) + 1];
  for (int s = 0; s < shards; ++s) shard_start_[s + 1] += shard_start_[s];
  std::vector<int64_t> cursor(shard_start_.begin(), shard_start_.end() - 1);
  perm_.resize(n);
  for (int64_t i = 0; i < n; ++i) perm_[cursor[shard_of_hash(hashes_[i], shards)]++] = static_cast<int32_t>(i);
  local_index_.resize(n);
  shard_unique_.assign(shards, 0);
}

int64_t ShardedDedup::dedup_shard(const int64_t* ids, int s, DedupSet& set, int64_t* unique) {
  const int64_t begin = shard_start_[s], end = shard_start_[s + 1];
  set.reset(end - begin);
  int32_t count = 0;
  int64_t* out = unique + begin;
  for (int64_t p = begin; p < end; ++p) {
    // The set's slot of a later position is fetched while this one is probed: the probes are
    // a chain of dependent loads (set, then branch on its contents) that otherwise wait in turn.
    if (p + kDedupAhead < end) set.prefetch(hashes_[perm_[p + kDedupAhead]]);
    const int32_t pos = perm_[p];
    bool added = false;
    const int32_t idx = set.find_or_add(ids[pos], hashes_[pos], count, &added);
    if (added) out[count++] = ids[pos];
    local_index_[pos] = idx;
  }
  shard_unique_[s] = count;
  return count;
}

int64_t ShardedDedup::compact(int64_t* unique, std::byte** rows, int32_t* inverse) {
  int64_t base = 0;
  for (int s = 0; s < num_shards(); ++s) {
    const int64_t begin = shard_start_[s], count = shard_unique_[s];
    if (base != begin && count > 0) {  // base <= begin: moving down never overwrites unread data
      std::copy(unique + begin, unique + begin + count, unique + base);
      if (rows) std::copy(rows + begin, rows + begin + count, rows + base);
    }
    for (int64_t p = begin; p < shard_start_[s + 1]; ++p) {
      const int32_t pos = perm_[p];
      inverse[pos] = static_cast<int32_t>(base + local_index_[pos]);
    }
    base += count;
  }
  return base;
}

int64_t ShardedDedup::run(const int64_t* ids, int64_t n, int shards, int64_t* unique, int32_t* inverse) {
  group(ids, n, shards);
  thread_local DedupSet tls_set;
  DedupSet& set = tls_set;
  for (int s = 0; s < shards; ++s) dedup_shard(ids, s, set, unique);
  return compact(unique, nullptr, inverse);
}

int64_t ShardedDedup::run_distinct_first(const int64_t* ids, int64_t n, int shards, DedupSet& set, int64_t* unique,
                                         int32_t* inverse) {
  check_dedup_args(ids, n, shards);
  shard_start_.assign(shards + 1, 0);  // num_shards()
  shard_unique_.assign(shards, 0);
  first_keys_.resize(n);
  first_shard_.resize(n);
  // Sized for as many distinct ids as this object's previous call found (a plan's groups
  // keep their ShardedDedup from batch to batch), so a steady stream rarely grows the set.
  set.reset(std::min(n, std::max(kFirstSetKeys, last_distinct_)));
  int32_t count = 0;
  // A block's hashes are computed (a loop the compiler vectorises) and their slots fetched
  // before the block is probed: the set outgrows L1 once there are a few thousand distinct ids.
  uint64_t hashes[kFirstBlock];
  for (int64_t i0 = 0; i0 < n; i0 += kFirstBlock) {
    const int64_t m = std::min(kFirstBlock, n - i0);
    const int64_t* block = ids + i0;
    hash_ids(block, m, hashes);
    for (int64_t k = 0; k < m; ++k) set.prefetch(hashes[k]);
    for (int64_t k = 0; k < m; ++k) {
      const int64_t key = block[k];
      const uint64_t h = hashes[k];
      bool added = false;
      const int32_t idx = set.find_or_add(key, h, count, &added);
      if (added) {
        first_keys_[count] = key;
        const int s = shard_of_hash(h, shards);
        first_shard_[count] = s;
        ++shard_unique_[s];
        ++count;
        if (set.full(count)) set.grow(first_keys_.data(), count, key_hash);
      }
      inverse[i0 + k] = idx;
    }
  }
  last_distinct_ = count;
  if (shards == 1) {  // shard order is first-position order
    std::copy(first_keys_.data(), first_keys_.data() + count, unique);
    return count;
  }
  // The distinct ids in shard order, each shard's in order of first position (a stable
  // counting sort), and each position's index moved with its id.
  std::vector<int64_t>& cursor = shard_start_;
  for (int s = 0; s < shards; ++s) cursor[s + 1] = cursor[s] + shard_unique_[s];
  placed_.resize(count);
  for (int32_t k = 0; k < count; ++k) {
    const int32_t at = static_cast<int32_t>(cursor[first_shard_[k]]++);
    placed_[k] = at;
    unique[at] = first_keys_[k];
  }
  const int32_t* placed = placed_.data();
  for (int64_t i = 0; i < n; ++i) inverse[i] = placed[inverse[i]];
  return count;
}

void dedup_ids(const int64_t* ids, int64_t n, std::vector<int64_t>& unique, std::vector<int64_t>& inverse) {
  SC_CHECK_ARG(n >= 0, "dedup_ids: negative length");
  thread_local ShardedDedup tls_dedup;
  thread_local PodVector<int32_t> tls_inverse;
  unique.resize(n);
  tls_inverse.resize(n);
  const int64_t u = tls_dedup.run(ids, n, 1, unique.data(), tls_inverse.data());
  unique.resize(u);
  inverse.assign(tls_inverse.begin(), tls_inverse.end());
}

}  // namespace sparsecore
