#pragma once
// The values a chat template computes with, modelled on the Python objects jinja2 hands a template:
// undefined, None, bool, int, float, str, list, dict (insertion-ordered, string keys) and callables.
// Lists and dicts are shared, as Python's are; a namespace() is a dict whose attributes may be set.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace hs::jinja {

struct Value;
using List = std::vector<Value>;

struct Dict {
  std::vector<std::pair<std::string, Value>> items;
  const Value* find(const std::string& key) const;
  void set(const std::string& key, Value v);
};

// Positional then keyword arguments of a call, as written.
struct Args {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keywords;
  const Value* keyword(const std::string& name) const;
  // The argument at `index` or named `name`; undefined when neither was given.
  Value get(size_t index, const std::string& name) const;
};

using Function = std::function<Value(const Args&)>;

struct Value {
  enum class Kind { Undefined, None, Bool, Int, Float, String, List, Dict, Function };
  Kind kind = Kind::Undefined;
  bool boolean = false;
  int64_t integer = 0;
  double real = 0;
  std::string text;  // a string's UTF-8 bytes; for undefined, the name that was looked up
  std::shared_ptr<jinja::List> list;
  std::shared_ptr<jinja::Dict> dict;
  std::shared_ptr<const jinja::Function> function;
  bool is_namespace = false;
  bool is_tuple = false;  // a list that Python would hold as a tuple: printed "(a, b)"
  // A range() or dict view (keys(), values(), items()): iterable like a list, but Python prints, compares and
  // serializes it differently, so those uses are refused; a dict view cannot be indexed either.
  enum class View : uint8_t { None, Range, DictView };
  View view = View::None;
  bool is_view() const { return view != View::None; }

  Value() = default;
  static Value undefined(std::string name = "");
  static Value none();
  static Value from(bool b);
  static Value from(int64_t i);
  static Value from(double d);
  static Value from(std::string s);
  static Value from(const char* s) { return from(std::string(s)); }  // not the bool overload
  static Value from(List l);
  static Value tuple(List l);
  static Value from(Dict d);
  static Value from(Function f);
  static Value from_json(const nlohmann::ordered_json& j);

  bool is_undefined() const { return kind == Kind::Undefined; }
  bool is_none() const { return kind == Kind::None; }
  bool is_string() const { return kind == Kind::String; }
  bool is_number() const { return kind == Kind::Int || kind == Kind::Float; }
  bool is_list() const { return kind == Kind::List; }
  bool is_dict() const { return kind == Kind::Dict; }
  double as_double() const { return kind == Kind::Float ? real : static_cast<double>(integer); }
  bool truthy() const;
  const char* type_name() const;  // Python's name for the type, for error messages
};

// The largest string (bytes) or list (items) a template may build; larger ones are refused.
inline constexpr size_t kMaxBuiltSize = size_t{16} << 20;
// Throws InvalidArgument when `size` exceeds kMaxBuiltSize.
void check_built_size(size_t size);

bool equal(const Value& a, const Value& b);
// -1, 0 or 1; throws InvalidArgument for values Python cannot order.
int compare(const Value& a, const Value& b);
// What `{{ v }}` prints: Python's str(v).
std::string to_str(const Value& v);
// Python's repr(v), as str() of a list shows its items.
std::string to_repr(const Value& v);
// Python's repr of a float ("1.0", "0.1", "1e+20").
std::string float_repr(double d);

// json.dumps(v, ensure_ascii=False, indent=indent, sort_keys=sort_keys), as transformers' tojson filter.
struct JsonStyle {
  int indent = -1;  // -1: on one line
  std::string item_separator, key_separator;  // empty: Python's defaults for the indent
  bool sort_keys = false;
};
std::string to_json(const Value& v, const JsonStyle& style);

// The items a for loop visits: a list's items, a dict's keys, a string's characters.
List iterate(const Value& v);

}  // namespace hs::jinja
