// jinja2's filters as chat templates use them, and transformers' own tojson.
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>

#include "common/error.h"
#include "tokenizer/jinja/arithmetic.h"
#include "tokenizer/jinja/builtins.h"
#include "tokenizer/jinja/string_ops.h"

namespace hs::jinja {

namespace {

using Filter = Value (*)(const Value&, const Args&);

[[noreturn]] void bad(const std::string& msg) { throw Error(ErrorKind::InvalidArgument, msg); }

const std::string& need_string(const Value& v, const char* filter) {
  if (!v.is_string()) bad(std::string("filter '") + filter + "' needs a string, not '" + v.type_name() + "'");
  return v.text;
}

// jinja2's attribute getter: "a.b.0" walks dict keys and list indices.
Value attribute_path(const Value& v, const std::string& path) {
  Value cur = v;
  size_t from = 0;
  for (;;) {
    const size_t dot = path.find('.', from);
    const std::string part = path.substr(from, dot == std::string::npos ? std::string::npos : dot - from);
    if (cur.is_dict()) {
      const Value* found = cur.dict->find(part);
      cur = found ? *found : Value::undefined(part);
    } else if (cur.is_list() && !part.empty() && std::all_of(part.begin(), part.end(), ::isdigit)) {
      const size_t i = std::stoul(part);
      cur = i < cur.list->size() ? (*cur.list)[i] : Value::undefined(part);
    } else {
      cur = Value::undefined(part);
    }
    if (dot == std::string::npos) return cur;
    from = dot + 1;
  }
}

Value f_trim(const Value& v, const Args& a) {
  const Value chars = a.get(0, "chars");
  return Value::from(py_strip(to_str(v), chars.is_string() ? &chars.text : nullptr, true, true));
}

Value f_tojson(const Value& v, const Args& a) {
  if (a.get(0, "ensure_ascii").truthy()) bad("tojson with ensure_ascii=True is not supported");
  JsonStyle style;
  const Value indent = a.get(1, "indent");
  if (indent.kind == Value::Kind::Int) style.indent = static_cast<int>(indent.integer);
  else if (!indent.is_undefined() && !indent.is_none()) bad("tojson's indent must be an integer");
  const Value separators = a.get(2, "separators");
  if (separators.is_list() && separators.list->size() == 2) {
    style.item_separator = to_str((*separators.list)[0]);
    style.key_separator = to_str((*separators.list)[1]);
  }
  style.sort_keys = a.get(3, "sort_keys").truthy();
  return Value::from(to_json(v, style));
}

Value f_length(const Value& v, const Args&) {
  if (v.is_string()) return Value::from(static_cast<int64_t>(utf8_length(v.text)));
  if (v.is_list()) return Value::from(static_cast<int64_t>(v.list->size()));
  if (v.is_dict()) return Value::from(static_cast<int64_t>(v.dict->items.size()));
  if (v.is_undefined()) return Value::from(int64_t{0});
  bad(std::string("object of type '") + v.type_name() + "' has no len()");
}

Value f_upper(const Value& v, const Args&) { return Value::from(py_upper(to_str(v))); }
Value f_lower(const Value& v, const Args&) { return Value::from(py_lower(to_str(v))); }
Value f_capitalize(const Value& v, const Args&) { return Value::from(py_capitalize(to_str(v))); }
Value f_title(const Value& v, const Args&) { return Value::from(jinja_title(to_str(v))); }
Value f_string(const Value& v, const Args&) { return v.is_string() ? v : Value::from(to_str(v)); }
Value f_safe(const Value& v, const Args&) { return v; }
Value f_list(const Value& v, const Args&) { return Value::from(iterate(v)); }

Value f_items(const Value& v, const Args&) {
  if (v.is_undefined()) return Value::from(List{});
  if (!v.is_dict()) bad(std::string("filter 'items' needs a mapping, not '") + v.type_name() + "'");
  List out;
  for (const auto& [k, item] : v.dict->items) out.push_back(Value::tuple(List{Value::from(k), item}));
  return Value::from(std::move(out));
}

Value f_default(const Value& v, const Args& a) {
  const bool boolean = a.get(1, "boolean").truthy();
  if (v.is_undefined() || (boolean && !v.truthy())) {
    const Value d = a.get(0, "default_value");
    return d.is_undefined() ? Value::from(std::string()) : d;
  }
  return v;
}

Value f_join(const Value& v, const Args& a) {
  const Value sep = a.get(0, "d"), attribute = a.get(1, "attribute");
  std::string out;
  bool first = true;
  for (const Value& item : iterate(v)) {
    if (!first) out += sep.is_undefined() ? "" : to_str(sep);
    out += to_str(attribute.is_undefined() ? item : attribute_path(item, to_str(attribute)));
    check_built_size(out.size());
    first = false;
  }
  return Value::from(std::move(out));
}

// selectattr/rejectattr(attribute, test, args...) and select/reject(test, args...).
Value select_items(const Value& v, const Args& a, bool by_attribute, bool keep) {
  const size_t first_test = by_attribute ? 1 : 0;
  Args test_args;
  for (size_t i = first_test + 1; i < a.positional.size(); ++i) test_args.positional.push_back(a.positional[i]);
  const std::string test = a.positional.size() > first_test ? to_str(a.positional[first_test]) : "";
  if (by_attribute && a.positional.empty()) bad("selectattr/rejectattr need an attribute name");
  List out;
  for (const Value& item : iterate(v)) {
    const Value subject = by_attribute ? attribute_path(item, to_str(a.positional[0])) : item;
    const bool pass = test.empty() ? subject.truthy() : apply_test(test, subject, test_args);
    if (pass == keep) out.push_back(item);
  }
  return Value::from(std::move(out));
}
Value f_selectattr(const Value& v, const Args& a) { return select_items(v, a, true, true); }
Value f_rejectattr(const Value& v, const Args& a) { return select_items(v, a, true, false); }
Value f_select(const Value& v, const Args& a) { return select_items(v, a, false, true); }
Value f_reject(const Value& v, const Args& a) { return select_items(v, a, false, false); }

Value f_map(const Value& v, const Args& a) {
  List out;
  if (const Value* attribute = a.keyword("attribute")) {
    const Value* fallback = a.keyword("default");
    for (const Value& item : iterate(v)) {
      Value got = attribute_path(item, to_str(*attribute));
      out.push_back(got.is_undefined() && fallback ? *fallback : got);
    }
    return Value::from(std::move(out));
  }
  if (a.positional.empty()) bad("filter 'map' needs a filter name or attribute=");
  Args rest;
  rest.positional.assign(a.positional.begin() + 1, a.positional.end());
  rest.keywords = a.keywords;
  for (const Value& item : iterate(v)) out.push_back(apply_filter(to_str(a.positional[0]), item, rest));
  return Value::from(std::move(out));
}

Value f_first(const Value& v, const Args&) {
  const List items = iterate(v);
  return items.empty() ? Value::undefined("first") : items.front();
}

Value f_last(const Value& v, const Args&) {
  const List items = iterate(v);
  return items.empty() ? Value::undefined("last") : items.back();
}

// Python's float(text): strtod's syntax less what Python rejects (hex, "nan(...)"); digit separators and
// non-ASCII digits, which Python accepts, are refused rather than read differently.
bool parse_py_float(const std::string& text, double& out) {
  const std::string s = py_strip(text, nullptr, true, true);
  for (unsigned char c : s)
    if (c == '_' || c >= 0x80) throw Error(ErrorKind::Unsupported, "converting '" + s + "' to a number is not supported");
  if (s.empty() || s.find_first_of("xX(") != std::string::npos) return false;
  char* end = nullptr;
  out = std::strtod(s.c_str(), &end);  // out of range: inf or 0, as Python
  return end == s.c_str() + s.size();
}

// Python's int(d) for a float, refusing what Python would make a big integer.
Value int_of_double(double d, const Value& fallback) {
  if (std::isnan(d)) return fallback;  // int(nan) is a ValueError, which jinja2's int filter turns into the default
  if (std::isinf(d)) bad("cannot convert float infinity to integer");
  if (d >= 9223372036854775808.0 || d < -9223372036854775808.0)
    throw Error(ErrorKind::Unsupported, "the integer " + float_repr(d) + " does not fit in 64 bits");
  return Value::from(static_cast<int64_t>(d));
}

Value f_int(const Value& v, const Args& a) {
  const Value fallback = a.get(0, "default"), base = a.get(1, "base");
  if (!base.is_undefined() && !(base.kind == Value::Kind::Int && base.integer == 10))
    throw Error(ErrorKind::Unsupported, "filter 'int' with a base other than 10 is not supported");
  const Value dflt = fallback.is_undefined() ? Value::from(int64_t{0}) : fallback;
  if (v.kind == Value::Kind::Int) return v;
  if (v.kind == Value::Kind::Bool) return Value::from(static_cast<int64_t>(v.boolean));
  if (v.kind == Value::Kind::Float) return int_of_double(v.real, dflt);
  if (!v.is_string()) return dflt;
  const std::string s = py_strip(v.text, nullptr, true, true);
  const size_t digits_from = !s.empty() && (s[0] == '+' || s[0] == '-') ? 1 : 0;
  if (s.size() > digits_from && s.find_first_not_of("0123456789", digits_from) == std::string::npos) {
    errno = 0;
    const long long i = std::strtoll(s.c_str(), nullptr, 10);
    if (errno == ERANGE) throw Error(ErrorKind::Unsupported, "the integer " + s + " does not fit in 64 bits");
    return Value::from(static_cast<int64_t>(i));
  }
  double d = 0;  // jinja2: "42.23"|int is 42, and "1e400"|int (an OverflowError) the default
  return parse_py_float(s, d) && !std::isinf(d) ? int_of_double(d, dflt) : dflt;
}

Value f_float(const Value& v, const Args& a) {
  const Value fallback = a.get(0, "default");
  const Value dflt = fallback.is_undefined() ? Value::from(0.0) : fallback;
  if (v.is_number() || v.kind == Value::Kind::Bool)
    return Value::from(v.kind == Value::Kind::Bool ? (v.boolean ? 1.0 : 0.0) : v.as_double());
  double d = 0;
  return v.is_string() && parse_py_float(v.text, d) ? Value::from(d) : dflt;
}

Value f_replace(const Value& v, const Args& a) {
  const Value count = a.get(2, "count");
  return Value::from(py_replace(to_str(v), to_str(a.get(0, "old")), to_str(a.get(1, "new")),
                                count.kind == Value::Kind::Int ? static_cast<long>(count.integer) : -1));
}

// Python's round(x, digits) for a float: the exact binary value rounded half-even in decimal, which printf's
// %.*f does too (2.675 is 2.67499999... and rounds to 2.67).
double py_round(double x, int64_t digits) {
  if (!std::isfinite(x) || digits > 400) return x;  // beyond a double's last decimal digit (~ 10**-324)
  std::string text(static_cast<size_t>(std::snprintf(nullptr, 0, "%.*f", static_cast<int>(digits), x)) + 1, '\0');
  std::snprintf(text.data(), text.size(), "%.*f", static_cast<int>(digits), x);
  return std::strtod(text.c_str(), nullptr);
}

Value f_round(const Value& v, const Args& a) {
  if (!v.is_number()) bad("filter 'round' needs a number");
  const Value p = a.get(0, "precision"), method = a.get(1, "method");
  if (!p.is_undefined() && p.kind != Value::Kind::Int) bad("filter 'round' needs an integer precision");
  const int64_t digits = p.kind == Value::Kind::Int ? p.integer : 0;
  const std::string how = method.is_string() ? method.text : "common";
  if (how != "common" && how != "floor" && how != "ceil") bad("method must be common, ceil or floor");
  if (digits < 0) throw Error(ErrorKind::Unsupported, "filter 'round' with a negative precision is not supported");
  if (how == "common") return v.kind == Value::Kind::Int ? v : Value::from(py_round(v.real, digits));
  // jinja2: math.floor/ceil(value * 10**precision) / 10**precision, a float.
  const double scale = std::pow(10.0, static_cast<double>(digits)), x = v.as_double() * scale;
  return Value::from((how == "floor" ? std::floor(x) : std::ceil(x)) / scale);
}

Value f_indent(const Value& v, const Args& a) {
  const Value width = a.get(0, "width");
  const std::string pad = width.is_string() ? width.text
                                            : std::string(width.kind == Value::Kind::Int ? static_cast<size_t>(width.integer) : 4, ' ');
  const bool first = a.get(1, "first").truthy(), blank = a.get(2, "blank").truthy();
  std::vector<std::string> lines;
  const std::string s = to_str(v) + "\n";  // jinja2 appends a newline so that a final one survives splitlines
  for (size_t from = 0, at; (at = s.find('\n', from)) != std::string::npos; from = at + 1)
    lines.push_back(s.substr(from, at - from));
  std::string out = lines.empty() ? "" : lines[0];
  for (size_t i = 1; i < lines.size(); ++i) {
    out += '\n';
    if (blank || !lines[i].empty()) out += pad;
    out += lines[i];
  }
  return Value::from(first ? pad + out : out);
}

Value f_escape(const Value& v, const Args&) {
  std::string out;
  for (char c : to_str(v)) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return Value::from(std::move(out));
}

// Python's printf-style `format % args` for %s, %r, %d, %i and %%.
Value f_format(const Value& v, const Args& a) {
  if (!a.keywords.empty()) bad("filter 'format' with keyword arguments is not supported");
  const std::string& fmt = need_string(v, "format");
  std::string out;
  size_t next = 0;
  for (size_t i = 0; i < fmt.size(); ++i) {
    if (fmt[i] != '%') {
      out += fmt[i];
      continue;
    }
    const char spec = i + 1 < fmt.size() ? fmt[++i] : '\0';
    if (spec == '%') {
      out += '%';
      continue;
    }
    if (spec != 's' && spec != 'r' && spec != 'd' && spec != 'i')
      throw Error(ErrorKind::Unsupported, std::string("format conversion '%") + spec + "' is not supported");
    if (next >= a.positional.size()) bad("not enough arguments for format string");
    const Value& arg = a.positional[next++];
    if ((spec == 'd' || spec == 'i') && !(arg.is_number() || arg.kind == Value::Kind::Bool))
      bad("%d format needs a number");
    out += spec == 'r' ? to_repr(arg)
           : spec == 's' ? to_str(arg)
                         : std::to_string(arg.kind == Value::Kind::Float ? static_cast<int64_t>(arg.real)
                                                                        : arg.kind == Value::Kind::Bool ? arg.boolean : arg.integer);
  }
  if (next != a.positional.size()) bad("not all arguments converted during string formatting");
  return Value::from(std::move(out));
}

Value f_abs(const Value& v, const Args&) { return absolute(v); }

Value f_reverse(const Value& v, const Args&) {
  if (v.is_string()) {
    List chars = iterate(v);
    std::string out;
    for (auto it = chars.rbegin(); it != chars.rend(); ++it) out += it->text;
    return Value::from(std::move(out));
  }
  List items = iterate(v);
  std::reverse(items.begin(), items.end());
  return Value::from(std::move(items));
}

// Strings compare ignoring ASCII case unless case_sensitive, as jinja2's sort and dictsort do.
Value sort_key(const Value& v, bool case_sensitive) {
  return v.is_string() && !case_sensitive ? Value::from(py_lower(v.text)) : v;
}

Value f_sort(const Value& v, const Args& a) {
  List items = iterate(v);
  const bool reverse = a.get(0, "reverse").truthy(), case_sensitive = a.get(1, "case_sensitive").truthy();
  const Value attribute = a.get(2, "attribute");
  auto key = [&](const Value& x) {
    return sort_key(attribute.is_undefined() ? x : attribute_path(x, to_str(attribute)), case_sensitive);
  };
  std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
    const int c = compare(key(x), key(y));
    return reverse ? c > 0 : c < 0;
  });
  return Value::from(std::move(items));
}

