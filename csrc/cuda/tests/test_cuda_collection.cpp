// cuda::DeviceEmbeddingCollection against the CPU EmbeddingCollection on random batches:
// forward for every pooling, backward + fused update for every optimizer, fp16 storage,
// evaluation without inserts, and validation that changes nothing on bad input.
#include <unistd.h>
#include <cmath>
#include <filesystem>

#include "cuda_test_util.h"
#include "emulation/cuda_emulation.h"  // __half conversions for the expected fp16 values
#include "sparsecore/cuda/emulator_counters.h"

namespace sparsecore::cuda::testing {
namespace {

OptimizerConfig optimizer(OptimizerKind kind) {
  OptimizerConfig o;
  o.kind = kind;
  o.lr = 0.05f;
  o.weight_decay = kind == OptimizerKind::kSGD ? 0.01f : 0.0f;
  o.initial_accumulator = kind == OptimizerKind::kAdagrad ? 0.1f : 0.0f;
  o.l1 = 0.001f;
  o.group_lambda = 0.01f;
  o.eps = 1e-8f;
  return o;
}

TableConfig table(const std::string& name, int dim, Pooling pooling, OptimizerKind kind) {
  TableConfig c;
  c.name = name;
  c.dim = dim;
  c.pooling = pooling;
  c.optimizer = optimizer(kind);
  c.init.kind = InitKind::kTruncatedNormal;
  c.init.b = 0.5f;
  return c;
}

void expect_close(const std::vector<float>& got, const std::vector<float>& want, float tol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], want[i], tol * (1.0f + std::fabs(want[i]))) << what << " element " << i;
}

// Runs `steps` train steps on both collections with the same batches and gradients and
// compares outputs after each forward and the full tables at the end.
void compare_training(const std::vector<TableConfig>& tables, Backend backend, RowStorage storage, int steps,
                      float tol) {
  const uint64_t seed = rng()();
  DeviceEmbeddingCollection dev(tables, seed, storage, backend, test_limits(backend));
  EmbeddingCollection cpu(tables, seed);
  for (int step = 0; step < steps; ++step) {
    std::vector<Bags> bags;
    std::vector<GroupInput> inputs;
    for (size_t t = 0; t < tables.size(); ++t) bags.push_back(random_bags(9, 5, 30, (step + t) % 2 == 1));
    for (size_t t = 0; t < tables.size(); ++t) inputs.push_back(group_of(static_cast<int>(t), bags[t]));
    auto dp = dev.prepare(inputs, true);
    auto cp = cpu.prepare(inputs, true);
    std::vector<std::vector<float>> dout(tables.size()), cout(tables.size()), grads(tables.size());
    std::vector<float*> dptr, cptr;
    std::vector<const float*> gptr;
    for (size_t t = 0; t < tables.size(); ++t) {
      ASSERT_EQ(dp->groups()[t].output_size(), cp->groups[t].output_size());
      ASSERT_EQ(dp->num_unique(static_cast<int>(t)), cp->groups[t].num_unique());
      dout[t].resize(cp->groups[t].output_size());
      cout[t].resize(cp->groups[t].output_size());
      grads[t].resize(cp->groups[t].output_size());
      std::normal_distribution<float> g(0.0f, 1.0f);
      for (auto& x : grads[t]) x = g(rng());
      dptr.push_back(dout[t].data());
      cptr.push_back(cout[t].data());
      gptr.push_back(grads[t].data());
    }
    dev.forward(*dp, dptr);
    cpu.forward(*cp, cptr);
    for (size_t t = 0; t < tables.size(); ++t) expect_close(dout[t], cout[t], tol, "forward of " + tables[t].name);
    EXPECT_EQ(dev.backward(*dp, gptr), cpu.backward(*cp, gptr));
  }
  for (size_t t = 0; t < tables.size(); ++t) {
    auto e = dev.export_rows(static_cast<int>(t));
    ASSERT_EQ(e.keys.size(), cpu.table(static_cast<int>(t)).size());
    std::vector<float> want(e.keys.size() * tables[t].dim);
    cpu.table(static_cast<int>(t)).find_weights(e.keys.data(), static_cast<int64_t>(e.keys.size()), want.data());
    expect_close(e.weights, want, tol, "weights of " + tables[t].name);
  }
}

