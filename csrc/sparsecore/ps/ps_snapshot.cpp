#include "sparsecore/ps/ps_snapshot.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <set>

#include "sparsecore/core/error.h"
#include "sparsecore/core/file.h"
#include "sparsecore/core/hash.h"

namespace sparsecore::ps {
namespace fs = std::filesystem;

namespace {

// A marker holds the dense variables as JSON numbers; beyond this it is not one we wrote.
constexpr uint64_t kMaxMarkerBytes = 1ull << 30;

std::string join(const std::string& a, const std::string& b) { return (fs::path(a) / b).string(); }

std::string staging_name(const std::string& name, const std::string& save_id) {
  return "." + name + ".saving-" + save_id;
}

void check_save_id(const std::string& id) {
  bool ok = id.size() == 16;
  for (char c : id) ok = ok && ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'));
  SC_CHECK_ARG(ok, "save id must be 16 lowercase hex digits, got '", id.substr(0, 40), "'");
}

// (g, T) when `name` is exactly shard_marker_name(g, T) with 0 <= g < T <= kNumBuckets.
bool parse_marker_name(const std::string& name, int* g, int* t) {
  if (std::sscanf(name.c_str(), "shard-%d-of-%d.json", g, t) != 2) return false;
  if (*t < 1 || *t > static_cast<int>(kNumBuckets) || *g < 0 || *g >= *t) return false;
  return name == shard_marker_name(*g, *t);
}

// The one layout T of the markers in `dir` (0: none); CorruptData when markers of two layouts
// lie side by side (two saves mixed).
int marker_layout(const std::string& dir) {
  int total = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    int g, t;
    if (!parse_marker_name(e.path().filename().string(), &g, &t)) continue;
    SC_CHECK(total == 0 || total == t, CorruptData, "snapshot '", dir, "' mixes markers of ", total, " and ", t,
             " shards");
    total = t;
  }
  return total;
}

bool all_markers_exist(const std::string& dir, int total) {
  for (int g = 0; g < total; ++g) {
    const std::string p = join(dir, shard_marker_name(g, total));
    if (!path_exists(p) || is_real_directory(p)) return false;
  }
  return true;
}

Json read_marker(const std::string& path) {
  std::vector<uint8_t> bytes = read_regular_file(path, kMaxMarkerBytes);
  return Json::parse(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
}

// Checks one marker's fields (CorruptData naming the field otherwise).
void check_marker(const Json& m, const std::string& path, int g, int total) {
  try {
    SC_CHECK(m.at("format").as_int("format") == 1, CorruptData, "unknown marker format");
    SC_CHECK(m.at("global_index").as_int("global_index") == g && m.at("total_shards").as_int("total_shards") == total,
             CorruptData, "marker names another shard than its file name");
    SC_CHECK(m.at("step").as_int("step") >= 0, CorruptData, "negative step");
    if (const Json* id = m.get("save_id")) check_save_id(id->as_string("save_id"));
    std::set<std::string> names, dirs;
    for (const Json& t : m.at("tables").as_array("tables")) {
      const std::string& name = t.at("name").as_string("table name");
      const std::string& dir = t.at("dir").as_string("table dir");
      t.at("seed").as_int("table seed");
      SC_CHECK(!name.empty() && names.insert(name).second, CorruptData, "table '", name, "' listed twice or unnamed");
      SC_CHECK(is_plain_name(dir) && dirs.insert(dir).second, CorruptData, "table directory '", dir,
               "' is not a plain name or is listed twice");
    }
    m.at("kv").as_object("kv");
    for (const auto& [k, v] : m.at("dense").as_object("dense"))
      for (const Json& x : v.as_array("dense values")) x.as_double("dense value");
    if (m.contains("dense_rules")) m.at("dense_rules").as_object("dense_rules");
  } catch (const NotFound& e) {
    throw CorruptData("snapshot marker '" + path + "' is incomplete: " + e.what());
  } catch (const InvalidArgument& e) {
    throw CorruptData("snapshot marker '" + path + "' is invalid: " + e.what());
  } catch (const CorruptData& e) {
    throw CorruptData("snapshot marker '" + path + "' is invalid: " + e.what());
  }
}

std::string optional_save_id(const Json& m) {
  const Json* id = m.get("save_id");
  return id ? id->as_string() : std::string();
}

}  // namespace

std::string shard_directory_name(int g, int total) {
  return "shard-" + std::to_string(g) + "-of-" + std::to_string(total);
}

std::string shard_marker_name(int g, int total) { return shard_directory_name(g, total) + ".json"; }

void check_snapshot_name(const std::string& name) {
  SC_CHECK_ARG(is_plain_name(name) && name[0] != '.' && name.size() <= 200, "snapshot name '", name.substr(0, 64),
               "' must be a plain name (no '/', not starting with '.', at most 200 bytes)");
}

std::string snapshot_path(const std::string& root, const std::string& name) {
  SC_CHECK_ARG(!root.empty(),
               "this server has no snapshot directory (start it with --snapshot-dir); "
               "save and restore are refused");
  check_snapshot_name(name);
  return join(root, name);
}

std::string begin_snapshot_write(const std::string& root, const std::string& name, const std::string& save_id,
                                 bool overwrite) {
  const std::string target = snapshot_path(root, name);
  check_save_id(save_id);
  SC_CHECK_ARG(overwrite || !path_exists(target), "snapshot '", name, "' exists (pass overwrite)");
  SC_CHECK_ARG(!path_exists(target) || is_real_directory(target), "'", name,
               "' in the snapshot directory is not a directory; refusing to replace it");
  const std::string staging = join(root, staging_name(name, save_id));
  make_directories(root);
  if (::mkdir(staging.c_str(), 0755) != 0 && errno != EEXIST) check_syscall(false, "cannot create directory", staging);
  SC_CHECK(is_real_directory(staging), IoError, "staging path '", staging, "' is not a directory");
  return staging;
}

void commit_snapshot(const std::string& root, const std::string& name, const std::string& save_id, int total_shards,
                     bool overwrite) {
  const std::string target = snapshot_path(root, name);
  check_save_id(save_id);
  const std::string staging = join(root, staging_name(name, save_id));
  SC_CHECK(is_real_directory(staging), NotFound, "save ", save_id, " of snapshot '", name, "' was not written");
  SnapshotMarkers m = read_snapshot_markers(staging);
  SC_CHECK(m.total_shards == total_shards, CorruptData, "save ", save_id, " of '", name, "' has ", m.total_shards,
           " shards, the cluster ", total_shards);
  for (const Json& marker : m.markers)
    SC_CHECK(optional_save_id(marker) == save_id, CorruptData, "save ", save_id, " of '", name,
             "' holds a marker of another save");
  SC_CHECK_ARG(overwrite || !path_exists(target), "snapshot '", name, "' exists (pass overwrite)");
  SC_CHECK_ARG(!path_exists(target) || is_real_directory(target), "'", name,
               "' in the snapshot directory is not a directory; refusing to replace it");
  commit_directory(staging, target, /*files_synced=*/true);  // SnapshotPart::write fsyncs each file
}

void abort_snapshot(const std::string& root, const std::string& name, const std::string& save_id) {
  snapshot_path(root, name);
  check_save_id(save_id);
  remove_tree(join(root, staging_name(name, save_id)));
}

void remove_unfinished_snapshots(const std::string& root) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string name = e.path().filename().string();
    if (name.size() <= 1 || name[0] != '.' || name.find(".saving-") == std::string::npos) continue;
    // Servers of one cluster share the snapshot directory: a peer may be writing into this
    // save right now, and a directory it is filling cannot always be removed. That save then
    // fails to commit (its markers are gone) and is retried; starting never fails on it.
    try {
      remove_tree(e.path().string());
    } catch (const IoError&) {
    }
  }
}

