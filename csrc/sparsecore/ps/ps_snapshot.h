// Snapshots of parameter-server shards, confined to a server's snapshot root.
//
// Layout under the root (a directory the server owner chose, --snapshot-dir):
//   <name>/                          a committed snapshot; names are plain ("step-7")
//     shard-<g>-of-<T>.json          marker of global shard g of T: step, save id, tables
//                                    (name, seed, directory), kv entries, dense variables
//     shard-<g>-of-<T>/table-<i>/    one collection checkpoint per table
//   .<name>.saving-<save id>/        a save in progress, written by every shard
//
// A save is two-phase: every shard writes its part into the save's staging directory, then
// one commit checks that every marker of the save is there and switches the staging
// directory in (commit_directory), so a crash at any instant leaves the previous snapshot of
// that name (or none) and never a mix of two saves. Only names cross the wire; readers never
// follow a symlink inside the root and check every marker field (CorruptData otherwise).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "sparsecore/core/json.h"

namespace sparsecore::ps {

// The directory (shard-<g>-of-<T>) and the marker (its name + ".json") of global shard g of T.
std::string shard_directory_name(int g, int total);
std::string shard_marker_name(int g, int total);
// Throws InvalidArgument unless `name` is a plain name that does not start with '.'.
void check_snapshot_name(const std::string& name);
// root/name, after refusing an empty root (a server without a snapshot directory) and a name
// that is not a snapshot name.
std::string snapshot_path(const std::string& root, const std::string& name);

// Save, phase 1 (every shard): the staging directory of save `save_id` (16 hex digits) of
// `name`, created by the first shard that gets there. Refuses (InvalidArgument) when a
// snapshot `name` exists and !overwrite.
std::string begin_snapshot_write(const std::string& root, const std::string& name, const std::string& save_id,
                                 bool overwrite);
// Save, phase 2 (once): checks that all `total_shards` markers of the save are there, then
// switches the staging directory in as root/name.
void commit_snapshot(const std::string& root, const std::string& name, const std::string& save_id, int total_shards,
                     bool overwrite);
// Removes the staging directory of a save that failed.
void abort_snapshot(const std::string& root, const std::string& name, const std::string& save_id);
// Removes staging directories left by saves that died (at server start).
void remove_unfinished_snapshots(const std::string& root);

// The checked markers of a complete snapshot: the same layout (T), step and save id in every
// one, each table once per marker with a plain directory name. Throws NotFound when `dir`
// holds no complete snapshot, CorruptData when a marker is damaged or forged.
struct SnapshotMarkers {
  int total_shards = 0;
  int64_t step = 0;
  std::vector<Json> markers;  // by global shard
};
SnapshotMarkers read_snapshot_markers(const std::string& dir);

// Whether every marker of one layout exists in `dir` (a real directory).
bool snapshot_complete(const std::string& dir);
// Newest complete step-<k> directory under `root` (its path), or "" when there is none.
std::string latest_snapshot(const std::string& root);

}  // namespace sparsecore::ps
