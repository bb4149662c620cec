// The RPC error family (in the manner of Seastar's rpc_types): every failure of a call is an
// RpcError naming the peer and what went wrong. Errors a server handler raised on purpose
// (bad argument, unknown table) come back as the same typed exceptions as in-process calls
// (InvalidArgument, NotFound, ...), so callers handle local and remote failures alike.
// Python: sparsecore.RpcError and subclasses of the same names.
#pragma once

#include <string>

#include "sparsecore/core/error.h"
#include "sparsecore/rpc/frame.h"

namespace sparsecore {

class RpcError : public Error {
 public:
  using Error::Error;
};

// The connection is closed or could not be made: the peer died, refused, or reset.
class RpcConnectionError : public RpcError {
 public:
  using RpcError::RpcError;
};

// The call did not complete before its deadline (client side or server side).
class RpcTimeout : public RpcError {
 public:
  using RpcError::RpcError;
};

class RpcUnknownMethod : public RpcError {
 public:
  using RpcError::RpcError;
};

// The peer rejected our frames (bad magic, version, too large) or sent ones we reject.
class RpcProtocolError : public RpcError {
 public:
  using RpcError::RpcError;
};

class RpcAuthError : public RpcError {
 public:
  using RpcError::RpcError;
};

// A synchronous step (or barrier) was abandoned because a worker left or rejoined while it
// was incomplete: nothing of that step was applied, and every worker waiting on it gets this
// error so that all of them can roll back to the last snapshot together.
class RpcStepAborted : public RpcError {
 public:
  using RpcError::RpcError;
};

namespace rpc {
// Throws the exception that a non-ok `status` with `message` stands for.
[[noreturn]] void throw_status(Status status, const std::string& message);
// The status a handler's exception is sent back as.
Status status_of_current_exception(std::string* message);
}  // namespace rpc

}  // namespace sparsecore