Value f_dictsort(const Value& v, const Args& a) {
  if (!v.is_dict()) bad("filter 'dictsort' needs a mapping");
  const bool case_sensitive = a.get(0, "case_sensitive").truthy(), reverse = a.get(2, "reverse").truthy();
  const Value by = a.get(1, "by");
  const size_t index = by.is_string() && by.text == "value" ? 1 : 0;
  List items = *f_items(v, Args{}).list;
  std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
    const int c = compare(sort_key((*x.list)[index], case_sensitive), sort_key((*y.list)[index], case_sensitive));
    return reverse ? c > 0 : c < 0;
  });
  return Value::from(std::move(items));
}

const std::map<std::string, Filter>& filters() {
  static const std::map<std::string, Filter> table = {
      {"trim", f_trim},         {"tojson", f_tojson},   {"length", f_length},       {"count", f_length},
      {"upper", f_upper},       {"lower", f_lower},     {"capitalize", f_capitalize}, {"title", f_title},
      {"items", f_items},       {"default", f_default}, {"d", f_default},           {"join", f_join},
      {"selectattr", f_selectattr}, {"rejectattr", f_rejectattr}, {"select", f_select}, {"reject", f_reject},
      {"map", f_map},           {"first", f_first},     {"last", f_last},           {"list", f_list},
      {"string", f_string},     {"int", f_int},         {"float", f_float},         {"replace", f_replace},
      {"round", f_round},       {"indent", f_indent},   {"safe", f_safe},           {"escape", f_escape},
      {"e", f_escape},          {"abs", f_abs},         {"format", f_format},  {"dictsort", f_dictsort},         {"reverse", f_reverse},     {"sort", f_sort},
  };
  return table;
}

}  // namespace

bool is_filter(const std::string& name) { return filters().count(name) != 0; }

Value apply_filter(const std::string& name, const Value& subject, const Args& args) {
  const auto it = filters().find(name);
  if (it == filters().end()) throw Error(ErrorKind::Unsupported, "unknown filter '" + name + "'");
  return it->second(subject, args);
}

}  // namespace hs::jinja
