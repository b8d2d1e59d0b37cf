// Renders a parsed template: statements write text, expressions compute values as jinja2 does.
#include <new>
#include <unordered_map>

#include "tokenizer/jinja/arithmetic.h"
#include "tokenizer/jinja/ast.h"
#include "tokenizer/jinja/builtins.h"
#include "tokenizer/jinja/parser.h"
#include "tokenizer/jinja/string_ops.h"
#include "tokenizer/jinja/template.h"
#include "tokenizer/jinja/template_error.h"

namespace hs::jinja {

namespace {

using Frame = std::unordered_map<std::string, Value>;
using Scope = std::vector<std::shared_ptr<Frame>>;

enum class Flow { Normal, Break, Continue };

bool has_line(const Error& e) { return std::string(e.what()).rfind("chat template line ", 0) == 0; }

class Interpreter {
 public:
  Interpreter(const Dict& variables, const RenderLimits& limits) : limits_(limits) {
    auto globals = std::make_shared<Frame>();
    for (const auto& [k, v] : variables.items) (*globals)[k] = v;
    scope_.push_back(globals);
    scope_.push_back(std::make_shared<Frame>());
  }

  // Anything escaping a statement becomes an hs::Error naming the line being rendered.
  std::string run(const Body& body) {
    try {
      std::string out;
      render_body(body, out);
      return out;
    } catch (const Error& err) {
      if (has_line(err)) throw;
      fail_at(line_, err.kind(), err.what());
    } catch (const std::bad_alloc&) {
      fail_at(line_, ErrorKind::InvalidArgument, "the template needs more memory than is available");
    } catch (const std::exception& err) {
      fail_at(line_, ErrorKind::Internal, std::string("rendering failed: ") + err.what());
    }
  }

 private:
  // ---- scope and limits
  Value lookup(const std::string& name) const {
    for (auto it = scope_.rbegin(); it != scope_.rend(); ++it) {
      const auto found = (*it)->find(name);
      if (found != (*it)->end()) return found->second;
    }
    return global_function(name);
  }

  void assign(const std::string& name, Value v) { (*scope_.back())[name] = std::move(v); }

  void assign_targets(const std::vector<std::string>& targets, const Value& v, int line) {
    if (targets.size() == 1) return assign(targets[0], v);
    const List parts = iterate(v);
    if (parts.size() != targets.size())
      fail_at(line, ErrorKind::InvalidArgument, "cannot unpack " + std::to_string(parts.size()) + " values into " +
                                                    std::to_string(targets.size()) + " names");
    for (size_t i = 0; i < targets.size(); ++i) assign(targets[i], parts[i]);
  }

  void step(int line) {
    line_ = line;
    if (++steps_ > limits_.max_steps)
      fail_at(line, ErrorKind::InvalidArgument,
              "the template ran more than " + std::to_string(limits_.max_steps) + " steps; it may not terminate");
  }

  void emit(std::string& out, const std::string& text, int line) {
    out += text;
    if (out.size() > limits_.max_output_bytes)
      fail_at(line, ErrorKind::InvalidArgument,
              "the template's output exceeds " + std::to_string(limits_.max_output_bytes) + " bytes");
  }

  // ---- statements
  Flow render_body(const Body& body, std::string& out) {
    for (const auto& s : body) {
      step(s->line);
      const Flow f = render_statement(*s, out);
      if (f != Flow::Normal) return f;
    }
    return Flow::Normal;
  }

