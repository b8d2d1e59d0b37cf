#pragma once
// libtorch's errors carry a C++ backtrace in what(). Users read these messages in API errors, event
// acknowledgements and logs, where thirty stack frames say nothing they can act on.
#include <c10/util/Exception.h>

#include <exception>
#include <string>

namespace hs {

inline std::string message_of(const std::exception& e) {
  if (const auto* c = dynamic_cast<const c10::Error*>(&e)) return c->what_without_backtrace();
  return e.what();
}

}  // namespace hs