class CudaCollection : public ::testing::TestWithParam<Backend> {};

class CudaOptimizers : public ::testing::TestWithParam<std::tuple<Backend, OptimizerKind>> {};

TEST_P(CudaOptimizers, TrainingMatchesTheCpuEngine) {
  auto [backend, kind] = GetParam();
  SC_SKIP_WITHOUT_DEVICE(backend);
  const Pooling pooling = static_cast<Pooling>(static_cast<int>(kind) % 3);
  compare_training({table("a", 3, pooling, kind), table("b", 18, Pooling::kMean, kind)}, backend, RowStorage::kFloat32,
                   3, 2e-5f);
}

INSTANTIATE_TEST_SUITE_P(Backends, CudaOptimizers,
                         ::testing::Combine(::testing::Values(Backend::kEmulated, Backend::kDevice),
                                            ::testing::Values(OptimizerKind::kSGD, OptimizerKind::kMomentum,
                                                              OptimizerKind::kAdagrad, OptimizerKind::kRowwiseAdagrad,
                                                              OptimizerKind::kAdam, OptimizerKind::kFtrl,
                                                              OptimizerKind::kGroupLasso)),
                         [](const auto& info) {
                           return std::string(std::get<0>(info.param) == Backend::kEmulated ? "emulated_" : "device_") +
                                  optimizer_name(std::get<1>(info.param));
                         });

TEST_P(CudaCollection, EveryPoolingAndOddDimsMatchTheCpuEngine) {
  SC_SKIP_WITHOUT_DEVICE(GetParam());
  compare_training({table("sum1", 1, Pooling::kSum, OptimizerKind::kAdagrad),
                    table("mean33", 33, Pooling::kMean, OptimizerKind::kSGD),
                    table("none5", 5, Pooling::kNone, OptimizerKind::kAdam),
                    table("sum130", 130, Pooling::kSum, OptimizerKind::kRowwiseAdagrad)},
                   GetParam(), RowStorage::kFloat32, 2, 2e-5f);
}

TEST_P(CudaCollection, Fp16StorageRoundsTheCpuRowsOnce) {
  SC_SKIP_WITHOUT_DEVICE(GetParam());
  auto c = table("h", 8, Pooling::kSum, OptimizerKind::kSGD);
  DeviceEmbeddingCollection dev({c}, 9, RowStorage::kFloat16, GetParam(), test_limits(GetParam()));
  EmbeddingCollection cpu({c}, 9);
  auto keys = random_ids(100, 1000);
  std::vector<float> got(keys.size() * 8), want(keys.size() * 8);
  dev.lookup(0, keys.data(), 100, got.data(), true);
  cpu.table(0).lookup_or_insert_weights(keys.data(), 100, want.data());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i], __half2float(__float2half(want[i]))) << i;
  // Training stays within fp16 rounding of the fp32 engine.
  compare_training({c, table("h2", 3, Pooling::kMean, OptimizerKind::kAdagrad)}, GetParam(), RowStorage::kFloat16, 2,
                   4e-3f);
}

TEST_P(CudaCollection, EvaluationNeverInsertsAndReadsZeros) {
  SC_SKIP_WITHOUT_DEVICE(GetParam());
  auto c = table("e", 4, Pooling::kSum, OptimizerKind::kSGD);
  DeviceEmbeddingCollection dev({c}, 1, RowStorage::kFloat32, GetParam(), test_limits(GetParam()));
  Bags b = random_bags(6, 4, 50, false);
  auto batch = dev.prepare({group_of(0, b)}, false);
  std::vector<float> out(batch->groups()[0].output_size(), 1.0f);
  dev.forward(*batch, {out.data()});
  EXPECT_EQ(dev.table_size(0), 0);
  for (float x : out) EXPECT_EQ(x, 0.0f);
  EXPECT_THROW(dev.backward(*batch, {out.data()}), InvalidArgument);
}

