#include "sparsecore/table/embedding_table.h"
#include "sparsecore/table/export_table.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <shared_mutex>
#include <vector>

#include "sparsecore/core/error.h"
#include "sparsecore/core/half.h"
#include "sparsecore/core/hash.h"
#include "sparsecore/core/pod_vector.h"
#include "sparsecore/core/thread_pool.h"
#include "sparsecore/optim/update_rules.h"
#include "sparsecore/table/sharded_dedup.h"

namespace sparsecore {

const char* pooling_name(Pooling p) {
  switch (p) {
    case Pooling::kSum:
      return "sum";
    case Pooling::kMean:
      return "mean";
    case Pooling::kNone:
      return "none";
  }
  return "unknown";
}

Pooling pooling_from_name(const std::string& name) {
  if (name == "sum") return Pooling::kSum;
  if (name == "mean") return Pooling::kMean;
  if (name == "none") return Pooling::kNone;
  throw InvalidArgument("unknown pooling '" + name + "' (known: sum, mean, none)");
}

const char* row_storage_name(RowStorage s) { return s == RowStorage::kFloat16 ? "fp16" : "fp32"; }

RowStorage row_storage_from_name(const std::string& name) {
  if (name == "fp32") return RowStorage::kFloat32;
  if (name == "fp16") return RowStorage::kFloat16;
  throw InvalidArgument("unknown row storage '" + name + "' (known: fp32, fp16)");
}

const char* out_of_range_name(OutOfRange o) { return o == OutOfRange::kHash ? "hash" : "error"; }

OutOfRange out_of_range_from_name(const std::string& name) {
  if (name == "error") return OutOfRange::kError;
  if (name == "hash") return OutOfRange::kHash;
  throw InvalidArgument("unknown out_of_range '" + name + "' (known: error, hash)");
}

int64_t hash_into_range(int64_t key, int64_t n, uint64_t table_seed) {
  return static_cast<int64_t>(hash_combine(table_seed, static_cast<uint64_t>(key)) % static_cast<uint64_t>(n));
}

int64_t dense_id(const TableConfig& config, uint64_t table_seed, int64_t key) {
  const int64_t n = config.num_embeddings;
  SC_CHECK_ARG(n > 0, "table '", config.name, "' has no num_embeddings (it is a hash table)");
  if (key >= 0 && key < n) return key;
  SC_CHECK_ARG(config.out_of_range == OutOfRange::kHash, "table '", config.name, "': id ", key, " is outside [0, ", n,
               ") (num_embeddings = ", n,
               ", out_of_range = 'error'; use out_of_range = 'hash' to map such ids into the range)");
  return hash_into_range(key, n, table_seed);
}

void TableConfig::validate() const {
  SC_CHECK_ARG(!name.empty(), "table name must not be empty");
  SC_CHECK_ARG(dim >= 1, "table '", name, "': dim must be >= 1, got ", dim);
  SC_CHECK_ARG(dim <= (1 << 20), "table '", name, "': dim must be <= 2^20, got ", dim);
  SC_CHECK_ARG(shard_bits >= 0 && shard_bits <= HashTable::kMaxShardBits, "table '", name,
               "': shard_bits must be in [0, 16], got ", shard_bits);
  SC_CHECK_ARG(num_embeddings >= 0 && num_embeddings <= kMaxNumEmbeddings, "table '", name,
               "': num_embeddings must be in [1, 2^40] (or 0 for a hash table), got ", num_embeddings);
  SC_CHECK_ARG(out_of_range == OutOfRange::kError || out_of_range == OutOfRange::kHash, "table '", name,
               "': out_of_range must be 'error' or 'hash'");
  admission.validate(name);
  SC_CHECK_ARG(std::isfinite(default_value), "table '", name, "': default_value must be finite, got ", default_value);
  SC_CHECK_ARG(prune_every >= 0, "table '", name, "': prune_every must be >= 0 (0: prune on demand only), got ",
               prune_every);
  SC_CHECK_ARG(prune_every == 0 || optimizer.kind == OptimizerKind::kGroupLasso, "table '", name,
               "': prune_every needs the Group Lasso optimizer (its rows reach exactly zero)");
  expiry.validate(name, 1 << shard_bits, num_embeddings > 0);
  try {
    optimizer.validate();
    init.validate();
  } catch (const InvalidArgument& e) {
    throw InvalidArgument("table '" + name + "': " + e.what());
  }
}

Json TableConfig::to_json() const {
  Json j = Json::object();
  j["name"] = name;
  j["dim"] = dim;
  j["optimizer"] = optimizer.to_json();
  j["init"] = init.to_json();
  j["pooling"] = pooling_name(pooling);
  j["shard_bits"] = shard_bits;
  j["storage"] = row_storage_name(storage);
  // Only on dense tables, so the configs (and checkpoint manifests) of hash tables stay as they were.
  if (num_embeddings > 0) {
    j["num_embeddings"] = num_embeddings;
    j["out_of_range"] = out_of_range_name(out_of_range);
  }
  if (admission.enabled() || admission.bloom_capacity > 0) j["admission"] = admission.to_json();
  if (default_value != 0.0f) j["default_value"] = static_cast<double>(default_value);
  if (prune_every > 0) j["prune_every"] = prune_every;
  if (expiry.enabled()) j["expiry"] = expiry.to_json();
  return j;
}

namespace {
// An int field of a table config, refused (not truncated) when it does not fit an int.
int int_field(const Json& value, const char* what) {
  int64_t v = value.as_int(what);
  SC_CHECK_ARG(v >= INT32_MIN && v <= INT32_MAX, what, " must fit a 32-bit int, got ", v);
  return static_cast<int>(v);
}
}  // namespace

TableConfig TableConfig::from_json(const Json& j) {
  TableConfig c;
  for (const auto& [key, value] : j.as_object("table config")) {
    if (key == "name")
      c.name = value.as_string("table 'name'");
    else if (key == "dim")
      c.dim = int_field(value, "table 'dim'");
    else if (key == "optimizer")
      c.optimizer = OptimizerConfig::from_json(value);
    else if (key == "init")
      c.init = InitializerConfig::from_json(value);
    else if (key == "pooling")
      c.pooling = pooling_from_name(value.as_string("table 'pooling'"));
    else if (key == "shard_bits")
      c.shard_bits = int_field(value, "table 'shard_bits'");
    else if (key == "storage")
      c.storage = row_storage_from_name(value.as_string("table 'storage'"));
    else if (key == "num_embeddings") {
      c.num_embeddings = value.as_int("table 'num_embeddings'");
      SC_CHECK_ARG(c.num_embeddings >= 1, "table 'num_embeddings' must be >= 1, got ", c.num_embeddings);
    } else if (key == "out_of_range")
      c.out_of_range = out_of_range_from_name(value.as_string("table 'out_of_range'"));
    else if (key == "admission")
      c.admission = AdmissionConfig::from_json(value);
    else if (key == "prune_every")
      c.prune_every = value.as_int("table 'prune_every'");
    else if (key == "default_value")
      c.default_value = static_cast<float>(value.as_double("table 'default_value'"));
    else if (key == "expiry")
      c.expiry = ExpiryConfig::from_json(value);
    else
      throw InvalidArgument("unknown table config field '" + key + "'");
  }
  SC_CHECK_ARG(j.contains("dim"), "table '", c.name, "': 'dim' is required");
  c.validate();
  return c;
}

uint64_t EmbeddingTable::next_generation() {
  static std::atomic<uint64_t> counter{1};
  return counter.fetch_add(1, std::memory_order_relaxed);
}

uint64_t table_seed(uint64_t collection_seed, const std::string& name) {
  return hash_combine(collection_seed, fnv1a64(name));
}

EmbeddingTable::EmbeddingTable(TableConfig config, uint64_t seed)
    : config_((config.validate(), std::move(config))),
      seed_(seed),
      state_dim_(config_.optimizer.state_dim(config_.dim)),
      state_offset_((static_cast<size_t>(config_.dim) *
                         (config_.storage == RowStorage::kFloat16 ? sizeof(uint16_t) : sizeof(float)) +
                     3) &
                    ~size_t{3}),
      meta_offset_((state_offset_ + static_cast<size_t>(state_dim_) * sizeof(float) + 7) & ~size_t{7}),
      row_bytes_(meta_offset_ + sizeof(PackedRowMeta)),
      table_(row_bytes_, config_.shard_bits),
      dense_(config_.num_embeddings > 0 ? std::make_unique<DenseRows>(row_bytes_, config_.num_embeddings) : nullptr),
      row_init_([this](int64_t key, std::byte* row) { init_row(key, row); }),
      admission_(config_.admission.enabled() ? std::make_unique<Admission>(config_.admission, seed_) : nullptr),
      expiry_(config_.expiry.enabled() ? std::make_unique<Expiry>(config_.expiry) : nullptr),
      shard_retired_(std::make_unique<std::atomic<size_t>[]>(size_t{1} << config_.shard_bits)) {
  if (config_.default_value != 0.0f) {
    default_row_.assign(row_bytes_, std::byte{0});
    std::vector<float> w(static_cast<size_t>(config_.dim), config_.default_value);
    std::vector<float> s(static_cast<size_t>(state_dim_), 0.0f);
    write_row(w.data(), s.data(), default_row_.data());
  }
}

void EmbeddingTable::fill_default(float* out, int64_t n) const {
  const size_t floats = static_cast<size_t>(n) * static_cast<size_t>(config_.dim);
  if (default_row_.empty()) {
    std::memset(out, 0, floats * sizeof(float));
    return;
  }
  read_weights(default_row_.data(), out);
  for (size_t i = config_.dim; i < floats; ++i) out[i] = out[i - config_.dim];
}

void EmbeddingTable::init_row(int64_t key, std::byte* row) const {
  if (config_.storage == RowStorage::kFloat32) {
    initialize_row(config_.init, seed_, key, weights(row), config_.dim);
    rules::init_state(config_.optimizer, state(row), config_.dim);
    zero_padding(row);
  } else {
    // Built in fp32, rounded once.
    thread_local std::vector<float> w;
    w.resize(config_.dim);
    initialize_row(config_.init, seed_, key, w.data(), config_.dim);
    rules::init_state(config_.optimizer, state(row), config_.dim);
    floats_to_halves(w.data(), weights_fp16(row), config_.dim);
    zero_padding(row);
  }
  PackedRowMeta m{0, 0};
  m.set_last_step(step() + 1);
  *meta(row) = m;
  deleted_.forget(key);
}

// Padding after the weights and after the state is zeroed so checkpoints and exports are
// byte-stable.
void EmbeddingTable::zero_padding(std::byte* row) const {
  const size_t weights_end =
      static_cast<size_t>(config_.dim) * (config_.storage == RowStorage::kFloat16 ? sizeof(uint16_t) : sizeof(float));
  if (state_offset_ > weights_end) std::memset(row + weights_end, 0, state_offset_ - weights_end);
  const size_t state_end = state_offset_ + static_cast<size_t>(state_dim_) * sizeof(float);
  if (meta_offset_ > state_end) std::memset(row + state_end, 0, meta_offset_ - state_end);
}

namespace {

// A row's worth of floats, in fixed-size pieces the compiler inlines as vector moves (a
// library memcpy call per 72-byte row costs as much as the copy).
inline void copy_floats(float* dst, const float* src, size_t n) {
  size_t k = 0;
  for (; k + 16 <= n; k += 16) std::memcpy(dst + k, src + k, 64);
  if (k + 8 <= n) {
    std::memcpy(dst + k, src + k, 32);
    k += 8;
  }
  if (k + 4 <= n) {
    std::memcpy(dst + k, src + k, 16);
    k += 4;
  }
  for (; k < n; ++k) dst[k] = src[k];
}

}  // namespace

void EmbeddingTable::read_weights(const std::byte* row, float* out) const {
  if (config_.storage == RowStorage::kFloat16) {
    halves_to_floats(reinterpret_cast<const uint16_t*>(row), out, config_.dim);
  } else {
    copy_floats(out, reinterpret_cast<const float*>(row), static_cast<size_t>(config_.dim));
  }
}

void EmbeddingTable::read_row(const std::byte* row, float* floats) const {
  read_weights(row, floats);
  std::memcpy(floats + config_.dim, state(row), static_cast<size_t>(state_dim_) * sizeof(float));
}

void EmbeddingTable::write_row(const float* w, const float* s, std::byte* row) const {
  if (config_.storage == RowStorage::kFloat16) {
    floats_to_halves(w, weights_fp16(row), config_.dim);
  } else {
    std::memcpy(row, w, static_cast<size_t>(config_.dim) * sizeof(float));
  }
  std::memcpy(state(row), s, static_cast<size_t>(state_dim_) * sizeof(float));
  zero_padding(row);
}

void EmbeddingTable::find_rows(const int64_t* keys, int64_t n, std::byte** rows) const {
  if (!dense_) {
    table_.find(keys, n, rows);
    return;
  }
  for (int64_t i = 0; i < n; ++i) rows[i] = dense_->find(dense_id(keys[i]));
}

void EmbeddingTable::find_or_insert_rows(const int64_t* keys, int64_t n, std::byte** rows) {
  if (!dense_ && expiry_ && expiry_->capacity() > 0) {
    // Shard by shard under its lock, so the bound holds: rows refused stay null.
    ShardedDedup grouped;
    grouped.group(keys, n, table_.num_shards());
    parallel_for(table_.num_shards(), 1, [&](int64_t s0, int64_t s1) {
      std::vector<int64_t> shard_keys;
      std::vector<std::byte*> shard_rows;
      for (int64_t s = s0; s < s1; ++s) {
        const int64_t b = grouped.shard_begin(static_cast<int>(s)), e = grouped.shard_end(static_cast<int>(s));
        if (b == e) continue;
        shard_keys.clear();
        for (int64_t p = b; p < e; ++p) shard_keys.push_back(keys[grouped.perm()[p]]);
        std::sort(shard_keys.begin(), shard_keys.end());
        shard_keys.erase(std::unique(shard_keys.begin(), shard_keys.end()), shard_keys.end());
        shard_rows.assign(shard_keys.size(), nullptr);
        HashTable::Shard& sh = table_.shard(static_cast<int>(s));
        auto lock = sh.write_lock();
        sh.find_batch(shard_keys.data(), static_cast<int64_t>(shard_keys.size()), shard_rows.data());
        insert_missing_locked(static_cast<int>(s), shard_keys.data(), static_cast<int64_t>(shard_keys.size()),
                              shard_rows.data(), /*sight=*/false);
        for (int64_t p = b; p < e; ++p) {
          const int64_t i = grouped.perm()[p];
          const size_t at =
              static_cast<size_t>(std::lower_bound(shard_keys.begin(), shard_keys.end(), keys[i]) - shard_keys.begin());
          rows[i] = shard_rows[at];
        }
      }
    });
    return;
  }
  if (!dense_) {
    table_.find_or_insert(keys, n, rows, row_init_);
    return;
  }
  // Every id checked (or mapped) before any row is created.
  PodVector<int64_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[i] = dense_id(keys[i]);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t id = ids[i];
    std::byte* row = dense_->find(id);
    if (!row) {
      auto& shard = table_.shard(table_.shard_of_hash(key_hash(id)));
      auto lock = shard.write_lock();
      row = dense_->row(id);
      if (!dense_->present(id)) {
        init_row(id, row);
        dense_->mark(id);
      }
    }
    rows[i] = row;
  }
}

