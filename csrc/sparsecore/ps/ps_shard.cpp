#include "sparsecore/ps/ps_shard.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <mutex>

#include "sparsecore/core/error.h"
#include "sparsecore/core/file.h"
#include "sparsecore/ps/ps_protocol.h"
#include "sparsecore/table/sharded_dedup.h"
#include "sparsecore/table/table_stats.h"

namespace sparsecore::ps {
namespace fs = std::filesystem;

namespace {

constexpr int64_t kMaxDenseSize = int64_t{1} << 28;  // floats (1 GiB): one reply carries it

// First bucket of global shard g of T, i.e. the least b with (b * T) >> 16 == g.
uint64_t first_bucket(int g, int total) {
  return (static_cast<uint64_t>(g) * kNumBuckets + static_cast<uint64_t>(total) - 1) / static_cast<uint64_t>(total);
}

bool ranges_overlap(int g1, int t1, int g2, int t2) {
  return first_bucket(g1, t1) < first_bucket(g2 + 1, t2) && first_bucket(g2, t2) < first_bucket(g1 + 1, t1);
}

std::string join(const std::string& a, const std::string& b) { return (fs::path(a) / b).string(); }

}  // namespace

PsShard::Table& PsShard::table(std::string_view name) {
  auto it = tables_.find(name);
  if (it == tables_.end())
    throw NotFound("no table '" + std::string(name) + "' on shard " + std::to_string(layout_.global_index));
  return it->second;
}
const PsShard::Table& PsShard::table(std::string_view name) const { return const_cast<PsShard*>(this)->table(name); }

template <typename Exception>
void PsShard::check_room(const std::map<std::string, Table, std::less<>>& tables, const TableConfig& config) {
  SC_CHECK(config.shard_bits <= kMaxServerShardBits, Exception, "table '", config.name,
           "': shard_bits must be <= ", kMaxServerShardBits, " on a parameter server, got ", config.shard_bits);
  SC_CHECK(tables.size() < kMaxTablesPerShard, Exception, "a parameter server shard holds at most ", kMaxTablesPerShard,
           " tables");
  int64_t shards = int64_t{1} << config.shard_bits;
  for (const auto& [name, t] : tables) shards += t.rows->table(0).hash_table().num_shards();
  SC_CHECK(shards <= kMaxHashShards, Exception, "table '", config.name, "' would bring this shard's tables to ", shards,
           " hash shards, at most ", kMaxHashShards, " are allowed (use fewer tables or smaller shard_bits)");
}

void PsShard::create_table(const TableConfig& config, uint64_t seed) {
  config.validate();
  SC_CHECK_ARG(!config.expiry.predicate, "table '", config.name,
               "': an expiry predicate runs in an embedded collection only, not on parameter servers");
  auto it = tables_.find(config.name);
  if (it != tables_.end()) {
    const TableConfig& have = it->second.rows->table(0).config();
    SC_CHECK_ARG(have.to_json().dump() == config.to_json().dump() && it->second.seed == seed, "table '", config.name,
                 "' exists with another configuration");
    return;
  }
  check_room<InvalidArgument>(tables_, config);
  Table t;
  t.rows = std::make_unique<EmbeddingCollection>(std::vector<TableConfig>{config}, seed);
  t.seed = seed;
  share_capacity<InvalidArgument>(t.rows->table(0));
  if (device_rows_) t.device = device_rows_(*t.rows);
  tables_.emplace(config.name, std::move(t));
}

template <typename Exception>
void PsShard::share_capacity(EmbeddingTable& table) const {
  Expiry* expiry = table.expiry();
  if (!expiry || expiry->config().capacity <= 0) return;
  const int64_t capacity = expiry->config().capacity;
  const int64_t total = layout_.total_shards;
  const int64_t share = capacity / total + (layout_.global_index < capacity % total ? 1 : 0);
  // Bucket b lies in hash shard b >> (kBucketBits - shard_bits) (both take the top bits of one hash).
  const int hash_shards = table.hash_table().num_shards();
  const int shift = kBucketBits - table.hash_table().shard_bits();
  const int64_t lo = static_cast<int64_t>(first_bucket(layout_.global_index, layout_.total_shards));
  const int64_t hi = static_cast<int64_t>(first_bucket(layout_.global_index + 1, layout_.total_shards));
  std::vector<int64_t> overlap(static_cast<size_t>(hash_shards), 0), caps(static_cast<size_t>(hash_shards), 0);
  int covering = 0;
  for (int s = 0; s < hash_shards; ++s) {
    const int64_t b0 = std::max(lo, int64_t{s} << shift), b1 = std::min(hi, int64_t{s + 1} << shift);
    overlap[static_cast<size_t>(s)] = std::max<int64_t>(0, b1 - b0);
    covering += overlap[static_cast<size_t>(s)] > 0;
  }
  SC_CHECK(share >= covering, Exception, "table '", table.name(), "': expiry capacity ", capacity, " over ", total,
           " server shards leaves shard ", layout_.global_index, " ", share, " rows, below the ", covering,
           " hash shards its keys fall in (lower shard_bits or raise capacity)");
  // One row for each covering hash shard, the rest in proportion to its buckets, the
  // rounding remainder one row each from the first covering shard on.
  int64_t given = 0;
  for (int s = 0; s < hash_shards; ++s) {
    const int64_t o = overlap[static_cast<size_t>(s)];
    if (o == 0) continue;
    caps[static_cast<size_t>(s)] = 1 + (share - covering) * o / (hi - lo);
    given += caps[static_cast<size_t>(s)];
  }
  for (int s = 0; given < share; s = (s + 1) % hash_shards) {
    if (overlap[static_cast<size_t>(s)] == 0) continue;
    ++caps[static_cast<size_t>(s)];
    ++given;
  }
  expiry->set_shard_capacities(std::move(caps));
}

int64_t PsShard::erase(const std::string& name, const int64_t* ids, int64_t n) {
  check_ids(name, ids, n, /*push=*/false);
  // A dense table maps ids into its range as a pull does (EmbeddingTable::remove_rows).
  Table& t = table(name);
  return t.device ? t.device->erase(ids, n) : t.rows->erase(0, ids, n);
}

int64_t PsShard::expire(const std::string& name) {
  Table& t = table(name);
  return t.device ? t.device->expire() : t.rows->expire(0);
}

const EmbeddingCollection& PsShard::host_rows(const Table& t, std::unique_ptr<EmbeddingCollection>& copy) {
  if (!t.device) return *t.rows;
  copy = t.device->to_host();
  return *copy;
}

int PsShard::dim(const std::string& name) const { return table(name).rows->table(0).dim(); }

void PsShard::pull(const std::string& name, const int64_t* ids, int64_t n, bool train, float* out) {
  // On this reactor's thread: a pool hand-off costs more than a thousand probes.
  Table& t = table(name);
  if (t.device) return t.device->pull(ids, n, train, out);
  t.rows->table(0).pull_weights(ids, n, train, out);
  // Rows evicted to make room are reused at once: nothing else holds their pointers.
  t.rows->release_retired_rows(/*wait=*/true);
}

void PsShard::check_ids(std::string_view name, const int64_t* ids, int64_t n, bool push) const {
  const EmbeddingTable& et = table(name).rows->table(0);
  if (layout_.total_shards > 1) {
    // A client with another view of the cluster (or a hostile one) must not create rows here
    // that no lookup routed by the cluster's layout would ever find again.
    for (int64_t i = 0; i < n; ++i)
      SC_CHECK_ARG(global_shard_of_key(ids[i], layout_.total_shards) == layout_.global_index, push ? "push" : "pull",
                   " of table '", name, "': id ", ids[i], " belongs to shard ",
                   global_shard_of_key(ids[i], layout_.total_shards), " of ", layout_.total_shards,
                   ", not to this shard (", layout_.global_index, "); nothing was read or changed");
  }
  const TableConfig& c = et.config();
  if (!c.dense()) return;
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] >= 0 && ids[i] < c.num_embeddings) continue;
    SC_CHECK_ARG(!push, "push of table '", name, "': id ", ids[i], " is outside [0, ", c.num_embeddings,
                 ") (num_embeddings); nothing was applied");
    et.dense_id(ids[i]);  // throws unless out_of_range maps it
  }
}