  Flow render_statement(const Stmt& s, std::string& out) {
    switch (s.kind) {
      case Stmt::Kind::Text: emit(out, s.text, s.line); return Flow::Normal;
      case Stmt::Kind::Output: emit(out, to_str(eval(*s.expr)), s.line); return Flow::Normal;
      case Stmt::Kind::If:
        for (size_t i = 0; i < s.conditions.size(); ++i)
          if (eval(*s.conditions[i]).truthy()) return render_body(s.bodies[i], out);
        return s.bodies.size() > s.conditions.size() ? render_body(s.bodies.back(), out) : Flow::Normal;
      case Stmt::Kind::For: render_for(s, out); return Flow::Normal;
      case Stmt::Kind::Set: set(s); return Flow::Normal;
      case Stmt::Kind::SetBlock: {
        std::string text;
        render_body(s.bodies[0], text);
        assign(s.targets[0], Value::from(std::move(text)));
        return Flow::Normal;
      }
      case Stmt::Kind::Macro: assign(s.name, make_macro(s)); return Flow::Normal;
      case Stmt::Kind::CallBlock: emit(out, to_str(call_with_caller(s)), s.line); return Flow::Normal;
      case Stmt::Kind::Break: return Flow::Break;
      case Stmt::Kind::Continue: return Flow::Continue;
      case Stmt::Kind::Group: return render_body(s.bodies[0], out);
    }
    return Flow::Normal;
  }

  void set(const Stmt& s) {
    Value v = eval(*s.expr);
    if (s.name != "attr") return assign_targets(s.targets, v, s.line);
    Value ns = lookup(s.targets[0]);
    if (!ns.is_dict() || !ns.is_namespace)
      fail_at(s.line, ErrorKind::InvalidArgument, "'" + s.targets[0] + "' is not a namespace(); its attributes cannot be set");
    ns.dict->set(s.targets[1], std::move(v));
  }

  Value loop_object(const List& items, size_t i) {
    const auto n = static_cast<int64_t>(items.size()), k = static_cast<int64_t>(i);
    Dict loop;
    loop.set("index", Value::from(k + 1));
    loop.set("index0", Value::from(k));
    loop.set("revindex", Value::from(n - k));
    loop.set("revindex0", Value::from(n - k - 1));
    loop.set("first", Value::from(k == 0));
    loop.set("last", Value::from(k == n - 1));
    loop.set("length", Value::from(n));
    loop.set("previtem", k > 0 ? items[i - 1] : Value::undefined("previtem"));
    loop.set("nextitem", k + 1 < n ? items[i + 1] : Value::undefined("nextitem"));
    loop.set("cycle", Value::from(Function([k](const Args& a) -> Value {
      if (a.positional.empty()) throw Error(ErrorKind::InvalidArgument, "loop.cycle() needs at least one value");
      return a.positional[static_cast<size_t>(k) % a.positional.size()];
    })));
    return Value::from(std::move(loop));
  }

  void render_for(const Stmt& s, std::string& out) {
    List items;
    for (Value& item : iterate(eval(*s.expr))) {
      if (!s.conditions.empty()) {
        scope_.push_back(std::make_shared<Frame>());
        assign_targets(s.targets, item, s.line);
        const bool keep = eval(*s.conditions[0]).truthy();
        scope_.pop_back();
        if (!keep) continue;
      }
      items.push_back(std::move(item));
    }
    if (items.empty() && s.bodies.size() > 1) {
      scope_.push_back(std::make_shared<Frame>());
      render_body(s.bodies[1], out);
      scope_.pop_back();
      return;
    }
    for (size_t i = 0; i < items.size(); ++i) {
      step(s.line);
      scope_.push_back(std::make_shared<Frame>());
      assign_targets(s.targets, items[i], s.line);
      assign("loop", loop_object(items, i));
      const Flow f = render_body(s.bodies[0], out);
      scope_.pop_back();
      if (f == Flow::Break) break;
    }
  }

