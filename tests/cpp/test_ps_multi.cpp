// Several tables in one request per server shard (PsClient::pull_tables / push_tables), over
// an embedded server and over a server on loopback: the same rows as the single-table calls,
// all-or-nothing pushes, one request per shard, and hostile requests refused with nothing
// changed.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "sparsecore/core/error.h"
#include "sparsecore/ps/ps_client.h"
#include "sparsecore/ps/ps_protocol.h"
#include "sparsecore/ps/ps_request.h"
#include "sparsecore/ps/ps_server.h"
#include "sparsecore/rpc/rpc_client.h"

using namespace sparsecore;
using namespace sparsecore::ps;

namespace {

TableConfig table(const std::string& name, int dim, OptimizerKind kind = OptimizerKind::kAdagrad) {
  TableConfig c;
  c.name = name;
  c.dim = dim;
  c.optimizer.kind = kind;
  c.optimizer.lr = 0.1f;
  return c;
}

const std::vector<std::pair<std::string, int>> kTables = {{"a", 3}, {"b", 1}, {"c", 18}};

// distinct ids, some huge or negative
std::vector<int64_t> distinct_ids(std::mt19937_64& rng, int n) {
  std::vector<int64_t> ids;
  std::uniform_int_distribution<int64_t> d(-2000, 2000);
  while (static_cast<int>(ids.size()) < n) {
    int64_t x = ids.size() % 7 == 0 ? static_cast<int64_t>(rng()) : d(rng);
    if (std::find(ids.begin(), ids.end(), x) == ids.end()) ids.push_back(x);
  }
  return ids;
}

std::vector<float> normal(std::mt19937_64& rng, size_t n) {
  std::normal_distribution<float> d;
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// A cluster under test: an embedded server, or one listening on loopback with `shards`.
struct Cluster {
  std::unique_ptr<PsServer> server;
  std::unique_ptr<PsClient> client;
  Cluster(bool remote, int shards, uint32_t worker = 0, uint32_t num_workers = 0) {
    PsServerOptions o;
    o.rpc.num_reactors = shards;
    server = std::make_unique<PsServer>(o);
    PsClientOptions co;
    co.worker = worker;
    co.num_workers = num_workers;
    if (remote) {
      server->start();
      client = std::make_unique<PsClient>(std::vector<std::string>{"127.0.0.1:" + std::to_string(server->port())}, co);
    } else {
      client = std::make_unique<PsClient>(*server, co);
    }
    for (const auto& [name, dim] : kTables) client->create_table(table(name, dim), 11);
  }
  int64_t requests(const char* counter) {
    int64_t total = 0;
    const Json stats = client->stats();
    for (const Json& s : stats.as_array()) total += s.at(counter).as_int();
    return total;
  }
};

std::vector<float> pull_one(PsClient& c, const std::string& t, const std::vector<int64_t>& ids, bool train) {
  std::vector<float> rows(ids.size() * static_cast<size_t>(c.dim(t)));
  c.pull(t, ids.data(), static_cast<int64_t>(ids.size()), train, rows.data());
  return rows;
}

}  // namespace

class PsMulti : public ::testing::TestWithParam<std::tuple<bool, int>> {};

TEST_P(PsMulti, PullAndPushOfSeveralTablesEqualTheSingleTableCalls) {
  auto [remote, shards] = GetParam();
  std::mt19937_64 rng(std::random_device{}());
  Cluster multi(remote, shards), single(remote, shards);
  for (int step = 0; step < 4; ++step) {
    std::vector<std::vector<int64_t>> ids;
    std::vector<std::vector<float>> rows, grads;
    std::vector<TableSlice> slices;
    for (size_t t = 0; t < kTables.size(); ++t) {
      ids.push_back(distinct_ids(rng, step == 1 && t == 1 ? 0 : 50 + 40 * static_cast<int>(t)));
      rows.emplace_back(ids[t].size() * static_cast<size_t>(kTables[t].second));
      grads.push_back(normal(rng, rows[t].size()));
    }
    for (size_t t = 0; t < kTables.size(); ++t)
      slices.push_back({kTables[t].first, ids[t].data(), static_cast<int64_t>(ids[t].size()), rows[t].data(), nullptr});
    multi.client->pull_tables(slices, true).wait();
    for (size_t t = 0; t < kTables.size(); ++t)
      ASSERT_EQ(rows[t], pull_one(*single.client, kTables[t].first, ids[t], true)) << "table " << t;
    for (size_t t = 0; t < kTables.size(); ++t) {
      slices[t].rows = nullptr;
      slices[t].grads = grads[t].data();
    }
    multi.client->push_tables(slices, step);
    for (size_t t = 0; t < kTables.size(); ++t)
      single.client->push(kTables[t].first, ids[t].data(), static_cast<int64_t>(ids[t].size()), grads[t].data(), step);
    for (size_t t = 0; t < kTables.size(); ++t)
      ASSERT_EQ(pull_one(*multi.client, kTables[t].first, ids[t], false),
                pull_one(*single.client, kTables[t].first, ids[t], false));
  }
}

TEST_P(PsMulti, OneRequestPerShardPerCall) {
  auto [remote, shards] = GetParam();
  std::mt19937_64 rng(std::random_device{}());
  Cluster c(remote, shards);
  std::vector<std::vector<int64_t>> ids;
  std::vector<std::vector<float>> rows;
  std::vector<TableSlice> slices;
  for (const auto& [name, dim] : kTables) {
    ids.push_back(distinct_ids(rng, 400));
    rows.emplace_back(ids.back().size() * static_cast<size_t>(dim));
  }
  for (size_t t = 0; t < kTables.size(); ++t)
    slices.push_back({kTables[t].first, ids[t].data(), static_cast<int64_t>(ids[t].size()), rows[t].data(), nullptr});
  const int64_t pulls = c.requests("pull_requests"), pushes = c.requests("push_requests");
  c.client->pull_tables(slices, true).wait();
  EXPECT_EQ(c.requests("pull_requests") - pulls, shards);  // 400 ids per table reach every shard
  for (size_t t = 0; t < kTables.size(); ++t) {
    slices[t].grads = rows[t].data();
    slices[t].rows = nullptr;
  }
  c.client->push_tables(slices, 0);
  EXPECT_EQ(c.requests("push_requests") - pushes, shards);
  c.client->pull_tables({}, true).wait();  // nothing to pull: no request
  EXPECT_EQ(c.requests("pull_requests") - pulls, shards);
}

TEST_P(PsMulti, PushOfSeveralTablesIsAllOrNothing) {
  auto [remote, shards] = GetParam();
  Cluster c(remote, shards);
  // A shard applies its request all or none: every id on the shard of the overflowing row.
  std::vector<int64_t> ids;
  for (int64_t x = 1; ids.size() < 8; ++x)
    if (global_shard_of_key(x, shards) == global_shard_of_key(1, shards)) ids.push_back(x);
  std::vector<std::vector<float>> before;
  for (const auto& [name, dim] : kTables) before.push_back(pull_one(*c.client, name, ids, true));
  std::vector<std::vector<float>> grads;
  std::vector<TableSlice> slices;
  for (const auto& [name, dim] : kTables) grads.emplace_back(ids.size() * static_cast<size_t>(dim), 1.0f);
  grads[2][5] = 1e20f;  // g^2 overflows the Adagrad state of one row of the last table
  for (size_t t = 0; t < kTables.size(); ++t)
    slices.push_back({kTables[t].first, ids.data(), static_cast<int64_t>(ids.size()), nullptr, grads[t].data()});
  EXPECT_THROW(c.client->push_tables(slices, 0), InvalidArgument);
  for (size_t t = 0; t < kTables.size(); ++t)
    EXPECT_EQ(pull_one(*c.client, kTables[t].first, ids, false), before[t]) << "table " << kTables[t].first;
  grads[2][5] = 1.0f;
  c.client->push_tables(slices, 1);  // a good push still applies
  for (size_t t = 0; t < kTables.size(); ++t) EXPECT_NE(pull_one(*c.client, kTables[t].first, ids, false), before[t]);
}

TEST_P(PsMulti, BadSlicesAreRefusedNamingTheTable) {
  auto [remote, shards] = GetParam();
  Cluster c(remote, shards);
  std::vector<int64_t> ids = {1, 2, 1};
  std::vector<float> g(9, 1.0f);
  try {
    c.client->push_tables({{"a", ids.data(), 3, nullptr, g.data()}}, 0);
    FAIL() << "a repeated id was accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("'a'"), std::string::npos) << e.what();
  }
  EXPECT_THROW(
      c.client->push_tables({{"a", ids.data(), 2, nullptr, g.data()}, {"a", ids.data() + 1, 1, nullptr, g.data()}}, 0),
      InvalidArgument);
  EXPECT_THROW(c.client->push_tables({{"nope", ids.data(), 2, nullptr, g.data()}}, 0), NotFound);
  g[1] = std::nanf("");
  EXPECT_THROW(
      c.client->push_tables({{"b", ids.data(), 2, nullptr, g.data()}, {"a", ids.data(), 2, nullptr, g.data()}}, 0),
      InvalidArgument);
  const Json stats = c.client->stats();
  for (const Json& s : stats.as_array())
    for (const auto& [name, t] : s.at("tables").as_object()) EXPECT_EQ(t.at("rows").as_int(), 0) << name;
}

TEST_P(PsMulti, IdsAlreadyInShardOrderGoAndComeInPlace) {
  // Ids grouped by owning shard are sent from, and their rows read into, the caller's arrays
  // (scattered over several slices); the result is the same as for any other order.
  auto [remote, shards] = GetParam();
  std::mt19937_64 rng(std::random_device{}());
  Cluster c(remote, shards), ref(remote, shards);
  std::vector<std::vector<int64_t>> ids;
  std::vector<std::vector<float>> rows, grads;
  std::vector<TableSlice> slices;
  for (const auto& [name, dim] : kTables) {
    std::vector<int64_t> x = distinct_ids(rng, 150);
    std::stable_sort(x.begin(), x.end(), [&](int64_t a, int64_t b) {
      return global_shard_of_key(a, shards) < global_shard_of_key(b, shards);
    });
    ids.push_back(x);
    rows.emplace_back(x.size() * static_cast<size_t>(dim));
    grads.push_back(normal(rng, rows.back().size()));
  }
  for (size_t t = 0; t < kTables.size(); ++t)
    slices.push_back({kTables[t].first, ids[t].data(), static_cast<int64_t>(ids[t].size()), rows[t].data(), nullptr});
  c.client->pull_tables(slices, true).wait();
  for (size_t t = 0; t < kTables.size(); ++t) ASSERT_EQ(rows[t], pull_one(*ref.client, kTables[t].first, ids[t], true));
  for (size_t t = 0; t < kTables.size(); ++t) {
    slices[t].rows = nullptr;
    slices[t].grads = grads[t].data();
    ref.client->push(kTables[t].first, ids[t].data(), static_cast<int64_t>(ids[t].size()), grads[t].data(), 0);
  }
  c.client->push_tables(slices, 0);
  for (size_t t = 0; t < kTables.size(); ++t)
    ASSERT_EQ(pull_one(*c.client, kTables[t].first, ids[t], false),
              pull_one(*ref.client, kTables[t].first, ids[t], false));
}

INSTANTIATE_TEST_SUITE_P(Transports, PsMulti,
                         ::testing::Values(std::make_tuple(false, 1), std::make_tuple(false, 3),
                                           std::make_tuple(true, 1), std::make_tuple(true, 3)));

TEST(PsMultiTransport, EmbeddedAndRemoteGiveTheSameBytes) {
  std::mt19937_64 rng(std::random_device{}());
  Cluster embedded(false, 2), remote(true, 2);
  for (int step = 0; step < 3; ++step) {
    std::vector<std::vector<int64_t>> ids;
    std::vector<std::vector<float>> grads, got_e, got_r;
    for (const auto& [name, dim] : kTables) {
      ids.push_back(distinct_ids(rng, 300));
      grads.push_back(normal(rng, ids.back().size() * static_cast<size_t>(dim)));
      got_e.emplace_back(grads.back().size());
      got_r.emplace_back(grads.back().size());
    }
    auto slices = [&](std::vector<std::vector<float>>* rows) {
      std::vector<TableSlice> s;
      for (size_t t = 0; t < kTables.size(); ++t)
        s.push_back({kTables[t].first, ids[t].data(), static_cast<int64_t>(ids[t].size()),
                     rows ? (*rows)[t].data() : nullptr, rows ? nullptr : grads[t].data()});
      return s;
    };
    embedded.client->pull_tables(slices(&got_e), step % 2 == 0).wait();
    remote.client->pull_tables(slices(&got_r), step % 2 == 0).wait();
    for (size_t t = 0; t < kTables.size(); ++t)
      ASSERT_EQ(std::memcmp(got_e[t].data(), got_r[t].data(), got_e[t].size() * sizeof(float)), 0);
    embedded.client->push_tables(slices(nullptr), step);
    remote.client->push_tables(slices(nullptr), step);
  }
  EXPECT_EQ(embedded.client->stats().dump(), remote.client->stats().dump());
}

TEST(PsMultiTransport, SynchronousWorkersOfSeveralTablesEqualThePerTablePath) {
  std::mt19937_64 rng(std::random_device{}());
  PsServerOptions o;
  o.rpc.num_reactors = 2;
  PsServer multi_server(o), single_server(o);
  multi_server.start();
  single_server.start();
  auto connect = [](PsServer& s, uint32_t w) {
    PsClientOptions co;
    co.worker = w;
    co.num_workers = 2;
    auto c = std::make_unique<PsClient>(std::vector<std::string>{"127.0.0.1:" + std::to_string(s.port())}, co);
    for (const auto& [name, dim] : kTables) c->create_table(table(name, dim), 5);
    return c;
  };
  std::vector<std::unique_ptr<PsClient>> multi, single;
  for (uint32_t w = 0; w < 2; ++w) {
    multi.push_back(connect(multi_server, w));
    single.push_back(connect(single_server, w));
  }
  std::vector<int64_t> all = distinct_ids(rng, 200);
  for (int step = 0; step < 3; ++step) {
    std::vector<std::vector<std::vector<int64_t>>> ids(2);
    std::vector<std::vector<std::vector<float>>> grads(2);
    for (int w = 0; w < 2; ++w)
      for (const auto& [name, dim] : kTables) {
        std::vector<int64_t> mine;
        for (int64_t x : all)
          if (rng() % 2) mine.push_back(x);
        ids[w].push_back(mine);
        grads[w].push_back(normal(rng, mine.size() * static_cast<size_t>(dim)));
      }
    auto work = [&](int w) {
      std::vector<TableSlice> s;
      for (size_t t = 0; t < kTables.size(); ++t)
        s.push_back(
            {kTables[t].first, ids[w][t].data(), static_cast<int64_t>(ids[w][t].size()), nullptr, grads[w][t].data()});
      multi[w]->push_tables(s, step);
      for (size_t t = 0; t < kTables.size(); ++t)
        single[w]->push(kTables[t].first, ids[w][t].data(), static_cast<int64_t>(ids[w][t].size()), grads[w][t].data(),
                        step);
    };
    std::thread other(work, 1);
    work(0);
    other.join();
  }
  for (const auto& [name, dim] : kTables)
    EXPECT_EQ(pull_one(*multi[0], name, all, false), pull_one(*single[0], name, all, false)) << name;
}

// Requests built by hand, served in process by the server's own handlers: every damaged one
// is refused with a typed error and changes nothing.
TEST(PsMultiTransport, HostileRequestsAreRefusedAndChangeNothing) {
  PsServer server(PsServerOptions{});
  PsClient client(server, {});
  client.create_table(table("a", 2), 1);
  std::vector<int64_t> ids = {1, 2};
  std::vector<float> before = pull_one(client, "a", ids, true);
  auto request = [](uint32_t num_tables, std::vector<std::pair<std::string, uint64_t>> tables, size_t id_count,
                    size_t grad_count) {
    std::vector<std::byte> p(sizeof(TablesHeader));
    TablesHeader h{};
    h.num_tables = num_tables;
    std::memcpy(p.data(), &h, sizeof(h));
    for (const auto& [name, n] : tables) {
      TableEntry e{static_cast<uint32_t>(name.size()), 0, n};
      const auto* b = reinterpret_cast<const std::byte*>(&e);
      p.insert(p.end(), b, b + sizeof(e));
    }
    for (const auto& [name, n] : tables) {
      const auto* b = reinterpret_cast<const std::byte*>(name.data());
      p.insert(p.end(), b, b + name.size());
      p.resize(p.size() + padded8(name.size()) - name.size());
    }
    for (size_t i = 0; i < id_count; ++i) {
      int64_t id = static_cast<int64_t>(i % 2) + 1;
      const auto* b = reinterpret_cast<const std::byte*>(&id);
      p.insert(p.end(), b, b + sizeof(id));
    }
    for (size_t i = 0; i < grad_count; ++i) {
      float g = 1.0f;
      const auto* b = reinterpret_cast<const std::byte*>(&g);
      p.insert(p.end(), b, b + sizeof(g));
    }
    return p;
  };
  auto serve = [&](uint16_t method, const std::vector<std::byte>& p) {
    rpc::Reply reply;
    server.serve(0, method, {p.data(), p.size()}, reply);
    return reply.status();
  };
  // A good push of 2 ids of table "a" (dim 2) is 24 + 16 + 8 + 16 + 16 bytes.
  ASSERT_EQ(request(1, {{"a", 2}}, 2, 4).size(), 80u);
  std::vector<std::byte> truncated = request(1, {{"a", 2}}, 2, 4);
  truncated.resize(70);
  EXPECT_THROW(serve(kPushTables, truncated), InvalidArgument);
  EXPECT_THROW(serve(kPushTables, request(1, {{"a", 3}}, 2, 4)), InvalidArgument);  // lying count
  EXPECT_THROW(serve(kPushTables, request(1, {{"a", uint64_t{1} << 62}}, 2, 4)), InvalidArgument);
  EXPECT_THROW(serve(kPushTables, request(2, {{"a", 2}}, 2, 4)), InvalidArgument);  // lying table count
  EXPECT_THROW(serve(kPushTables, request(0, {}, 0, 0)), InvalidArgument);
  EXPECT_THROW(serve(kPushTables, request(static_cast<uint32_t>(kMaxTablesPerShard) + 1, {}, 0, 0)), InvalidArgument);
  EXPECT_THROW(serve(kPushTables, request(1, {{"zz", 2}}, 2, 4)), NotFound);
  EXPECT_THROW(serve(kPushTables, request(2, {{"a", 1}, {"a", 1}}, 2, 4)), InvalidArgument);  // a table twice
  std::vector<std::byte> repeated = request(1, {{"a", 2}}, 2, 4);
  std::memcpy(repeated.data() + 48 + 8, repeated.data() + 48, 8);  // ids {1, 1}
  EXPECT_THROW(serve(kPushTables, repeated), InvalidArgument);
  std::vector<std::byte> nan = request(1, {{"a", 2}}, 2, 4);
  const float bad = std::nanf("");
  std::memcpy(nan.data() + 68, &bad, sizeof(bad));
  EXPECT_THROW(serve(kPushTables, nan), InvalidArgument);
  EXPECT_THROW(serve(kPullTables, request(1, {{"a", 2}}, 3, 0)), InvalidArgument);  // trailing bytes
  EXPECT_EQ(pull_one(client, "a", ids, false), before);
  EXPECT_EQ(serve(kPushTables, request(1, {{"a", 2}}, 2, 4)), rpc::Status::kOk);  // a good one applies
  EXPECT_NE(pull_one(client, "a", ids, false), before);
}

// Valid multi-table requests mutated at random (bit flips, truncation, appended bytes, lying
// counts): the parser either refuses with a typed error or returns views that lie inside the
// payload and sum to its exact length.
TEST(PsMultiTransport, MutatedRequestsNeverReachPastThePayload) {
  std::mt19937_64 rng(std::random_device{}());
  auto dim_of = [](std::string_view name) -> int {
    if (name == "a") return 3;
    if (name == "bb") return 1;
    throw NotFound("no table '" + std::string(name) + "'");
  };
  for (int round = 0; round < 20000; ++round) {
    const bool push = rng() % 2;
    std::vector<std::pair<std::string, uint64_t>> tables;
    for (uint64_t k = 1 + rng() % 3; k > 0; --k) tables.push_back({rng() % 2 ? "a" : "bb", rng() % 5});
    std::vector<std::byte> p(sizeof(TablesHeader));
    TablesHeader h{static_cast<uint32_t>(tables.size()), 0, 0, 0, 0};
    std::memcpy(p.data(), &h, sizeof(h));
    uint64_t ids = 0, floats = 0;
    for (const auto& [name, n] : tables) {
      TableEntry e{static_cast<uint32_t>(name.size()), 0, n};
      p.insert(p.end(), reinterpret_cast<const std::byte*>(&e), reinterpret_cast<const std::byte*>(&e) + sizeof(e));
      ids += n;
      floats += n * static_cast<uint64_t>(dim_of(name));
    }
    for (const auto& [name, n] : tables) {
      p.insert(p.end(), reinterpret_cast<const std::byte*>(name.data()),
               reinterpret_cast<const std::byte*>(name.data()) + name.size());
      p.resize(p.size() + padded8(name.size()) - name.size());
    }
    p.resize(p.size() + ids * 8 + (push ? floats * 4 : 0));
    switch (rng() % 4) {
      case 0:
        for (int i = 0; i < 4; ++i) p[rng() % p.size()] ^= static_cast<std::byte>(1u << (rng() % 8));
        break;
      case 1:
        p.resize(rng() % p.size());
        break;
      case 2:
        p.resize(p.size() + rng() % 24);
        break;
      default: {  // a count or length field set to an extreme
        const size_t at = sizeof(TablesHeader) + (rng() % tables.size()) * sizeof(TableEntry) + (rng() % 2 ? 8 : 0);
        const uint64_t v = rng() % 2 ? ~uint64_t{0} - rng() % 8 : uint64_t{1} << (rng() % 64);
        std::memcpy(p.data() + at, &v, rng() % 2 ? 8 : 4);
      }
    }
    try {
      TablesRequest t = parse_tables_request({p.data(), p.size()}, push, 1 << 20, 1 << 20, dim_of);
      const std::byte* end = p.data() + p.size();
      ASSERT_GE(t.ids, p.data());
      ASSERT_EQ(t.ids + t.total_ids * 8 + (push ? t.total_value_bytes : 0), end);
      ASSERT_LE(t.total_value_bytes, t.total_floats * 4);  // float16 tables: 2 bytes a value
      uint64_t sum = 0, fsum = 0;
      for (size_t i = 0; i < t.names.size(); ++i) {
        sum += static_cast<uint64_t>(t.counts[i]);
        fsum += static_cast<uint64_t>(t.counts[i]) * static_cast<uint64_t>(t.dims[i]);
        ASSERT_GE(reinterpret_cast<const std::byte*>(t.names[i].data()), p.data());
        ASSERT_LE(reinterpret_cast<const std::byte*>(t.names[i].data() + t.names[i].size()), t.ids);
      }
      ASSERT_EQ(sum, t.total_ids);
      ASSERT_EQ(fsum, t.total_floats);
    } catch (const InvalidArgument&) {
    } catch (const NotFound&) {
    }
  }
}

// Dense create and step requests mutated at random: the parsers either refuse with a typed
// error or return views that lie inside the payload and end exactly at its end.
TEST(PsMultiTransport, MutatedDenseRequestsNeverReachPastThePayload) {
  std::mt19937_64 rng(std::random_device{}());
  for (int round = 0; round < 20000; ++round) {
    const bool create = rng() % 2;
    const std::string name = rng() % 2 ? "w" : "dense/0";
    const std::string config = R"({"name": "sgd", "lr": 0.1, "weight_decay": 0.0})";
    const uint64_t size = rng() % 6;
    std::vector<std::byte> p;
    auto put = [&](const void* data, size_t bytes) {
      const auto* b = static_cast<const std::byte*>(data);
      p.insert(p.end(), b, b + bytes);
      p.resize(padded8(p.size()));
    };
    if (create) {
      DenseCreateHeader h{static_cast<uint32_t>(name.size()), static_cast<uint32_t>(config.size()), size};
      put(&h, sizeof(h));
      put(name.data(), name.size());
      put(config.data(), config.size());
    } else {
      DenseStepHeader h{static_cast<uint32_t>(name.size()), 0, size, 3, 1, 2};
      put(&h, sizeof(h));
      put(name.data(), name.size());
    }
    p.resize(p.size() + size * sizeof(float));
    switch (rng() % 4) {
      case 0:
        for (int i = 0; i < 4; ++i) p[rng() % p.size()] ^= static_cast<std::byte>(1u << (rng() % 8));
        break;
      case 1:
        p.resize(rng() % p.size());
        break;
      case 2:
        p.resize(p.size() + rng() % 24);
        break;
      default: {  // a length or size field set to an extreme
        const size_t at = rng() % 2 ? 8 : (rng() % 2 ? 0 : 4);
        const uint64_t v = rng() % 2 ? ~uint64_t{0} - rng() % 8 : uint64_t{1} << (rng() % 64);
        std::memcpy(p.data() + at, &v, at == 8 ? 8 : 4);
      }
    }
    const std::byte* end = p.data() + p.size();
    try {
      if (create) {
        DenseCreateRequest d = parse_dense_create({p.data(), p.size()});
        ASSERT_EQ(d.values + d.h.size * sizeof(float), end);
        ASSERT_GE(reinterpret_cast<const std::byte*>(d.config.data()), p.data());
        ASSERT_LE(reinterpret_cast<const std::byte*>(d.config.data() + d.config.size()), d.values);
        ASSERT_EQ(d.name.size(), d.h.name_bytes);
      } else {
        DenseStepRequest d = parse_dense_step({p.data(), p.size()});
        ASSERT_EQ(d.grads + d.h.size * sizeof(float), end);
        ASSERT_EQ(d.name.size(), d.h.name_bytes);
        ASSERT_TRUE(d.h.num_workers == 0 || d.h.worker < d.h.num_workers);
      }
    } catch (const InvalidArgument&) {
    }
  }
}