PsShard::PushOutcome PsShard::push(const std::string& name, const int64_t* ids, int64_t n, const float* grads,
                                   int64_t step, uint32_t worker, uint32_t num_workers) {
  const TableUpdate update{name, ids, n, grads};
  return push_tables({&update, 1}, step, worker, num_workers)[0];
}

void PsShard::apply_all_or_nothing(const std::vector<std::pair<Table*, TableUpdate>>& updates) {
  // apply_unique undoes its own table when it fails; the tables applied before it are put
  // back: CPU tables from a copy of their rows (and step) taken just before each was
  // applied, device tables by the undo their update returned.
  struct Saved {
    EmbeddingCollection* rows;
    int64_t step;
    size_t row_bytes;
    PodVector<std::byte*> at;      // (n) the rows in the table
    PodVector<std::byte> records;  // (n, row_bytes) their bytes before the update
  };
  std::vector<Saved> saved;
  std::vector<std::unique_ptr<DeviceRows::Undo>> device_undo;
  for (size_t i = 0; i < updates.size(); ++i) {
    const auto& [t, u] = updates[i];
    if (!t->device && i + 1 < updates.size()) {
      EmbeddingTable& et = t->rows->table(0);
      Saved s{t->rows.get(), t->rows->step(), et.row_bytes(), {}, {}};
      s.at.resize(static_cast<size_t>(u.n));
      // With admission only admitted ids have rows (the others' gradients are dropped).
      if (u.n > 0 && et.admission())
        et.find_rows(u.ids, u.n, s.at.data());
      else if (u.n > 0)
        et.find_or_insert_rows(u.ids, u.n, s.at.data());
      s.records.resize(static_cast<size_t>(u.n) * s.row_bytes);
      for (int64_t k = 0; k < u.n; ++k)
        if (s.at[static_cast<size_t>(k)])
          std::memcpy(s.records.data() + static_cast<size_t>(k) * s.row_bytes, s.at[static_cast<size_t>(k)],
                      s.row_bytes);
      saved.push_back(std::move(s));
    }
    try {
      if (t->device)
        device_undo.push_back(t->device->apply_unique(u.ids, u.n, u.grads));
      else
        t->rows->apply_unique(0, u.ids, u.n, u.grads);
    } catch (...) {
      for (size_t j = saved.size(); j-- > 0;) {
        Saved& s = saved[j];
        if (s.rows == t->rows.get()) continue;  // the failing table undid itself
        for (size_t k = 0; k < s.at.size(); ++k)
          if (s.at[k]) std::memcpy(s.at[k], s.records.data() + k * s.row_bytes, s.row_bytes);
        s.rows->set_step(s.step);
      }
      for (size_t j = device_undo.size(); j-- > 0;) device_undo[j]->apply();
      throw;
    }
  }
}

