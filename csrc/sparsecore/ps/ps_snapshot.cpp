#include "sparsecore/ps/ps_snapshot.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <filesystem>
#include <set>

#include "sparsecore/core/checksum.h"
#include "sparsecore/core/error.h"
#include "sparsecore/core/file.h"
#include "sparsecore/core/hash.h"

namespace sparsecore::ps {
namespace fs = std::filesystem;

namespace {

// A marker holds the dense variables as JSON numbers; beyond this it is not one we wrote.
constexpr uint64_t kMaxMarkerBytes = 1ull << 30;

std::string join(const std::string& a, const std::string& b) { return (fs::path(a) / b).string(); }

std::string owner_suffix(int server) { return ".server-" + std::to_string(server); }

// The staging directories of a save share this head; server i's adds owner_suffix(i).
std::string staging_head(const std::string& name, const std::string& save_id) {
  return "." + name + ".saving-" + save_id;
}

std::string staging_name(const std::string& name, const std::string& save_id, int server) {
  return staging_head(name, save_id) + owner_suffix(server);
}

// Whether `text` is a non-empty run of decimal digits fitting uint64 (its value in *v).
bool parse_decimal(std::string_view text, uint64_t* v) {
  if (text.empty()) return false;
  for (char c : text)
    if (c < '0' || c > '9') return false;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), *v);
  return ec == std::errc() && end == text.data() + text.size();
}

// Every server's staging directory of one save: server index -> path (real directories only).
std::map<int, std::string> save_stagings(const std::string& root, const std::string& name, const std::string& save_id) {
  const std::string head = staging_head(name, save_id) + ".server-";
  std::map<int, std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string entry = e.path().filename().string();
    uint64_t server;
    if (entry.compare(0, head.size(), head) != 0 ||
        !parse_decimal(std::string_view(entry).substr(head.size()), &server) || server > (1u << 20) ||
        entry != head + std::to_string(server))
      continue;
    if (is_real_directory(e.path().string())) out[static_cast<int>(server)] = e.path().string();
  }
  return out;
}

// n when `entry` is <prefix><n> or <prefix><n>-step-<k>.
bool series_number(const std::string& entry, const std::string& prefix, uint64_t* n) {
  if (entry.size() <= prefix.size() || entry.compare(0, prefix.size(), prefix) != 0) return false;
  std::string_view rest = std::string_view(entry).substr(prefix.size());
  const size_t dash = rest.find("-step-");
  uint64_t k;
  if (dash != std::string_view::npos && !parse_decimal(rest.substr(dash + 6), &k)) return false;
  return parse_decimal(rest.substr(0, dash), n);
}

// Save ids are random_suffix() of the client that saves.
void check_save_id(const std::string& id) {
  SC_CHECK_ARG(is_random_suffix(id), "save id must be 16 lowercase hex digits, got '", id.substr(0, 40), "'");
}

// Whether `entry` is the staging directory name of a save by a server that did not yet name
// its staging after its index (.<name>.saving-<save id>, no owner suffix). No server writes
// such names now, so one left in the root died with its save.
bool is_unowned_staging(const std::string& entry) {
  constexpr std::string_view kSaving = ".saving-";
  constexpr size_t kTail = kSaving.size() + 16;
  if (entry.size() <= kTail + 1 || entry[0] != '.') return false;
  const std::string_view tail = std::string_view(entry).substr(entry.size() - kTail);
  const std::string name = entry.substr(1, entry.size() - kTail - 1);
  return tail.substr(0, kSaving.size()) == kSaving && is_random_suffix(tail.substr(kSaving.size())) &&
         is_plain_name(name) && name[0] != '.' && name.size() <= 200;
}

// Removes the unowned staging directories of the root (real directories only: a symlink of
// that name is left alone, and nothing is followed). Never fails on one it cannot remove.
void remove_unowned_stagings(const std::string& root) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    if (!is_unowned_staging(e.path().filename().string()) || !is_real_directory(e.path().string())) continue;
    try {
      remove_tree(e.path().string());
    } catch (const IoError&) {
    }
  }
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
    const int64_t format = m.at("format").as_int("format");
    SC_CHECK(format == 1 || format == 2, CorruptData, "unknown marker format ", format,
             " (this version reads formats 1 and 2)");
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
    if (format == 1) {  // values as JSON numbers, no optimizer state
      for (const auto& [k, v] : m.at("dense").as_object("dense"))
        for (const Json& x : v.as_array("dense values")) x.as_double("dense value");
    } else {
      int64_t total = 0;
      parse_dense_entries(m, &total);
    }
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