  // ---- macros and call blocks
  // Runs `body` with `params` bound from `args` in a frame above `closure`; returns what it wrote.
  std::string invoke(const Stmt& def, const Scope& closure, const Args& args, const std::string& what) {
    if (++call_depth_ > limits_.max_call_depth)
      fail_at(def.line, ErrorKind::InvalidArgument,
              "calls nest deeper than " + std::to_string(limits_.max_call_depth) + " levels (runaway recursion?)");
    Scope saved = std::move(scope_);
    scope_ = closure;
    scope_.push_back(std::make_shared<Frame>());
    if (args.positional.size() > def.targets.size())
      fail_at(def.line, ErrorKind::InvalidArgument, what + " takes " + std::to_string(def.targets.size()) + " arguments");
    for (size_t i = 0; i < def.targets.size(); ++i) {
      const Value* named = args.keyword(def.targets[i]);
      if (i < args.positional.size()) assign(def.targets[i], args.positional[i]);
      else if (named) assign(def.targets[i], *named);
      else assign(def.targets[i], def.defaults[i] ? eval(*def.defaults[i]) : Value::undefined(def.targets[i]));
    }
    for (const auto& [k, v] : args.keywords) {
      if (k == "caller") assign(k, v);
      else if (std::find(def.targets.begin(), def.targets.end(), k) == def.targets.end())
        fail_at(def.line, ErrorKind::InvalidArgument, what + " has no parameter '" + k + "'");
    }
    std::string out;
    render_body(def.bodies[0], out);
    scope_ = std::move(saved);
    --call_depth_;
    return out;
  }

  Value make_macro(const Stmt& s) {
    const Scope closure = scope_;
    return Value::from(Function([this, &s, closure](const Args& a) {
      return Value::from(invoke(s, closure, a, "macro '" + s.name + "'"));
    }));
  }

  Value call_with_caller(const Stmt& s) {
    const Scope closure = scope_;
    Args args = eval_arguments(*s.expr);
    args.keywords.emplace_back("caller", Value::from(Function([this, &s, closure](const Args& a) {
      return Value::from(invoke(s, closure, a, "caller()"));
    })));
    const Value callee = eval(*s.expr->kids[0]);
    if (callee.kind != Value::Kind::Function) fail_at(s.line, ErrorKind::InvalidArgument, "{% call %} needs a macro");
    return (*callee.function)(args);
  }

  // ---- expressions
  Value eval(const Expr& e) {
    try {
      return eval_node(e);
    } catch (const Error& err) {
      if (has_line(err)) throw;
      fail_at(e.line, err.kind(), err.what());
    } catch (const std::bad_alloc&) {
      fail_at(e.line, ErrorKind::InvalidArgument, "the template needs more memory than is available");
    } catch (const std::exception& err) {
      fail_at(e.line, ErrorKind::Internal, std::string("rendering failed: ") + err.what());
    }
  }

  static Value defined(const Value& v) {
    if (v.is_undefined()) throw Error(ErrorKind::InvalidArgument, "'" + v.text + "' is undefined");
    return v;
  }

  Args eval_arguments(const Expr& call) {
    Args a;
    const size_t n_keywords = call.keywords.size(), n_args = call.kids.size() - 1;
    for (size_t i = 0; i < n_args; ++i) {
      Value v = eval(*call.kids[i + 1]);
      if (i < n_args - n_keywords) a.positional.push_back(std::move(v));
      else a.keywords.emplace_back(call.keywords[i - (n_args - n_keywords)], std::move(v));
    }
    return a;
  }

  Value eval_node(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::Literal: return e.value;
      case Expr::Kind::Name: return lookup(e.name);
      case Expr::Kind::List:
      case Expr::Kind::Tuple: {
        List items;
        for (const auto& k : e.kids) items.push_back(eval(*k));
        return e.kind == Expr::Kind::Tuple ? Value::tuple(std::move(items)) : Value::from(std::move(items));
      }
      case Expr::Kind::Dict: {
        Dict d;
        for (size_t i = 0; i + 1 < e.kids.size(); i += 2) {
          const Value key = eval(*e.kids[i]);
          if (!key.is_string()) throw Error(ErrorKind::Unsupported, "dict keys other than strings are not supported");
          d.set(key.text, eval(*e.kids[i + 1]));
        }
        return Value::from(std::move(d));
      }
      case Expr::Kind::Attr: return attribute(defined(eval(*e.kids[0])), e.name);
      case Expr::Kind::Item: return item(defined(eval(*e.kids[0])), eval(*e.kids[1]));
      case Expr::Kind::Slice: return slice(e);
      case Expr::Kind::Call: return call(e);
      case Expr::Kind::Filter: {
        const Value subject = eval(*e.kids[0]);
        return apply_filter(e.name, subject, eval_arguments(e));
      }
      case Expr::Kind::Test: {
        const Value subject = eval(*e.kids[0]);
        return Value::from(apply_test(e.name, subject, eval_arguments(e)) != e.negated);
      }
      case Expr::Kind::Unary: return unary(e);
      case Expr::Kind::Binary: return binary(e);
      case Expr::Kind::Compare: return chained_compare(e);
      case Expr::Kind::Cond:
        if (eval(*e.kids[1]).truthy()) return eval(*e.kids[0]);
        return e.kids[2] ? eval(*e.kids[2]) : Value::undefined();
    }
    return Value::undefined();
  }