SnapshotMarkers read_snapshot_markers(const std::string& dir) {
  SC_CHECK(is_real_directory(dir), NotFound, "no snapshot directory '", dir, "' (or it is a symlink)");
  SnapshotMarkers out;
  out.total_shards = marker_layout(dir);
  SC_CHECK(out.total_shards > 0 && all_markers_exist(dir, out.total_shards), NotFound, "no complete snapshot in '", dir,
           "'");
  std::string save_id;
  for (int g = 0; g < out.total_shards; ++g) {
    const std::string path = join(dir, shard_marker_name(g, out.total_shards));
    Json m = read_marker(path);
    check_marker(m, path, g, out.total_shards);
    const int64_t step = m.at("step").as_int();
    const std::string id = optional_save_id(m);
    SC_CHECK(g == 0 || (step == out.step && id == save_id), CorruptData, "snapshot '", dir,
             "' mixes shards of two saves (steps ", out.step, " and ", step, ")");
    out.step = step;
    save_id = id;
    out.markers.push_back(std::move(m));
  }
  return out;
}

bool snapshot_complete(const std::string& dir) {
  if (!is_real_directory(dir)) return false;
  try {
    int total = marker_layout(dir);
    return total > 0 && all_markers_exist(dir, total);
  } catch (const CorruptData&) {
    return false;
  }
}

std::string latest_snapshot(const std::string& root) {
  std::error_code ec;
  int64_t best = -1;
  std::string best_dir;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    long long k;
    const std::string name = e.path().filename().string();
    if (std::sscanf(name.c_str(), "step-%lld", &k) != 1 || k < 0 || name != "step-" + std::to_string(k)) continue;
    if (k > best && snapshot_complete(e.path().string())) {
      best = k;
      best_dir = e.path().string();
    }
  }
  return best_dir;
}

}  // namespace sparsecore::ps
