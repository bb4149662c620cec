// Snapshots of parameter-server shards, confined to a server's snapshot root.
//
// Layout under the root (a directory the server owner chose, --snapshot-dir):
//   <name>/                          a committed snapshot; names are plain ("step-7")
//     shard-<g>-of-<T>.json          marker of global shard g of T: step, save id, tables
//                                    (name, seed, directory), kv entries, dense variables
//     shard-<g>-of-<T>/table-<i>/    one collection checkpoint per table
//     shard-<g>-of-<T>/dense.bin     the shard's dense variables (marker format 2): each
//                                    variable's values then its optimizer state, float32
//                                    little-endian, in the order the marker lists them
//   .<name>.saving-<save id>.server-<i>/     server i's part of a save in progress
//   .<name>.pruning-<random>.server-<i>/     a snapshot server i is removing (prune_snapshots)
//
// A save is two-phase: every shard writes its part into its server's staging directory of
// the save, then one commit (on the server of shard 0) moves the other servers' parts into
// its own, checks that every marker of the save is there and switches the directory in
// (commit_directory), so a crash at any instant leaves the previous snapshot of that name
// (or none) and never a mix of two saves. The servers of a cluster share the root; each
// hidden entry names the server that owns it, and a server starting removes only its own
// (a peer's save in progress is left alone). Staging directories without an owner suffix
// (.<name>.saving-<save id>/, written by servers before each named its own) belong to the
// server that commits saves: it removes them after each commit, and server 0 at its start.
// Only names cross the wire; readers never follow a symlink inside the root and check every
// marker field (CorruptData otherwise).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "sparsecore/core/json.h"
#include "sparsecore/optim/optimizer_config.h"

namespace sparsecore::ps {

// The directory (shard-<g>-of-<T>) and the marker (its name + ".json") of global shard g of T.
std::string shard_directory_name(int g, int total);
std::string shard_marker_name(int g, int total);
// Throws InvalidArgument unless `name` is a plain name that does not start with '.'.
void check_snapshot_name(const std::string& name);
// root/name, after refusing an empty root (a server without a snapshot directory) and a name
// that is not a snapshot name.
std::string snapshot_path(const std::string& root, const std::string& name);

// Save, phase 1 (every shard): server `server`'s staging directory of save `save_id` (16 hex
// digits) of `name`, created by the first of its shards that gets there. Refuses
// (InvalidArgument) when a snapshot `name` exists and !overwrite.
std::string begin_snapshot_write(const std::string& root, const std::string& name, const std::string& save_id,
                                 bool overwrite, int server);
// Save, phase 2 (once, by server `server`): moves every other server's part of the save into
// its own staging directory, checks that all `total_shards` markers of the save are there,
// then switches the directory in as root/name.
void commit_snapshot(const std::string& root, const std::string& name, const std::string& save_id, int total_shards,
                     bool overwrite, int server);
// Removes every server's staging directory of a save that failed (its client aborts it).
void abort_snapshot(const std::string& root, const std::string& name, const std::string& save_id);
// Removes the hidden entries server `server` left (parts of saves and removals that died
// with it), at its start; other servers' entries are left alone. Server 0 also removes the
// staging directories without an owner suffix (above).
void remove_unfinished_snapshots(const std::string& root, int server);
// Removes old snapshots of a series from `root`: of the complete snapshots whose names are
// <prefix><n> or <prefix><n>-step-<k> (n, k decimal; "step-" for saves by step, "c" for the
// coordinator's c<seq>-step-<k>), all but the `keep` (>= 1) with the largest n and those
// named in `protect`. Each is renamed to a hidden entry of server `server` first, so it
// vanishes at once, then removed. Symlinks, incomplete snapshots, saves in progress and
// other names are never touched. Throws InvalidArgument for keep < 1, a prefix that is not
// a plain name (no '/', not starting with '.', at most 64 bytes) or a protected name that is
// not a snapshot name. Returns the names removed, newest first.
std::vector<std::string> prune_snapshots(const std::string& root, const std::string& prefix, int64_t keep,
                                         const std::vector<std::string>& protect, int server);
// The checks of prune_snapshots' arguments alone (a server refuses a bad request at once).
void check_prune_request(const std::string& root, const std::string& prefix, int64_t keep,
                         const std::vector<std::string>& protect);

// The checked markers of a complete snapshot: the same layout (T), step and save id in every
// one, each table once per marker with a plain directory name. Throws NotFound when `dir`
// holds no complete snapshot, CorruptData when a marker is damaged or forged.
struct SnapshotMarkers {
  int total_shards = 0;
  int64_t step = 0;
  std::vector<Json> markers;  // by global shard
};
SnapshotMarkers read_snapshot_markers(const std::string& dir);

// A dense variable of a marker of format 2 (the marker's "dense" array): `size` values, then
// the `state_size` floats of its optimizer's state, `offset` floats into the shard's
// dense.bin; `count` updates applied so far (Adam's bias correction). A variable without an
// optimizer (dense_pull / dense_push) has no state.
inline constexpr const char* kDenseFileName = "dense.bin";
inline constexpr int64_t kMaxDenseValues = int64_t{1} << 28;  // floats of one variable
struct DenseEntry {
  std::string name;
  int64_t size = 0;
  bool has_optimizer = false;
  OptimizerConfig optimizer;
  int64_t state_size = 0;
  uint32_t count = 0;
  uint64_t checksum = 0;  // checksum64 of the values and state bytes
  int64_t offset = 0;
};
// The checked dense entries of a format-2 marker, offsets assigned in order; `total_floats`
// receives what dense.bin must hold. CorruptData names what is wrong (a name listed twice, a
// size outside [1, 2^28], an invalid optimizer, a state size that is not its optimizer's).
std::vector<DenseEntry> parse_dense_entries(const Json& marker, int64_t* total_floats);
// Global shard of each variable of `sizes` on `num_shards` shards: largest first, each to the
// shard holding the fewest values so far (the lowest index on a tie). The placement of
// sparsecore.torch.ServerDenseOptimizer, and of a restore onto another layout.
std::vector<int> place_by_size(const std::vector<int64_t>& sizes, int num_shards);
// Where the dense variables of a snapshot go on a layout of `num_shards` other than the
// snapshot's: variables with an optimizer named <prefix>/<i> (i = 0, 1, ..., as
// ServerDenseOptimizer names them) are placed per prefix with place_by_size over their sizes
// in index order, so the optimizer finds them where it looks; every other variable goes to
// shard 0 (where dense_pull and dense_push look by default). A name that several shards of
// the snapshot hold is taken from the lowest one. Returns name -> (shard, the entry).
std::map<std::string, std::pair<int, const DenseEntry*>> place_restored_dense(
    const std::vector<std::vector<DenseEntry>>& by_old_shard, int num_shards);

// Whether every marker of one layout exists in `dir` (a real directory).
bool snapshot_complete(const std::string& dir);
// Newest complete step-<k> directory under `root` (its path), or "" when there is none.
std::string latest_snapshot(const std::string& root);

}  // namespace sparsecore::ps
