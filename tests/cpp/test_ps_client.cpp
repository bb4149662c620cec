// The parameter-server client from C++: pulls in flight together, remote against embedded.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

#include "sparsecore/ps/ps_client.h"
#include "sparsecore/ps/ps_protocol.h"
#include "sparsecore/ps/ps_server.h"

using namespace sparsecore;
using namespace sparsecore::ps;

namespace {

TableConfig table_config(int dim) {
  TableConfig c;
  c.name = "t";
  c.dim = dim;
  return c;
}

// n ids drawn from [0, range): duplicates when range is small.
std::vector<int64_t> draw_ids(std::mt19937_64& rng, int n, int64_t range) {
  std::uniform_int_distribution<int64_t> d(0, range - 1);
  std::vector<int64_t> ids(static_cast<size_t>(n));
  for (auto& x : ids) x = d(rng) - range / 2;
  return ids;
}

}  // namespace

TEST(PsClient, ShardedIdsGroupUniqueIdsByShard) {
  std::mt19937_64 rng(std::random_device{}());
  for (int shards : {1, 3, 8}) {
    std::vector<int64_t> ids = draw_ids(rng, 500, 300);
    ShardedIds s;
    s.build(ids.data(), static_cast<int64_t>(ids.size()), shards);
    for (size_t i = 0; i < ids.size(); ++i) ASSERT_EQ(s.unique[static_cast<size_t>(s.inverse[i])], ids[i]);
    int64_t total = 0;
    for (int g = 0; g < shards; ++g) {
      for (int64_t k = 0; k < s.shard_size(g); ++k) ASSERT_EQ(global_shard_of_key(s.shard_ids(g)[k], shards), g);
      total += s.shard_size(g);
    }
    ASSERT_EQ(total, s.num_unique());
    std::vector<int64_t> sorted(ids), distinct(s.unique.begin(), s.unique.end());
    std::sort(sorted.begin(), sorted.end());
    sorted.erase(std::unique(sorted.begin(), sorted.end()), sorted.end());
    std::sort(distinct.begin(), distinct.end());
    ASSERT_EQ(distinct, sorted);  // each id once
    // Distinct ids given in shard order come back as they are; ids the caller grouped are adopted.
    ShardedIds again;
    again.build(s.unique.data(), s.num_unique(), shards);
    ASSERT_TRUE(again.in_given_order(s.num_unique()));
    ASSERT_EQ(again.starts, s.starts);
    ASSERT_FALSE(s.in_given_order(static_cast<int64_t>(ids.size())));  // 500 draws of 300 values repeat
    again.adopt(s.starts.data(), shards);
    ASSERT_EQ(again.starts, s.starts);
  }
}

TEST(PsClient, PullsInFlightTogetherMatchEmbedded) {
  std::mt19937_64 rng(std::random_device{}());
  const int dim = 3;
  PsServerOptions o;
  o.rpc.num_reactors = 3;
  PsServer remote_server(o);
  remote_server.start();
  PsClient remote({"127.0.0.1:" + std::to_string(remote_server.port())}, {});
  PsServer embedded_server(PsServerOptions{});
  PsClient embedded(embedded_server, {});
  remote.create_table(table_config(dim), 9);
  embedded.create_table(table_config(dim), 9);

  std::vector<std::vector<int64_t>> batches;
  for (int b = 0; b < 16; ++b) batches.push_back(draw_ids(rng, 1 + b * 37, b % 2 ? 100 : int64_t{1} << 40));
  std::vector<std::vector<float>> got(batches.size());
  std::vector<PsClient::PendingPull> pending;
  for (size_t b = 0; b < batches.size(); ++b) {
    got[b].resize(batches[b].size() * dim);
    pending.push_back(
        remote.pull_async("t", batches[b].data(), static_cast<int64_t>(batches[b].size()), true, got[b].data()));
  }
  for (auto& p : pending) p.wait();
  for (size_t b = 0; b < batches.size(); ++b) {
    std::vector<float> want(batches[b].size() * dim);
    embedded.pull("t", batches[b].data(), static_cast<int64_t>(batches[b].size()), true, want.data());
    ASSERT_EQ(got[b], want) << "batch " << b;
  }
  remote_server.stop();
}
