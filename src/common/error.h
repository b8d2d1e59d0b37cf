#pragma once
// Typed errors: library code throws these; the CLI and servers turn them into exit codes / 4xx statuses.
#include <stdexcept>
#include <string>

namespace hs {

enum class ErrorKind {
  InvalidArgument,  // bad user input: flags, prompts, requests
  NotFound,         // a file, model or token that does not exist
  CorruptFile,      // a file exists but its bytes are wrong or truncated
  Unsupported,      // a valid file or request we do not handle (architecture, tensor type, template)
  ContextOverflow,  // more tokens than the model's context holds
  Io,               // the operating system refused a read or write (disk full, permissions)
  Busy,             // a queue is full or a resource is held by another process: retry later
  AlreadyExists,    // creating something whose name is taken (an adapter)
  Internal,         // a bug in Hyprstream
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

const char* error_kind_name(ErrorKind kind);

}  // namespace hs