std::vector<PsShard::PushOutcome> PsShard::push_tables(std::span<const TableUpdate> updates, int64_t step,
                                                       uint32_t worker, uint32_t num_workers) {
  SC_CHECK_ARG(updates.size() <= kMaxTablesPerShard, "a push carries at most ", kMaxTablesPerShard, " tables, got ",
               updates.size());
  if (num_workers > 0) {
    SC_CHECK_ARG(num_workers <= kMaxWorkers, "num_workers must be at most ", kMaxWorkers, ", got ", num_workers);
    SC_CHECK_ARG(worker < num_workers, "worker ", worker, " out of range for ", num_workers, " workers");
  }
  // Everything is checked before anything changes: a bad table must neither be applied in
  // part nor hold back or abort the step of the other workers.
  std::vector<std::pair<Table*, TableUpdate>> checked;
  thread_local ShardedDedup distinct;
  thread_local PodVector<int64_t> distinct_ids;
  thread_local PodVector<int32_t> distinct_inverse;
  for (const TableUpdate& u : updates) {
    Table& t = table(u.table);
    for (const auto& [other, _] : checked)
      SC_CHECK_ARG(other != &t, "table '", u.table, "' appears more than once in one push; nothing was applied");
    const int dim = t.rows->table(0).dim();
    SC_CHECK_ARG(u.n >= 0 && u.n < (int64_t{1} << 31), "push of table '", u.table,
                 "': number of ids must be in [0, 2^31), got ", u.n);
    SC_CHECK_ARG(u.n == 0 || (u.ids && u.grads), "push of table '", u.table, "': null ids or gradients");
    check_ids(u.table, u.ids, u.n, /*push=*/true);
    for (int64_t i = 0; i < u.n * dim; ++i)
      SC_CHECK_ARG(std::isfinite(u.grads[i]), "gradients of table '", u.table,
                   "' contain NaN or Inf; nothing was applied");
    distinct_ids.resize(static_cast<size_t>(u.n));
    distinct_inverse.resize(static_cast<size_t>(u.n));
    SC_CHECK_ARG(distinct.run(u.ids, u.n, 1, distinct_ids.data(), distinct_inverse.data()) == u.n, "push of table '",
                 u.table, "' names an id more than once (the worker sums each id's gradients); nothing was applied");
    checked.emplace_back(&t, u);
  }
  // The tables reach the push's step: rows inserted from now on are stamped after it.
  for (auto& [t, u] : checked) t->rows->table(0).set_step(step);
  std::vector<PushOutcome> out(updates.size());
  if (num_workers == 0) {
    // The worker summed each row's gradient: one update per row.
    apply_all_or_nothing(checked);
    for (PushOutcome& o : out) o.complete = true;
    return out;
  }
  // Synchronous: each table keeps the step in progress; the tables this push completes are
  // applied together.
  std::vector<std::pair<Table*, TableUpdate>> completing;
  std::vector<std::pair<std::vector<int64_t>, std::vector<float>>> summed;
  summed.reserve(checked.size());
  for (size_t i = 0; i < checked.size(); ++i) {
    auto& [t, u] = checked[i];
    const int dim = t->rows->table(0).dim();
    if (!t->pending.empty() && (step != t->sync_step || t->pending.count(worker))) {
      // The workers are no longer in step (one restarted, or rolled back): the incomplete
      // step cannot finish as it began.
      out[i].aborted_step = t->sync_step;
      t->pending.clear();
    }
    if (t->pending.empty()) t->sync_step = step;
    t->pending[worker] = {std::vector<int64_t>(u.ids, u.ids + u.n), std::vector<float>(u.grads, u.grads + u.n * dim)};
    if (t->pending.size() < num_workers) continue;
    // Each row's gradients summed over the workers in worker order (std::map), then one update.
    std::vector<int64_t> all_ids;
    std::vector<float> all_grads;
    for (auto& [w, c] : t->pending) {
      all_ids.insert(all_ids.end(), c.first.begin(), c.first.end());
      all_grads.insert(all_grads.end(), c.second.begin(), c.second.end());
    }
    t->pending.clear();
    const int64_t total = static_cast<int64_t>(all_ids.size());
    auto& [unique_ids, unique_grads] = summed.emplace_back();
    std::vector<int64_t> inverse;
    dedup_ids(all_ids.data(), total, unique_ids, inverse);
    unique_grads.assign(unique_ids.size() * static_cast<size_t>(dim), 0.0f);
    for (int64_t p = 0; p < total; ++p) {  // position (= worker) order, from zero
      float* sum = unique_grads.data() + inverse[p] * dim;
      const float* g = all_grads.data() + p * dim;
      for (int d = 0; d < dim; ++d) sum[d] += g[d];
    }
    completing.emplace_back(
        t, TableUpdate{u.table, unique_ids.data(), static_cast<int64_t>(unique_ids.size()), unique_grads.data()});
    out[i].complete = true;
  }
  apply_all_or_nothing(completing);
  return out;
}

