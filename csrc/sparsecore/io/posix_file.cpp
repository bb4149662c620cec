#include "sparsecore/io/posix_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "sparsecore/core/error.h"

namespace sparsecore::io {

namespace {
[[noreturn]] void throw_errno(const std::string& path, const char* what) {
  throw IoError(detail::concat(path, ": ", what, ": ", std::strerror(errno)));
}
}  // namespace

PosixFile PosixFile::open_read(const std::string& path) {
  PosixFile f;
  f.path_ = path;
  do {
    f.fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  } while (f.fd_ < 0 && errno == EINTR);
  if (f.fd_ < 0) throw_errno(path, "cannot open");
  struct stat st;
  if (::fstat(f.fd_, &st) != 0) throw_errno(path, "cannot stat");
  if (S_ISDIR(st.st_mode)) throw IoError(detail::concat(path, ": is a directory, not a file"));
  return f;
}

PosixFile& PosixFile::operator=(PosixFile&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.fd_;
    path_ = std::move(o.path_);
    o.fd_ = -1;
  }
  return *this;
}

PosixFile::~PosixFile() {
  if (fd_ >= 0) ::close(fd_);
}

int64_t PosixFile::size() const {
  struct stat st;
  if (::fstat(fd_, &st) != 0) throw_errno(path_, "cannot stat");
  return static_cast<int64_t>(st.st_size);
}

int64_t PosixFile::read_at(char* dst, int64_t n, int64_t offset) const {
  int64_t done = 0;
  while (done < n) {
    ssize_t r = ::pread(fd_, dst + done, static_cast<size_t>(n - done), offset + done);
    if (r < 0) {
      if (errno == EINTR) continue;
      throw_errno(path_, "read failed");
    }
    if (r == 0) break;
    done += r;
  }
  return done;
}

}  // namespace sparsecore::io
