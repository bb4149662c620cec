#include "sparsecore/serving/subscriber.h"

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "sparsecore/core/error.h"
#include "sparsecore/core/file.h"
#include "sparsecore/core/thread_pool.h"

namespace sparsecore::serving {

Subscriber::Subscriber(std::string stream_dir) : stream_dir_(std::move(stream_dir)) {
  SC_CHECK_ARG(!stream_dir_.empty(), "Subscriber: the stream directory must not be empty");
}

Subscriber::~Subscriber() { stop(); }

Subscriber::Loaded Subscriber::load(const std::string& export_dir) {
  Loaded out;
  const std::string base = std::filesystem::path(export_dir).filename().string();
  SC_CHECK(parse_export_name(base, out.name), NotFound, "'", export_dir,
           "' is not an export (full-<version> or delta-<since>-<version>)");
  const std::vector<std::string> parts = complete_export_parts(export_dir);
  SC_CHECK(!parts.empty(), NotFound, "export '", export_dir, "' is not complete (parts are missing)");
  for (const auto& p : parts) {
    ExportPart part = read_export_part(p, /*keep_coded=*/true);
    SC_CHECK(part.delta == out.name.delta && part.version == out.name.version &&
                 (!part.delta || part.since == out.name.since) && part.num_parts == static_cast<int>(parts.size()),
             CorruptData, "export part '", p, "' describes another export than its directory's name");
    out.parts.push_back(std::move(part));
  }
  return out;
}

Subscriber::Table::Table(TableConfig c, uint64_t s, ExportDtype dtype)
    : config(std::move(c)),
      seed(s),
      codec(dtype, config.dim),
      index(std::make_unique<HashTable>(codec.row_bytes(), 0)) {}

// An export ready to commit: tables that replace the subscriber's (all of a full export; a
// delta's new tables and those turned to fp32), then per part and table the keys to delete and
// the rows to upsert, encoded for the table they go to.
struct Subscriber::Staged {
  struct Change {
    std::string table;
    const std::vector<int64_t>* deleted = nullptr;
    const std::vector<int64_t>* keys = nullptr;
    std::vector<std::byte> rows;  // keys->size() rows of the table's codec
  };
  bool full = false;
  int64_t version = 0;
  Tables replace;
  std::vector<Change> changes;
};

namespace {

// rows (n) of `from`'s layout from an export's coded rows, then re-encoded for `into` (only
// fp32 differs from its source dtype: values are decoded exactly).
std::vector<std::byte> encode_rows(const std::vector<uint8_t>& coded, ExportDtype dtype, size_t n,
                                   const RowCodec& into) {
  std::vector<std::byte> out(n * into.row_bytes());
  const uint64_t exported = export_row_bytes(dtype, static_cast<uint64_t>(into.dim()));
  if (dtype == into.dtype()) {
    for (size_t r = 0; r < n; ++r) into.store(coded.data() + r * exported, out.data() + r * into.row_bytes());
    return out;
  }
  const RowCodec from(dtype, into.dim());
  std::vector<std::byte> row(from.row_bytes());
  for (size_t r = 0; r < n; ++r) {
    from.store(coded.data() + r * exported, row.data());
    from.decode(row.data(), reinterpret_cast<float*>(out.data() + r * into.row_bytes()));
  }
  return out;
}

// Room for `rows` in a table's index. An index past half a huge page is given a whole one
// (its 12-byte slots then live on one 2 MiB page, huge_pages.h): every probe of a served
// table is a random read, and a page walk per probe cost about a tenth of a batch's time.
void reserve_index(HashTable::Shard& shard, size_t rows) {
  constexpr size_t kSlotBytes = 12, kHalfPageRows = kHugePageBytes / 2 / kSlotBytes * 4 / 5;
  constexpr size_t kPageRows = kHugePageBytes / kSlotBytes * 4 / 5 + 1;
  shard.reserve(rows >= kHalfPageRows ? std::max(rows, kPageRows) : rows);
}

}  // namespace

Subscriber::Staged Subscriber::stage(Loaded& loaded) const {
  Staged st;
  st.full = !loaded.name.delta;
  st.version = loaded.name.version;
  const std::string where = export_name(loaded.name);
  // The dtype each table keeps: its own (a delta's existing table) or its parts' when they all
  // agree with it, else fp32.
  std::map<std::string, ExportDtype, std::less<>> dtype;
  std::map<std::string, const ExportTable*, std::less<>> first;
  for (const auto& part : loaded.parts)
    for (const auto& t : part.tables) {
      const auto it = st.full ? tables_.end() : tables_.find(t.config.name);
      if (it != tables_.end())
        SC_CHECK(it->second.config.dim == t.config.dim, CorruptData, "export '", where, "': table '", t.config.name,
                 "' has dim ", t.config.dim, ", the subscriber's has ", it->second.config.dim);
      const auto [f, added] = first.try_emplace(t.config.name, &t);
      SC_CHECK(f->second->config.dim == t.config.dim, CorruptData, "export '", where, "': table '", t.config.name,
               "' has dim ", t.config.dim, " in one part, ", f->second->config.dim, " in another");
      const ExportDtype own = it != tables_.end() ? it->second.codec.dtype() : part.dtype;
      auto [d, fresh] = dtype.try_emplace(t.config.name, own);
      if (d->second != part.dtype) d->second = ExportDtype::kFloat32;
    }
  for (const auto& [name, d] : dtype) {
    const auto it = st.full ? tables_.end() : tables_.find(name);
    if (it == tables_.end()) {
      const ExportTable& t = *first.at(name);
      st.replace.try_emplace(name, t.config, t.seed, d);
    } else if (it->second.codec.dtype() != d) {  // turned to fp32, values unchanged
      const Table& old = it->second;
      Table& fp32 = st.replace.try_emplace(name, old.config, old.seed, d).first->second;
      reserve_index(fp32.shard(), old.shard().size());
      std::vector<std::byte> row(fp32.codec.row_bytes());
      old.shard().for_each([&](int64_t key, const std::byte* stored) {
        old.codec.decode(stored, reinterpret_cast<float*>(row.data()));
        fp32.shard().upsert_copy(key, key_hash(key), row.data());
      });
    }
  }
  for (auto& part : loaded.parts)
    for (size_t i = 0; i < part.tables.size(); ++i) {
      const ExportTable& t = part.tables[i];
      const auto r = st.replace.find(t.config.name);
      const RowCodec& codec = r != st.replace.end() ? r->second.codec : tables_.find(t.config.name)->second.codec;
      st.changes.push_back(
          {t.config.name, &t.deleted, &t.keys, encode_rows(part.coded[i], part.dtype, t.keys.size(), codec)});
    }
  // A full export is built here whole, outside the lock.
  if (st.full) {
    for (auto& c : st.changes) {
      HashTable::Shard& sh = st.replace.at(c.table).shard();
      reserve_index(sh, sh.size() + c.keys->size());
      const size_t rb = st.replace.at(c.table).codec.row_bytes();
      for (size_t r = 0; r < c.keys->size(); ++r)
        sh.upsert_copy((*c.keys)[r], key_hash((*c.keys)[r]), c.rows.data() + r * rb);
    }
    st.changes.clear();
  }
  return st;
}

void Subscriber::commit(Staged& st) {
  if (st.full) {
    tables_.swap(st.replace);
  } else {
    for (auto& [name, t] : st.replace) tables_.insert_or_assign(name, std::move(t));
    for (auto& c : st.changes) {
      Table& t = tables_.find(c.table)->second;
      HashTable::Shard& sh = t.shard();
      auto lock = sh.write_lock();
      for (int64_t key : *c.deleted) sh.erase(key, key_hash(key));
      const size_t rb = t.codec.row_bytes();
      for (size_t r = 0; r < c.keys->size(); ++r)
        sh.upsert_copy((*c.keys)[r], key_hash((*c.keys)[r]), c.rows.data() + r * rb);
    }
  }
  version_ = st.version;
}

void Subscriber::apply_export(Loaded& loaded) {
  Staged staged = stage(loaded);
  std::unique_lock<std::shared_mutex> lock(state_mutex_);
  commit(staged);
}

int64_t Subscriber::apply(const std::string& export_dir) {
  std::lock_guard<std::mutex> serial(poll_mutex_);
  Loaded loaded = load(export_dir);
  apply_export(loaded);
  return loaded.name.version;
}

int Subscriber::poll() {
  std::lock_guard<std::mutex> serial(poll_mutex_);
  int applied = 0;
  for (;;) {
    std::vector<std::pair<ExportName, std::string>> found;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(stream_dir_, ec)) {
      ExportName n;
      if (parse_export_name(entry.path().filename().string(), n) && is_real_directory(entry.path().string()))
        found.emplace_back(n, entry.path().string());
    }
    const int64_t current = version();
    const std::pair<ExportName, std::string>* next = nullptr;
    if (current >= 0)
      for (const auto& f : found)
        if (f.first.delta && f.first.since <= current && f.first.version > current &&
            (!next || f.first.version > next->first.version) && !complete_export_parts(f.second).empty())
          next = &f;
    if (!next)
      for (const auto& f : found)
        if (!f.first.delta && f.first.version > current && (!next || f.first.version > next->first.version) &&
            !complete_export_parts(f.second).empty())
          next = &f;
    if (!next) return applied;
    Loaded loaded = load(next->second);
    apply_export(loaded);
    ++applied;
  }
}

