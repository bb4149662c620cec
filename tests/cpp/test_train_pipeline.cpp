// The train layer used from C++ alone: a synthetic source, the pipelined step on C++ threads
// and a hand-written linear dense model, no Python anywhere.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "sparsecore/core/error.h"
#include "sparsecore/core/thread_pool.h"
#include "sparsecore/io/libsvm_format.h"
#include "sparsecore/io/synthetic_generator.h"
#include "sparsecore/ops/embedding_collection.h"
#include "sparsecore/train/step_pipeline.h"
#include "sparsecore/train/synthetic_source.h"
#include "sparsecore/train/text_reader_source.h"

using namespace sparsecore;
using namespace sparsecore::train;

namespace {

const std::vector<std::string> kGroups = {"user", "item", "tags"};
constexpr int kDim = 4;
constexpr int64_t kBatch = 64;

io::SyntheticGenerator generator() {
  io::SyntheticConfig c;
  c.group_names = kGroups;
  c.vocab_size = 500;
  c.min_bag = 1;
  c.max_bag = 5;
  c.seed = 3;
  c.weight_std = 0.5;
  return io::SyntheticGenerator(c);
}

std::vector<TableConfig> tables() {
  std::vector<TableConfig> out;
  for (const std::string& name : kGroups) {
    TableConfig c;
    c.name = name;
    c.dim = kDim;
    c.optimizer.kind = OptimizerKind::kAdagrad;
    c.optimizer.lr = 0.1f;
    c.init.kind = InitKind::kNormal;
    c.init.b = 0.1f;
    c.pooling = name == "tags" ? Pooling::kMean : Pooling::kSum;
    out.push_back(c);
  }
  return out;
}

// A logistic regression over the pooled rows of every group: logit = bias + sum_g w_g . pooled_g.
struct LinearDense {
  std::vector<float> w = std::vector<float>(kGroups.size() * kDim, 0.25f);
  float bias = 0.0f;
  float lr = 0.05f;

