#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "sparsecore/core/error.h"
#include "sparsecore/table/embedding_table.h"

namespace sparsecore {
namespace {

TableConfig config_with(ExpiryConfig expiry, int shard_bits = 2) {
  TableConfig c;
  c.name = "t";
  c.dim = 4;
  c.shard_bits = shard_bits;
  c.expiry = expiry;
  return c;
}

std::set<int64_t> keys_of(const EmbeddingTable& t) {
  std::vector<int64_t> keys(t.size());
  t.export_rows(keys.data(), nullptr, nullptr, static_cast<int64_t>(keys.size()));
  return {keys.begin(), keys.end()};
}

// Creates rows for keys and stamps them with last_step = step (as an update would).
void touch(EmbeddingTable& t, const std::vector<int64_t>& keys, int64_t step) {
  t.set_step(step);
  std::vector<std::byte*> rows(keys.size());
  t.find_or_insert_rows(keys.data(), static_cast<int64_t>(keys.size()), rows.data());
  for (std::byte* r : rows)
    if (r) {
      t.meta(r)->count_update();
      t.meta(r)->set_last_step(step);
    }
}

TEST(ExpiryConfig, RoundTripsThroughJsonAndIsOnlyWrittenWhenSet) {
  ExpiryConfig e;
  EXPECT_FALSE(config_with(e).to_json().contains("expiry"));
  e.ttl_steps = 5;
  e.ttl_seconds = 2.5;
  e.capacity = 1000;
  e.policy = EvictionPolicy::kLfu;
  e.on_full = OnFull::kRefuse;
  e.scan_per_step = 64;
  const TableConfig back = TableConfig::from_json(config_with(e).to_json());
  EXPECT_EQ(back.expiry.to_json().dump(), e.to_json().dump());
}

TEST(ExpiryConfig, RefusesBadFieldsNamingThem) {
  auto refused = [](ExpiryConfig e, const char* field) {
    try {
      config_with(e).validate();
      ADD_FAILURE() << "accepted a bad " << field;
    } catch (const InvalidArgument& ex) {
      EXPECT_NE(std::string(ex.what()).find(field), std::string::npos) << ex.what();
    }
  };
  ExpiryConfig e;
  e.ttl_steps = -1;
  refused(e, "ttl_steps");
  e = {};
  e.capacity = 3;  // below 4 hash shards
  refused(e, "capacity");
  e = {};
  e.eviction_headroom = 0.75;
  refused(e, "eviction_headroom");
  e = {};
  e.ttl_seconds = -1;
  refused(e, "ttl_seconds");
  Json j = Json::object();
  j["ttl_step"] = 3;
  EXPECT_THROW(ExpiryConfig::from_json(j), InvalidArgument);
}

TEST(EmbeddingTableStep, KeepsTheLargestStepItWasGiven) {
  EmbeddingTable t(config_with({}), 1);
  t.set_step(7);
  t.set_step(3);
  EXPECT_EQ(t.step(), 7);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i)
    threads.emplace_back([&t, i] {
      for (int64_t s = 0; s < 1000; ++s) t.set_step(s * 4 + i);
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(t.step(), 3999);
}

// A full round of the incremental pass (no writer in between) removes exactly the rows a
// full expire() would, whatever the window size.
TEST(Expiry, IncrementalRoundsRemoveExactlyWhatTheRuleNames) {
  for (int64_t window : {1, 7, 64, 100000}) {
    ExpiryConfig e;
    e.ttl_steps = 2;
    EmbeddingTable t(config_with(e), 3);
    std::mt19937_64 rng(window);
    std::map<int64_t, int64_t> last;
    for (int64_t step = 1; step <= 6; ++step) {
      std::vector<int64_t> keys;
      for (int i = 0; i < 400; ++i) keys.push_back(static_cast<int64_t>(rng() % 3000));
      std::sort(keys.begin(), keys.end());
      keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
      touch(t, keys, step);
      for (int64_t k : keys) last[k] = step;
    }
    std::set<int64_t> want;
    for (const auto& [k, s] : last)
      if (s >= 6 - 2) want.insert(k);
    // Every shard's slots once, in windows of `window` slots.
    int64_t slots = 0;
    for (int s = 0; s < t.hash_table().num_shards(); ++s)
      slots += static_cast<int64_t>(t.hash_table().shard(s).slot_count());
    int64_t removed = 0;
    for (int64_t done = 0; done < slots; done += window) removed += t.expire_some(window);
    EXPECT_EQ(keys_of(t), want) << "window " << window;
    EXPECT_EQ(removed, static_cast<int64_t>(last.size() - want.size()));
    EXPECT_EQ(t.expiry()->stats().expired, removed);
    EXPECT_EQ(t.expire(), 0);
  }
}

TEST(Expiry, WallClockRuleUsesTheNewestStepAtOrBeforeTheCutoff) {
  ExpiryConfig e;
  e.ttl_seconds = 10;
  EmbeddingTable t(config_with(e, 0), 3);
  double now = 100;
  t.expiry()->set_clock([&now] { return now; });
  touch(t, {1}, 1);
  now = 105;
  touch(t, {2}, 2);
  now = 111;
  touch(t, {3}, 3);
  now = 114;  // cut-off 104: step 1 (t = 100) is the newest at or before it
  EXPECT_EQ(t.expire(), 1);
  EXPECT_EQ(keys_of(t), (std::set<int64_t>{2, 3}));
  now = 121;
  EXPECT_EQ(t.expire(), 2);
}

TEST(Expiry, ThinnedStepTimesNeverExpireARowEarly) {
  ExpiryConfig e;
  e.ttl_seconds = 50;
  Expiry x(e);
  double now = 0;
  x.set_clock([&now] { return now; });
  for (int64_t s = 1; s <= 5000; ++s) {
    now = static_cast<double>(s);
    x.note_step(s);
  }
  for (double limit : {100.0, 1234.0, 4999.0}) {
    now = limit + 50;
    const int64_t cut = x.cutoffs(5000).at_most_step;
    EXPECT_LE(cut, static_cast<int64_t>(limit));  // never a step seen after now - S
    EXPECT_GE(cut, 1);
  }
  now = 4999 + 50;
  EXPECT_GE(x.cutoffs(5000).at_most_step, 4999 - 16);  // recent steps keep a fine grain
  Expiry y(e);
  y.load_state(x.state_json());
  EXPECT_EQ(y.state_json().dump(), x.state_json().dump());
}

TEST(Expiry, EvictionKeepsTheShardBoundAndNeverTheRowsOfTheLookup) {
  ExpiryConfig e;
  e.capacity = 16;
  e.eviction_headroom = 0.25;
  EmbeddingTable t(config_with(e, 0), 3);
  std::vector<int64_t> first;
  for (int64_t k = 0; k < 16; ++k) first.push_back(k);
  touch(t, first, 1);
  touch(t, {0, 1}, 2);  // rows 0 and 1 are the most recently used
  std::vector<int64_t> next = {2, 100, 101};
  touch(t, next, 3);
  EXPECT_LE(t.size(), 16u);
  const std::set<int64_t> have = keys_of(t);
  for (int64_t k : {0, 1, 2, 100, 101}) EXPECT_TRUE(have.count(k)) << k;
  // Room for two rows plus a headroom of 4: six rows of step 1 (the lowest ids) went.
  EXPECT_EQ(t.expiry()->stats().evicted, 6);
  for (int64_t k = 3; k < 9; ++k) EXPECT_FALSE(have.count(k)) << k;
}

TEST(Expiry, RefusalLeavesRowsNullAndCountsThem) {
  ExpiryConfig e;
  e.capacity = 2;
  e.on_full = OnFull::kRefuse;
  EmbeddingTable t(config_with(e, 0), 3);
  std::vector<int64_t> keys = {5, 6, 7, 5};
  std::vector<std::byte*> rows(keys.size());
  t.find_or_insert_rows(keys.data(), 4, rows.data());
  EXPECT_NE(rows[0], nullptr);
  EXPECT_NE(rows[1], nullptr);
  EXPECT_EQ(rows[2], nullptr);
  EXPECT_EQ(rows[3], rows[0]);
  EXPECT_EQ(t.size(), 2u);
  EXPECT_EQ(t.expiry()->stats().refused, 1);
}

TEST(Expiry, RemovedRowsAreRetiredUntilReleased) {
  ExpiryConfig e;
  e.ttl_steps = 1;
  EmbeddingTable t(config_with(e, 0), 3);
  touch(t, {1, 2}, 1);
  std::byte* row = nullptr;
  const int64_t one = 1;
  t.find_rows(&one, 1, &row);
  const uint64_t generation = t.generation();
  t.set_step(5);
  EXPECT_EQ(t.expire(), 2);
  EXPECT_EQ(t.retired_rows(), 2u);
  EXPECT_EQ(t.generation(), generation);  // pointers taken before stay valid
  touch(t, {3, 4}, 5);
  std::byte* fresh[2];
  const int64_t fresh_keys[2] = {3, 4};
  t.find_rows(fresh_keys, 2, fresh);
  EXPECT_NE(fresh[0], row);
  EXPECT_NE(fresh[1], row);
  EXPECT_EQ(t.release_retired(), 2u);
  EXPECT_NE(t.generation(), generation);
  EXPECT_EQ(t.retired_rows(), 0u);
}

TEST(Expiry, PredicateSeesKeyAndMetadata) {
  ExpiryConfig e;
  e.predicate = true;
  EmbeddingTable t(config_with(e), 3);
  touch(t, {1, 2, 3, 4}, 1);
  touch(t, {2, 4}, 2);
  t.expiry()->set_predicate([](int64_t key, const RowMeta& m) { return key > 1 && m.update_count == 2; });
  EXPECT_EQ(t.expire(), 2);
  EXPECT_EQ(keys_of(t), (std::set<int64_t>{1, 3}));
}

}  // namespace
}  // namespace sparsecore
