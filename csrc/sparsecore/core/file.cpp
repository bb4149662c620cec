#include "sparsecore/core/file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "sparsecore/core/error.h"

namespace sparsecore {

void check_syscall(bool ok, const char* what, const std::string& path) {
  if (!ok) throw IoError(std::string(what) + " '" + path + "': " + std::strerror(errno));
}

File File::create(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  check_syscall(fd >= 0, "cannot create", path);
  return File(fd, path);
}

File File::open_read(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  check_syscall(fd >= 0, "cannot open", path);
  return File(fd, path);
}

File::File(File&& other) noexcept : fd_(other.fd_), path_(std::move(other.path_)) { other.fd_ = -1; }

File& File::operator=(File&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.fd_;
    path_ = std::move(other.path_);
    other.fd_ = -1;
  }
  return *this;
}

File::~File() {
  if (fd_ >= 0) ::close(fd_);
}

void File::write_all(const void* data, size_t bytes) {
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    ssize_t w = ::write(fd_, p, bytes);
    if (w < 0 && errno == EINTR) continue;
    check_syscall(w > 0, "cannot write", path_);
    p += w;
    bytes -= static_cast<size_t>(w);
  }
}

void File::read_exact(void* data, size_t bytes) {
  char* p = static_cast<char*>(data);
  while (bytes > 0) {
    ssize_t r = ::read(fd_, p, bytes);
    if (r < 0 && errno == EINTR) continue;
    check_syscall(r >= 0, "cannot read", path_);
    SC_CHECK(r > 0, CorruptData, "file '", path_, "' is truncated");
    p += r;
    bytes -= static_cast<size_t>(r);
  }
}

size_t File::read_at(void* data, size_t bytes, uint64_t offset) const {
  char* p = static_cast<char*>(data);
  size_t done = 0;
  while (done < bytes) {
    ssize_t r = ::pread(fd_, p + done, bytes - done, static_cast<off_t>(offset + done));
    if (r < 0 && errno == EINTR) continue;
    check_syscall(r >= 0, "cannot read", path_);
    if (r == 0) break;
    done += static_cast<size_t>(r);
  }
  return done;
}

uint64_t File::size() const {
  struct stat st;
  check_syscall(::fstat(fd_, &st) == 0, "cannot stat", path_);
  return static_cast<uint64_t>(st.st_size);
}

void File::sync() { check_syscall(::fsync(fd_) == 0, "cannot fsync", path_); }

void File::close() {
  int fd = fd_;
  fd_ = -1;
  check_syscall(::close(fd) == 0, "cannot close", path_);
}

std::vector<uint8_t> read_file(const std::string& path) {
  File f = File::open_read(path);
  std::vector<uint8_t> data(f.size());
  f.read_exact(data.data(), data.size());
  return data;
}

void sync_directory(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  check_syscall(fd >= 0, "cannot open directory", path);
  int rc = ::fsync(fd);
  ::close(fd);
  check_syscall(rc == 0, "cannot fsync directory", path);
}

void write_file_atomic(const std::string& path, const void* data, size_t bytes) {
  std::string tmp = path + ".tmp";
  {
    File f = File::create(tmp);
    f.write_all(data, bytes);
    f.sync();
    f.close();
  }
  check_syscall(::rename(tmp.c_str(), path.c_str()) == 0, "cannot rename into", path);
  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  sync_directory(parent.empty() ? "." : parent.string());
}

void make_directories(const std::string& path) {
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec) throw IoError("cannot create directory '" + path + "': " + ec.message());
}

bool path_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

void remove_file(const std::string& path) {
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) check_syscall(false, "cannot remove", path);
}

}  // namespace sparsecore