  // Returns the mean logloss; fills the gradients of the pooled rows and updates w and bias.
  double step(const std::vector<std::vector<float>>& pooled, const float* labels, int64_t n,
              std::vector<std::vector<float>>& grads) {
    std::vector<double> dlogit(n);
    double loss = 0;
    for (int64_t i = 0; i < n; ++i) {
      double z = bias;
      for (size_t g = 0; g < pooled.size(); ++g)
        for (int d = 0; d < kDim; ++d) z += w[g * kDim + d] * pooled[g][i * kDim + d];
      const double p = 1.0 / (1.0 + std::exp(-z));
      loss -= labels[i] ? std::log(p) : std::log(1 - p);
      dlogit[i] = (p - labels[i]) / static_cast<double>(n);
    }
    grads.assign(pooled.size(), {});
    for (size_t g = 0; g < pooled.size(); ++g) {
      grads[g].resize(pooled[g].size());
      for (int64_t i = 0; i < n; ++i)
        for (int d = 0; d < kDim; ++d) grads[g][i * kDim + d] = static_cast<float>(dlogit[i] * w[g * kDim + d]);
    }
    for (size_t g = 0; g < pooled.size(); ++g)
      for (int d = 0; d < kDim; ++d) {
        double s = 0;
        for (int64_t i = 0; i < n; ++i) s += dlogit[i] * pooled[g][i * kDim + d];
        w[g * kDim + d] -= static_cast<float>(lr * s);
      }
    double sb = 0;
    for (int64_t i = 0; i < n; ++i) sb += dlogit[i];
    bias -= static_cast<float>(lr * sb);
    return loss / static_cast<double>(n);
  }
};

// Every row of every table, by key: weights and optimizer state.
using Rows = std::vector<std::map<int64_t, std::vector<float>>>;

Rows snapshot(const EmbeddingCollection& c) {
  Rows out(c.num_tables());
  for (int t = 0; t < c.num_tables(); ++t) {
    const EmbeddingTable& table = c.table(t);
    const int64_t n = static_cast<int64_t>(table.size());
    std::vector<int64_t> keys(n);
    std::vector<float> rows(n * table.row_floats());
    std::vector<RowMeta> meta(n);
    table.export_rows(keys.data(), rows.data(), meta.data(), n);
    for (int64_t i = 0; i < n; ++i)
      out[t][keys[i]] =
          std::vector<float>(rows.begin() + i * table.row_floats(), rows.begin() + (i + 1) * table.row_floats());
  }
  return out;
}

struct TrainingRun {
  Rows rows;
  std::vector<float> dense;
  std::vector<double> losses;
  std::vector<std::string> states;
};

// Trains `steps` batches through the pipeline.
TrainingRun train_pipelined(int64_t steps, int prefetch, bool pull_rows = false, bool prepare_on_pool = false) {
  EmbeddingCollection collection(tables(), 11);
  auto source = std::make_shared<SyntheticSource>(generator(), kBatch);
  StepPipelineOptions options;
  options.prefetch = prefetch;
  options.max_steps = steps;
  options.pull_rows = pull_rows;
  options.prepare_on_pool = prepare_on_pool;
  StepPipeline pipeline(&collection, source, options);
  LinearDense dense;
  TrainingRun run;
  std::vector<std::vector<float>> grads;
  while (std::optional<PipelineStep> step = pipeline.next()) {
    EXPECT_TRUE(step->prepared->occurrences_built);  // the producer planned the backward
    const std::vector<std::vector<float>> pooled = pipeline.forward(*step);
    run.losses.push_back(dense.step(pooled, step->batch.samples->labels.data(), step->batch.num_samples(), grads));
    std::vector<const float*> ptrs;
    for (const auto& g : grads) ptrs.push_back(g.data());
    pipeline.backward(*step, ptrs);
    run.states.push_back(step->source_state);
  }
  run.rows = snapshot(collection);
  run.dense = dense.w;
  run.dense.push_back(dense.bias);
  return run;
}

// The same training with no pipeline: read, prepare, forward, dense step, backward in turn.
TrainingRun train_sequential(int64_t steps) {
  EmbeddingCollection collection(tables(), 11);
  io::SyntheticGenerator gen = generator();
  LinearDense dense;
  TrainingRun run;
  std::vector<std::vector<float>> grads;
  for (int64_t s = 0; s < steps; ++s) {
    io::SampleBatch b = gen.next_batch(kBatch);
    std::vector<GroupInput> inputs;
    for (int t = 0; t < 3; ++t) {
      const io::FeatureGroupBatch& g = b.groups[t];
      inputs.push_back({t, g.ids.data(), static_cast<int64_t>(g.ids.size()), g.offsets.data(), g.num_bags(), nullptr});
    }
    auto prepared = collection.prepare(inputs, true);
    std::vector<std::vector<float>> pooled(3);
    std::vector<float*> outs;
    for (int t = 0; t < 3; ++t) {
      pooled[t].resize(prepared->groups[t].output_size());
      outs.push_back(pooled[t].data());
    }
    collection.forward(*prepared, outs);
    run.losses.push_back(dense.step(pooled, b.labels.data(), b.num_samples, grads));
    collection.backward(*prepared, {grads[0].data(), grads[1].data(), grads[2].data()});
  }
  run.rows = snapshot(collection);
  run.dense = dense.w;
  run.dense.push_back(dense.bias);
  return run;
}

class ScopedThreads {
 public:
  explicit ScopedThreads(int n) { ThreadPool::set_global_num_threads(n); }
  ~ScopedThreads() { ThreadPool::set_global_num_threads(0); }
};

// A source that yields `good` valid batches, then fails the way `mode` says.
class FailingSource : public BatchSource {
 public:
  enum Mode { kThrows, kBadOffsets, kMissingGroup };
  FailingSource(int good, Mode mode) : gen_(generator()), good_(good), mode_(mode) {}
  std::optional<SourceBatch> next_batch() override {
    ++calls;
    io::SampleBatch b = gen_.next_batch(8);
    if (calls <= good_) return SourceBatch::of(std::move(b));
    if (mode_ == kThrows) throw CorruptData("line 7 of part-0: not a sample");
    if (mode_ == kBadOffsets) b.groups[1].offsets[1] = -1;
    if (mode_ == kMissingGroup) b.groups[2].name = "renamed";
    return SourceBatch::of(std::move(b));
  }
  std::atomic<int> calls{0};

 private:
  io::SyntheticGenerator gen_;
  int good_;
  Mode mode_;
};

}  // namespace

TEST(StepPipeline, TrainsASmallModelAndChangesRows) {
  EmbeddingCollection untouched(tables(), 11);
  const TrainingRun run = train_pipelined(30, 2);
  ASSERT_EQ(run.losses.size(), 30u);
  size_t rows = 0, changed = 0;
  for (int t = 0; t < 3; ++t) {
    for (const auto& [key, row] : run.rows[t]) {
      std::vector<float> init(kDim);
      untouched.table(t).lookup_or_insert_weights(&key, 1, init.data());
      ++rows;
      changed += !std::equal(init.begin(), init.end(), row.begin());
    }
  }
  EXPECT_GT(rows, 100u);
  EXPECT_EQ(changed, rows);  // every row read by a step got a gradient
  double first = 0, last = 0;
  for (int i = 0; i < 5; ++i) first += run.losses[i], last += run.losses[run.losses.size() - 1 - i];
  EXPECT_LT(last, first);  // the planted signal is learnt
}

