#pragma once
// The filters, tests, methods and global functions chat templates call, each behaving as jinja2's (and
// transformers' tojson, raise_exception, strftime_now) does. A name outside this set is refused by name.
#include <string>

#include "tokenizer/jinja/value.h"

namespace hs::jinja {

Value apply_filter(const std::string& name, const Value& subject, const Args& args);
// Whether a filter or test of that name exists: jinja2 checks these names when it compiles a template.
bool is_filter(const std::string& name);
bool is_test(const std::string& name);
bool apply_test(const std::string& name, const Value& subject, const Args& args);
// `object.name(args)` for a str, list or dict.
Value call_method(const Value& object, const std::string& name, const Args& args);
// range, namespace, dict, raise_exception, strftime_now; undefined for other names.
Value global_function(const std::string& name);

}  // namespace hs::jinja
