#include "tokenizer/jinja/value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>

#include "common/error.h"
#include "tokenizer/jinja/string_ops.h"

namespace hs::jinja {

const Value* Dict::find(const std::string& key) const {
  for (const auto& [k, v] : items)
    if (k == key) return &v;
  return nullptr;
}

void Dict::set(const std::string& key, Value v) {
  for (auto& [k, old] : items)
    if (k == key) {
      old = std::move(v);
      return;
    }
  items.emplace_back(key, std::move(v));
}

const Value* Args::keyword(const std::string& name) const {
  for (const auto& [k, v] : keywords)
    if (k == name) return &v;
  return nullptr;
}

Value Args::get(size_t index, const std::string& name) const {
  if (index < positional.size()) return positional[index];
  if (const Value* v = keyword(name)) return *v;
  return Value::undefined(name);
}

Value Value::undefined(std::string name) {
  Value v;
  v.text = std::move(name);
  return v;
}
Value Value::none() {
  Value v;
  v.kind = Kind::None;
  return v;
}
Value Value::from(bool b) {
  Value v;
  v.kind = Kind::Bool;
  v.boolean = b;
  return v;
}
Value Value::from(int64_t i) {
  Value v;
  v.kind = Kind::Int;
  v.integer = i;
  return v;
}
Value Value::from(double d) {
  Value v;
  v.kind = Kind::Float;
  v.real = d;
  return v;
}
Value Value::from(std::string s) {
  Value v;
  v.kind = Kind::String;
  v.text = std::move(s);
  return v;
}
Value Value::from(List l) {
  Value v;
  v.kind = Kind::List;
  v.list = std::make_shared<List>(std::move(l));
  return v;
}
Value Value::tuple(List l) {
  Value v = from(std::move(l));
  v.is_tuple = true;
  return v;
}
Value Value::from(Dict d) {
  Value v;
  v.kind = Kind::Dict;
  v.dict = std::make_shared<Dict>(std::move(d));
  return v;
}
Value Value::from(Function f) {
  Value v;
  v.kind = Kind::Function;
  v.function = std::make_shared<const Function>(std::move(f));
  return v;
}

Value Value::from_json(const nlohmann::ordered_json& j) {
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null: return none();
    case nlohmann::ordered_json::value_t::boolean: return from(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer: return from(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned:
      if (j.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
        throw Error(ErrorKind::InvalidArgument, "the integer " + j.dump() + " is beyond the 64-bit range chat templates support");
      return from(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_float: return from(j.get<double>());
    case nlohmann::ordered_json::value_t::string: return from(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      List l;
      for (const auto& item : j) l.push_back(from_json(item));
      return from(std::move(l));
    }
    case nlohmann::ordered_json::value_t::object: {
      Dict d;
      for (const auto& [k, item] : j.items()) d.items.emplace_back(k, from_json(item));
      return from(std::move(d));
    }
    default: return undefined();
  }
}

bool Value::truthy() const {
  switch (kind) {
    case Kind::Undefined:
    case Kind::None: return false;
    case Kind::Bool: return boolean;
    case Kind::Int: return integer != 0;
    case Kind::Float: return real != 0;
    case Kind::String: return !text.empty();
    case Kind::List: return !list->empty();
    case Kind::Dict: return !dict->items.empty();
    case Kind::Function: return true;
  }
  return false;
}

const char* Value::type_name() const {
  switch (kind) {
    case Kind::Undefined: return "Undefined";
    case Kind::None: return "NoneType";
    case Kind::Bool: return "bool";
    case Kind::Int: return "int";
    case Kind::Float: return "float";
    case Kind::String: return "str";
    case Kind::List: return "list";
    case Kind::Dict: return is_namespace ? "Namespace" : "dict";
    case Kind::Function: return "function";
  }
  return "?";
}

void check_built_size(size_t size) {
  if (size > kMaxBuiltSize)
    throw Error(ErrorKind::InvalidArgument,
                "the template builds a string or list larger than " + std::to_string(kMaxBuiltSize) + " bytes or items");
}

namespace {

[[noreturn]] void refuse_view(const char* what) {
  throw Error(ErrorKind::Unsupported, std::string(what) + " a range() or dict view is not supported (Python shows it "
                                                          "differently from a list); apply |list first");
}

bool numeric(const Value& v) { return v.is_number() || v.kind == Value::Kind::Bool; }
double number(const Value& v) { return v.kind == Value::Kind::Bool ? (v.boolean ? 1 : 0) : v.as_double(); }

}  // namespace

bool equal(const Value& a, const Value& b) {
  if (a.is_view() || b.is_view()) refuse_view("comparing");
  if (numeric(a) && numeric(b)) {
    if (a.kind != Value::Kind::Float && b.kind != Value::Kind::Float)
      return (a.kind == Value::Kind::Bool ? a.boolean : a.integer) == (b.kind == Value::Kind::Bool ? b.boolean : b.integer);
    return number(a) == number(b);
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Value::Kind::Undefined:
    case Value::Kind::None: return true;
    case Value::Kind::String: return a.text == b.text;
    case Value::Kind::List:
      return a.list->size() == b.list->size() && std::equal(a.list->begin(), a.list->end(), b.list->begin(), equal);
    case Value::Kind::Dict:
      if (a.dict->items.size() != b.dict->items.size()) return false;
      for (const auto& [k, v] : a.dict->items) {
        const Value* other = b.dict->find(k);
        if (!other || !equal(v, *other)) return false;
      }
      return true;
    default: return a.function == b.function;
  }
}

int compare(const Value& a, const Value& b) {
  if (numeric(a) && numeric(b)) return number(a) < number(b) ? -1 : number(a) > number(b) ? 1 : 0;
  if (a.is_string() && b.is_string()) return a.text < b.text ? -1 : a.text > b.text ? 1 : 0;
  if (a.is_list() && b.is_list()) {
    for (size_t i = 0; i < std::min(a.list->size(), b.list->size()); ++i)
      if (int c = compare((*a.list)[i], (*b.list)[i])) return c;
    return a.list->size() < b.list->size() ? -1 : a.list->size() > b.list->size() ? 1 : 0;
  }
  throw Error(ErrorKind::InvalidArgument, std::string("cannot compare '") + a.type_name() + "' with '" +
                                              b.type_name() + "'");
}

std::string float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  const size_t e = sci.find('e');
  const int exponent = std::stoi(sci.substr(e + 1));
  std::string sign, digits;
  for (char c : sci.substr(0, e))
    if (c == '-') sign = "-";
    else if (c != '.') digits += c;
  if (exponent < -4 || exponent >= 16) {
    std::string mant = digits.substr(0, 1) + (digits.size() > 1 ? "." + digits.substr(1) : "");
    char ex[16];
    std::snprintf(ex, sizeof ex, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
    return sign + mant + ex;
  }
  if (exponent < 0) return sign + "0." + std::string(static_cast<size_t>(-exponent - 1), '0') + digits;
  const size_t point = static_cast<size_t>(exponent) + 1;
  if (digits.size() <= point) return sign + digits + std::string(point - digits.size(), '0') + ".0";
  return sign + digits.substr(0, point) + "." + digits.substr(point);
}

std::string to_repr(const Value& v) {
  if (!v.is_string()) return to_str(v);
  const bool double_quote = v.text.find('\'') != std::string::npos && v.text.find('"') == std::string::npos;
  const char quote = double_quote ? '"' : '\'';
  std::string out(1, quote);
  for (size_t at = 0; at < v.text.size();) {
    int32_t cp = 0;
    const size_t n = next_code_point(v.text, at, cp);
    if (cp == '\\' || cp == quote) out += std::string("\\") + static_cast<char>(cp);
    else if (cp == '\n') out += "\\n";
    else if (cp == '\r') out += "\\r";
    else if (cp == '\t') out += "\\t";
    else if (cp < 0 || py_printable(cp)) out += v.text.substr(at, n);
    else {
      char buf[16];
      std::snprintf(buf, sizeof buf, cp <= 0xff ? "\\x%02x" : cp <= 0xffff ? "\\u%04x" : "\\U%08x", static_cast<unsigned>(cp));
      out += buf;
    }
    at += n;
  }
  return out + quote;
}

std::string to_str(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined: return "";
    case Value::Kind::None: return "None";
    case Value::Kind::Bool: return v.boolean ? "True" : "False";
    case Value::Kind::Int: return std::to_string(v.integer);
    case Value::Kind::Float: return float_repr(v.real);
    case Value::Kind::String: return v.text;
    case Value::Kind::List: {
      if (v.is_view()) refuse_view("printing");
      std::string out = v.is_tuple ? "(" : "[";
      for (size_t i = 0; i < v.list->size(); ++i) {
        out += (i ? ", " : "") + to_repr((*v.list)[i]);
        check_built_size(out.size());
      }
      return out + (v.is_tuple ? (v.list->size() == 1 ? ",)" : ")") : "]");
    }
    case Value::Kind::Dict: {
      std::string out = v.is_namespace ? "<Namespace {" : "{";  // jinja2's Namespace.__repr__
      for (size_t i = 0; i < v.dict->items.size(); ++i) {
        out += (i ? ", " : "") + to_repr(Value::from(v.dict->items[i].first)) + ": " + to_repr(v.dict->items[i].second);
        check_built_size(out.size());
      }
      return out + (v.is_namespace ? "}>" : "}");
    }
    case Value::Kind::Function: return "<function>";
  }
  return "";
}

namespace {

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

void write_json(const Value& v, const JsonStyle& style, int depth, std::string& out) {
  const std::string item_sep = !style.item_separator.empty() ? style.item_separator : style.indent >= 0 ? "," : ", ";
  const std::string key_sep = !style.key_separator.empty() ? style.key_separator : ": ";
  auto newline = [&](int level) {
    if (style.indent >= 0) out += "\n" + std::string(static_cast<size_t>(style.indent * level), ' ');
  };
  switch (v.kind) {
    case Value::Kind::None: out += "null"; return;
    case Value::Kind::Bool: out += v.boolean ? "true" : "false"; return;
    case Value::Kind::Int: out += std::to_string(v.integer); return;
    case Value::Kind::Float:
      out += std::isnan(v.real) ? "NaN" : std::isinf(v.real) ? (v.real < 0 ? "-Infinity" : "Infinity") : float_repr(v.real);
      return;
    case Value::Kind::String: out += json_string(v.text); return;
    case Value::Kind::List: {
      if (v.is_view()) refuse_view("serializing");
      if (v.list->empty()) {
        out += "[]";
        return;
      }
      out += "[";
      for (size_t i = 0; i < v.list->size(); ++i) {
        if (i) out += item_sep;
        newline(depth + 1);
        write_json((*v.list)[i], style, depth + 1, out);
        check_built_size(out.size());
      }
      newline(depth);
      out += "]";
      return;
    }
    case Value::Kind::Dict: {
      if (v.dict->items.empty()) {
        out += "{}";
        return;
      }
      auto items = v.dict->items;
      if (style.sort_keys)
        std::stable_sort(items.begin(), items.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
      out += "{";
      for (size_t i = 0; i < items.size(); ++i) {
        if (i) out += item_sep;
        newline(depth + 1);
        out += json_string(items[i].first) + key_sep;
        write_json(items[i].second, style, depth + 1, out);
        check_built_size(out.size());
      }
      newline(depth);
      out += "}";
      return;
    }
    default:
      throw Error(ErrorKind::InvalidArgument, std::string("object of type ") + v.type_name() + " is not JSON serializable");
  }
}

}  // namespace

std::string to_json(const Value& v, const JsonStyle& style) {
  std::string out;
  write_json(v, style, 0, out);
  return out;
}

List iterate(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined: return {};
    case Value::Kind::List: return *v.list;
    case Value::Kind::Dict: {
      List keys;
      for (const auto& kv : v.dict->items) keys.push_back(Value::from(kv.first));
      return keys;
    }
    case Value::Kind::String: {
      List chars;
      for (size_t i = 0; i < v.text.size();) {
        size_t n = 1;
        const auto c = static_cast<unsigned char>(v.text[i]);
        if (c >= 0xf0) n = 4;
        else if (c >= 0xe0) n = 3;
        else if (c >= 0xc0) n = 2;
        chars.push_back(Value::from(v.text.substr(i, n)));
        i += n;
      }
      return chars;
    }
    default: throw Error(ErrorKind::InvalidArgument, std::string("'") + v.type_name() + "' object is not iterable");
  }
}

}  // namespace hs::jinja