TEST(StepPipeline, SameRowsAsTheSequentialStepForOneAndTwoThreads) {
  TrainingRun one, two;
  {
    ScopedThreads threads(1);
    one = train_pipelined(20, 1);
  }
  {
    ScopedThreads threads(2);
    two = train_pipelined(20, 3);
  }
  const TrainingRun sequential = train_sequential(20);
  EXPECT_EQ(one.rows, two.rows);
  EXPECT_EQ(one.dense, two.dense);
  EXPECT_EQ(one.losses, two.losses);
  EXPECT_EQ(one.rows, sequential.rows);
  EXPECT_EQ(one.losses, sequential.losses);
}

TEST(StepPipeline, ProducerOnItsOwnThreadOrOnThePoolTrainsTheSameRows) {
  ScopedThreads threads(2);
  const TrainingRun own = train_pipelined(15, 2, false, /*prepare_on_pool=*/false);
  const TrainingRun pool = train_pipelined(15, 2, false, /*prepare_on_pool=*/true);
  const TrainingRun sequential = train_sequential(15);
  EXPECT_EQ(own.rows, pool.rows);
  EXPECT_EQ(own.losses, pool.losses);
  EXPECT_EQ(own.rows, sequential.rows);
  EXPECT_EQ(own.dense, sequential.dense);
}

TEST(StepPipeline, PulledRowsAreTheRowsAtPrepareTime) {
  EmbeddingCollection collection(tables(), 11);
  StepPipelineOptions options;
  options.pull_rows = true;
  options.max_steps = 3;
  StepPipeline pipeline(&collection, std::make_shared<SyntheticSource>(generator(), kBatch), options);
  std::optional<PipelineStep> first = pipeline.next();
  ASSERT_TRUE(first.has_value());
  ASSERT_EQ(first->pulled.size(), 3u);
  std::vector<std::vector<float>> fresh(3);
  std::vector<float*> outs;
  for (int t = 0; t < 3; ++t) {
    fresh[t].resize(first->prepared->groups[t].output_size());
    outs.push_back(fresh[t].data());
  }
  collection.forward(*first->prepared, outs);  // nothing was trained yet: the same rows
  EXPECT_EQ(pipeline.forward(*first), fresh);
  const TrainingRun stale = train_pipelined(10, 2, /*pull_rows=*/true);
  for (double loss : stale.losses) EXPECT_TRUE(std::isfinite(loss));
}

TEST(StepPipeline, StatesResumeTheSourceWhereTheStepLeftIt) {
  const TrainingRun run = train_pipelined(4, 2);
  ASSERT_EQ(run.states.size(), 4u);
  SyntheticSource resumed(generator(), kBatch);
  resumed.load_state(run.states[1]);
  SyntheticSource straight(generator(), kBatch);
  for (int i = 0; i < 2; ++i) straight.next_batch();
  EXPECT_EQ(resumed.next_batch()->samples->groups[0].ids, straight.next_batch()->samples->groups[0].ids);
  EXPECT_EQ(resumed.state(), run.states[2]);
  EXPECT_THROW(resumed.load_state(R"({"position": -1, "batches": 0})"), InvalidArgument);
}

TEST(StepPipeline, SourceErrorsSurfaceInTheConsumerAfterTheGoodSteps) {
  EmbeddingCollection collection(tables(), 1);
  auto source = std::make_shared<FailingSource>(3, FailingSource::kThrows);
  StepPipeline pipeline(&collection, source, {});
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(pipeline.next().has_value());
  try {
    pipeline.next();
    FAIL() << "the source's error was swallowed";
  } catch (const CorruptData& e) {
    EXPECT_NE(std::string(e.what()).find("line 7 of part-0"), std::string::npos);
  }
  EXPECT_THROW(pipeline.next(), CorruptData);  // and on every later call
}

TEST(StepPipeline, BadBatchesAreRejectedByPrepareWithoutInserting) {
  for (FailingSource::Mode mode : {FailingSource::kBadOffsets, FailingSource::kMissingGroup}) {
    EmbeddingCollection collection(tables(), 1);
    StepPipeline pipeline(&collection, std::make_shared<FailingSource>(0, mode), {});
    try {
      pipeline.next();
      FAIL() << "a bad batch was prepared";
    } catch (const InvalidArgument& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(mode == FailingSource::kBadOffsets ? "item" : "tags"), std::string::npos) << what;
    }
    for (int t = 0; t < 3; ++t) EXPECT_EQ(collection.table(t).size(), 0u);
  }
}

