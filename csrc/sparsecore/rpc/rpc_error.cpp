#include "sparsecore/rpc/rpc_error.h"

#include <exception>

namespace sparsecore::rpc {

void throw_status(Status status, const std::string& message) {
  switch (status) {
    case Status::kInvalidArgument:
      throw InvalidArgument(message);
    case Status::kTypeMismatch:
      throw TypeMismatch(message);
    case Status::kNotFound:
      throw NotFound(message);
    case Status::kIoError:
      throw IoError(message);
    case Status::kCorruptData:
      throw CorruptData(message);
    case Status::kUnknownMethod:
      throw RpcUnknownMethod(message);
    case Status::kDeadlineExceeded:
      throw RpcTimeout(message);
    case Status::kAuthFailed:
      throw RpcAuthError(message);
    case Status::kBadFrame:
    case Status::kFrameTooLarge:
      throw RpcProtocolError(message);
    case Status::kShuttingDown:
      throw RpcConnectionError(message);
    case Status::kStepAborted:
      throw RpcStepAborted(message);
    default:
      throw RpcError(std::string(status_name(status)) + ": " + message);
  }
}

Status status_of_current_exception(std::string* message) {
  try {
    throw;
  } catch (const InvalidArgument& e) {
    *message = e.what();
    return Status::kInvalidArgument;
  } catch (const TypeMismatch& e) {
    *message = e.what();
    return Status::kTypeMismatch;
  } catch (const NotFound& e) {
    *message = e.what();
    return Status::kNotFound;
  } catch (const IoError& e) {
    *message = e.what();
    return Status::kIoError;
  } catch (const CorruptData& e) {
    *message = e.what();
    return Status::kCorruptData;
  } catch (const RpcStepAborted& e) {
    *message = e.what();
    return Status::kStepAborted;
  } catch (const std::bad_alloc&) {
    *message = "out of memory";
    return Status::kInternal;
  } catch (const std::exception& e) {
    *message = e.what();
    return Status::kInternal;
  } catch (...) {
    *message = "unknown exception";
    return Status::kInternal;
  }
}

}  // namespace sparsecore::rpc
