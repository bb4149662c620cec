// Files for checkpoints: RAII descriptors whose factories throw IoError naming the path and
// the failed call, whole-file reads, and the write-temp/fsync/rename sequence that makes a
// file appear complete or not at all.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace sparsecore {

// Throws IoError "<what> '<path>': <strerror(errno)>" when `ok` is false.
void check_syscall(bool ok, const char* what, const std::string& path);

class File {
 public:
  // Creates or truncates `path` for writing.
  static File create(const std::string& path);
  static File open_read(const std::string& path);
  File(File&& other) noexcept;
  File& operator=(File&& other) noexcept;
  File(const File&) = delete;
  File& operator=(const File&) = delete;
  ~File();

  void write_all(const void* data, size_t bytes);
  // Reads exactly `bytes` or throws CorruptData("truncated").
  void read_exact(void* data, size_t bytes);
  // Reads up to `bytes` at `offset` without moving the file position (fewer only at the end
  // of the file); returns how many were read. Safe from several threads at once.
  size_t read_at(void* data, size_t bytes, uint64_t offset) const;
  uint64_t size() const;
  void sync();
  void close();  // checked close; the destructor closes unchecked
  const std::string& path() const { return path_; }

 private:
  File(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  int fd_ = -1;
  std::string path_;
};

std::vector<uint8_t> read_file(const std::string& path);
// Writes `data` to path + ".tmp", fsyncs it, renames it over `path`, fsyncs the directory.
void write_file_atomic(const std::string& path, const void* data, size_t bytes);
void make_directories(const std::string& path);
void sync_directory(const std::string& path);
bool path_exists(const std::string& path);
void remove_file(const std::string& path);  // missing files are not an error

}  // namespace sparsecore
