#include "common/error.h"

namespace hs {

const char* error_kind_name(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::InvalidArgument: return "invalid argument";
    case ErrorKind::NotFound: return "not found";
    case ErrorKind::CorruptFile: return "corrupt file";
    case ErrorKind::Unsupported: return "unsupported";
    case ErrorKind::ContextOverflow: return "context overflow";
    case ErrorKind::Io: return "i/o error";
    case ErrorKind::Busy: return "busy, retry";
    case ErrorKind::AlreadyExists: return "already exists";
    case ErrorKind::Internal: return "internal error";
  }
  return "error";
}

}  // namespace hs