// i when `name` is "<prefix>/<i>" with i written as Python's str(i) writes it (no sign, no
// leading zero); -1 otherwise.
int64_t name_index(const std::string& name, std::string* prefix) {
  const size_t slash = name.rfind('/');
  if (slash == std::string::npos || slash + 1 == name.size()) return -1;
  const std::string_view digits(name.data() + slash + 1, name.size() - slash - 1);
  if (digits.size() > 1 && digits[0] == '0') return -1;
  int64_t i = -1;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), i);
  if (ec != std::errc() || end != digits.data() + digits.size() || i < 0) return -1;
  *prefix = name.substr(0, slash);
  return i;
}

}  // namespace

std::vector<DenseEntry> parse_dense_entries(const Json& marker, int64_t* total_floats) {
  std::vector<DenseEntry> out;
  std::set<std::string> names;
  int64_t offset = 0;
  try {
    for (const Json& e : marker.at("dense").as_array("dense")) {
      DenseEntry d;
      d.name = e.at("name").as_string("dense variable name");
      SC_CHECK(!d.name.empty() && names.insert(d.name).second, CorruptData, "dense variable '", d.name,
               "' listed twice or unnamed");
      d.size = e.at("size").as_int("dense variable size");
      SC_CHECK(d.size >= 1 && d.size <= kMaxDenseValues, CorruptData, "dense variable '", d.name, "' has size ", d.size,
               ", outside [1, 2^28]");
      const Json& opt = e.at("optimizer");
      if (!opt.is_null()) {
        d.has_optimizer = true;
        d.optimizer = OptimizerConfig::from_json(opt);
        d.optimizer.validate();
        d.state_size = d.optimizer.state_dim(static_cast<int>(d.size));
      }
      SC_CHECK(e.at("state_size").as_int("state size") == d.state_size, CorruptData, "dense variable '", d.name,
               "' lists ", e.at("state_size").as_int(), " state values, its optimizer keeps ", d.state_size);
      const int64_t count = e.at("count").as_int("update count");
      SC_CHECK(count >= 0 && count <= int64_t{UINT32_MAX}, CorruptData, "dense variable '", d.name,
               "' has update count ", count);
      SC_CHECK(d.has_optimizer || count == 0, CorruptData, "dense variable '", d.name,
               "' has no optimizer but an update count");
      d.count = static_cast<uint32_t>(count);
      d.checksum = parse_checksum_hex(e.at("checksum").as_string("checksum"));
      d.offset = offset;
      offset += d.size + d.state_size;  // no overflow: the marker's size bounds the entries
      out.push_back(std::move(d));
    }
  } catch (const NotFound& e) {
    throw CorruptData(std::string("dense variables: ") + e.what());
  } catch (const InvalidArgument& e) {
    throw CorruptData(std::string("dense variables: ") + e.what());
  }
  *total_floats = offset;
  return out;
}

std::vector<int> place_by_size(const std::vector<int64_t>& sizes, int num_shards) {
  SC_CHECK_ARG(num_shards >= 1, "num_shards must be >= 1, got ", num_shards);
  std::vector<size_t> order(sizes.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return sizes[a] > sizes[b]; });
  std::vector<int64_t> load(static_cast<size_t>(num_shards), 0);
  std::vector<int> shard(sizes.size(), 0);
  for (size_t i : order) {
    const int g = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());  // first minimum
    shard[i] = g;
    load[static_cast<size_t>(g)] += sizes[i];
  }
  return shard;
}

std::map<std::string, std::pair<int, const DenseEntry*>> place_restored_dense(
    const std::vector<std::vector<DenseEntry>>& by_old_shard, int num_shards) {
  std::map<std::string, std::pair<int, const DenseEntry*>> out;
  std::map<std::string, std::map<int64_t, const DenseEntry*>> groups;  // prefix -> index -> entry
  for (const auto& entries : by_old_shard)
    for (const DenseEntry& e : entries) {
      if (!out.emplace(e.name, std::make_pair(0, &e)).second) continue;  // the lowest old shard's
      std::string prefix;
      const int64_t i = e.has_optimizer ? name_index(e.name, &prefix) : -1;
      if (i >= 0) groups[prefix][i] = &e;
    }
  for (const auto& [prefix, members] : groups) {
    std::vector<int64_t> sizes;
    for (const auto& [i, e] : members) sizes.push_back(e->size);
    const std::vector<int> shards = place_by_size(sizes, num_shards);
    size_t k = 0;
    for (const auto& [i, e] : members) out[e->name].first = shards[k++];
  }
  return out;
}

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
                                 bool overwrite, int server) {
  const std::string target = snapshot_path(root, name);
  check_save_id(save_id);
  SC_CHECK_ARG(overwrite || !path_exists(target), "snapshot '", name, "' exists (pass overwrite)");
  SC_CHECK_ARG(!path_exists(target) || is_real_directory(target), "'", name,
               "' in the snapshot directory is not a directory; refusing to replace it");
  const std::string staging = join(root, staging_name(name, save_id, server));
  make_directories(root);
  if (::mkdir(staging.c_str(), 0755) != 0 && errno != EEXIST) check_syscall(false, "cannot create directory", staging);
  SC_CHECK(is_real_directory(staging), IoError, "staging path '", staging, "' is not a directory");
  return staging;
}