TEST_P(CudaCollection, BadInputChangesNothing) {
  SC_SKIP_WITHOUT_DEVICE(GetParam());
  auto c = table("v", 2, Pooling::kSum, OptimizerKind::kAdagrad);
  DeviceEmbeddingCollection dev({c}, 1, RowStorage::kFloat32, GetParam(), test_limits(GetParam()));
  Bags good = random_bags(4, 3, 20, false);
  Bags bad = good;
  bad.offsets.back() += 1;
  EXPECT_THROW(dev.prepare({group_of(0, bad)}, true), InvalidArgument);
  EXPECT_EQ(dev.table_size(0), 0);
  auto batch = dev.prepare({group_of(0, good)}, true);
  auto before = dev.export_rows(0);
  std::vector<float> grad(batch->groups()[0].output_size(), 0.5f);
  if (!grad.empty()) grad[grad.size() / 2] = NAN;
  if (!grad.empty()) EXPECT_THROW(dev.backward(*batch, {grad.data()}), InvalidArgument);
  auto after = dev.export_rows(0);
  EXPECT_EQ(before.weights, after.weights);
  EXPECT_EQ(before.state, after.state);
  EXPECT_EQ(dev.step(), 0);
}

TEST_P(CudaCollection, BatchPreparedBeforeGrowthOrEraseStillTrains) {
  SC_SKIP_WITHOUT_DEVICE(GetParam());
  auto c = table("g", 4, Pooling::kSum, OptimizerKind::kSGD);
  const uint64_t seed = 77;
  DeviceEmbeddingCollection dev({c}, seed, RowStorage::kFloat32, GetParam(), test_limits(GetParam()));
  EmbeddingCollection cpu({c}, seed);
  Bags first = random_bags(8, 4, 1000, false), second = random_bags(64, 6, 100000, false);
  auto d1 = dev.prepare({group_of(0, first)}, true);
  auto c1 = cpu.prepare({group_of(0, first)}, true);
  const int64_t capacity = dev.table_capacity(0);
  dev.prepare({group_of(0, second)}, true);  // grows the table: slots of d1 move
  cpu.prepare({group_of(0, second)}, true);
  EXPECT_GT(dev.table_capacity(0), capacity);
  if (!first.ids.empty()) {
    dev.erase(0, first.ids.data(), 1);
    cpu.table(0).erase(first.ids.data(), 1);
  }
  std::vector<float> grad(c1->groups[0].output_size(), 0.25f), dout(grad.size()), cout(grad.size());
  dev.forward(*d1, {dout.data()});
  cpu.forward(*c1, {cout.data()});
  expect_close(dout, cout, 1e-6f, "forward after growth and erase");
  dev.backward(*d1, {grad.data()});
  cpu.backward(*c1, {grad.data()});
  auto e = dev.export_rows(0);
  std::vector<float> want(e.keys.size() * 4);
  cpu.table(0).find_weights(e.keys.data(), static_cast<int64_t>(e.keys.size()), want.data());
  expect_close(e.weights, want, 1e-6f, "weights");
}

// The emulator's device memory is host memory: MemorySpace::kDevice reads the caller's
// arrays in place (no copies) and gives what the host path gives.
TEST(CudaEmulated, DeviceMemorySpaceMatchesTheHostPath) {
  auto c = table("z", 8, Pooling::kMean, OptimizerKind::kAdagrad);
  DeviceEmbeddingCollection host({c}, 4, RowStorage::kFloat32, Backend::kEmulated, test_limits(Backend::kEmulated));
  DeviceEmbeddingCollection dev({c}, 4, RowStorage::kFloat32, Backend::kEmulated, test_limits(Backend::kEmulated));
  Bags bags = random_bags(12, 5, 40, true);
  auto hp = host.prepare({group_of(0, bags)}, true);
  auto dp = dev.prepare({group_of(0, bags)}, true, MemorySpace::kDevice);
  std::vector<float> hout(hp->groups()[0].output_size()), dout(hout.size());
  host.forward(*hp, {hout.data()});
  dev.forward(*dp, {dout.data()}, MemorySpace::kDevice);
  EXPECT_EQ(hout, dout);
  std::vector<float> grad(hout.size(), 0.5f);
  host.backward(*hp, {grad.data()});
  dev.backward(*dp, {grad.data()}, MemorySpace::kDevice);
  EXPECT_EQ(host.export_rows(0).weights, dev.export_rows(0).weights);
  grad[0] = NAN;
  EXPECT_THROW(dev.backward(*dp, {grad.data()}, MemorySpace::kDevice), InvalidArgument);
  EXPECT_EQ(dev.step(), 1);
}