TEST(StepPipeline, EarlyStopWithAFullQueueJoinsAndReadsNoMore) {
  EmbeddingCollection collection(tables(), 1);
  auto source = std::make_shared<FailingSource>(1 << 30, FailingSource::kThrows);
  StepPipelineOptions options;
  options.prefetch = 1;
  {
    StepPipeline pipeline(&collection, source, options);
    ASSERT_TRUE(pipeline.next().has_value());
    pipeline.close();  // the producer waits for room in the full queue
    EXPECT_FALSE(pipeline.next().has_value());
    pipeline.close();  // idempotent
  }
  const int calls = source->calls;
  EXPECT_LE(calls, 3);  // one taken, one queued, at most one being read
  {
    StepPipeline abandoned(&collection, source, options);  // destroyed without a next() or close()
  }
  EXPECT_LE(source->calls - calls, 2);
}

TEST(StepPipeline, MaxStepsReadsExactlyThatManyBatches) {
  EmbeddingCollection collection(tables(), 1);
  auto source = std::make_shared<FailingSource>(1 << 30, FailingSource::kThrows);
  StepPipelineOptions options;
  options.max_steps = 5;
  StepPipeline pipeline(&collection, source, options);
  int steps = 0;
  while (pipeline.next()) ++steps;
  EXPECT_EQ(steps, 5);
  EXPECT_EQ(source->calls, 5);
}

TEST(StepPipeline, RejectsBadOptions) {
  EmbeddingCollection collection(tables(), 1);
  auto source = std::make_shared<SyntheticSource>(generator(), 8);
  StepPipelineOptions zero;
  zero.prefetch = 0;
  EXPECT_THROW(StepPipeline(&collection, source, zero), InvalidArgument);
  StepPipelineOptions unknown;
  unknown.groups = {"user", "nope"};
  EXPECT_THROW(StepPipeline(&collection, source, unknown), NotFound);
  EXPECT_THROW(StepPipeline(&collection, nullptr, {}), InvalidArgument);
  EXPECT_THROW(SyntheticSource(generator(), 0), InvalidArgument);
}

TEST(StepPipeline, WithoutACollectionStepsCarryTheBatchOnly) {
  auto source = std::make_shared<SyntheticSource>(generator(), 8, /*num_batches=*/3);
  StepPipeline pipeline(nullptr, source, {});
  int steps = 0;
  while (std::optional<PipelineStep> step = pipeline.next()) {
    EXPECT_EQ(step->prepared, nullptr);
    EXPECT_EQ(step->batch.num_samples(), 8);
    EXPECT_THROW(pipeline.forward(*step), InvalidArgument);
    ++steps;
  }
  EXPECT_EQ(steps, 3);
}

TEST(StepPipeline, TrainsFromAFileReaderAndResumesAtTheStepsState) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() /
      ("sc_train_pipeline_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "part-0.libsvm").string();
  {
    std::ofstream out(path);
    for (int i = 0; i < 25; ++i) out << (i % 3 == 0) << " " << i % 7 << ":1 " << 100 + i << ":0.5\n";
  }
  TableConfig features = tables()[0];
  features.name = "features";
  EmbeddingCollection collection({features}, 2);
  auto reader = [&] {
    return std::make_unique<io::TextReader>(std::vector<std::string>{path}, std::make_shared<io::LibsvmFormat>());
  };
  auto source = std::make_shared<TextReaderSource>(reader(), 10);
  StepPipeline pipeline(&collection, source, {});
  std::vector<int64_t> sizes;
  std::vector<std::string> states;
  while (std::optional<PipelineStep> step = pipeline.next()) {
    sizes.push_back(step->batch.num_samples());
    states.push_back(step->source_state);
    const auto pooled = pipeline.forward(*step);
    std::vector<float> grad(pooled[0].size(), 0.1f);
    pipeline.backward(*step, {grad.data()});
  }
  EXPECT_EQ(sizes, (std::vector<int64_t>{10, 10, 5}));
  EXPECT_EQ(collection.table(0).size(), 32u);  // ids 0..6 and 100..124
  TextReaderSource resumed(reader(), 10);
  resumed.load_state(states[0]);
  std::optional<SourceBatch> second = resumed.next_batch();
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->samples->groups[0].ids.front(), 10 % 7);  // line 11 comes next
  EXPECT_EQ(resumed.state(), states[1]);
  std::filesystem::remove_all(dir);
}