void commit_snapshot(const std::string& root, const std::string& name, const std::string& save_id, int total_shards,
                     bool overwrite, int server) {
  const std::string target = snapshot_path(root, name);
  check_save_id(save_id);
  const std::string staging = join(root, staging_name(name, save_id, server));
  const std::map<int, std::string> parts = save_stagings(root, name, save_id);
  SC_CHECK(parts.count(server), NotFound, "save ", save_id, " of snapshot '", name, "' was not written");
  // The other servers' parts join this one (renames within the root: no copy).
  for (const auto& [other, dir] : parts) {
    if (other == server) continue;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      const std::string entry = e.path().filename().string();
      const std::string to = join(staging, entry);
      SC_CHECK(!path_exists(to), CorruptData, "save ", save_id, " of '", name, "': '", entry,
               "' was written by two servers");
      check_syscall(::rename(e.path().c_str(), to.c_str()) == 0, "cannot move a part of the save into", to);
    }
    SC_CHECK(!ec, IoError, "cannot list '", dir, "': ", ec.message());
    ::rmdir(dir.c_str());  // emptied; one left behind is removed when its server starts
  }
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
  // The committing server (of shard 0) owns what saves of unnamed servers left behind.
  remove_unowned_stagings(root);
}

void abort_snapshot(const std::string& root, const std::string& name, const std::string& save_id) {
  snapshot_path(root, name);
  check_save_id(save_id);
  for (const auto& [server, dir] : save_stagings(root, name, save_id)) remove_tree(dir);
}

void remove_unfinished_snapshots(const std::string& root, int server) {
  const std::string suffix = owner_suffix(server);
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string name = e.path().filename().string();
    if (name.size() <= suffix.size() + 1 || name[0] != '.' ||
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0 ||
        (name.find(".saving-") == std::string::npos && name.find(".pruning-") == std::string::npos))
      continue;
    // Only this server's entries: they died with its previous run. Starting never fails on
    // one that cannot be removed.
    try {
      remove_tree(e.path().string());
    } catch (const IoError&) {
    }
  }
  if (server == 0) remove_unowned_stagings(root);
}

void check_prune_request(const std::string& root, const std::string& prefix, int64_t keep,
                         const std::vector<std::string>& protect) {
  SC_CHECK_ARG(!root.empty(),
               "this server has no snapshot directory (start it with --snapshot-dir); there is nothing to prune");
  SC_CHECK_ARG(keep >= 1, "keep must be >= 1 (the newest complete snapshot is never removed), got ", keep);
  SC_CHECK_ARG(prefix.size() <= 64 && is_plain_name(prefix) && prefix[0] != '.', "snapshot series prefix '",
               prefix.substr(0, 64), "' must be a plain name (no '/', not starting with '.', at most 64 bytes)");
  SC_CHECK_ARG(protect.size() <= 4096, "at most 4096 protected snapshot names, got ", protect.size());
  for (const std::string& name : protect) check_snapshot_name(name);
}

std::vector<std::string> prune_snapshots(const std::string& root, const std::string& prefix, int64_t keep,
                                         const std::vector<std::string>& protect, int server) {
  check_prune_request(root, prefix, keep, protect);
  const std::set<std::string> kept(protect.begin(), protect.end());
  std::vector<std::pair<uint64_t, std::string>> complete;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string entry = e.path().filename().string();
    uint64_t n;
    // snapshot_complete refuses a symlink: only real directories of the root are candidates.
    if (series_number(entry, prefix, &n) && snapshot_complete(e.path().string())) complete.emplace_back(n, entry);
  }
  SC_CHECK(!ec, IoError, "cannot list the snapshot directory '", root, "': ", ec.message());
  std::sort(complete.rbegin(), complete.rend());  // newest first
  std::vector<std::string> removed;
  for (size_t i = static_cast<size_t>(std::min<int64_t>(keep, static_cast<int64_t>(complete.size())));
       i < complete.size(); ++i) {
    const std::string& entry = complete[i].second;
    if (kept.count(entry)) continue;
    const std::string hidden = join(root, "." + entry + ".pruning-" + random_suffix() + owner_suffix(server));
    if (::rename(join(root, entry).c_str(), hidden.c_str()) != 0) {
      if (errno == ENOENT) continue;  // a peer sharing the root removed it first
      check_syscall(false, "cannot move away old snapshot", join(root, entry));
    }
    removed.push_back(entry);
    remove_tree(hidden);
  }
  if (!removed.empty()) sync_directory(root);
  return removed;
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
