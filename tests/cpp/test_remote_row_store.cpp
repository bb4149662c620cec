// An EmbeddingCollection over a RemoteRowStore (parameter servers, here a listening PsServer
// in this process, and an embedded one) trains exactly as the embedded collection: the same
// pooled outputs and rows bit for bit, for every pooling, with and without weights.
#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "sparsecore/core/error.h"
#include "sparsecore/ops/embedding_collection.h"
#include "sparsecore/ps/ps_client.h"
#include "sparsecore/ps/ps_server.h"
#include "sparsecore/ps/remote_row_store.h"

using namespace sparsecore;
using namespace sparsecore::ps;

namespace {

std::vector<TableConfig> tables() {
  std::vector<TableConfig> out;
  const Pooling poolings[] = {Pooling::kSum, Pooling::kMean, Pooling::kNone};
  const OptimizerKind kinds[] = {OptimizerKind::kAdam, OptimizerKind::kAdagrad, OptimizerKind::kSGD};
  for (int t = 0; t < 3; ++t) {
    TableConfig c;
    c.name = "t" + std::to_string(t);
    c.dim = 3 + 2 * t;
    c.pooling = poolings[t];
    c.optimizer.kind = kinds[t];
    c.optimizer.lr = 0.05f;
    out.push_back(c);
  }
  return out;
}

struct Group {
  std::vector<int64_t> ids, offsets;
  std::vector<float> weights;
};

Group random_group(std::mt19937_64& rng, bool weighted) {
  Group g;
  std::uniform_int_distribution<int> len(0, 4);
  std::uniform_int_distribution<int64_t> id(-20, 20);
  std::uniform_real_distribution<float> w(-1.0f, 2.0f);
  g.offsets.push_back(0);
  for (int b = 0; b < 6; ++b) {
    const int l = len(rng);
    for (int k = 0; k < l; ++k) {
      const int64_t x = id(rng);
      g.ids.push_back(x == 20 ? INT64_MIN : x == -20 ? INT64_MAX : x);
      if (weighted) g.weights.push_back(w(rng));
    }
    g.offsets.push_back(static_cast<int64_t>(g.ids.size()));
  }
  return g;
}

std::vector<GroupInput> inputs_of(const std::vector<Group>& groups) {
  std::vector<GroupInput> in;
  for (size_t t = 0; t < groups.size(); ++t) {
    const Group& g = groups[t];
    in.push_back({static_cast<int>(t), g.ids.data(), static_cast<int64_t>(g.ids.size()), g.offsets.data(),
                  static_cast<int64_t>(g.offsets.size()) - 1, g.weights.empty() ? nullptr : g.weights.data()});
  }
  return in;
}

// Trains `steps` random batches on an embedded collection and on one over `client`, checking
// pooled outputs after each step and the rows at the end.
void expect_same_training(PsClient& client, int steps, bool weighted) {
  std::mt19937_64 rng(11);
  EmbeddingCollection local(tables(), 5);
  std::unique_ptr<EmbeddingCollection> remote = remote_collection(tables(), 5, client);
  ASSERT_FALSE(remote->has_local_tables());
  std::vector<int64_t> seen;
  for (int step = 0; step < steps; ++step) {
    std::vector<Group> groups;
    for (int t = 0; t < 3; ++t) groups.push_back(random_group(rng, weighted));
    for (const Group& g : groups) seen.insert(seen.end(), g.ids.begin(), g.ids.end());
    const auto in = inputs_of(groups);
    auto a = local.prepare(in, true);
    auto b = remote->prepare(in, true);
    std::vector<std::vector<float>> out_a(3), out_b(3), grads(3);
    std::vector<float*> pa, pb;
    std::vector<const float*> pg;
    std::normal_distribution<float> gd(0.0f, 1.0f);
    for (int t = 0; t < 3; ++t) {
      const size_t size = static_cast<size_t>(a->groups[t].output_size());
      ASSERT_EQ(size, static_cast<size_t>(b->groups[t].output_size()));
      out_a[t].assign(size, -1.0f);
      out_b[t].assign(size, -2.0f);
      grads[t].resize(size);
      for (float& x : grads[t]) x = gd(rng);
      pa.push_back(out_a[t].data());
      pb.push_back(out_b[t].data());
      pg.push_back(grads[t].data());
    }
    local.forward(*a, pa);
    remote->forward(*b, pb);
    for (int t = 0; t < 3; ++t)
      ASSERT_EQ(0, std::memcmp(out_a[t].data(), out_b[t].data(), out_a[t].size() * sizeof(float)))
          << "step " << step << " table " << t;
    EXPECT_EQ(local.backward(*a, pg), remote->backward(*b, pg));
  }
  for (int t = 0; t < 3; ++t) {
    const int dim = local.config(t).dim;
    std::vector<float> want(seen.size() * dim), got(seen.size() * dim);
    local.table(t).find_weights(seen.data(), static_cast<int64_t>(seen.size()), want.data());
    client.pull(local.table_name(t), seen.data(), static_cast<int64_t>(seen.size()), false, got.data());
    ASSERT_EQ(0, std::memcmp(want.data(), got.data(), want.size() * sizeof(float))) << "table " << t;
  }
}

}  // namespace

