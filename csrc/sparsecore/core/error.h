// Typed exceptions thrown by every layer of sparsecore.
//
// Each carries a message that names what was wrong and, where there is one, the argument
// at fault. The Python bindings translate them one to one: InvalidArgument -> ValueError,
// TypeMismatch -> TypeError, NotFound -> KeyError, IoError -> OSError, CorruptData ->
// sparsecore.CorruptDataError (a ValueError), the rpc layer's errors (rpc/rpc_error.h) -> the
// sparsecore.RpcError family, everything else -> RuntimeError.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace sparsecore {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A value is out of its legal range or inconsistent with another argument.
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

// An argument has the wrong element type or rank.
class TypeMismatch : public Error {
 public:
  using Error::Error;
};

// A named thing (table, group, snapshot) does not exist.
class NotFound : public Error {
 public:
  using Error::Error;
};

// A system call failed (open, read, write, rename, fsync).
class IoError : public Error {
 public:
  using Error::Error;
};

// A file or frame was read but its contents are not what was written (truncated,
// bad magic, checksum mismatch).
class CorruptData : public Error {
 public:
  using Error::Error;
};

namespace detail {
template <typename... Parts>
std::string concat(Parts&&... parts) {
  std::ostringstream out;
  (out << ... << std::forward<Parts>(parts));
  return out.str();
}
}  // namespace detail

// Throw `Exception` with the streamed message parts unless `cond` holds.
#define SC_CHECK(cond, Exception, ...)                                       \
  do {                                                                       \
    if (!(cond)) throw Exception(::sparsecore::detail::concat(__VA_ARGS__)); \
  } while (0)

#define SC_CHECK_ARG(cond, ...) SC_CHECK(cond, ::sparsecore::InvalidArgument, __VA_ARGS__)

}  // namespace sparsecore
