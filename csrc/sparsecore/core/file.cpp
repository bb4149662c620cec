#include "sparsecore/core/file.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <random>

#include "sparsecore/core/error.h"

namespace sparsecore {

void check_syscall(bool ok, const char* what, const std::string& path) {
  if (!ok) throw IoError(std::string(what) + " '" + path + "': " + std::strerror(errno));
}

File File::create(const std::string& path) {
  // O_NONBLOCK: a FIFO put where a file is written fails (ENXIO) instead of waiting for a reader.
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0644));
  check_syscall(fd.valid(), "cannot create", path);
  struct stat st;
  check_syscall(::fstat(fd.get(), &st) == 0, "cannot stat", path);
  SC_CHECK(S_ISREG(st.st_mode), IoError, "cannot create '", path, "': something other than a regular file is there");
  check_syscall(::fcntl(fd.get(), F_SETFL, 0) == 0, "cannot set flags of", path);
  return File(std::move(fd), path);
}

File File::open_regular(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
  if (!fd.valid() && errno == ELOOP) throw CorruptData("'" + path + "' is a symlink, not a regular file");
  check_syscall(fd.valid(), "cannot open", path);
  struct stat st;
  check_syscall(::fstat(fd.get(), &st) == 0, "cannot stat", path);
  SC_CHECK(S_ISREG(st.st_mode), CorruptData, "'", path, "' is not a regular file");
  // Regular files never block; clearing O_NONBLOCK keeps reads plain.
  check_syscall(::fcntl(fd.get(), F_SETFL, 0) == 0, "cannot set flags of", path);
  return File(std::move(fd), path);
}

File File::open_read(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  check_syscall(fd.valid(), "cannot open", path);
  return File(std::move(fd), path);
}

void File::write_all(const void* data, size_t bytes) {
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    ssize_t w = ::write(fd_.get(), p, bytes);
    if (w < 0 && errno == EINTR) continue;
    check_syscall(w > 0, "cannot write", path_);
    p += w;
    bytes -= static_cast<size_t>(w);
  }
}

void File::write_at(const void* data, size_t bytes, uint64_t offset) const {
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    ssize_t w = ::pwrite(fd_.get(), p, bytes, static_cast<off_t>(offset));
    if (w < 0 && errno == EINTR) continue;
    check_syscall(w > 0, "cannot write", path_);
    p += w;
    offset += static_cast<uint64_t>(w);
    bytes -= static_cast<size_t>(w);
  }
}

void File::start_writeback(uint64_t offset, uint64_t bytes) const {
#ifdef __linux__
  (void)::sync_file_range(fd_.get(), static_cast<off_t>(offset), static_cast<off_t>(bytes), SYNC_FILE_RANGE_WRITE);
#else
  (void)offset;
  (void)bytes;
#endif
}

void File::read_exact(void* data, size_t bytes) {
  char* p = static_cast<char*>(data);
  while (bytes > 0) {
    ssize_t r = ::read(fd_.get(), p, bytes);
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
    ssize_t r = ::pread(fd_.get(), p + done, bytes - done, static_cast<off_t>(offset + done));
    if (r < 0 && errno == EINTR) continue;
    check_syscall(r >= 0, "cannot read", path_);
    if (r == 0) break;
    done += static_cast<size_t>(r);
  }
  return done;
}

uint64_t File::size() const {
  struct stat st;
  check_syscall(::fstat(fd_.get(), &st) == 0, "cannot stat", path_);
  return static_cast<uint64_t>(st.st_size);
}

void File::sync() { check_syscall(::fsync(fd_.get()) == 0, "cannot fsync", path_); }

void File::close() { check_syscall(fd_.close(), "cannot close", path_); }

std::vector<uint8_t> read_file(const std::string& path) {
  File f = File::open_read(path);
  std::vector<uint8_t> data(f.size());
  f.read_exact(data.data(), data.size());
  return data;
}

std::vector<uint8_t> read_regular_file(const std::string& path, uint64_t max_bytes) {
  File f = File::open_regular(path);
  const uint64_t size = f.size();
  SC_CHECK(size <= max_bytes, CorruptData, "'", path, "' has ", size, " bytes, more than the ", max_bytes,
           " it may hold");
  std::vector<uint8_t> data(size);
  f.read_exact(data.data(), data.size());
  return data;
}