TEST(CudaEmulated, AShardPullWithAdmissionReadsBackTheCalledKeysNotTheTable) {
  // Which of a pull's keys the table holds is one probe per key on the device: the bytes read
  // back grow with the call, not with the table (it once read every key back per call).
  TableConfig c = table("t", 8, Pooling::kSum, OptimizerKind::kAdagrad);
  c.admission.count_threshold = 2;
  DeviceEmbeddingCollection dev({c}, rng()(), RowStorage::kFloat32, Backend::kEmulated,
                                test_limits(Backend::kEmulated));
  constexpr int64_t kRows = 20000, kCall = 16;
  std::vector<int64_t> keys(kRows);
  for (int64_t i = 0; i < kRows; ++i) keys[static_cast<size_t>(i)] = i * 7919 + 3;
  std::vector<float> out(static_cast<size_t>(kRows * c.dim));
  for (int sighting = 0; sighting < 2; ++sighting) dev.shard_pull(0, keys.data(), kRows, out.data());
  ASSERT_EQ(dev.table_size(0), kRows);
  std::vector<int64_t> call(keys.begin(), keys.begin() + kCall / 2);
  for (int64_t i = 0; i < kCall / 2; ++i) call.push_back(-1 - i);  // sighted once: not admitted
  reset_emulator_counters();
  dev.shard_pull(0, call.data(), kCall, out.data());
  const EmulatorCounters counters = emulator_counters();
  EXPECT_LT(counters.d2h_bytes, uint64_t{4096})
      << "a pull of " << kCall << " keys read back " << counters.d2h_bytes << " bytes";
  EXPECT_EQ(dev.table_size(0), kRows);
  for (int64_t i = 0; i < kCall / 2; ++i)  // the held keys read their rows, the others zeros
    for (int d = 0; d < c.dim; ++d) EXPECT_EQ(out[static_cast<size_t>((kCall / 2 + i) * c.dim + d)], 0.0f);
}

TEST_P(CudaCollection, CheckpointsMoveBetweenTheCpuAndTheDevice) {
  SC_SKIP_WITHOUT_DEVICE(GetParam());
  auto c = table("k", 5, Pooling::kSum, OptimizerKind::kAdam);
  const auto dir = std::filesystem::temp_directory_path() / ("sparsecore_cuda_ckpt_" + std::to_string(getpid()));
  std::filesystem::remove_all(dir);
  EmbeddingCollection cpu({c}, 21);
  Bags bags = random_bags(10, 4, 50, false);
  auto batch = cpu.prepare({group_of(0, bags)}, true);
  std::vector<float> grad(batch->groups[0].output_size(), 0.125f);
  cpu.backward(*batch, {grad.data()});
  cpu.save((dir / "cpu").string());
  auto dev = DeviceEmbeddingCollection::load((dir / "cpu").string(), RowStorage::kFloat32, GetParam(),
                                             test_limits(GetParam()));
  EXPECT_EQ(dev->step(), 1);
  EXPECT_EQ(dev->table_size(0), static_cast<int64_t>(cpu.table(0).size()));
  dev->save((dir / "dev").string());
  auto back = EmbeddingCollection::load((dir / "dev").string());
  const auto e = dev->export_rows(0);
  std::vector<float> want(e.keys.size() * 5);
  back->table(0).find_weights(e.keys.data(), static_cast<int64_t>(e.keys.size()), want.data());
  EXPECT_EQ(e.weights, want);
  std::vector<float> original(want.size());
  cpu.table(0).find_weights(e.keys.data(), static_cast<int64_t>(e.keys.size()), original.data());
  EXPECT_EQ(original, want);
  EXPECT_EQ(back->step(), 1);
  EXPECT_THROW(dev->save((dir / "dev").string()), InvalidArgument);
  std::filesystem::remove_all(dir);
}

TEST(CudaDevice, MissingDeviceIsAClearError) {
  if (device_available()) GTEST_SKIP() << "a device is present";
  EXPECT_FALSE(device_unavailable_reason().empty());
  try {
    DeviceEmbeddingCollection dev({table("x", 2, Pooling::kSum, OptimizerKind::kSGD)}, 1);
    FAIL() << "constructed a device collection without a device";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no CUDA device"), std::string::npos) << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, CudaCollection, ::testing::Values(Backend::kEmulated, Backend::kDevice),
                         backend_name);

}  // namespace
}  // namespace sparsecore::cuda::testing
