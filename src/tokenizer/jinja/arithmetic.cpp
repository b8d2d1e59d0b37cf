#include "tokenizer/jinja/arithmetic.h"

#include <cmath>
#include <cstdint>

#include "common/error.h"

namespace hs::jinja {

namespace {

[[noreturn]] void overflow(const std::string& what) {
  throw Error(ErrorKind::Unsupported, what + " does not fit in 64 bits (Python's integers are unbounded; ours are not)");
}

bool numeric(const Value& v) { return v.is_number() || v.kind == Value::Kind::Bool; }
int64_t integer_of(const Value& v) { return v.kind == Value::Kind::Bool ? v.boolean : v.integer; }
double double_of(const Value& v) { return v.kind == Value::Kind::Float ? v.real : static_cast<double>(integer_of(v)); }

// x ** y for y >= 0 by squaring, refusing a result beyond int64.
int64_t int_power(int64_t x, int64_t y) {
  int64_t result = 1, base = x;
  while (y > 0) {
    if ((y & 1) && __builtin_mul_overflow(result, base, &result)) overflow("an integer power");
    y >>= 1;
    if (y > 0 && __builtin_mul_overflow(base, base, &base)) overflow("an integer power");
  }
  return result;
}

Value int_arithmetic(const std::string& op, int64_t x, int64_t y) {
  int64_t r = 0;
  if (op == "+" && !__builtin_add_overflow(x, y, &r)) return Value::from(r);
  if (op == "-" && !__builtin_sub_overflow(x, y, &r)) return Value::from(r);
  if (op == "*" && !__builtin_mul_overflow(x, y, &r)) return Value::from(r);
  if (op == "+" || op == "-" || op == "*") overflow("the result of '" + op + "'");
  if ((op == "/" || op == "//" || op == "%") && y == 0) throw Error(ErrorKind::InvalidArgument, "division by zero");
  if (op == "/") return Value::from(static_cast<double>(x) / static_cast<double>(y));
  if (y == -1) {  // INT64_MIN / -1 traps on x86
    if (op == "%") return Value::from(int64_t{0});
    if (op == "//" && x == INT64_MIN) overflow("the result of '//'");
  }
  if (op == "//") {
    const int64_t q = x / y;
    return Value::from((x % y != 0 && ((x < 0) != (y < 0))) ? q - 1 : q);
  }
  if (op == "%") {
    const int64_t m = x % y;
    return Value::from(m != 0 && ((m < 0) != (y < 0)) ? m + y : m);
  }
  if (op == "**") {
    if (y >= 0) return Value::from(int_power(x, y));
    if (x == 0) throw Error(ErrorKind::InvalidArgument, "0 cannot be raised to a negative power");
    return Value::from(std::pow(static_cast<double>(x), static_cast<double>(y)));
  }
  throw Error(ErrorKind::Unsupported, "operator '" + op + "' is not supported");
}

Value float_power(double x, double y) {
  if (x == 0 && y < 0) throw Error(ErrorKind::InvalidArgument, "0.0 cannot be raised to a negative power");
  if (x < 0 && std::isfinite(y) && y != std::floor(y))
    throw Error(ErrorKind::Unsupported, "a negative number raised to a fractional power is complex in Python");
  const double r = std::pow(x, y);
  if (std::isinf(r) && std::isfinite(x) && std::isfinite(y))
    throw Error(ErrorKind::InvalidArgument, "a float power is out of range");
  return Value::from(r);
}

Value float_arithmetic(const std::string& op, double x, double y) {
  if ((op == "/" || op == "//" || op == "%") && y == 0) throw Error(ErrorKind::InvalidArgument, "division by zero");
  if (op == "+") return Value::from(x + y);
  if (op == "-") return Value::from(x - y);
  if (op == "*") return Value::from(x * y);
  if (op == "/") return Value::from(x / y);
  if (op == "//") return Value::from(std::floor(x / y));
  if (op == "%") {
    const double m = std::fmod(x, y);
    return Value::from(m != 0 && ((m < 0) != (y < 0)) ? m + y : m == 0 ? std::copysign(0.0, y) : m);
  }
  if (op == "**") return float_power(x, y);
  throw Error(ErrorKind::Unsupported, "operator '" + op + "' is not supported");
}

Value repeat(const Value& v, int64_t times) {
  if (times <= 0) return v.is_string() ? Value::from(std::string()) : Value::from(List{});
  const size_t unit = v.is_string() ? v.text.size() : v.list->size();
  if (unit != 0 && static_cast<uint64_t>(times) > kMaxBuiltSize / unit) check_built_size(kMaxBuiltSize + 1);
  if (v.is_string()) {
    std::string out;
    out.reserve(unit * static_cast<size_t>(times));
    for (int64_t i = 0; i < times; ++i) out += v.text;
    return Value::from(std::move(out));
  }
  List out;
  for (int64_t i = 0; i < times; ++i) out.insert(out.end(), v.list->begin(), v.list->end());
  return Value::from(std::move(out));
}

}  // namespace

Value arithmetic(const std::string& op, const Value& a, const Value& b) {
  if (a.is_view() || b.is_view())
    throw Error(ErrorKind::Unsupported, "arithmetic on range() or a dict view is not supported");
  if (op == "+" && a.is_string() && b.is_string()) {
    check_built_size(a.text.size() + b.text.size());
    return Value::from(a.text + b.text);
  }
  if (op == "+" && a.is_list() && b.is_list()) {
    check_built_size(a.list->size() + b.list->size());
    List out = *a.list;
    out.insert(out.end(), b.list->begin(), b.list->end());
    return Value::from(std::move(out));
  }
  if (op == "*" && (a.is_string() || a.is_list()) && (b.kind == Value::Kind::Int || b.kind == Value::Kind::Bool))
    return repeat(a, integer_of(b));
  if (op == "*" && (b.is_string() || b.is_list()) && (a.kind == Value::Kind::Int || a.kind == Value::Kind::Bool))
    return repeat(b, integer_of(a));
  if (!numeric(a) || !numeric(b))
    throw Error(ErrorKind::InvalidArgument, std::string("unsupported operand types for ") + op + ": '" + a.type_name() +
                                                "' and '" + b.type_name() + "'");
  if (a.kind != Value::Kind::Float && b.kind != Value::Kind::Float) return int_arithmetic(op, integer_of(a), integer_of(b));
  return float_arithmetic(op, double_of(a), double_of(b));
}

Value negate(const Value& v) {
  if (v.kind == Value::Kind::Int || v.kind == Value::Kind::Bool) {
    if (integer_of(v) == INT64_MIN) overflow("the negation of " + std::to_string(INT64_MIN));
    return Value::from(-integer_of(v));
  }
  if (v.kind == Value::Kind::Float) return Value::from(-v.real);
  throw Error(ErrorKind::InvalidArgument, std::string("bad operand type for unary -: '") + v.type_name() + "'");
}

Value absolute(const Value& v) {
  if (v.kind == Value::Kind::Float) return Value::from(std::fabs(v.real));
  if (v.kind == Value::Kind::Int || v.kind == Value::Kind::Bool) return integer_of(v) < 0 ? negate(v) : Value::from(integer_of(v));
  throw Error(ErrorKind::InvalidArgument, "filter 'abs' needs a number");
}

}  // namespace hs::jinja
