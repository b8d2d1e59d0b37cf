#pragma once
// Errors raised while reading or rendering a chat template name the template line they come from.
#include <string>

#include "common/error.h"

namespace hs::jinja {

[[noreturn]] inline void fail_at(int line, ErrorKind kind, const std::string& message) {
  throw Error(kind, "chat template line " + std::to_string(line) + ": " + message);
}

}  // namespace hs::jinja