void EmbeddingTable::upsert_copy(int64_t key, const std::byte* row) {
  const uint64_t hash = key_hash(key);
  auto& shard = table_.shard(table_.shard_of_hash(hash));
  auto lock = shard.write_lock();
  if (!dense_) {
    shard.upsert_copy(key, hash, row);
    return;
  }
  SC_CHECK_ARG(key >= 0 && key < dense_->num_rows(), "table '", config_.name, "': id ", key, " is outside [0, ",
               dense_->num_rows(), ")");
  std::memcpy(dense_->row(key), row, row_bytes_);
  dense_->mark(key);
}

void EmbeddingTable::find_weights(const int64_t* keys, int64_t n, float* out) const {
  std::vector<std::byte*> rows(n);
  find_rows(keys, n, rows.data());
  parallel_for(n, 1024, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      float* dst = out + i * config_.dim;
      if (rows[i])
        read_weights(rows[i], dst);
      else
        fill_default(dst, 1);
    }
  });
}

void EmbeddingTable::lookup_or_insert_weights(const int64_t* keys, int64_t n, float* out) {
  std::vector<std::byte*> rows(n);
  find_or_insert_rows(keys, n, rows.data());
  parallel_for(n, 1024, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      // Null: refused by a full table (counted); it reads as the default row.
      if (rows[i])
        read_weights(rows[i], out + i * config_.dim);
      else
        fill_default(out + i * config_.dim, 1);
    }
  });
}

