// Keys whose hashes share their high 32 bits (a fingerprint an index could compare instead of
// the key) stay distinct under every operation, in small tables where they share probe runs,
// and every int64 (the index's empty marker included) is a key.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <unordered_map>
#include <utility>
#include <vector>

#include "key_rows.h"
#include "sparsecore/core/hash.h"
#include "sparsecore/table/hash_table.h"

using namespace sparsecore;

namespace {

using sparsecore::test_support::fill_key;
using sparsecore::test_support::row_key;

// Pairs of distinct keys with equal fingerprints (high 32 bits of key_hash), by a search over
// the keys [0, 2^20): about 128 pairs are expected there, by the birthday bound.
const std::vector<std::pair<int64_t, int64_t>>& colliding_pairs() {
  static const std::vector<std::pair<int64_t, int64_t>> pairs = [] {
    std::vector<std::pair<uint32_t, int64_t>> by_print;
    by_print.reserve(size_t{1} << 20);
    for (int64_t k = 0; k < (int64_t{1} << 20); ++k) by_print.emplace_back(static_cast<uint32_t>(key_hash(k) >> 32), k);
    std::sort(by_print.begin(), by_print.end());
    std::vector<std::pair<int64_t, int64_t>> out;
    for (size_t i = 1; i < by_print.size(); ++i)
      if (by_print[i].first == by_print[i - 1].first) out.emplace_back(by_print[i - 1].second, by_print[i].second);
    return out;
  }();
  return pairs;
}

// Every key of `model` found with its own row by each lookup path, every key of `absent` not.
void expect_exact(HashTable& table, const std::vector<int64_t>& present, const std::vector<int64_t>& absent) {
  std::vector<int64_t> keys = present;
  keys.insert(keys.end(), absent.begin(), absent.end());
  const auto n = static_cast<int64_t>(keys.size());
  std::vector<std::byte*> by_find(keys.size()), by_lookup(keys.size()), by_shard(keys.size());
  table.find(keys.data(), n, by_find.data());
  table.lookup_batch(keys.data(), n, by_lookup.data(), nullptr, 8);
  ASSERT_EQ(table.shard_bits(), 0);
  {
    auto lock = table.shard(0).read_lock();
    EXPECT_EQ(table.shard(0).find_batch(keys.data(), n, by_shard.data()), static_cast<int64_t>(absent.size()));
  }
  for (size_t i = 0; i < keys.size(); ++i) {
    const bool want = i < present.size();
    for (std::byte* row : {by_find[i], by_lookup[i], by_shard[i]}) {
      if (want) {
        ASSERT_NE(row, nullptr) << "key " << keys[i];
        EXPECT_EQ(row_key(row), keys[i]);
      } else {
        EXPECT_EQ(row, nullptr) << "key " << keys[i];
      }
    }
  }
  // for_each visits each present key once, with its own row.
  std::map<int64_t, int> seen;
  table.shard(0).for_each([&](int64_t key, const std::byte* row) {
    ++seen[key];
    EXPECT_EQ(row_key(row), key);
  });
  EXPECT_EQ(seen.size(), present.size());
  for (int64_t k : present) EXPECT_EQ(seen[k], 1) << "key " << k;
}

}  // namespace

TEST(HashTableFingerprints, TheSearchFindsCollidingPairs) {
  ASSERT_GE(colliding_pairs().size(), 32u);
  for (const auto& [a, b] : colliding_pairs()) {
    EXPECT_NE(a, b);
    EXPECT_EQ(key_hash(a) >> 32, key_hash(b) >> 32);
  }
}

TEST(HashTableFingerprints, ACollidingAbsentKeyIsNotFoundAndInsertsItsOwnRow) {
  HashTable table(sizeof(int64_t), 0);
  std::vector<int64_t> firsts, seconds;
  for (const auto& [a, b] : colliding_pairs()) {
    firsts.push_back(a);
    seconds.push_back(b);
  }
  std::vector<std::byte*> rows(firsts.size());
  table.find_or_insert(firsts.data(), static_cast<int64_t>(firsts.size()), rows.data(), fill_key);
  expect_exact(table, firsts, seconds);
  // The colliding twins go in through the single-threaded batch path.
  const HashTable::RowInit init = fill_key;
  table.lookup_batch(seconds.data(), static_cast<int64_t>(seconds.size()), rows.data(), &init);
  for (size_t i = 0; i < seconds.size(); ++i) EXPECT_EQ(row_key(rows[i]), seconds[i]);
  std::vector<int64_t> all = firsts;
  all.insert(all.end(), seconds.begin(), seconds.end());
  expect_exact(table, all, {});
  EXPECT_EQ(table.size(), all.size());
}

