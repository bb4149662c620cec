#include "sparsecore/serving/export.h"

#include <memory>
#include <mutex>

#include "sparsecore/core/error.h"
#include "sparsecore/core/thread_pool.h"
#include "sparsecore/serving/export_writer.h"

namespace sparsecore::serving {

namespace {

// Collection buffers kept between exports (one ChangedRows per table), so that an export
// writes its rows into memory already paged in: faulting in and zeroing fresh pages cost
// about as much as collecting the rows. Concurrent exports take separate sets. Sets larger
// than kKeepBytes, and sets past that total while idle, are freed instead of kept.
class CollectionBuffers {
 public:
  static constexpr uint64_t kKeepBytes = 256ull << 20;

  using Set = std::vector<ChangedRows>;

  static CollectionBuffers& global() {
    static CollectionBuffers* buffers = new CollectionBuffers();  // never destroyed: used at exit
    return *buffers;
  }

  std::unique_ptr<Set> take() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (idle_.empty()) return std::make_unique<Set>();
    std::unique_ptr<Set> set = std::move(idle_.back());
    idle_.pop_back();
    idle_bytes_ -= bytes(*set);
    return set;
  }

  void give_back(std::unique_ptr<Set> set) {
    const uint64_t b = bytes(*set);
    std::lock_guard<std::mutex> lock(mutex_);
    if (idle_bytes_ + b > kKeepBytes) return;
    idle_bytes_ += b;
    idle_.push_back(std::move(set));
  }

 private:
  static uint64_t bytes(const Set& set) {
    uint64_t b = 0;
    for (const ChangedRows& t : set) b += t.capacity_bytes();
    return b;
  }

  std::mutex mutex_;
  std::vector<std::unique_ptr<Set>> idle_;
  uint64_t idle_bytes_ = 0;
};

int64_t write_collection(EmbeddingCollection& c, const std::string& stream_dir, bool delta, int64_t since,
                         ExportDtype dtype) {
  SC_CHECK_ARG(c.has_local_tables(),
               "export of a collection whose rows live on parameter servers: use the cluster's export");
  SC_CHECK_ARG(!stream_dir.empty(), "export directory must not be empty");
  ExportHeader header;
  header.delta = delta;
  header.version = c.step();
  header.since = since;
  header.dtype = dtype;
  if (delta) {
    SC_CHECK_ARG(since >= 0, "export_delta: since must be a version >= 0, got ", since);
    SC_CHECK_ARG(since <= header.version, "export_delta: since version ", since,
                 " is newer than the collection's step ", header.version,
                 " (was it restored from an older checkpoint?); take a full export");
  }
  auto& pool = CollectionBuffers::global();
  std::unique_ptr<CollectionBuffers::Set> rows = pool.take();
  struct GiveBack {
    CollectionBuffers& pool;
    std::unique_ptr<CollectionBuffers::Set>& rows;
    ~GiveBack() { pool.give_back(std::move(rows)); }
  } give_back{pool, rows};
  // Per table: its collection units (hash shards) in kStages stages, each stage one parallel
  // region that collects its units and writes the blocks the stages before completed, so the
  // disk works during the collection. The file order is the units' whatever the stages.
  constexpr int kStages = 8;
  constexpr size_t kGroup = 20;  // tables whose files are open at once
  const size_t n = static_cast<size_t>(c.num_tables());
  rows->resize(n);
  std::vector<std::vector<int64_t>> deleted(n);
  StagedPartWriter writer(header, stream_dir);
  for (size_t i = 0; i < n; ++i) {
    EmbeddingTable& table = c.table(static_cast<int>(i));
    const int64_t from = delta ? since : -1;
    deleted[i] = begin_export(table, from, header.version);
    const size_t t = writer.add_table(table.config(), table.seed(), &deleted[i]);
    ChangedRows& changed = (*rows)[i];
    const int units = table.collect_units();
    changed.segments.resize(static_cast<size_t>(units));  // before the stages collect units in parallel
    size_t ready = 0;
    for (int stage = 0; stage < kStages; ++stage) {
      const int u0 = units * stage / kStages, u1 = units * (stage + 1) / kStages;
      parallel_for((u1 - u0) + static_cast<int64_t>(ready), 1, [&](int64_t j0, int64_t j1) {
        for (int64_t j = j0; j < j1; ++j) {
          if (j < u1 - u0)
            table.collect_changed(from, changed, u0 + static_cast<int>(j), u0 + static_cast<int>(j) + 1);
          else
            writer.write_claimed(static_cast<size_t>(j - (u1 - u0)));
        }
      });
      for (int u = u0; u < u1; ++u) {
        const ChangedRows::Segment& seg = changed.segments[static_cast<size_t>(u)];
        writer.append(t, {seg.keys.data(), seg.weights.data(), seg.keys.size()});
      }
      ready = writer.claim_ready();
    }
    parallel_for(static_cast<int64_t>(ready), 1, [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j) writer.write_claimed(static_cast<size_t>(j));
    });
    if ((i + 1) % kGroup == 0) writer.finish_tables();
  }
  writer.commit();
  return header.version;
}

}  // namespace

int64_t export_full(EmbeddingCollection& collection, const std::string& stream_dir, ExportDtype dtype) {
  return write_collection(collection, stream_dir, false, 0, dtype);
}

int64_t export_delta(EmbeddingCollection& collection, const std::string& stream_dir, int64_t since, ExportDtype dtype) {
  return write_collection(collection, stream_dir, true, since, dtype);
}

ps::ExportPartWriter ps_export_writer() {
  return [](const std::string& stream_dir, const ps::ExportPartRequest& request, std::vector<ExportTable>& tables) {
    ExportPart part;
    part.delta = request.delta;
    part.since = request.since;
    part.version = request.version;
    part.dtype = export_dtype_from_name(request.dtype);
    part.part = request.part;
    part.num_parts = request.num_parts;
    part.tables = std::move(tables);
    write_export_part(part, stream_dir);
  };
}

}  // namespace sparsecore::serving