void EmbeddingTable::admit_missing(const int64_t* keys, int64_t n, std::byte** rows) {
  // A dense table counts sightings by row id, as its planner hands them to the embedded store.
  std::vector<int64_t> admitted;
  std::vector<int64_t> at;
  for (int64_t i = 0; i < n; ++i) {
    if (rows[i] || (admission_ && !admission_->sight(dense_ ? dense_id(keys[i]) : keys[i]))) continue;
    admitted.push_back(keys[i]);
    at.push_back(i);
  }
  if (admitted.empty()) return;
  PodVector<std::byte*> made(admitted.size());
  find_or_insert_rows(admitted.data(), static_cast<int64_t>(admitted.size()), made.data());
  for (size_t j = 0; j < admitted.size(); ++j) rows[at[j]] = made[j];
}

void EmbeddingTable::pull_weights(const int64_t* keys, int64_t n, bool insert, float* out) {
  thread_local PodVector<std::byte*> tls_rows;
  PodVector<std::byte*>& rows = tls_rows;
  rows.resize(n);
  // Each row is prefetched as soon as its slot is read, so by this copy the batch's rows
  // (80 KB for a thousand rows of dim 18) are on their way to L2.
  const size_t dim = static_cast<size_t>(config_.dim);
  const size_t weight_bytes = dim * (config_.storage == RowStorage::kFloat16 ? sizeof(uint16_t) : sizeof(float));
  if (insert && may_refuse_rows()) {
    // One admission clock tick per training pull, then the sightings, then rows for the ids
    // admitted and room found for (the embedded store does the same per training lookup call).
    if (n > 0 && admission_) admission_->tick();
    find_rows(keys, n, rows.data());
    admit_missing(keys, n, rows.data());
  } else if (dense_) {
    if (insert)
      find_or_insert_rows(keys, n, rows.data());
    else
      find_rows(keys, n, rows.data());
  } else {
    table_.lookup_batch(keys, n, rows.data(), insert ? &row_init_ : nullptr, weight_bytes);
  }
  for (int64_t i = 0; i < n; ++i) {
    float* dst = out + static_cast<size_t>(i) * dim;
    if (rows[i])
      read_weights(rows[i], dst);
    else
      fill_default(dst, 1);
  }
}

