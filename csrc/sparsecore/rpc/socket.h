// TCP sockets as UniqueFd (sparsecore/core/unique_fd.h), from factories that throw:
// RpcConnectionError when a peer cannot be reached, IoError (via check_syscall) when a local
// call fails. A failed factory leaves no descriptor open. The other functions borrow `fd`.
#pragma once

#include <cstdint>
#include <string>

#include "sparsecore/core/unique_fd.h"

namespace sparsecore::rpc {

// Listening socket on address:port (port 0: the kernel picks one; see local_port).
// Non-blocking, SO_REUSEADDR.
UniqueFd listen_tcp(const std::string& address, int port, int backlog = 512);
int local_port(int fd);
// Connected, non-blocking, TCP_NODELAY. Throws RpcConnectionError naming host:port when the
// connection is refused, RpcTimeout when it is not made within timeout_ms (negative: no limit).
UniqueFd connect_tcp(const std::string& host, int port, int timeout_ms);
void set_nonblocking(int fd);
void set_nodelay(int fd);

}  // namespace sparsecore::rpc
