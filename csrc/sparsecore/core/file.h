// Files for checkpoints: RAII descriptors whose factories throw IoError naming the path and
// the failed call, whole-file reads, the write-temp/fsync/rename sequence that makes a file
// appear complete or not at all, and its twin for directories (commit_directory), which makes
// a fully written directory replace another in one step.
//
// Checkpoint readers open files with open_regular: a symlink in the last component, a FIFO or
// a device is refused (CorruptData) instead of followed, or waited on for ever.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "sparsecore/core/unique_fd.h"

namespace sparsecore {

// Throws IoError "<what> '<path>': <strerror(errno)>" when `ok` is false.
void check_syscall(bool ok, const char* what, const std::string& path);

class File {
 public:
  // Creates or truncates `path` for writing; a symlink, FIFO or device at `path` is refused.
  static File create(const std::string& path);
  static File open_read(const std::string& path);
  // Opens an existing regular file for reading without following a symlink at `path` and
  // without blocking on a FIFO: anything but a regular file throws CorruptData naming it.
  static File open_regular(const std::string& path);
  // Move-only; the destructor closes the descriptor unchecked (UniqueFd).

  void write_all(const void* data, size_t bytes);
  // Writes all of `bytes` at `offset` without moving the file position. Safe from several
  // threads at once (each writing its own range).
  void write_at(const void* data, size_t bytes, uint64_t offset) const;
  // Asks the kernel to start writing [offset, offset + bytes) to the disk now, without waiting
  // (Linux sync_file_range; nothing elsewhere), so the disk works while the writer prepares
  // the next range. A hint: durability still needs sync(), which reports any write error.
  void start_writeback(uint64_t offset, uint64_t bytes) const;
  // Reads exactly `bytes` or throws CorruptData("truncated").
  void read_exact(void* data, size_t bytes);
  // Reads up to `bytes` at `offset` without moving the file position (fewer only at the end
  // of the file); returns how many were read. Safe from several threads at once.
  size_t read_at(void* data, size_t bytes, uint64_t offset) const;
  uint64_t size() const;
  void sync();
  void close();  // checked close (IoError); the destructor closes unchecked
  const std::string& path() const { return path_; }

 private:
  File(UniqueFd fd, std::string path) : fd_(std::move(fd)), path_(std::move(path)) {}
  UniqueFd fd_;
  std::string path_;
};

std::vector<uint8_t> read_file(const std::string& path);
// The whole of a regular file (File::open_regular) of at most `max_bytes`; a larger one throws
// CorruptData before anything is allocated.
std::vector<uint8_t> read_regular_file(const std::string& path, uint64_t max_bytes);
// Writes `data` to path + ".tmp", fsyncs it, renames it over `path`, fsyncs the directory.
void write_file_atomic(const std::string& path, const void* data, size_t bytes);
void make_directories(const std::string& path);
void sync_directory(const std::string& path);
bool path_exists(const std::string& path);
void remove_file(const std::string& path);  // missing files are not an error
// Whether `path` is a directory itself (a symlink to one is not).
bool is_real_directory(const std::string& path);
// One path component that stays where it is joined: non-empty, at most 255 bytes, no '/',
// no NUL, not "." or "..".
bool is_plain_name(std::string_view name);
// Creates the directory `path` (its parent must exist); throws IoError if it exists.
void make_directory(const std::string& path);
// Removes `path` and everything under it; symlinks are removed, never followed. Missing is fine.
void remove_tree(const std::string& path);
// fsyncs every directory under `path` (symlinks are not followed), then `path`; every regular
// file too when `files`.
void sync_tree(const std::string& path, bool files = true);
// 16 random hex digits, for names of directories being written.
std::string random_suffix();
// Whether `text` is spelled as random_suffix() spells one (16 lowercase hex digits).
bool is_random_suffix(std::string_view text);
// Removes the directories of `parent` named `prefix` + random_suffix() (stagings of writes that
// died before their switch): real directories only, a symlink or another entry of that name is
// left alone and nothing is followed. Best effort: one it cannot remove is skipped. Returns how
// many it removed. The caller makes sure no live write of its own uses such a name.
int remove_stale_stagings(const std::string& parent, std::string_view prefix);

// Makes the finished directory `staging` appear at `target` in one atomic step, durably:
// syncs `staging`'s tree (its files too unless the writer synced them: `files_synced`), then renames it to `target`
// when nothing is there, or exchanges the two (renameat2 RENAME_EXCHANGE) and removes the old tree. A crash at any
// instant leaves either the old or the new directory at `target`. Where the file system cannot exchange, the old
// directory is first renamed to `target` + ".previous" (see committed_directory). `staging` and `target` must be in the
// same directory.
void commit_directory(const std::string& staging, const std::string& target, bool files_synced = false);
// `target` when it is a real directory, else `target` + ".previous" when a commit on a file
// system without exchange was interrupted between its two renames, else "".
std::string committed_directory(const std::string& target);

}  // namespace sparsecore
