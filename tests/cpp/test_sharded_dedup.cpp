// The one dedup primitive (ShardedDedup) and the batch planner built on it, against a
// brute-force reference: random ids, duplicates, empty and all-duplicate groups, the
// extreme int64 ids, shard counts that are and are not powers of two.
#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <limits>
#include <map>
#include <mutex>
#include <random>
#include <vector>

#include "sparsecore/core/error.h"
#include "sparsecore/core/hash.h"
#include "sparsecore/core/thread_pool.h"
#include "sparsecore/ops/batch_planner.h"
#include "sparsecore/table/hash_table.h"
#include "sparsecore/table/sharded_dedup.h"

using namespace sparsecore;

namespace {

// The reference: per shard (in shard order), the distinct ids in order of first position.
std::vector<int64_t> reference_unique(const std::vector<int64_t>& ids, int shards) {
  std::vector<int64_t> out;
  for (int s = 0; s < shards; ++s) {
    for (size_t i = 0; i < ids.size(); ++i) {
      if (shard_of_hash(key_hash(ids[i]), shards) != s) continue;
      if (std::find(out.begin(), out.end(), ids[i]) == out.end()) out.push_back(ids[i]);
    }
  }
  return out;
}

std::vector<int64_t> random_ids(std::mt19937_64& rng, int n, int64_t range) {
  std::uniform_int_distribution<int64_t> d(-range, range);
  std::vector<int64_t> ids(static_cast<size_t>(n));
  for (auto& x : ids) {
    x = d(rng);
    if (x == range) x = INT64_MAX;
    if (x == -range) x = INT64_MIN;
  }
  return ids;
}

}  // namespace

TEST(ShardedDedup, ShardRuleIsTheHashTablesForPowersOfTwo) {
  std::mt19937_64 rng(3);
  for (int bits = 0; bits <= 16; ++bits) {
    HashTable table(16, bits);
    for (int i = 0; i < 200; ++i) {
      const uint64_t h = rng();
      ASSERT_EQ(shard_of_hash(h, 1 << bits), table.shard_of_hash(h)) << bits;
    }
  }
}

TEST(ShardedDedup, MatchesABruteForceReference) {
  std::mt19937_64 rng(7);
  for (int shards : {1, 2, 3, 8, 7, 65536}) {
    for (int n : {0, 1, 17, 300}) {
      for (int64_t range : {int64_t{3}, int64_t{50}, int64_t{1} << 40}) {
        const std::vector<int64_t> ids = random_ids(rng, n, range);
        ShardedDedup d;
        std::vector<int64_t> unique(ids.size());
        std::vector<int32_t> inverse(ids.size());
        const int64_t u = d.run(ids.data(), n, shards, unique.data(), inverse.data());
        unique.resize(static_cast<size_t>(u));
        ASSERT_EQ(unique, reference_unique(ids, shards)) << shards << " " << n << " " << range;
        for (int i = 0; i < n; ++i) ASSERT_EQ(unique[static_cast<size_t>(inverse[i])], ids[i]);
      }
    }
  }
}

TEST(ShardedDedup, DistinctFirstGivesWhatRunGives) {
  std::mt19937_64 rng(11);
  DedupSet set;         // reused across calls, as a plan's groups reuse theirs
  ShardedDedup reused;  // sized by its previous call (larger and smaller ones follow)
  DedupSet reused_set;
  for (int shards : {1, 2, 3, 64, 65536}) {
    // 5000 ids over up to 10^4 values: the set grows several times from its first size.
    for (int n : {0, 1, 17, 300, 5000}) {
      for (int64_t range : {int64_t{3}, int64_t{50}, int64_t{5000}, int64_t{1} << 40}) {
        const std::vector<int64_t> ids = random_ids(rng, n, range);
        ShardedDedup phased, first;
        std::vector<int64_t> want_unique(ids.size()), unique(ids.size());
        std::vector<int32_t> want_inverse(ids.size()), inverse(ids.size());
        const int64_t want_u = phased.run(ids.data(), n, shards, want_unique.data(), want_inverse.data());
        const int64_t u = first.run_distinct_first(ids.data(), n, shards, set, unique.data(), inverse.data());
        ASSERT_EQ(u, want_u) << shards << " " << n << " " << range;
        unique.resize(static_cast<size_t>(u));
        want_unique.resize(static_cast<size_t>(u));
        ASSERT_EQ(unique, want_unique) << shards << " " << n << " " << range;
        ASSERT_EQ(inverse, want_inverse) << shards << " " << n << " " << range;
        std::vector<int64_t> again_unique(ids.size());
        std::vector<int32_t> again_inverse(ids.size());
        ASSERT_EQ(
            reused.run_distinct_first(ids.data(), n, shards, reused_set, again_unique.data(), again_inverse.data()), u);
        again_unique.resize(static_cast<size_t>(u));
        ASSERT_EQ(again_unique, want_unique);
        ASSERT_EQ(again_inverse, want_inverse);
        ASSERT_EQ(first.num_shards(), shards);
        for (int s = 0; s < shards; ++s) ASSERT_EQ(first.shard_unique(s), phased.shard_unique(s));
      }
    }
  }
  ShardedDedup d;
  const int64_t id = 1;
  int64_t unique = 0;
  int32_t inverse = 0;
  EXPECT_THROW(d.run_distinct_first(&id, 1, 0, set, &unique, &inverse), InvalidArgument);
  EXPECT_THROW(d.run_distinct_first(&id, 1, 65537, set, &unique, &inverse), InvalidArgument);
  EXPECT_THROW(d.run_distinct_first(&id, -1, 1, set, &unique, &inverse), InvalidArgument);
  EXPECT_THROW(d.run_distinct_first(nullptr, 1, 1, set, &unique, &inverse), InvalidArgument);
}

