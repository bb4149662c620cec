#include <gtest/gtest.h>

#include <atomic>
#include <vector>

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
