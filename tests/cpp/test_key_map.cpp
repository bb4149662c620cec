#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <map>
#include <random>

#include "sparsecore/table/key_map.h"

namespace sparsecore {
namespace {

std::map<int64_t, int64_t> contents(const KeyMap<int64_t>& m) {
  std::map<int64_t, int64_t> out;
  m.for_each([&](int64_t k, int64_t v) { EXPECT_TRUE(out.emplace(k, v).second); });
  return out;
}

TEST(KeyMap, MatchesAnOrderedMapUnderRandomOperations) {
  std::mt19937_64 rng(5);
  KeyMap<int64_t> m;
  std::map<int64_t, int64_t> ref;
  const int64_t special = std::numeric_limits<int64_t>::min();
  for (int op = 0; op < 200000; ++op) {
    // A small key range (many collisions and long runs) plus the empty marker itself.
    const int64_t key = rng() % 50 == 0 ? special : static_cast<int64_t>(rng() % 3000) - 1500;
    switch (rng() % 4) {
      case 0:
      case 1: {
        auto [v, inserted] = m.try_emplace(key, op);
        auto [it, ref_inserted] = ref.try_emplace(key, op);
        ASSERT_EQ(inserted, ref_inserted);
        ASSERT_EQ(*v, it->second);
        ++*v;
        ++it->second;
        break;
      }
      case 2:
        ASSERT_EQ(m.erase(key), ref.erase(key) == 1);
        break;
      default: {
        const int64_t* v = m.find(key);
        auto it = ref.find(key);
        ASSERT_EQ(v != nullptr, it != ref.end());
        if (v) {
          ASSERT_EQ(*v, it->second);
        }
      }
    }
    ASSERT_EQ(m.size(), ref.size());
  }
  EXPECT_EQ(contents(m), ref);
}

TEST(KeyMap, EraseIfRemovesExactlyWhatThePredicateNames) {
  for (uint64_t seed = 0; seed < 20; ++seed) {
    std::mt19937_64 rng(seed);
    KeyMap<int64_t> m;
    std::map<int64_t, int64_t> ref;
    for (int i = 0; i < 5000; ++i) {
      const int64_t key = static_cast<int64_t>(rng());
      m.try_emplace(key, i);
      ref.try_emplace(key, i);
    }
    m.try_emplace(std::numeric_limits<int64_t>::min(), 1);
    ref.try_emplace(std::numeric_limits<int64_t>::min(), 1);
    const size_t removed = m.erase_if([](int64_t, int64_t v) { return v % 3 != 0; });
    size_t want = 0;
    for (auto it = ref.begin(); it != ref.end();) {
      if (it->second % 3 != 0) {
        it = ref.erase(it);
        ++want;
      } else {
        ++it;
      }
    }
    EXPECT_EQ(removed, want);
    EXPECT_EQ(contents(m), ref);
    for (const auto& [k, v] : ref) ASSERT_NE(m.find(k), nullptr);
  }
}

}  // namespace
}  // namespace sparsecore