int64_t EmbeddingTable::erase(const int64_t* keys, int64_t n) {
  const int64_t erased = remove_rows(keys, n, Removal::kErased);
  release_retired();
  if (erased) bump_generation();
  return erased;
}

void EmbeddingTable::clear() {
  table_.clear();
  // The shards dropped their retired rows with everything else.
  for (int s = 0; s < table_.num_shards(); ++s) shard_retired_[static_cast<size_t>(s)].store(0);
  retired_.store(0);
  if (dense_) {
    // Every shard's lock, taken in shard order as SharedLockAll does: no row is initialised
    // while the pages are given back.
    std::vector<std::unique_lock<std::shared_mutex>> locks;
    for (int s = 0; s < table_.num_shards(); ++s) locks.push_back(table_.shard(s).write_lock());
    dense_->clear();
  }
  deleted_.reset(step() + 1);
  bump_generation();
}

void EmbeddingTable::collect_changed(int64_t since, ChangedRows& out, int begin, int end) const {
  const size_t dim = static_cast<size_t>(config_.dim);
  const int units = collect_units();
  if (end < 0) end = units;
  SC_CHECK_ARG(0 <= begin && begin <= end && end <= units, "collect_changed: units [", begin, ", ", end,
               ") out of [0, ", units, ")");
  if (out.segments.size() != static_cast<size_t>(units)) {
    SC_CHECK_ARG(begin == 0 && end == units, "collect_changed of units [", begin, ", ", end, ") into ",
                 out.segments.size(), " segments: size them to the table's ", units, " units first");
    out.segments.resize(static_cast<size_t>(units));
  }
  auto changed = [&](const std::byte* row) {
    return since < 0 ||
           static_cast<int64_t>(reinterpret_cast<const PackedRowMeta*>(row + meta_offset_)->last_step) > since;
  };
  // One pass per segment: the buffers grow geometrically (kept from earlier collections) and
  // are cut to the rows found at the end. Rows are visited in index order, which is random in
  // memory: each row is prefetched kAhead rows before it is read, so the misses overlap.
  auto collect = [&](ChangedRows::Segment& seg, auto&& for_each_row) {
    constexpr size_t kAhead = 16;
    std::pair<int64_t, const std::byte*> ahead[kAhead];
    size_t n = 0, seen = 0;
    auto take = [&](int64_t key, const std::byte* row) {
      if (!changed(row)) return;
      if (n == seg.keys.size()) {
        seg.keys.resize(std::max<size_t>(2 * n, 1024));
        seg.weights.resize(seg.keys.size() * dim);
      }
      seg.keys[n] = key;
      read_weights(row, seg.weights.data() + n * dim);
      ++n;
    };
    for_each_row([&](int64_t key, const std::byte* row) {
      __builtin_prefetch(row);
      __builtin_prefetch(row + meta_offset_);
      auto& slot = ahead[seen++ % kAhead];
      if (seen > kAhead) take(slot.first, slot.second);
      slot = {key, row};
    });
    for (size_t i = seen > kAhead ? seen - kAhead : 0; i < seen; ++i)
      take(ahead[i % kAhead].first, ahead[i % kAhead].second);
    seg.keys.resize(n);
    seg.weights.resize(n * dim);
  };
  if (dense_) {
    if (begin == end) return;
    HashTable::SharedLockAll lock(table_);
    collect(out.segments[0], [&](auto&& fn) { dense_->for_each(fn); });
    return;
  }
  // Each task takes its shard's read lock itself: a lock is never held across a parallel
  // region (another region's tasks may wait for a shard's write lock).
  parallel_for(end - begin, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t s = begin + i0; s < begin + i1; ++s) {
      const auto& sh = table_.shard(static_cast<int>(s));
      auto lock = sh.read_lock();
      collect(out.segments[static_cast<size_t>(s)], [&](auto&& fn) { sh.for_each(fn); });
    }
  });
}