void Subscriber::start(std::chrono::milliseconds interval) {
  SC_CHECK_ARG(interval.count() > 0, "Subscriber::start: interval must be > 0 ms, got ", interval.count());
  std::lock_guard<std::mutex> lock(follow_mutex_);
  SC_CHECK_ARG(!follower_.joinable(), "the subscriber is already following (call stop first)");
  stop_ = false;
  follower_ = std::thread([this, interval] { follow(interval); });
}

void Subscriber::stop() {
  std::thread t;
  {
    std::lock_guard<std::mutex> lock(follow_mutex_);
    stop_ = true;
    t = std::move(follower_);
  }
  follow_cv_.notify_all();
  if (t.joinable()) t.join();
}

bool Subscriber::running() const {
  std::lock_guard<std::mutex> lock(follow_mutex_);
  return follower_.joinable();
}

std::string Subscriber::last_error() const {
  std::lock_guard<std::mutex> lock(follow_mutex_);
  return last_error_;
}

void Subscriber::follow(std::chrono::milliseconds interval) {
  for (;;) {
    std::string error;
    try {
      poll();
    } catch (const std::exception& e) {
      error = e.what();
    }
    std::unique_lock<std::mutex> lock(follow_mutex_);
    last_error_ = error;
    if (follow_cv_.wait_for(lock, interval, [this] { return stop_; })) return;
  }
}