void sync_directory(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  check_syscall(fd.valid(), "cannot open directory", path);
  check_syscall(::fsync(fd.get()) == 0, "cannot fsync directory", path);
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

bool is_real_directory(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool is_plain_name(std::string_view name) {
  return !name.empty() && name.size() <= 255 && name != "." && name != ".." &&
         name.find('/') == std::string_view::npos && name.find('\0') == std::string_view::npos;
}

void make_directory(const std::string& path) {
  check_syscall(::mkdir(path.c_str(), 0755) == 0, "cannot create directory", path);
}

void remove_tree(const std::string& path) {
  std::error_code ec;
  std::filesystem::remove_all(path, ec);  // removes symlinks themselves, never their targets
  if (ec) throw IoError("cannot remove '" + path + "': " + ec.message());
}

void sync_tree(const std::string& path, bool files) {
  std::error_code ec;
  std::filesystem::recursive_directory_iterator it(path, std::filesystem::directory_options::none, ec), end;
  if (ec) throw IoError("cannot list '" + path + "': " + ec.message());
  for (; it != end; it.increment(ec)) {
    if (ec) throw IoError("cannot list '" + path + "': " + ec.message());
    const std::string p = it->path().string();
    struct stat st;
    check_syscall(::lstat(p.c_str(), &st) == 0, "cannot stat", p);
    if (S_ISDIR(st.st_mode)) {
      sync_directory(p);
    } else if (files && S_ISREG(st.st_mode)) {
      UniqueFd fd(::open(p.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
      check_syscall(fd.valid(), "cannot open", p);
      check_syscall(::fsync(fd.get()) == 0, "cannot fsync", p);
    }
  }
  if (ec) throw IoError("cannot list '" + path + "': " + ec.message());
  sync_directory(path);
}

std::string random_suffix() {
  static thread_local std::mt19937_64 rng([] {
    std::random_device rd;
    return (static_cast<uint64_t>(rd()) << 32) ^ rd() ^ static_cast<uint64_t>(::getpid());
  }());
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(rng()));
  return buf;
}

bool is_random_suffix(std::string_view text) {
  return text.size() == 16 &&
         std::all_of(text.begin(), text.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

int remove_stale_stagings(const std::string& parent, std::string_view prefix) {
  int removed = 0;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(parent, ec)) {
    const std::string name = entry.path().filename().string();
    if (!name.starts_with(prefix) || !is_random_suffix(std::string_view(name).substr(prefix.size()))) continue;
    const std::string path = entry.path().string();
    if (!is_real_directory(path)) continue;
    try {
      remove_tree(path);
      ++removed;
    } catch (const IoError&) {  // left for the next write
    }
  }
  return removed;
}

namespace {

std::string parent_of(const std::string& path) {
  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  return parent.empty() ? "." : parent.string();
}

// renameat2(RENAME_EXCHANGE) through syscall(): older C libraries lack the wrapper.
bool exchange_paths(const std::string& a, const std::string& b) {
#ifdef SYS_renameat2
  constexpr unsigned kExchange = 2;  // RENAME_EXCHANGE
  if (::syscall(SYS_renameat2, AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), kExchange) == 0) return true;
  if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP) check_syscall(false, "cannot exchange", b);
#endif
  return false;
}

}  // namespace

void commit_directory(const std::string& staging, const std::string& target, bool files_synced) {
  sync_tree(staging, !files_synced);
  const std::string parent = parent_of(target);
  struct stat st;
  if (::lstat(target.c_str(), &st) != 0) {
    check_syscall(errno == ENOENT, "cannot stat", target);
    check_syscall(::rename(staging.c_str(), target.c_str()) == 0, "cannot rename into", target);
    sync_directory(parent);
    return;
  }
  SC_CHECK(S_ISDIR(st.st_mode), IoError, "'", target, "' exists and is not a directory");
  if (exchange_paths(staging, target)) {
    sync_directory(parent);
    remove_tree(staging);  // now the old tree
    return;
  }
  const std::string previous = target + ".previous";
  remove_tree(previous);
  check_syscall(::rename(target.c_str(), previous.c_str()) == 0, "cannot rename away", target);
  sync_directory(parent);
  check_syscall(::rename(staging.c_str(), target.c_str()) == 0, "cannot rename into", target);
  sync_directory(parent);
  remove_tree(previous);
}

std::string committed_directory(const std::string& target) {
  if (is_real_directory(target)) return target;
  if (is_real_directory(target + ".previous")) return target + ".previous";
  return "";
}

}  // namespace sparsecore
