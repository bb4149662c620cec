// UniqueFd: the one owner of a POSIX file descriptor (file, socket, epoll instance, eventfd).
//
// Ownership: exactly one UniqueFd owns a descriptor; it is move-only and closes what it holds
// when destroyed, reset or closed. Code that only uses a descriptor for a call takes a plain
// `int` (get()); code that takes ownership takes a UniqueFd by value. release() hands the
// descriptor back to the caller, who must then close it.
//
// Closing: close(2) is called exactly once per descriptor and never retried. Linux releases the
// descriptor even when close reports EINTR, so a retry could close a descriptor that another
// thread has just been given; EINTR is therefore not an error here. Other errors (EIO, ENOSPC,
// EDQUOT from a delayed write-back) are reported by close() and ignored by the destructor and
// reset(): writers that need durability call fsync first and check close() (File::close).
// After any close the object is empty (get() == -1), so closing twice closes nothing.
//
// Thread-safety: none; one object is used by one thread at a time (like any value type).
#pragma once

namespace sparsecore {

class UniqueFd {
 public:
  UniqueFd() noexcept = default;
  // Takes ownership of `fd`; a negative value makes an empty object (so the result of a failed
  // open/socket/accept call can be wrapped before it is checked).
  explicit UniqueFd(int fd) noexcept : fd_(fd < 0 ? -1 : fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    reset(other.release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  // The descriptor, still owned by this object; -1 when empty.
  int get() const noexcept { return fd_; }
  bool valid() const noexcept { return fd_ >= 0; }
  explicit operator bool() const noexcept { return valid(); }

  // Gives up ownership without closing; the object is empty afterwards.
  int release() noexcept {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }
  // Closes the held descriptor (errors ignored) and takes ownership of `fd` (negative: none).
  // Resetting to the descriptor already held keeps it open.
  void reset(int fd = -1) noexcept;
  // Closes the held descriptor now. Returns false, with errno set, when close(2) reported an
  // error other than EINTR; the descriptor is released either way and the object is empty.
  // An empty object returns true without a system call.
  [[nodiscard]] bool close() noexcept;

 private:
  int fd_ = -1;
};

}  // namespace sparsecore