int64_t Subscriber::version() const {
  std::shared_lock<std::shared_mutex> lock(state_mutex_);
  return version_;
}

std::vector<std::string> Subscriber::tables() const {
  std::shared_lock<std::shared_mutex> lock(state_mutex_);
  std::vector<std::string> names;
  for (const auto& [name, t] : tables_) names.push_back(name);
  return names;
}

const Subscriber::Table& Subscriber::table(const std::string& name) const {
  auto it = tables_.find(name);
  if (it == tables_.end()) {
    std::string known;
    for (const auto& [n, t] : tables_) known += (known.empty() ? "" : ", ") + n;
    throw NotFound("Subscriber: no table '" + name + "' (known: " + (known.empty() ? "none yet" : known) + ")");
  }
  return it->second;
}

int Subscriber::dim(const std::string& name) const {
  std::shared_lock<std::shared_mutex> lock(state_mutex_);
  return table(name).config.dim;
}

int64_t Subscriber::size(const std::string& name) const {
  std::shared_lock<std::shared_mutex> lock(state_mutex_);
  return static_cast<int64_t>(table(name).shard().size());
}

void Subscriber::lookup(const std::string& name, const int64_t* ids, int64_t n, float* out) const {
  SC_CHECK_ARG(n >= 0, "lookup: n must be >= 0, got ", n);
  std::shared_lock<std::shared_mutex> lock(state_mutex_);
  lookup_locked(table(name), ids, n, out);
}

// Work of a large call is split into units of about this many ids (whole bags of one read),
// and calls below kParallelIds run on the calling thread.
constexpr int64_t kUnitIds = 1024, kParallelIds = 4096;

void Subscriber::read(const RowRead* reads, size_t count) const {
  int64_t total = 0;
  for (size_t r = 0; r < count; ++r) {
    SC_CHECK_ARG(reads[r].n >= 0, "read: n must be >= 0, got ", reads[r].n);
    total += reads[r].n;
  }
  std::shared_lock<std::shared_mutex> lock(state_mutex_);
  for (size_t r = 0; r < count; ++r) table(*reads[r].table);  // every name checked before any row is written
  // A large read (a batch of requests) is split by ids over the compute pool; each id's row
  // is written by one task, and the workers read under this call's shared lock.
  auto run = [&](int64_t begin, int64_t end) {
    int64_t first = 0;
    for (size_t r = 0; r < count && first < end; first += reads[r].n, ++r) {
      const int64_t lo = std::max(begin, first), hi = std::min(end, first + reads[r].n);
      if (lo >= hi) continue;
      const Table& t = table(*reads[r].table);
      lookup_locked(t, reads[r].ids + (lo - first), hi - lo, reads[r].out + (lo - first) * t.config.dim);
    }
  };
  if (total < kParallelIds) return run(0, total);
  parallel_for(total, kUnitIds, run);
}

