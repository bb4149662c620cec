// Fuzz target for checkpoint parsing, bounded in time: a collection checkpoint (manifest and
// row files) and a parameter-server snapshot (markers, manifests, row files) are written once,
// then every case writes them again with mutations (bit flips, truncation, spliced garbage,
// deleted files, JSON fields replaced by extreme or hostile values, row-file headers rewritten
// with a recomputed checksum and a manifest that agrees) and loads them.
// Invariants: no crash; a load either succeeds or throws one of sparsecore's typed errors
// (never std::out_of_range, std::bad_alloc or another stray exception).
// Usage: sparsecore_fuzz_checkpoint [--seconds S] [--seed N]
#include <unistd.h>
#include "fuzz_args.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "sparsecore/core/checksum.h"
#include "sparsecore/core/error.h"
#include "sparsecore/core/file.h"
#include "sparsecore/core/json.h"
#include "sparsecore/ops/embedding_collection.h"
#include "sparsecore/ps/ps_shard.h"

using namespace sparsecore;
namespace fs = std::filesystem;

namespace {

using Files = std::map<std::string, std::vector<uint8_t>>;  // relative path -> bytes

Files read_tree(const fs::path& root) {
  Files files;
  for (const auto& e : fs::recursive_directory_iterator(root))
    if (e.is_regular_file()) files[fs::relative(e.path(), root).string()] = read_file(e.path().string());
  return files;
}

void write_tree(const fs::path& root, const Files& files) {
  fs::remove_all(root);
  fs::create_directories(root);
  for (const auto& [rel, bytes] : files) {
    fs::create_directories((root / rel).parent_path());
    File f = File::create((root / rel).string());
    f.write_all(bytes.data(), bytes.size());
    f.close();
  }
}

std::vector<int64_t> train_ids(int n) {
  std::vector<int64_t> ids(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) ids[static_cast<size_t>(i)] = static_cast<int64_t>(i) * 7919 - 1000;
  return ids;
}

void make_collection_checkpoint(const fs::path& dir) {
  TableConfig a;
  a.name = "a";
  a.dim = 3;
  a.shard_bits = 2;
  a.optimizer = OptimizerConfig::from_json(Json::parse(R"({"name": "adagrad", "lr": 0.1})"));
  TableConfig b = a;
  b.name = "b";
  b.dim = 2;
  EmbeddingCollection emb({a, b}, 5);
  std::vector<int64_t> ids = train_ids(40);
  for (int t = 0; t < 2; ++t) {
    std::vector<float> out(ids.size() * 3);
    emb.table(t).pull_weights(ids.data(), static_cast<int64_t>(ids.size()), true, out.data());
  }
  emb.save(dir.string());
}

void make_snapshot(const fs::path& root) {
  ps::PsShard shard(ps::ShardLayout{0, 1});
  TableConfig c;
  c.name = "t";
  c.dim = 2;
  c.shard_bits = 1;
  shard.create_table(c, 9);
  std::vector<int64_t> ids = train_ids(30);
  std::vector<float> out(ids.size() * 2);
  shard.pull("t", ids.data(), static_cast<int64_t>(ids.size()), true, out.data());
  shard.kv_put("reader", Json::parse(R"({"at": 3})"));
  shard.dense("w", 4, 0.5f);
  const std::string id = "0123456789abcdef";
  shard.write_snapshot(ps::begin_snapshot_write(root.string(), "s", id, false, /*server=*/0), 7, id);
  ps::commit_snapshot(root.string(), "s", id, 1, false, /*server=*/0);
}

// Every number and string of a JSON document (to replace one).
void leaves(Json& j, std::vector<Json*>& out) {
  if (j.is_object()) {
    for (auto& [k, v] : j.as_object()) leaves(v, out);
  } else if (j.is_array()) {
    for (Json& v : j.as_array()) leaves(v, out);
  } else {
    out.push_back(&j);
  }
}

Json hostile_value(std::mt19937_64& rng) {
  switch (rng() % 12) {
    case 0:
      return Json(int64_t{-1});
    case 1:
      return Json(INT64_MAX);
    case 2:
      return Json(int64_t{1} << 40);
    case 3:
      return Json(int64_t{4096});
    case 4:
      return Json(1e300);
    case 5:
      return Json(std::string(5000, 'f'));
    case 6:
      return Json("../../escape");
    case 7:
      return Json("/etc/passwd");
    case 8:
      return Json("");
    case 9:
      return Json::array();
    case 10:
      return Json(static_cast<int64_t>(rng() % 70000));
    default:
      return Json(nullptr);
  }
}

bool is_json(const std::string& path) { return path.size() > 5 && path.compare(path.size() - 5, 5, ".json") == 0; }
bool is_rows(const std::string& path) { return path.size() > 5 && path.compare(path.size() - 5, 5, ".rows") == 0; }

// The manifest that lists row file `rows_path` (same directory).
std::string manifest_of(const std::string& rows_path) {
  return (fs::path(rows_path).parent_path() / "manifest.json").string();
}

// Rewrites one header field of a row file, then its checksum and manifest entry, so that
// the load gets past the checksum to the size and dim checks.
void forge_header(std::mt19937_64& rng, Files& files, const std::string& path) {
  std::vector<uint8_t>& data = files[path];
  if (data.size() < 64) return;
  static constexpr size_t kOffsets[] = {8, 12, 16, 20, 24, 32, 36, 40};
  const size_t at = kOffsets[rng() % 8];
  const uint64_t values[] = {0, 1, 4, 4096, uint64_t{1} << 40, ~uint64_t{0}, rng()};
  const uint64_t v = values[rng() % 7];
  std::memcpy(data.data() + at, &v, at == 24 || at == 40 ? 8 : 4);
  auto m = files.find(manifest_of(path));
  if (m == files.end()) return;
  Json manifest;
  try {
    manifest = Json::parse(std::string_view(reinterpret_cast<const char*>(m->second.data()), m->second.size()));
    for (Json& t : manifest["tables"].as_array())
      for (Json& f : t["files"].as_array()) {
        if (f.at("path").as_string() != fs::path(path).filename().string()) continue;
        char hex[17];
        std::snprintf(hex, sizeof(hex), "%016llx",
                      static_cast<unsigned long long>(checksum64(data.data(), data.size())));
        f["checksum"] = std::string(hex);
        f["bytes"] = static_cast<int64_t>(data.size());
        if (at == 24 && rng() % 2) f["rows"] = static_cast<int64_t>(v);
      }
  } catch (const Error&) {
    return;
  }
  std::string text = manifest.dump();
  m->second.assign(text.begin(), text.end());
}

void mutate(std::mt19937_64& rng, Files& files) {
  auto it = files.begin();
  std::advance(it, static_cast<long>(rng() % files.size()));
  const std::string path = it->first;
  std::vector<uint8_t>& data = it->second;
  switch (rng() % 7) {
    case 0:  // bit flips
      for (int i = 0; i < 1 + static_cast<int>(rng() % 8) && !data.empty(); ++i)
        data[rng() % data.size()] ^= 1u << (rng() % 8);
      break;
    case 1:  // truncate
      data.resize(data.empty() ? 0 : rng() % data.size());
      break;
    case 2: {  // splice garbage
      size_t at = data.empty() ? 0 : rng() % data.size();
      std::vector<uint8_t> junk(rng() % 100);
      for (auto& b : junk) b = static_cast<uint8_t>(rng());
      data.insert(data.begin() + static_cast<long>(at), junk.begin(), junk.end());
      break;
    }
    case 3:  // a missing file
      files.erase(path);
      break;
    case 4:
    case 5: {  // a hostile JSON value, or a forged row-file header that passes its checksum
      if (is_rows(path)) {
        forge_header(rng, files, path);
        break;
      }
      if (!is_json(path)) break;
      try {
        Json j = Json::parse(std::string_view(reinterpret_cast<const char*>(data.data()), data.size()));
        std::vector<Json*> all;
        leaves(j, all);
        if (!all.empty()) *all[rng() % all.size()] = hostile_value(rng);
        std::string text = j.dump();
        data.assign(text.begin(), text.end());
      } catch (const Error&) {
      }
      break;
    }
    default: {  // a table listed twice
      if (!is_json(path)) break;
      try {
        Json j = Json::parse(std::string_view(reinterpret_cast<const char*>(data.data()), data.size()));
        Json::Array& tables = j.as_object()["tables"].as_array();
        if (!tables.empty()) tables.push_back(tables[rng() % tables.size()]);
        std::string text = j.dump();
        data.assign(text.begin(), text.end());
      } catch (const Error&) {
      }
    }
  }
}

// Returns false when an invariant broke (a stray exception type); counts loads that succeed.
bool load_one(const fs::path& dir, bool snapshot, uint64_t* loaded) {
  try {
    if (snapshot) {
      ps::PsShard fresh(ps::ShardLayout{0, 1});
      fresh.restore((dir / "s").string());
    } else {
      EmbeddingCollection::load(dir.string());
    }
    ++*loaded;
  } catch (const Error&) {
  } catch (const std::exception& e) {
    std::fprintf(stderr, "stray exception: %s\n", e.what());
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const FuzzArgs args = parse_fuzz_args(argc, argv);
  const double seconds = args.seconds;
  uint64_t seed = args.seed;
  const fs::path base = fs::temp_directory_path() / ("sparsecore-fuzz-ckpt-" + std::to_string(::getpid()));
  fs::remove_all(base);
  make_collection_checkpoint(base / "collection");
  make_snapshot(base / "snapshot");
  const Files pristine[2] = {read_tree(base / "collection"), read_tree(base / "snapshot")};
  const fs::path work = base / "work";
  for (int which = 0; which < 2; ++which) {  // unmutated: both load
    write_tree(work, pristine[which]);
    try {
      if (which)
        ps::PsShard(ps::ShardLayout{0, 1}).restore((work / "s").string());
      else
        EmbeddingCollection::load(work.string());
    } catch (const std::exception& e) {
      std::fprintf(stderr, "pristine checkpoint %d does not load: %s\n", which, e.what());
      return 1;
    }
  }
  std::mt19937_64 rng(seed);
  auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  uint64_t cases = 0, loaded = 0;
  int status = 0;
  while (std::chrono::steady_clock::now() < end && cases < 10'000'000) {
    const bool snapshot = cases % 2 == 1;
    Files files = pristine[snapshot];
    for (int m = 0, n = 1 + static_cast<int>(rng() % 3); m < n && !files.empty(); ++m) mutate(rng, files);
    write_tree(work, files);
    ++cases;
    if (!load_one(work, snapshot, &loaded)) {
      std::fprintf(stderr, "checkpoint loader invariant broken (seed %llu, case %llu)\n",
                   static_cast<unsigned long long>(seed), static_cast<unsigned long long>(cases));
      status = 1;
      break;
    }
  }
  fs::remove_all(base);
  if (status == 0)
    std::printf("fuzz_checkpoint: %llu cases (%llu loaded, the rest refused), seed %llu, no failure\n",
                static_cast<unsigned long long>(cases), static_cast<unsigned long long>(loaded),
                static_cast<unsigned long long>(seed));
  return status;
}