TEST(HashTableFingerprints, EraseShiftsBackAcrossCollisionsAndKeepsTheOtherTwin) {
  const auto& pairs = colliding_pairs();
  std::mt19937_64 gen(7);
  for (int round = 0; round < 8; ++round) {
    // A small table (one shard, 16 to a few hundred slots) so that twins share long runs.
    HashTable table(sizeof(int64_t) * 3, 0);
    std::vector<int64_t> keys;
    for (size_t i = 0; i < pairs.size() && keys.size() < 40; ++i) {
      keys.push_back(pairs[(i + round * 5) % pairs.size()].first);
      keys.push_back(pairs[(i + round * 5) % pairs.size()].second);
    }
    keys.push_back(std::numeric_limits<int64_t>::min());
    std::vector<std::byte*> rows(keys.size());
    table.find_or_insert(keys.data(), static_cast<int64_t>(keys.size()), rows.data(), fill_key);
    std::vector<int64_t> present = keys, gone;
    std::shuffle(keys.begin(), keys.end(), gen);
    for (int64_t k : keys) {
      ASSERT_EQ(table.erase(&k, 1), 1);
      ASSERT_EQ(table.erase(&k, 1), 0);
      present.erase(std::find(present.begin(), present.end(), k));
      gone.push_back(k);
      expect_exact(table, present, gone);
    }
    EXPECT_EQ(table.size(), 0u);
  }
}

TEST(HashTableFingerprints, GrowthWithManyCollisionsKeepsEveryRowInPlace) {
  HashTable table(sizeof(int64_t), 0);
  std::vector<int64_t> keys;
  for (const auto& [a, b] : colliding_pairs()) {
    keys.push_back(a);
    keys.push_back(b);
  }
  std::vector<std::byte*> rows(keys.size());
  // One at a time from 16 slots: the index grows many times with the twins inside.
  std::vector<std::byte*> first(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) table.find_or_insert(&keys[i], 1, &first[i], fill_key);
  EXPECT_GE(table.shard(0).slot_count(), keys.size());
  table.find(keys.data(), static_cast<int64_t>(keys.size()), rows.data());
  EXPECT_EQ(rows, first);  // rows never move
  expect_exact(table, keys, {});
  // reserve regrows the index in one step; the rows stay where they were.
  table.shard(0).reserve(keys.size() * 40);
  table.find(keys.data(), static_cast<int64_t>(keys.size()), rows.data());
  EXPECT_EQ(rows, first);
}

TEST(HashTableFingerprints, EveryInt64IsAKeyIncludingTheExtremes) {
  for (int shard_bits : {0, 3}) {
    HashTable table(sizeof(int64_t), shard_bits);
    std::vector<int64_t> keys = {std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max(), 0, -1, 1};
    std::vector<std::byte*> rows(keys.size());
    table.find_or_insert(keys.data(), static_cast<int64_t>(keys.size()), rows.data(), fill_key);
    EXPECT_EQ(table.size(), keys.size());
    std::map<int64_t, int> seen;
    for (int s = 0; s < table.num_shards(); ++s)
      table.shard(s).for_each([&](int64_t key, const std::byte* row) {
        ++seen[key];
        EXPECT_EQ(row_key(row), key);
      });
    EXPECT_EQ(seen.size(), keys.size());
    int64_t lowest = std::numeric_limits<int64_t>::min();
    EXPECT_EQ(table.erase(&lowest, 1), 1);
    std::byte* row = nullptr;
    table.find(&lowest, 1, &row);
    EXPECT_EQ(row, nullptr);
    EXPECT_EQ(table.size(), keys.size() - 1);
    table.find(keys.data() + 1, 1, &row);
    ASSERT_NE(row, nullptr);
    EXPECT_EQ(row_key(row), std::numeric_limits<int64_t>::max());
  }
}

TEST(HashTableFingerprints, MatchesAMapOnKeysWithCollidingFingerprints) {
  // Random operations over a universe made of colliding twins, on every lookup path.
  std::vector<int64_t> universe;
  for (const auto& [a, b] : colliding_pairs()) {
    universe.push_back(a);
    universe.push_back(b);
  }
  universe.push_back(std::numeric_limits<int64_t>::min());
  std::mt19937_64 gen(99);
  HashTable table(sizeof(int64_t), 0);
  std::unordered_map<int64_t, std::byte*> model;
  const HashTable::RowInit init = fill_key;
  for (int round = 0; round < 300; ++round) {
    std::vector<int64_t> keys(gen() % 40);
    for (auto& k : keys) k = universe[gen() % universe.size()];
    std::vector<std::byte*> rows(keys.size());
    const auto n = static_cast<int64_t>(keys.size());
    switch (gen() % 3) {
      case 0:
        table.lookup_batch(keys.data(), n, rows.data(), &init);
        for (size_t i = 0; i < keys.size(); ++i) {
          ASSERT_EQ(row_key(rows[i]), keys[i]);
          auto [it, fresh] = model.try_emplace(keys[i], rows[i]);
          ASSERT_EQ(it->second, rows[i]);  // a key keeps its row while present
        }
        break;
      case 1: {
        std::map<int64_t, int> distinct;
        for (int64_t k : keys) distinct[k] = 1;
        int64_t expected = 0;
        for (const auto& [k, one] : distinct) expected += static_cast<int64_t>(model.erase(k));
        ASSERT_EQ(table.erase(keys.data(), n), expected);
        break;
      }
      default:
        table.lookup_batch(keys.data(), n, rows.data(), nullptr);
        for (size_t i = 0; i < keys.size(); ++i) {
          const auto it = model.find(keys[i]);
          ASSERT_EQ(rows[i], it == model.end() ? nullptr : it->second);
        }
    }
    ASSERT_EQ(table.size(), model.size());
  }
}
