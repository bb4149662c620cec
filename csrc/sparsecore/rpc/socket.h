// RAII TCP sockets whose factories throw: RpcConnectionError when a peer cannot be reached,
// IoError (via check_syscall) when a local call fails.
#pragma once

#include <cstdint>
#include <string>

namespace sparsecore::rpc {

class Socket {
 public:
  Socket() = default;
  explicit Socket(int fd) : fd_(fd) {}
  Socket(Socket&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  Socket& operator=(Socket&& o) noexcept;
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  ~Socket() { close(); }

  int fd() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() {
    int f = fd_;
    fd_ = -1;
    return f;
  }
  void close();

 private:
  int fd_ = -1;
};

// Listening socket on address:port (port 0: the kernel picks one; see local_port).
// Non-blocking, SO_REUSEADDR.
Socket listen_tcp(const std::string& address, int port, int backlog = 512);
int local_port(const Socket& s);
// Connected, non-blocking, TCP_NODELAY. Throws RpcConnectionError naming host:port when the
// connection is refused or not made within timeout_ms.
Socket connect_tcp(const std::string& host, int port, int timeout_ms);
void set_nonblocking(int fd);
void set_nodelay(int fd);

}  // namespace sparsecore::rpc
