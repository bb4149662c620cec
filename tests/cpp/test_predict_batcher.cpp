// The prediction server's pieces without sockets: the binary request codec and the batcher.
#include <gtest/gtest.h>

#include <condition_variable>
#include <cstring>
#include <future>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "map_row_source.h"
#include "small_dense_graph.h"
#include "sparsecore/core/error.h"
#include "sparsecore/core/json.h"
#include "sparsecore/serving/predict_batcher.h"
#include "sparsecore/serving/predict_protocol.h"

namespace sparsecore::serving {
namespace {

class PredictBatcherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    source = std::make_shared<MapSource>();
    std::normal_distribution<float> normal;
    for (int t = 0; t < 2; ++t)
      for (int64_t id = -5; id < 40; ++id) {
        std::vector<float> row(source->dims[t]);
        for (auto& v : row) v = normal(rng);
        source->rows[t][id] = row;
      }
    predictor = std::make_unique<Predictor>(
        std::vector<FeatureSpec>{{"b", "tb", ServingPooling::kMean}, {"a", "ta", ServingPooling::kSum}},
        DenseGraph(Json::parse(graph.json), graph.blob), source);
  }

  std::unique_ptr<OwnedPredictRequest> random_request(int64_t batch, bool weighted) {
    auto r = std::make_unique<OwnedPredictRequest>();
    r->batch = batch;
    r->ids.resize(2);
    r->offsets.resize(2);
    r->weights.resize(2);
    for (int f = 0; f < 2; ++f) {
      r->offsets[f].push_back(0);
      for (int64_t b = 0; b < batch; ++b) {
        const int64_t len = static_cast<int64_t>(rng() % 4);
        for (int64_t i = 0; i < len; ++i) {
          r->ids[f].push_back(static_cast<int64_t>(rng() % 50) - 5);  // some unknown
          if (weighted) r->weights[f].push_back(0.5f + static_cast<float>(rng() % 4));
        }
        r->offsets[f].push_back(static_cast<int64_t>(r->ids[f].size()));
      }
    }
    return r;
  }

  std::vector<float> alone(const OwnedPredictRequest& r) const {
    std::vector<FeatureBatch> fb;
    for (int f = 0; f < 2; ++f)
      fb.push_back({r.ids[f].data(), r.offsets[f].data(), r.weights[f].empty() ? nullptr : r.weights[f].data(),
                    static_cast<int64_t>(r.ids[f].size())});
    std::vector<float> out(static_cast<size_t>(r.batch * predictor->output_width()));
    PredictorWorkspace ws;
    predictor->predict(fb.data(), nullptr, r.batch, out.data(), ws);
    return out;
  }

  std::mt19937_64 rng{std::random_device{}()};
  std::shared_ptr<MapSource> source;
  SmallGraph graph;
  std::unique_ptr<Predictor> predictor;
};

// Collects the outcomes of submitted requests.
struct Outcomes {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<PredictOutcome> got;
  size_t done = 0;

  explicit Outcomes(size_t n) : got(n) {}
  std::function<void(PredictOutcome&&)> slot(size_t i) {
    return [this, i](PredictOutcome&& o) {
      std::lock_guard<std::mutex> lock(mu);
      got[i] = std::move(o);
      ++done;
      cv.notify_all();
    };
  }
  void wait_all() {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(60), [&] { return done == got.size(); }));
  }
};

TEST_F(PredictBatcherTest, BatchedRequestsGetTheLogitsTheyGetAlone) {
  // One batch of every request (max_batch = their samples, a long wait): weighted and
  // unweighted requests of different sizes, empty bags and an empty request among them.
  std::vector<std::unique_ptr<OwnedPredictRequest>> requests;
  int64_t samples = 0;
  for (int i = 0; i < 12; ++i) {
    requests.push_back(random_request(i % 4 == 1 ? 0 : 1 + i % 5, i % 3 == 0));
    samples += requests.back()->batch;
  }
  std::vector<std::vector<float>> expected;
  for (const auto& r : requests) expected.push_back(alone(*r));
  PredictBatcher batcher(*predictor, nullptr, {static_cast<int>(samples), 9'000'000, 1, 100});
  Outcomes outcomes(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    requests[i]->done = outcomes.slot(i);
    batcher.submit(std::move(requests[i]));
  }
  outcomes.wait_all();
  for (size_t i = 0; i < expected.size(); ++i) {
    ASSERT_EQ(outcomes.got[i].status, rpc::Status::kOk) << outcomes.got[i].error;
    EXPECT_EQ(outcomes.got[i].logits, expected[i]) << "request " << i;
  }
  EXPECT_EQ(batcher.stats().batches, 1u);
  EXPECT_EQ(batcher.stats().samples, static_cast<uint64_t>(samples));
}

