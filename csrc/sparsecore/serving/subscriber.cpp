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
    ExportPart part = read_export_part(p);
    SC_CHECK(part.delta == out.name.delta && part.version == out.name.version &&
                 (!part.delta || part.since == out.name.since) && part.num_parts == static_cast<int>(parts.size()),
             CorruptData, "export part '", p, "' describes another export than its directory's name");
    out.parts.push_back(std::move(part));
  }
  return out;
}

void Subscriber::apply_locked(Loaded& loaded) {
  // Everything that can fail is checked before anything changes.
  for (const auto& part : loaded.parts)
    for (const auto& t : part.tables) {
      auto it = tables_.find(t.config.name);
      if (!loaded.name.delta || it == tables_.end()) continue;
      SC_CHECK(it->second.config.dim == t.config.dim, CorruptData, "export '", export_name(loaded.name), "': table '",
               t.config.name, "' has dim ", t.config.dim, ", the subscriber's has ", it->second.config.dim);
    }
  Tables fresh;
  Tables& into = loaded.name.delta ? tables_ : fresh;
  for (auto& part : loaded.parts) {
    for (auto& t : part.tables) {
      auto [it, added] = into.try_emplace(t.config.name);
      Table& table = it->second;
      if (added) {
        table.config = t.config;
        table.seed = t.seed;
      }
      const size_t dim = static_cast<size_t>(t.config.dim);
      for (int64_t key : t.deleted) {
        auto found = table.slot.find(key);
        if (found == table.slot.end()) continue;
        table.free.push_back(found->second);
        table.slot.erase(found);
      }
      for (size_t r = 0; r < t.keys.size(); ++r) {
        auto [slot, inserted] = table.slot.try_emplace(t.keys[r], 0);
        if (inserted) {
          if (!table.free.empty()) {
            slot->second = table.free.back();
            table.free.pop_back();
          } else {
            slot->second = table.weights.size() / dim;
            table.weights.resize(table.weights.size() + dim);
          }
        }
        std::memcpy(table.weights.data() + slot->second * dim, t.weights.data() + r * dim, dim * sizeof(float));
      }
    }
  }
  if (!loaded.name.delta) tables_.swap(fresh);
  version_ = loaded.name.version;
}

int64_t Subscriber::apply(const std::string& export_dir) {
  std::lock_guard<std::mutex> serial(poll_mutex_);
  Loaded loaded = load(export_dir);
  std::unique_lock<std::shared_mutex> lock(state_mutex_);
  apply_locked(loaded);
  return version_;
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
    {
      std::unique_lock<std::shared_mutex> lock(state_mutex_);
      apply_locked(loaded);
    }
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
  return static_cast<int64_t>(table(name).slot.size());
}

void Subscriber::lookup(const std::string& name, const int64_t* ids, int64_t n, float* out) const {
  SC_CHECK_ARG(n >= 0, "lookup: n must be >= 0, got ", n);
  std::shared_lock<std::shared_mutex> lock(state_mutex_);
  lookup_locked(table(name), ids, n, out);
}

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
  constexpr int64_t kParallelIds = 4096, kGrain = 1024;
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
  parallel_for(total, kGrain, run);
}

void Subscriber::lookup_locked(const Table& t, const int64_t* ids, int64_t n, float* out) {
  const size_t dim = static_cast<size_t>(t.config.dim);
  const float fill = t.config.default_value;
  // Blocks of ids: the slots first, then the rows, so that the row fetches of a block overlap.
  constexpr int64_t kBlock = 16;
  const float* rows[kBlock];
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const int64_t m = std::min(kBlock, n - i0);
    for (int64_t j = 0; j < m; ++j) {
      int64_t key = ids[i0 + j];
      bool known = true;
      if (t.config.dense()) {
        if (key < 0 || key >= t.config.num_embeddings) {
          known = t.config.out_of_range == OutOfRange::kHash;
          if (known) key = hash_into_range(key, t.config.num_embeddings, t.seed);
        }
      }
      auto it = known ? t.slot.find(key) : t.slot.end();
      rows[j] = it == t.slot.end() ? nullptr : t.weights.data() + it->second * dim;
      if (rows[j] != nullptr) __builtin_prefetch(rows[j]);
    }
    for (int64_t j = 0; j < m; ++j) {
      float* dst = out + static_cast<size_t>(i0 + j) * dim;
      if (rows[j] == nullptr)
        std::fill(dst, dst + dim, fill);
      else
        std::memcpy(dst, rows[j], dim * sizeof(float));
    }
  }
}

void Subscriber::rows(const std::string& name, std::vector<int64_t>& keys, std::vector<float>& weights) const {
  std::shared_lock<std::shared_mutex> lock(state_mutex_);
  const Table& t = table(name);
  const size_t dim = static_cast<size_t>(t.config.dim);
  keys.clear();
  for (const auto& [key, slot] : t.slot) keys.push_back(key);
  std::sort(keys.begin(), keys.end());
  weights.resize(keys.size() * dim);
  for (size_t i = 0; i < keys.size(); ++i)
    std::memcpy(weights.data() + i * dim, t.weights.data() + t.slot.at(keys[i]) * dim, dim * sizeof(float));
}

}  // namespace sparsecore::serving
