#include "sparsecore/core/unique_fd.h"

#include <unistd.h>

#include <cerrno>

namespace sparsecore {

void UniqueFd::reset(int fd) noexcept {
  if (fd == fd_) return;
  const int saved_errno = errno;  // callers may reset while reporting an earlier failure
  (void)close();
  errno = saved_errno;
  fd_ = fd < 0 ? -1 : fd;
}

bool UniqueFd::close() noexcept {
  const int fd = release();
  if (fd < 0) return true;
  return ::close(fd) == 0 || errno == EINTR;
}

}  // namespace sparsecore