int64_t EmbeddingTable::export_rows(int64_t* keys, float* rows, RowMeta* meta_out, int64_t capacity) const {
  int64_t count = 0;
  int floats = row_floats();
  if (dense_) {
    HashTable::SharedLockAll lock(table_);
    dense_->for_each([&](int64_t key, std::byte* row) {
      SC_CHECK_ARG(count < capacity, "export capacity ", capacity,
                   " is smaller than the table (it grew during export?)");
      keys[count] = key;
      if (rows) read_row(row, rows + count * floats);
      if (meta_out) meta_out[count] = meta(row)->unpack();
      ++count;
    });
    return count;
  }
  for (int s = 0; s < table_.num_shards(); ++s) {
    const auto& sh = table_.shard(s);
    auto lock = sh.read_lock();
    SC_CHECK_ARG(count + static_cast<int64_t>(sh.size()) <= capacity, "export capacity ", capacity,
                 " is smaller than the table (it grew during export?)");
    sh.for_each([&](int64_t key, std::byte* row) {
      keys[count] = key;
      if (rows) read_row(row, rows + count * floats);
      if (meta_out) meta_out[count] = meta(row)->unpack();
      ++count;
    });
  }
  return count;
}

std::vector<int64_t> begin_export(EmbeddingTable& table, int64_t since, int64_t version) {
  table.set_step(version);
  if (since < 0) return {};
  return table.deleted_keys().deleted_since(since, table.name());
}

ExportTable collect_export_table(EmbeddingTable& table, int64_t since, int64_t version) {
  ExportTable t;
  t.config = table.config();
  t.seed = table.seed();
  t.deleted = begin_export(table, since, version);
  ChangedRows rows;
  table.collect_changed(since, rows);
  t.keys.reserve(rows.rows());
  t.weights.reserve(rows.rows() * static_cast<uint64_t>(t.config.dim));
  for (const auto& seg : rows.segments) {
    t.keys.insert(t.keys.end(), seg.keys.begin(), seg.keys.end());
    t.weights.insert(t.weights.end(), seg.weights.begin(), seg.weights.end());
  }
  return t;
}

}  // namespace sparsecore