std::vector<std::pair<std::string, int64_t>> PsShard::abort_steps() {
  std::vector<std::pair<std::string, int64_t>> aborted;
  for (auto& [name, t] : tables_) {
    if (t.pending.empty()) continue;
    aborted.emplace_back(name, t.sync_step);
    t.pending.clear();
  }
  return aborted;
}

std::vector<float>& PsShard::dense(const std::string& name, int64_t size, float init) {
  auto it = dense_.find(name);
  if (it == dense_.end()) {
    SC_CHECK_ARG(size > 0 && size <= kMaxDenseSize, "dense variable '", name,
                 "' needs a size in [1, 2^28] to be created, got ", size);
    SC_CHECK_ARG(std::isfinite(init), "dense variable '", name, "': init must be finite, got ", init);
    it = dense_.emplace(name, std::vector<float>(static_cast<size_t>(size), init)).first;
  }
  SC_CHECK_ARG(size <= 0 || static_cast<int64_t>(it->second.size()) == size, "dense variable '", name, "' has size ",
               it->second.size(), ", not ", size);
  return it->second;
}

void PsShard::dense_push(const std::string& name, const float* grads, int64_t size, float lr) {
  auto it = dense_.find(name);
  if (it == dense_.end()) throw NotFound("no dense variable '" + name + "'");
  SC_CHECK_ARG(!dense_rules_.count(name), "dense variable '", name,
               "' has an optimizer on the server; step it with its gradients (kDenseStep), not a plain push");
  SC_CHECK_ARG(static_cast<int64_t>(it->second.size()) == size, "gradient of dense variable '", name, "' has ", size,
               " values, expected ", it->second.size());
  SC_CHECK_ARG(std::isfinite(lr) && lr >= 0.0f, "learning rate of dense variable '", name,
               "' must be finite and >= 0, got ", lr, "; nothing was applied");
  for (int64_t i = 0; i < size; ++i)
    SC_CHECK_ARG(std::isfinite(grads[i]), "gradient of dense variable '", name, "' contains NaN or Inf");
  for (int64_t i = 0; i < size; ++i) it->second[static_cast<size_t>(i)] -= lr * grads[i];
}

