#include "sparsecore/rpc/socket.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "sparsecore/core/file.h"
#include "sparsecore/rpc/rpc_error.h"

namespace sparsecore::rpc {

void set_nonblocking(int fd) {
  int flags = ::fcntl(fd, F_GETFL, 0);
  check_syscall(flags >= 0 && ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0, "fcntl(O_NONBLOCK)", "socket");
}

void set_nodelay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

namespace {

sockaddr_in resolve_ipv4(const std::string& host, int port) {
  SC_CHECK_ARG(port >= 0 && port <= 65535, "port must be in [0, 65535], got ", port);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  std::string h = host == "localhost" || host.empty() ? "127.0.0.1" : host;
  if (::inet_pton(AF_INET, h.c_str(), &addr.sin_addr) == 1) return addr;
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  int rc = ::getaddrinfo(h.c_str(), nullptr, &hints, &res);
  if (rc != 0 || res == nullptr) throw RpcConnectionError("cannot resolve host '" + host + "': " + ::gai_strerror(rc));
  addr.sin_addr = reinterpret_cast<sockaddr_in*>(res->ai_addr)->sin_addr;
  ::freeaddrinfo(res);
  return addr;
}

}  // namespace

UniqueFd listen_tcp(const std::string& address, int port, int backlog) {
  sockaddr_in addr = resolve_ipv4(address, port);
  UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  check_syscall(s.valid(), "socket", address);
  int one = 1;
  ::setsockopt(s.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  std::string where = address + ":" + std::to_string(port);
  check_syscall(::bind(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0, "cannot bind", where);
  check_syscall(::listen(s.get(), backlog) == 0, "cannot listen on", where);
  return s;
}

int local_port(int fd) {
  sockaddr_in addr{};
  socklen_t len = sizeof(addr);
  check_syscall(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0, "getsockname", "socket");
  return ntohs(addr.sin_port);
}

UniqueFd connect_tcp(const std::string& host, int port, int timeout_ms) {
  sockaddr_in addr = resolve_ipv4(host, port);
  std::string where = host + ":" + std::to_string(port);
  UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  check_syscall(s.valid(), "socket", where);
  int rc = ::connect(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  if (rc != 0 && errno != EINPROGRESS)
    throw RpcConnectionError("cannot connect to " + where + ": " + std::strerror(errno));
  if (rc != 0) {
    pollfd p{s.get(), POLLOUT, 0};
    int n;
    do n = ::poll(&p, 1, timeout_ms < 0 ? -1 : timeout_ms);
    while (n < 0 && errno == EINTR);
    if (n == 0) throw RpcTimeout("connecting to " + where + " timed out after " + std::to_string(timeout_ms) + " ms");
    int err = 0;
    socklen_t len = sizeof(err);
    ::getsockopt(s.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (n < 0 || err != 0)
      throw RpcConnectionError("cannot connect to " + where + ": " + std::strerror(n < 0 ? errno : err));
  }
  set_nodelay(s.get());
  return s;
}

}  // namespace sparsecore::rpc