  static Value attribute(const Value& obj, const std::string& name) {
    if (obj.is_dict()) {
      const Value* found = obj.dict->find(name);
      if (found) return *found;
    }
    return Value::undefined(name);
  }

  // obj[key] without copying obj: a list's item by reference, a string's code point by walking its bytes.
  static Value item(const Value& obj, const Value& key) {
    if (obj.is_dict()) return key.is_string() ? attribute(obj, key.text) : Value::undefined(to_str(key));
    const bool indexable = (obj.is_list() && obj.view != Value::View::DictView) || obj.is_string();
    if (indexable && (key.kind == Value::Kind::Int || key.kind == Value::Kind::Bool)) {
      const int64_t k = key.kind == Value::Kind::Bool ? key.boolean : key.integer;
      const int64_t n = static_cast<int64_t>(obj.is_list() ? obj.list->size() : utf8_length(obj.text));
      const int64_t i = k < 0 ? k + n : k;
      if (i < 0 || i >= n) return Value::undefined(to_str(key));
      return obj.is_list() ? (*obj.list)[static_cast<size_t>(i)] : Value::from(utf8_code_point_at(obj.text, static_cast<size_t>(i)));
    }
    if (key.is_string()) return attribute(obj, key.text);
    return Value::undefined(to_str(key));
  }

  Value slice(const Expr& e) {
    const Value obj = defined(eval(*e.kids[0]));
    int64_t bound[3] = {0, 0, 1};
    bool given[3] = {false, false, false};
    for (int k = 0; k < 3; ++k) {
      if (!e.kids[k + 1]) continue;
      const Value v = eval(*e.kids[k + 1]);
      if (v.is_none()) continue;
      if (v.kind != Value::Kind::Int) throw Error(ErrorKind::InvalidArgument, "slice bounds must be integers");
      bound[k] = v.integer;
      given[k] = true;
    }
    if (bound[2] == 0) throw Error(ErrorKind::InvalidArgument, "slice step cannot be zero");
    if (!obj.is_string() && (!obj.is_list() || obj.view == Value::View::DictView)) return Value::undefined("slice");
    const List items = iterate(obj);
    List out;
    for_each_slice_index(static_cast<int64_t>(items.size()), bound, given, [&](size_t i) { out.push_back(items[i]); });
    if (!obj.is_string()) {
      Value v = Value::from(std::move(out));
      v.view = obj.view;
      return v;
    }
    std::string s;
    for (const Value& c : out) s += c.text;
    return Value::from(std::move(s));
  }

  // Python's slice.indices() and the count of indices it yields, in 128 bits so that no step overflows.
  template <typename Visit>
  static void for_each_slice_index(int64_t n, const int64_t bound[3], const bool given[3], Visit visit) {
    const __int128 step = bound[2];
    auto clamp = [&](__int128 v) {
      if (v < 0) v += n;
      return step > 0 ? (v < 0 ? 0 : v > n ? n : v) : (v < -1 ? -1 : v > n - 1 ? n - 1 : v);
    };
    const __int128 start = given[0] ? clamp(bound[0]) : (step > 0 ? 0 : n - 1);
    const __int128 stop = given[1] ? clamp(bound[1]) : (step > 0 ? n : -1);
    __int128 count = 0;
    if (step > 0 && start < stop) count = (stop - start - 1) / step + 1;
    if (step < 0 && start > stop) count = (start - stop - 1) / -step + 1;
    for (__int128 k = 0; k < count; ++k) visit(static_cast<size_t>(start + k * step));
  }