TEST(ShardedDedup, AllDuplicatesAndExtremeIds) {
  std::vector<int64_t> ids(100, INT64_MIN);
  ids[50] = INT64_MAX;
  ids[70] = 0;
  std::vector<int64_t> unique;
  std::vector<int64_t> inverse;
  dedup_ids(ids.data(), static_cast<int64_t>(ids.size()), unique, inverse);
  EXPECT_EQ(unique, (std::vector<int64_t>{INT64_MIN, INT64_MAX, 0}));
  EXPECT_EQ(inverse[0], 0);
  EXPECT_EQ(inverse[50], 1);
  EXPECT_EQ(inverse[70], 2);
  EXPECT_EQ(inverse[99], 0);
}

TEST(ShardedDedup, RefusesBadShardCounts) {
  ShardedDedup d;
  const int64_t id = 1;
  EXPECT_THROW(d.group(&id, 1, 0), InvalidArgument);
  EXPECT_THROW(d.group(&id, 1, 65537), InvalidArgument);
  EXPECT_THROW(d.group(&id, -1, 1), InvalidArgument);
}

// Run with 1 thread (a task per group: distinct ids first) and 8 (fewer groups than threads:
// the phases by shard); the pool's size is put back afterwards.
class BatchPlannerThreads : public testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    previous_ = ThreadPool::global().num_threads();
    ThreadPool::set_global_num_threads(GetParam());
  }
  void TearDown() override { ThreadPool::set_global_num_threads(previous_); }

 private:
  int previous_ = 0;
};

INSTANTIATE_TEST_SUITE_P(Paths, BatchPlannerThreads, testing::Values(1, 8));

TEST_P(BatchPlannerThreads, GroupsDedupsAndInvertsEveryGroup) {
  std::mt19937_64 rng(9);
  for (int round = 0; round < 20; ++round) {
    // Group 0 random, group 1 all duplicates, group 2 empty (bags but no ids), group 3 no bags.
    std::vector<std::vector<int64_t>> ids = {random_ids(rng, 200, 40), std::vector<int64_t>(30, INT64_MAX), {}, {}};
    std::vector<std::vector<int64_t>> offsets = {{0, 50, 50, 200}, {0, 30}, {0, 0, 0}, {0}};
    std::vector<GroupInput> in;
    for (size_t g = 0; g < ids.size(); ++g)
      in.push_back({static_cast<int>(g), ids[g].data(), static_cast<int64_t>(ids[g].size()), offsets[g].data(),
                    static_cast<int64_t>(offsets[g].size()) - 1, nullptr});
    const std::vector<int> shards = {5, 4, 2, 1};
    PreparedBatch batch;
    batch.groups.resize(in.size());
    std::map<std::pair<int, int>, int64_t> resolved;  // (group, shard) -> ids handed over
    std::mutex m;
    plan_batch(in, shards, batch, [&](int g, int s, const int64_t* keys, int64_t count, std::byte** rows) {
      for (int64_t k = 0; k < count; ++k) {
        EXPECT_EQ(shard_of_hash(key_hash(keys[k]), shards[g]), s);
        rows[k] = reinterpret_cast<std::byte*>(static_cast<uintptr_t>(k + 1));
      }
      std::lock_guard<std::mutex> lock(m);
      resolved[{g, s}] += count;
    });
    for (size_t g = 0; g < in.size(); ++g) {
      const PreparedGroup& pg = batch.groups[g];
      const std::vector<int64_t> want = reference_unique(ids[g], shards[g]);
      ASSERT_EQ(std::vector<int64_t>(pg.unique_keys.begin(), pg.unique_keys.end()), want);
      ASSERT_EQ(pg.unique_rows.size(), want.size());
      ASSERT_EQ(pg.shard_starts.size(), static_cast<size_t>(shards[g]) + 1);
      ASSERT_EQ(pg.shard_starts.back(), static_cast<int64_t>(want.size()));
      for (int s = 0; s < shards[g]; ++s)
        for (int64_t k = pg.shard_starts[s]; k < pg.shard_starts[s + 1]; ++k)
          ASSERT_EQ(shard_of_hash(key_hash(pg.unique_keys[k]), shards[g]), s);
      ASSERT_EQ(pg.inverse.size(), ids[g].size());
      for (size_t i = 0; i < ids[g].size(); ++i) ASSERT_EQ(pg.unique_keys[pg.inverse[i]], ids[g][i]);
      for (auto* r : pg.unique_rows) ASSERT_NE(r, nullptr);
      int64_t handed = 0;
      for (const auto& [key, count] : resolved)
        if (key.first == static_cast<int>(g)) handed += count;
      ASSERT_EQ(handed, static_cast<int64_t>(want.size()));
      ASSERT_EQ(pg.batch_size, static_cast<int64_t>(offsets[g].size()) - 1);
      build_occurrences(pg);
      ASSERT_EQ(pg.occurrence_offsets.back(), static_cast<int32_t>(ids[g].size()));
    }
    EXPECT_EQ(batch.groups[1].num_unique(), 1);
    EXPECT_EQ(batch.groups[2].num_unique(), 0);
    EXPECT_EQ(batch.groups[3].batch_size, 0);
  }
}

