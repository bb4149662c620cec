// A read-only file descriptor that closes itself; every failing system call throws IoError
// naming the file and the reason.
#pragma once

#include <cstdint>
#include <string>

namespace sparsecore::io {

class PosixFile {
 public:
  PosixFile() = default;
  // Opens `path` for reading; throws IoError ("<path>: <strerror>") when it cannot, or when
  // it is a directory.
  static PosixFile open_read(const std::string& path);

  PosixFile(PosixFile&& o) noexcept : fd_(o.fd_), path_(std::move(o.path_)) { o.fd_ = -1; }
  PosixFile& operator=(PosixFile&& o) noexcept;
  PosixFile(const PosixFile&) = delete;
  PosixFile& operator=(const PosixFile&) = delete;
  ~PosixFile();

  bool is_open() const { return fd_ >= 0; }
  const std::string& path() const { return path_; }
  int64_t size() const;
  // Reads up to n bytes at `offset` (fewer only at end of file); retries on EINTR.
  int64_t read_at(char* dst, int64_t n, int64_t offset) const;

 private:
  int fd_ = -1;
  std::string path_;
};

}  // namespace sparsecore::io