  Value call(const Expr& e) {
    const Expr& callee = *e.kids[0];
    if (callee.kind == Expr::Kind::Attr) {
      const Value obj = defined(eval(*callee.kids[0]));
      const Value* own = obj.is_dict() ? obj.dict->find(callee.name) : nullptr;  // loop.cycle
      if (own && own->kind == Value::Kind::Function) return (*own->function)(eval_arguments(e));
      if (obj.is_string() || obj.is_list() || (obj.is_dict() && !obj.is_namespace))
        return call_method(obj, callee.name, eval_arguments(e));
    }
    const Value fn = eval(callee);
    if (fn.is_undefined()) throw Error(ErrorKind::Unsupported, "'" + fn.text + "' is undefined and cannot be called");
    if (fn.kind != Value::Kind::Function)
      throw Error(ErrorKind::InvalidArgument, std::string("'") + fn.type_name() + "' object is not callable");
    return (*fn.function)(eval_arguments(e));
  }

  Value unary(const Expr& e) {
    const Value v = eval(*e.kids[0]);
    if (e.name == "not") return Value::from(!v.truthy());
    defined(v);
    if (e.name == "-" && (v.is_number() || v.kind == Value::Kind::Bool)) return negate(v);
    if (v.kind == Value::Kind::Int || v.kind == Value::Kind::Bool)
      return Value::from(static_cast<int64_t>(v.kind == Value::Kind::Bool ? v.boolean : v.integer));
    if (v.kind == Value::Kind::Float) return v;
    throw Error(ErrorKind::InvalidArgument, std::string("bad operand type for unary ") + e.name + ": '" + v.type_name() + "'");
  }

  Value binary(const Expr& e) {
    const std::string& op = e.name;
    if (op == "and" || op == "or") {
      Value left = eval(*e.kids[0]);
      if (left.truthy() == (op == "or")) return left;
      return eval(*e.kids[1]);
    }
    const Value a = eval(*e.kids[0]), b = eval(*e.kids[1]);
    if (op == "~") {
      std::string joined = to_str(a);
      const std::string right = to_str(b);
      check_built_size(joined.size() + right.size());
      return Value::from(joined + right);
    }
    return arithmetic(op, defined(a), defined(b));
  }

  static bool compare_values(const std::string& op, const Value& a, const Value& b) {
    if (op == "==") return equal(a, b);
    if (op == "!=") return !equal(a, b);
    if (op == "in" || op == "not in") {
      if (b.is_none()) throw Error(ErrorKind::InvalidArgument, "argument of type 'NoneType' is not iterable");
      Args container;
      container.positional.push_back(b);
      return apply_test("in", a, container) == (op == "in");
    }
    const int c = compare(defined(a), defined(b));
    return op == "<" ? c < 0 : op == "<=" ? c <= 0 : op == ">" ? c > 0 : c >= 0;
  }

  // `a < b <= c` is `a < b and b <= c`, each operand evaluated once, as in Python.
  Value chained_compare(const Expr& e) {
    Value left = eval(*e.kids[0]);
    for (size_t i = 1; i < e.kids.size(); ++i) {
      Value right = eval(*e.kids[i]);
      if (!compare_values(e.keywords[i - 1], left, right)) return Value::from(false);
      left = std::move(right);
    }
    return Value::from(true);
  }

  const RenderLimits limits_;
  Scope scope_;
  uint64_t steps_ = 0;
  int line_ = 1;  // the statement being rendered, for errors raised outside any expression
  int call_depth_ = 0;
};

}  // namespace

namespace {

std::shared_ptr<const Body> compile(const std::string& source) {
  try {
    return std::make_shared<const Body>(parse(lex(source)));
  } catch (const Error&) {
    throw;
  } catch (const std::exception& err) {
    throw Error(ErrorKind::Internal, std::string("chat template: compiling failed: ") + err.what());
  }
}

}  // namespace

Template::Template(const std::string& source) : body_(compile(source)) {}

std::string Template::render(const Dict& variables, const RenderLimits& limits) const {
  return Interpreter(variables, limits).run(*body_);
}

}  // namespace hs::jinja
