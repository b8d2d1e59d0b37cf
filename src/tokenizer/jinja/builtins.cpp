// jinja2's tests, the str and dict methods its sandbox allows, and the globals transformers defines.
#include "tokenizer/jinja/builtins.h"

#include <ctime>

#include "common/error.h"
#include "tokenizer/jinja/string_ops.h"

namespace hs::jinja {

namespace {

[[noreturn]] void bad(const std::string& msg) { throw Error(ErrorKind::InvalidArgument, msg); }

constexpr int64_t kMaxRange = 100000;  // jinja2's sandbox refuses longer ranges too

Value string_query(const std::string& s, const std::string& name, const Args& a);

// str methods that transform the string; the others are in string_query.
Value string_method(const std::string& s, const std::string& name, const Args& a) {
  if (name == "startswith" || name == "endswith") {
    const Value arg = a.get(0, "prefix");
    const List options = arg.is_list() ? *arg.list : List{arg};
    for (const Value& o : options) {
      if (!o.is_string()) bad(name + " needs a string or a tuple of strings");
      const bool hit = name == "startswith" ? s.compare(0, o.text.size(), o.text) == 0
                                            : s.size() >= o.text.size() && s.compare(s.size() - o.text.size(), o.text.size(), o.text) == 0;
      if (hit) return Value::from(true);
    }
    return Value::from(false);
  }
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    Value chars = a.get(0, "chars");
    return Value::from(py_strip(s, chars.is_string() ? &chars.text : nullptr, name != "rstrip", name != "lstrip"));
  }
  if (name == "split") {
    Value sep = a.get(0, "sep"), maxsplit = a.get(1, "maxsplit");
    List out;
    for (auto& part : py_split(s, sep.is_string() ? &sep.text : nullptr,
                               maxsplit.kind == Value::Kind::Int ? static_cast<long>(maxsplit.integer) : -1))
      out.push_back(Value::from(std::move(part)));
    return Value::from(std::move(out));
  }
  if (name == "replace") {
    const Value count = a.get(2, "count");
    return Value::from(py_replace(s, to_str(a.get(0, "old")), to_str(a.get(1, "new")),
                                  count.kind == Value::Kind::Int ? static_cast<long>(count.integer) : -1));
  }
  if (name == "upper") return Value::from(py_upper(s));
  if (name == "lower") return Value::from(py_lower(s));
  if (name == "title") return Value::from(py_title(s));
  if (name == "capitalize") return Value::from(py_capitalize(s));
  return string_query(s, name, a);
}

Value string_query(const std::string& s, const std::string& name, const Args& a) {
  if (name == "find") {
    const size_t at = s.find(to_str(a.get(0, "sub")));
    return Value::from(at == std::string::npos ? int64_t{-1} : static_cast<int64_t>(utf8_length(s.substr(0, at))));
  }
  if (name == "count") {
    const std::string sub = to_str(a.get(0, "sub"));
    int64_t n = 0;
    for (size_t at = s.find(sub); !sub.empty() && at != std::string::npos; at = s.find(sub, at + sub.size())) ++n;
    return Value::from(sub.empty() ? static_cast<int64_t>(utf8_length(s) + 1) : n);
  }
  if (name == "join") {
    std::string out;
    bool first = true;
    for (const Value& item : iterate(a.get(0, "iterable"))) {
      if (!item.is_string()) bad("str.join needs strings");
      out += (first ? "" : s) + item.text;
      check_built_size(out.size());
      first = false;
    }
    return Value::from(std::move(out));
  }
  if (name == "splitlines") {
    List out;
    size_t from = 0;
    for (size_t at; (at = s.find('\n', from)) != std::string::npos; from = at + 1) out.push_back(Value::from(s.substr(from, at - from)));
    if (from < s.size()) out.push_back(Value::from(s.substr(from)));
    return Value::from(std::move(out));
  }
  throw Error(ErrorKind::Unsupported, "method 'str." + name + "' is not supported");
}

Value dict_method(const Dict& d, const std::string& name, const Args& a) {
  if (name == "get") {
    const Value* found = d.find(to_str(a.get(0, "key")));
    if (found) return *found;
    const Value fallback = a.get(1, "default");
    return fallback.is_undefined() ? Value::none() : fallback;
  }
  if (name != "items" && name != "keys" && name != "values")
    throw Error(ErrorKind::Unsupported, "method 'dict." + name + "' is not supported");
  List out;
  for (const auto& [k, v] : d.items)
    out.push_back(name == "items" ? Value::tuple(List{Value::from(k), v}) : name == "keys" ? Value::from(k) : v);
  Value view = Value::from(std::move(out));
  view.view = Value::View::DictView;
  return view;
}

// Python's len(range(start, stop, step)), in 128 bits so that no bound overflows.
int64_t range_length(int64_t start, int64_t stop, int64_t step) {
  const __int128 lo = start, hi = stop, by = step;
  if (by > 0 ? lo >= hi : lo <= hi) return 0;
  const __int128 n = by > 0 ? (hi - lo - 1) / by + 1 : (lo - hi - 1) / -by + 1;
  return n > kMaxRange ? kMaxRange + 1 : static_cast<int64_t>(n);
}

Value range(const Args& a) {
  std::vector<int64_t> bounds;
  for (const Value& v : a.positional) {
    if (v.kind != Value::Kind::Int) bad("range() needs integers");
    bounds.push_back(v.integer);
  }
  if (bounds.empty() || bounds.size() > 3) bad("range() takes one to three integers");
  const int64_t start = bounds.size() > 1 ? bounds[0] : 0, stop = bounds.size() > 1 ? bounds[1] : bounds[0];
  const int64_t step = bounds.size() > 2 ? bounds[2] : 1;
  if (step == 0) bad("range() step must not be zero");
  const int64_t n = range_length(start, stop, step);
  if (n > kMaxRange) bad("range() is longer than " + std::to_string(kMaxRange) + " items");
  List out;
  for (int64_t i = 0; i < n; ++i) out.push_back(Value::from(static_cast<int64_t>(start + static_cast<__int128>(i) * step)));
  Value v = Value::from(std::move(out));
  v.view = Value::View::Range;
  return v;
}

Value make_dict(const Args& a, bool is_namespace) {
  Dict d;
  for (const Value& v : a.positional) {
    if (!v.is_dict()) bad("namespace() and dict() take a mapping or keyword arguments");
    for (const auto& [k, item] : v.dict->items) d.set(k, item);
  }
  for (const auto& [k, v] : a.keywords) d.set(k, v);
  Value out = Value::from(std::move(d));
  out.is_namespace = is_namespace;
  return out;
}

Value strftime_now(const Args& a) {
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char buf[256];
  const size_t n = std::strftime(buf, sizeof buf, to_str(a.get(0, "format")).c_str(), &local);
  return Value::from(std::string(buf, n));
}

bool test_compare(const std::string& name, const Value& v, const Value& other) {
  if (name == "equalto" || name == "eq" || name == "==" || name == "sameas") return equal(v, other);
  if (name == "ne" || name == "!=") return !equal(v, other);
  const int c = compare(v, other);
  if (name == "lt" || name == "lessthan" || name == "<") return c < 0;
  if (name == "le" || name == "<=") return c <= 0;
  if (name == "gt" || name == "greaterthan" || name == ">") return c > 0;
  return c >= 0;
}

}  // namespace