const Json* PsShard::kv_get(const std::string& key) const {
  auto it = kv_.find(key);
  return it == kv_.end() ? nullptr : &it->second;
}

SnapshotPart PsShard::encode_snapshot(int64_t step, const std::string& save_id) const {
  SnapshotPart part;
  part.shard_dir = shard_directory_name(layout_.global_index, layout_.total_shards);
  part.marker_name = shard_marker_name(layout_.global_index, layout_.total_shards);
  Json m = Json::object();
  m["format"] = 2;
  m["step"] = step;
  m["save_id"] = save_id;
  m["global_index"] = layout_.global_index;
  m["total_shards"] = layout_.total_shards;
  Json tables = Json::array();
  int i = 0;
  for (const auto& [name, t] : tables_) {
    std::string sub = "table-" + std::to_string(i++);
    std::unique_ptr<EmbeddingCollection> copy;
    part.tables.emplace_back(sub, host_rows(t, copy).encode_checkpoint());
    Json e = Json::object();
    e["name"] = name;
    e["seed"] = t.seed;
    e["dir"] = sub;
    tables.push_back(std::move(e));
  }
  m["tables"] = std::move(tables);
  Json kv = Json::object();
  for (const auto& [k, v] : kv_) kv[k] = v;
  m["kv"] = std::move(kv);
  m["dense"] = encode_dense(part.dense);
  part.marker = m.dump(1);
  return part;
}

void SnapshotPart::write(const std::string& staging) const {
  const std::string dir = join(staging, shard_dir);
  make_directory(dir);  // a fresh save: refuses a directory someone else put there
  for (const auto& [sub, files] : tables) {
    make_directory(join(dir, sub));
    files.write(join(dir, sub));
  }
  if (!dense.empty()) {  // a shard without dense variables writes no file for them
    File d = File::create(join(dir, kDenseFileName));
    d.write_all(dense.data(), dense.size() * sizeof(float));
    d.sync();
    d.close();
  }
  // Last: the shard's part is complete. Every file is synced here; the commit syncs the
  // directories.
  File f = File::create(join(staging, marker_name));
  f.write_all(marker.data(), marker.size());
  f.sync();
  f.close();
}