TEST(DedupIds, FirstOccurrenceOrderAndEveryKeyLegal) {
  const int64_t lo = std::numeric_limits<int64_t>::min();
  std::vector<int64_t> ids{5, lo, -1, 5, 0, lo, -1};
  std::vector<int64_t> unique, inverse;
  dedup_ids(ids.data(), static_cast<int64_t>(ids.size()), unique, inverse);
  EXPECT_EQ(unique, (std::vector<int64_t>{5, lo, -1, 0}));
  EXPECT_EQ(inverse, (std::vector<int64_t>{0, 1, 2, 0, 3, 1, 2}));
}

// Occurrence lists and bags against a one-pass reference: skewed and uniform ids, empty bags
// first, in the middle and last, odd and even lengths, one id, none.
TEST(BuildOccurrences, MatchesAOnePassReference) {
  std::mt19937_64 rng(5);
  for (int round = 0; round < 200; ++round) {
    const int bags = static_cast<int>(rng() % 12);
    std::vector<int64_t> offsets{0};
    for (int b = 0; b < bags; ++b) offsets.push_back(offsets.back() + static_cast<int64_t>(rng() % 4) * (rng() % 3));
    const int64_t n = offsets.back();
    const int64_t range = 1 + static_cast<int64_t>(rng() % 6);
    PreparedGroup g;
    g.num_ids = n;
    g.batch_size = bags;
    g.offsets.assign(offsets.data(), offsets.data() + offsets.size());
    std::vector<int64_t> ids(static_cast<size_t>(n));
    for (auto& x : ids) x = static_cast<int64_t>(rng() % range);
    std::vector<int64_t> unique;
    std::vector<int64_t> inverse;
    dedup_ids(ids.data(), n, unique, inverse);
    g.unique_keys.assign(unique.data(), unique.data() + unique.size());
    g.inverse.resize(n);
    for (int64_t i = 0; i < n; ++i) g.inverse[i] = static_cast<int32_t>(inverse[static_cast<size_t>(i)]);
    build_occurrences(g);
    std::vector<int32_t> want_offsets{0}, want_positions;
    for (size_t u = 0; u < unique.size(); ++u) {
      for (int64_t i = 0; i < n; ++i)
        if (inverse[static_cast<size_t>(i)] == static_cast<int64_t>(u))
          want_positions.push_back(static_cast<int32_t>(i));
      want_offsets.push_back(static_cast<int32_t>(want_positions.size()));
    }
    ASSERT_EQ(std::vector<int32_t>(g.occurrence_offsets.begin(), g.occurrence_offsets.end()), want_offsets);
    ASSERT_EQ(std::vector<int32_t>(g.occurrence_positions.begin(), g.occurrence_positions.end()), want_positions);
    ASSERT_EQ(g.bag_of_position.size(), static_cast<size_t>(n));
    for (int b = 0; b < bags; ++b)
      for (int64_t p = offsets[static_cast<size_t>(b)]; p < offsets[static_cast<size_t>(b) + 1]; ++p)
        ASSERT_EQ(g.bag_of_position[p], b) << "round " << round << " position " << p;
  }
}