bool is_test(const std::string& name) {
  static const char* const names[] = {
      "defined", "undefined", "none",     "string",  "mapping", "iterable", "sequence", "number", "integer",
      "float",   "boolean",   "true",     "false",   "callable", "lower",   "upper",    "odd",    "even",
      "divisibleby", "in",    "equalto",  "eq",      "==",      "sameas",   "ne",       "!=",     "lt",
      "lessthan", "<",        "le",       "<=",      "gt",      "greaterthan", ">",     "ge",     ">="};
  for (const char* n : names)
    if (name == n) return true;
  return false;
}

bool apply_test(const std::string& name, const Value& v, const Args& a) {
  using K = Value::Kind;
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "string") return v.is_string();
  if (name == "mapping") return v.is_dict() && !v.is_namespace;
  if (name == "iterable") return v.is_list() || v.is_dict() || v.is_string() || v.is_undefined();
  if (name == "sequence") return v.is_list() || v.is_dict() || v.is_string() || v.is_undefined();
  if (name == "number") return v.is_number() || v.kind == K::Bool;
  if (name == "integer") return v.kind == K::Int;
  if (name == "float") return v.kind == K::Float;
  if (name == "boolean") return v.kind == K::Bool;
  if (name == "true") return v.kind == K::Bool && v.boolean;
  if (name == "false") return v.kind == K::Bool && !v.boolean;
  if (name == "callable") return v.kind == K::Function;
  if (name == "lower") return v.is_string() && py_lower(v.text) == v.text;
  if (name == "upper") return v.is_string() && py_upper(v.text) == v.text;
  if (name == "odd" || name == "even") {
    if (v.kind != K::Int) bad("test '" + name + "' needs an integer");
    return (v.integer % 2 != 0) == (name == "odd");
  }
  if (name == "divisibleby") {
    const Value n = a.get(0, "num");
    if (v.kind != K::Int || n.kind != K::Int || n.integer == 0) bad("test 'divisibleby' needs non-zero integers");
    return v.integer % n.integer == 0;
  }
  if (name == "in") {
    const Value seq = a.get(0, "seq");
    if (seq.is_string()) return v.is_string() && seq.text.find(v.text) != std::string::npos;
    if (seq.is_dict()) return v.is_string() && seq.dict->find(v.text) != nullptr;
    for (const Value& item : iterate(seq))
      if (equal(item, v)) return true;
    return false;
  }
  static const char* const comparisons[] = {"equalto", "eq", "==", "sameas", "ne", "!=", "lt", "lessthan", "<",
                                            "le", "<=", "gt", "greaterthan", ">", "ge", ">="};
  for (const char* c : comparisons)
    if (name == c) return test_compare(name, v, a.get(0, "other"));
  throw Error(ErrorKind::Unsupported, "unknown test '" + name + "'");
}

Value call_method(const Value& object, const std::string& name, const Args& args) {
  if (object.is_string()) return string_method(object.text, name, args);
  if (object.is_dict() && !object.is_namespace) return dict_method(*object.dict, name, args);
  throw Error(ErrorKind::Unsupported, std::string("method '") + object.type_name() + "." + name + "' is not supported");
}

Value global_function(const std::string& name) {
  if (name == "range") return Value::from(Function(range));
  if (name == "namespace") return Value::from(Function([](const Args& a) { return make_dict(a, true); }));
  if (name == "dict") return Value::from(Function([](const Args& a) { return make_dict(a, false); }));
  if (name == "strftime_now") return Value::from(Function(strftime_now));
  if (name == "raise_exception")
    return Value::from(Function([](const Args& a) -> Value {
      throw Error(ErrorKind::InvalidArgument, "the template raised an error: " + to_str(a.get(0, "message")));
    }));
  return Value::undefined(name);
}

}  // namespace hs::jinja