TEST(RemoteRowStore, TrainsLikeTheEmbeddedCollectionAgainstAListeningServer) {
  PsServerOptions o;
  o.rpc.num_reactors = 3;
  PsServer server(o);
  server.start();
  PsClient client({"127.0.0.1:" + std::to_string(server.port())}, {});
  expect_same_training(client, 20, /*weighted=*/true);
  server.stop();
}

TEST(RemoteRowStore, TrainsLikeTheEmbeddedCollectionOnAnEmbeddedServer) {
  PsServer server(PsServerOptions{});
  PsClient client(server, {});
  expect_same_training(client, 20, /*weighted=*/false);
}

TEST(RemoteRowStore, ABatchPreparedAheadSeesTheUpdatesTrainedBeforeItsForward) {
  PsServer server(PsServerOptions{});
  PsClient client(server, {});
  EmbeddingCollection local(tables(), 5);
  auto remote = remote_collection(tables(), 5, client);
  std::vector<Group> groups = {Group{{1, 2}, {0, 2}, {}}, Group{{1}, {0, 1}, {}}, Group{{3}, {0, 1}, {}}};
  const auto in = inputs_of(groups);
  std::vector<std::vector<std::vector<float>>> seen;  // per collection: the ahead batch's outputs
  for (EmbeddingCollection* c : {&local, remote.get()}) {
    auto first = c->prepare(in, true);
    auto ahead = c->prepare(in, true);  // prepared before the first one trains
    std::vector<std::vector<float>> grads(3), outs(3);
    std::vector<const float*> pg;
    std::vector<float*> po;
    for (int t = 0; t < 3; ++t) {
      grads[t].assign(first->groups[t].output_size(), 0.5f);
      outs[t].resize(first->groups[t].output_size());
      pg.push_back(grads[t].data());
      po.push_back(outs[t].data());
    }
    c->backward(*first, pg);
    c->forward(*ahead, po);
    seen.push_back(outs);
  }
  EXPECT_EQ(seen[1], seen[0]);
}

TEST(RemoteRowStore, CallsThatNeedLocalRowsNameThemselves) {
  PsServer server(PsServerOptions{});
  PsClient client(server, {});
  auto remote = remote_collection(tables(), 5, client);
  const int64_t id = 1;
  try {
    remote->erase(0, &id, 1);
    FAIL() << "erase on a remote collection";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("erase"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("parameter servers"), std::string::npos);
  }
  EXPECT_THROW(remote->memory_bytes(), InvalidArgument);
  EXPECT_THROW(remote->table(0), InvalidArgument);
  EXPECT_THROW(remote->save("/nonexistent/x"), InvalidArgument);
  EXPECT_EQ(remote->table_name(2), "t2");
}

TEST(RemoteRowStore, NonFiniteGradientsPushNothing) {
  PsServer server(PsServerOptions{});
  PsClient client(server, {});
  auto remote = remote_collection(tables(), 5, client);
  std::vector<Group> groups = {Group{{1, 2}, {0, 2}, {}}, Group{{1}, {0, 1}, {}}, Group{{3}, {0, 1}, {}}};
  auto batch = remote->prepare(inputs_of(groups), true);
  std::vector<std::vector<float>> grads(3);
  std::vector<const float*> pg;
  for (int t = 0; t < 3; ++t) {
    grads[t].assign(batch->groups[t].output_size(), 1.0f);
    pg.push_back(grads[t].data());
  }
  grads[2][0] = std::numeric_limits<float>::infinity();
  EXPECT_THROW(remote->backward(*batch, pg), InvalidArgument);
  EXPECT_EQ(remote->step(), 0);
  std::vector<float> row(3);
  const int64_t id = 1;
  client.pull("t0", &id, 1, false, row.data());
  EXPECT_EQ(row, std::vector<float>(3, 0.0f));  // never inserted: prepare sends nothing
}
