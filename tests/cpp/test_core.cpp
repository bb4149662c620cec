#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "sparsecore/core/checksum.h"
#include "sparsecore/core/error.h"
#include "sparsecore/core/json.h"
#include "sparsecore/core/thread_pool.h"

using namespace sparsecore;

TEST(ThreadPool, CoversEveryIndexExactlyOnce) {
  ThreadPool pool(3);
  std::vector<std::atomic<int>> hits(10007);
  pool.parallel_for(10007, 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1);
  });
  for (auto& h : hits) ASSERT_EQ(h.load(), 1);
}

TEST(ThreadPool, RethrowsTaskException) {
  ThreadPool pool(2);
  EXPECT_THROW(pool.parallel_for(1000, 1,
                                 [](int64_t b, int64_t) {
                                   if (b == 0) throw InvalidArgument("boom");
                                 }),
               InvalidArgument);
  // the pool still works afterwards
  std::atomic<int64_t> sum{0};
  pool.parallel_for(100, 1, [&](int64_t b, int64_t e) { sum += e - b; });
  EXPECT_EQ(sum.load(), 100);
}

TEST(Json, RoundTripsNestedValues) {
  Json j = Json::object();
  j["name"] = "a\"b\n";
  j["seed"] = int64_t{-9223372036854775807LL};
  j["lr"] = 0.1;
  j["list"] = Json::array();
  j["list"].push_back(Json(true));
  j["list"].push_back(Json(nullptr));
  Json back = Json::parse(j.dump(2));
  EXPECT_EQ(back.at("name").as_string(), "a\"b\n");
  EXPECT_EQ(back.at("seed").as_int(), -9223372036854775807LL);
  EXPECT_DOUBLE_EQ(back.at("lr").as_double(), 0.1);
  EXPECT_TRUE(back.at("list").as_array()[0].as_bool());
}

TEST(Json, MalformedTextThrowsCorruptData) {
  EXPECT_THROW(Json::parse("{\"a\": }"), CorruptData);
  EXPECT_THROW(Json::parse("[1, 2"), CorruptData);
  EXPECT_THROW(Json::parse("{} x"), CorruptData);
}

TEST(Checksum64, KnownAnswersAnyPiecesOfTheSameBytes) {
  // The values every checkpoint, snapshot and export part written so far carries: a change of
  // the function makes old files unreadable, so it fails here first. The same bytes fed in
  // pieces of any size give the same digest.
  const std::pair<size_t, uint64_t> known[] = {{0, 0xef75c774c965ac22ULL},  {1, 0x8332a985070c5ebaULL},
                                               {31, 0x4cafe56613599396ULL}, {32, 0x5a8fc5da77e31cd9ULL},
                                               {33, 0x301f752fbb8ea49cULL}, {1000, 0x629de490b4feccafULL}};
  std::mt19937 rng(std::random_device{}());
  for (const auto& [n, want] : known) {
    std::vector<uint8_t> bytes(n);
    for (size_t i = 0; i < n; ++i) bytes[i] = static_cast<uint8_t>(i * 31 + 7);
    EXPECT_EQ(checksum64(bytes.data(), n), want) << n << " bytes";
    Checksum64 pieces;
    for (size_t at = 0; at < n;) {
      const size_t take = std::min<size_t>(n - at, 1 + rng() % 70);
      pieces.update(bytes.data() + at, take);
      at += take;
    }
    EXPECT_EQ(pieces.digest(), want) << n << " bytes in pieces";
  }
}