void Subscriber::find_rows(const Table& t, const int64_t* ids, int64_t n, std::byte** rows, int64_t* keys) {
  const TableConfig& c = t.config;
  const bool dense = c.dense(), hash_out = c.out_of_range == OutOfRange::kHash;
  if (dense) {
    for (int64_t i = 0; i < n; ++i) {
      const int64_t id = ids[i];
      keys[i] = id >= 0 && id < c.num_embeddings ? id : hash_out ? hash_into_range(id, c.num_embeddings, t.seed) : 0;
    }
  }
  const HashTable::Shard& sh = t.shard();
  {
    auto lock = sh.read_lock();
    sh.find_batch(dense ? keys : ids, n, rows);
  }
  if (dense && !hash_out)  // ids outside the range are no key: the default row
    for (int64_t i = 0; i < n; ++i)
      if (ids[i] < 0 || ids[i] >= c.num_embeddings) rows[i] = nullptr;
}

void Subscriber::lookup_locked(const Table& t, const int64_t* ids, int64_t n, float* out) {
  // Blocks on the stack: this path serves lookup() and read() without scratch memory.
  constexpr int64_t kBlock = 256;
  std::byte* rows[kBlock];
  int64_t keys[kBlock];
  const int64_t dim = t.config.dim;
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const int64_t m = std::min(kBlock, n - i0);
    find_rows(t, ids + i0, m, rows, keys);
    decode_rows(t.codec, rows, m, t.config.default_value, out + i0 * dim);
  }
}

void Subscriber::read_pooled(const PooledRead* reads, size_t count, RowScratch& scratch) const {
  int64_t total = 0, units = 0;
  for (size_t r = 0; r < count; ++r) {
    SC_CHECK_ARG(reads[r].num_ids >= 0 && reads[r].batch >= 0, "read_pooled: negative sizes");
    total += reads[r].num_ids;
    units += std::max<int64_t>(1, reads[r].num_ids / kUnitIds);
  }
  std::shared_lock<std::shared_mutex> lock(state_mutex_);
  for (size_t r = 0; r < count; ++r) {  // every table checked before any output is written
    const Table& t = table(*reads[r].table);
    SC_CHECK_ARG(t.config.dim == reads[r].dim, "table '", *reads[r].table, "' has dim ", t.config.dim,
                 " (its last full export), the model reads ", reads[r].dim);
  }
  if (scratch.row_ptrs.size() < static_cast<size_t>(total)) scratch.row_ptrs.resize(total);
  if (scratch.keys.size() < static_cast<size_t>(total)) scratch.keys.resize(total);
  // Unit u of read r: its bags [batch * j / k, batch * (j + 1) / k) for k units of the read.
  auto run_unit = [&](size_t r, int64_t first_id, int64_t j, int64_t k) {
    const PooledRead& p = reads[r];
    const Table& t = table(*p.table);
    const int64_t b0 = p.batch * j / k, b1 = p.batch * (j + 1) / k;
    const int64_t i0 = p.offsets[b0], i1 = p.offsets[b1];
    std::byte** rows = scratch.row_ptrs.data() + first_id;
    find_rows(t, p.ids + i0, i1 - i0, rows + i0, scratch.keys.data() + first_id + i0);
    const BagRows bags{rows, p.offsets, p.weights, p.batch};
    if (p.pooling == ServingPooling::kNone)
      sequence_bags(t.codec, bags, b0, b1, p.max_len, t.config.default_value, p.out + b0 * p.max_len * p.dim);
    else
      pool_bags(t.codec, bags, b0, b1, t.config.default_value, p.pooling == ServingPooling::kMean, p.out + b0 * p.dim);
  };
  auto run = [&](int64_t begin, int64_t end) {
    int64_t unit = 0, first_id = 0;
    for (size_t r = 0; r < count && unit < end; first_id += reads[r].num_ids, ++r) {
      const int64_t k = std::max<int64_t>(1, reads[r].num_ids / kUnitIds);
      for (int64_t j = 0; j < k; ++j, ++unit)
        if (unit >= begin && unit < end) run_unit(r, first_id, j, k);
    }
  };
  if (total < kParallelIds) return run(0, units);
  parallel_for(units, 1, run);
}

void Subscriber::rows(const std::string& name, std::vector<int64_t>& keys, std::vector<float>& weights) const {
  std::shared_lock<std::shared_mutex> lock(state_mutex_);
  const Table& t = table(name);
  const HashTable::Shard& sh = t.shard();
  auto shard_lock = sh.read_lock();
  std::vector<std::pair<int64_t, const std::byte*>> found;
  found.reserve(sh.size());
  sh.for_each([&](int64_t key, const std::byte* row) { found.emplace_back(key, row); });
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  const size_t dim = static_cast<size_t>(t.config.dim);
  keys.resize(found.size());
  weights.resize(found.size() * dim);
  for (size_t i = 0; i < found.size(); ++i) {
    keys[i] = found[i].first;
    t.codec.decode(found[i].second, weights.data() + i * dim);
  }
}

}  // namespace sparsecore::serving