TEST_F(PredictBatcherTest, MalformedRequestsAreRefusedAtSubmitAndSpoilNoBatch) {
  PredictBatcher batcher(*predictor, nullptr, {64, 0, 2, 100});
  std::vector<std::unique_ptr<OwnedPredictRequest>> bad;
  bad.push_back(random_request(3, false));
  bad.back()->offsets[1].back() += 1;  // past the ids
  bad.push_back(random_request(3, true));
  bad.back()->weights[0].push_back(1.0f);  // one weight more than ids (never empty, never a match)
  bad.push_back(random_request(3, false));
  bad.back()->dense = {1.0f};  // the model has no dense input
  bad.push_back(random_request(3, false));
  bad.back()->offsets.pop_back();
  bad.push_back(random_request(3, true));
  if (!bad.back()->weights[0].empty()) bad.back()->weights[0][0] = std::nanf("");
  const size_t n_bad = bad.size();
  auto good = random_request(4, false);
  const auto expected = alone(*good);
  Outcomes outcomes(n_bad + 1);
  for (size_t i = 0; i < n_bad; ++i) {
    bad[i]->done = outcomes.slot(i);
    batcher.submit(std::move(bad[i]));
  }
  good->done = outcomes.slot(n_bad);
  batcher.submit(std::move(good));
  outcomes.wait_all();
  for (size_t i = 0; i + 1 < n_bad; ++i) EXPECT_EQ(outcomes.got[i].status, rpc::Status::kInvalidArgument) << i;
  ASSERT_EQ(outcomes.got[n_bad].status, rpc::Status::kOk);
  EXPECT_EQ(outcomes.got[n_bad].logits, expected);
}

TEST_F(PredictBatcherTest, AFullQueueIsBusyAndStopAnswersWhatIsQueued) {
  // max_wait is long and the batch never fills: requests stay queued until stop().
  auto batcher = std::make_unique<PredictBatcher>(*predictor, nullptr, BatcherOptions{1000, 10'000'000, 1, 2});
  Outcomes outcomes(3);
  for (size_t i = 0; i < 3; ++i) {
    auto r = random_request(1, false);
    r->done = outcomes.slot(i);
    batcher->submit(std::move(r));
  }
  batcher->stop();
  outcomes.wait_all();
  int busy = 0, stopping = 0;
  for (const auto& o : outcomes.got) {
    busy += o.status == rpc::Status::kBusy;
    stopping += o.status == rpc::Status::kShuttingDown || o.status == rpc::Status::kOk;
  }
  EXPECT_EQ(busy, 1);
  EXPECT_EQ(stopping, 2);
}

TEST_F(PredictBatcherTest, ARequestPastItsDeadlineIsNotRun) {
  PredictBatcher batcher(*predictor, nullptr, {1000, 10'000'000, 1, 10});
  Outcomes outcomes(1);
  auto r = random_request(2, false);
  r->deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(20);
  r->done = outcomes.slot(0);
  batcher.submit(std::move(r));
  outcomes.wait_all();  // answered at its deadline, long before max_wait
  EXPECT_EQ(outcomes.got[0].status, rpc::Status::kDeadlineExceeded);
  EXPECT_EQ(batcher.stats().batches, 0u);
}

TEST_F(PredictBatcherTest, TheBinaryRequestRoundTripsAndEveryTruncationIsRefused) {
  auto r = random_request(5, true);
  r->weights[1].clear();  // one feature weighted, one not
  std::vector<FeatureBatch> fb;
  for (int f = 0; f < 2; ++f)
    fb.push_back({r->ids[f].data(), r->offsets[f].data(), r->weights[f].empty() ? nullptr : r->weights[f].data(),
                  static_cast<int64_t>(r->ids[f].size())});
  std::vector<std::byte> header;
  std::vector<iovec> segments;
  encode_predict_request(fb.data(), fb.size(), nullptr, 0, r->batch, header, segments);
  std::vector<std::byte> payload;
  for (const iovec& s : segments) {
    const auto* p = static_cast<const std::byte*>(s.iov_base);
    payload.insert(payload.end(), p, p + s.iov_len);
  }
  EXPECT_EQ(payload.size() % 8, 0u);
  OwnedPredictRequest back;
  decode_predict_request(*predictor, payload, back);
  EXPECT_EQ(back.batch, r->batch);
  EXPECT_EQ(back.ids, r->ids);
  EXPECT_EQ(back.offsets, r->offsets);
  EXPECT_EQ(back.weights, r->weights);
  for (size_t cut = 0; cut < payload.size(); ++cut) {
    OwnedPredictRequest x;
    EXPECT_THROW(decode_predict_request(*predictor, std::span(payload.data(), cut), x), InvalidArgument) << cut;
  }
  std::vector<std::byte> longer = payload;
  longer.resize(longer.size() + 8);
  OwnedPredictRequest x;
  EXPECT_THROW(decode_predict_request(*predictor, longer, x), InvalidArgument);
  // counts that would overflow or run past the payload
  for (int64_t huge : {int64_t{-1}, int64_t{1} << 62, int64_t{1} << 40}) {
    std::vector<std::byte> bad = payload;
    std::memcpy(bad.data() + sizeof(PredictWireHeader), &huge, sizeof(huge));  // first feature's num_ids
    EXPECT_THROW(decode_predict_request(*predictor, bad, x), InvalidArgument) << huge;
    bad = payload;
    std::memcpy(bad.data() + 8, &huge, sizeof(huge));  // batch
    EXPECT_THROW(decode_predict_request(*predictor, bad, x), InvalidArgument) << huge;
  }
}

}  // namespace
}  // namespace sparsecore::serving