int64_t PsShard::restore(const std::string& dir) {
  SnapshotMarkers snapshot = read_snapshot_markers(dir);
  const int old_total = snapshot.total_shards;
  std::map<std::string, Table, std::less<>> tables;
  std::map<std::string, std::vector<float>> dense;
  std::map<std::string, DenseRule> dense_rules;
  std::map<std::string, Json> kv;
  // Dense variables stay on the shard that saved them when the layout is the same (they are
  // spread over the shards by size); onto another layout they go where place_restored_dense
  // says (format 1 markers, values only: all to shard 0).
  const bool same_layout = old_total == layout_.total_shards;
  std::vector<std::vector<DenseEntry>> dense_entries(static_cast<size_t>(old_total));
  std::vector<int64_t> dense_floats(static_cast<size_t>(old_total), 0);
  for (int g = 0; g < old_total; ++g) {
    const Json& m = snapshot.markers[static_cast<size_t>(g)];
    if (m.at("format").as_int() >= 2)
      dense_entries[static_cast<size_t>(g)] = parse_dense_entries(m, &dense_floats[static_cast<size_t>(g)]);
  }
  std::map<std::string, std::pair<int, const DenseEntry*>> placed;
  if (!same_layout) placed = place_restored_dense(dense_entries, layout_.total_shards);
  for (int g = 0; g < old_total; ++g) {
    const Json& m = snapshot.markers[static_cast<size_t>(g)];
    if (g == 0)
      for (const auto& [k, v] : m.at("kv").as_object("kv")) kv[k] = v;
    if (m.at("format").as_int() == 1) {
      if (same_layout ? g == layout_.global_index : layout_.global_index == 0) {
        for (const auto& [k, v] : m.at("dense").as_object("dense")) {
          std::vector<float> values;
          for (const Json& x : v.as_array("dense values")) values.push_back(static_cast<float>(x.as_double()));
          dense[k] = std::move(values);
        }
      }
    } else {
      std::vector<const DenseEntry*> wanted;
      for (const DenseEntry& e : dense_entries[static_cast<size_t>(g)]) {
        const bool mine = same_layout ? g == layout_.global_index : [&] {
          const auto& [shard, chosen] = placed.at(e.name);
          return shard == layout_.global_index && chosen == &e;
        }();
        if (mine) wanted.push_back(&e);
      }
      read_dense(join(dir, shard_directory_name(g, old_total)), dense_floats[static_cast<size_t>(g)], wanted, dense,
                 dense_rules);
    }
    bool overlaps = ranges_overlap(g, old_total, layout_.global_index, layout_.total_shards);
    const std::string shard_dir = join(dir, shard_directory_name(g, old_total));
    for (const Json& e : m.at("tables").as_array("tables")) {
      const std::string& name = e.at("name").as_string("table name");
      uint64_t seed = static_cast<uint64_t>(e.at("seed").as_int("seed"));
      if (!overlaps && tables.count(name)) continue;
      const std::string table_dir = join(shard_dir, e.at("dir").as_string("dir"));
      SC_CHECK(is_real_directory(shard_dir) && is_real_directory(table_dir), CorruptData, "snapshot '", dir,
               "': table directory '", table_dir, "' is missing or a symlink");
      auto loaded = EmbeddingCollection::load(table_dir);
      SC_CHECK(loaded->num_tables() == 1 && loaded->table(0).name() == name, CorruptData, "snapshot '", dir, "': '",
               table_dir, "' does not hold exactly table '", name, "'");
      const EmbeddingTable& src = loaded->table(0);
      auto it = tables.find(name);
      if (it == tables.end()) {
        check_room<CorruptData>(tables, src.config());
        Table t;
        t.rows = std::make_unique<EmbeddingCollection>(std::vector<TableConfig>{src.config()}, seed);
        t.seed = seed;
        share_capacity<CorruptData>(t.rows->table(0));
        // The step times come from the snapshot's parts (merged below), not from now.
        if (Expiry* e = t.rows->table(0).expiry()) e->clear_step_times();
        it = tables.emplace(name, std::move(t)).first;
      } else {
        // Every shard's part of a table must agree with the first one seen: rows of another
        // dim or optimizer would be read past their end.
        SC_CHECK(it->second.rows->table(0).config().to_json().dump() == src.config().to_json().dump() &&
                     it->second.seed == seed,
                 CorruptData, "snapshot '", dir, "': the shards disagree on the config of table '", name, "'");
      }
      it->second.rows->set_step(std::max(it->second.rows->step(), loaded->step()));
      if (!overlaps) continue;
      EmbeddingTable& dst = it->second.rows->table(0);
      if (const Admission* from = src.admission(); from && dst.admission()) {
        // Pending counts of the ids this shard owns now; the statistics of this shard's own part.
        const bool same_part = old_total == layout_.total_shards && g == layout_.global_index;
        dst.admission()->merge_from(
            *from, [&](int64_t key) { return global_shard_of_key(key, layout_.total_shards) == layout_.global_index; },
            same_part);
      }
      if (const Expiry* from = src.expiry(); from && dst.expiry())
        dst.expiry()->merge_state(*from, old_total == layout_.total_shards && g == layout_.global_index);
      int64_t n = static_cast<int64_t>(src.size());
      std::vector<int64_t> keys(static_cast<size_t>(n));
      std::vector<float> rows(static_cast<size_t>(n) * src.row_floats());
      std::vector<RowMeta> meta(static_cast<size_t>(n));
      n = src.export_rows(keys.data(), rows.data(), meta.data(), n);
      std::vector<std::byte> record(dst.row_bytes());
      for (int64_t i = 0; i < n; ++i) {
        int64_t key = keys[static_cast<size_t>(i)];
        if (global_shard_of_key(key, layout_.total_shards) != layout_.global_index) continue;
        const float* floats = rows.data() + i * src.row_floats();
        dst.write_row(floats, floats + dst.dim(), record.data());
        *dst.meta(record.data()) = PackedRowMeta::pack(meta[static_cast<size_t>(i)]);
        dst.upsert_copy(key, record.data());
      }
    }
  }
  // A share smaller than the snapshot's (another layout) keeps the best-scored rows.
  for (auto& [name, t] : tables) {
    t.rows->table(0).enforce_capacity();
    t.rows->release_retired_rows(/*wait=*/true);
    if (device_rows_) {  // the rows move to the device store; the shard keeps the config
      t.device = device_rows_(*t.rows);
      t.rows = std::make_unique<EmbeddingCollection>(std::vector<TableConfig>{t.rows->config(0)}, t.seed);
    }
  }
  tables_ = std::move(tables);
  dense_ = std::move(dense);
  dense_rules_ = std::move(dense_rules);
  if (layout_.global_index == 0)
    kv_ = std::move(kv);
  else
    kv_.clear();
  return snapshot.step;
}

