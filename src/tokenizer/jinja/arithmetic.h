#pragma once
// Python's arithmetic on template values. Python's integers are unbounded and ours are int64: a result that does
// not fit is refused, never wrapped; a string or list the template builds is refused past kMaxBuiltSize.
#include <string>

#include "tokenizer/jinja/value.h"

namespace hs::jinja {

// `a op b` for + - * / // % **, with Python's semantics for int, float, bool, str and list operands.
Value arithmetic(const std::string& op, const Value& a, const Value& b);
// -v and abs(v).
Value negate(const Value& v);
Value absolute(const Value& v);

}  // namespace hs::jinja