int64_t PsShard::prepare_restore(const std::string& dir, const std::string& restore_id) {
  staged_.reset();
  staged_id_.clear();
  auto fresh = std::make_unique<PsShard>(layout_, device_rows_);
  const int64_t step = fresh->restore(dir);
  stage_restore(std::move(fresh), restore_id);
  return step;
}

void PsShard::stage_restore(std::unique_ptr<PsShard> loaded, const std::string& restore_id) {
  staged_ = std::move(loaded);
  staged_id_ = restore_id;
}

void PsShard::commit_restore(const std::string& restore_id) {
  SC_CHECK_ARG(staged_ && staged_id_ == restore_id, "no prepared restore '", restore_id, "' on shard ",
               layout_.global_index);
  std::unique_ptr<PsShard> staged = std::move(staged_);
  staged_id_.clear();
  tables_ = std::move(staged->tables_);
  dense_ = std::move(staged->dense_);
  dense_rules_ = std::move(staged->dense_rules_);
  kv_ = std::move(staged->kv_);
}

void PsShard::abort_restore(const std::string& restore_id) {
  if (staged_id_ == restore_id) {
    staged_.reset();
    staged_id_.clear();
  }
}

std::vector<ExportTable> PsShard::collect_export(int64_t since, int64_t version) {
  std::vector<ExportTable> out;
  for (auto& [name, t] : tables_) {
    // Updates after the export must be stamped after `version` too: a table's update step
    // is its own collection's.
    if (t.device) {
      out.push_back(t.device->collect_export(since, version));
      continue;
    }
    if (t.rows->step() < version) t.rows->set_step(version);
    out.push_back(collect_export_table(t.rows->table(0), since, version));
  }
  return out;
}

Json PsShard::stats() const {
  Json s = Json::object();
  s["global_index"] = layout_.global_index;
  s["total_shards"] = layout_.total_shards;
  Json t = Json::object();
  for (const auto& [name, entry] : tables_) {
    // The table's statistics (table_stats.h) at the top level, beside the shard's own keys.
    // A device table's are counts read from the device (no row comes over).
    const EmbeddingTable& table = entry.rows->table(0);
    const Expiry* x = entry.device ? entry.device->expiry() : table.expiry();
    const Admission* admission = entry.device ? entry.device->admission() : table.admission();
    const TableStats st = entry.device ? table_stats(entry.device->size(), entry.device->memory_bytes(), admission, x)
                                       : table_stats(table);
    Json e = st.to_json();
    e["memory_bytes"] = entry.device ? entry.device->memory_bytes() : static_cast<int64_t>(entry.rows->memory_bytes());
    e["step"] = entry.device ? entry.device->step() : entry.rows->step();
    if (entry.device) e["device"] = true;
    if (admission) {
      const AdmissionStats as = admission->stats();
      Json j = Json::object();
      j["admitted"] = as.admitted;
      j["pending"] = as.pending;
      j["rejected"] = as.rejected;
      j["dropped_gradients"] = as.dropped_gradients;
      e["admission"] = std::move(j);
    }
    if (x) {
      const ExpiryStats es = x->stats();
      Json j = Json::object();
      j["expired"] = es.expired;
      j["evicted"] = es.evicted;
      j["refused"] = es.refused;
      j["dropped_gradients"] = es.dropped_gradients;
      j["capacity"] = x->capacity();
      e["expiry"] = std::move(j);
    }
    t[name] = std::move(e);
  }
  s["tables"] = std::move(t);
  return s;
}

}  // namespace sparsecore::ps
