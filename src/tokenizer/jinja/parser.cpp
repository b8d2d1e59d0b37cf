#include "tokenizer/jinja/parser.h"

#include <algorithm>

#include "tokenizer/jinja/builtins.h"
#include "tokenizer/jinja/template_error.h"

namespace hs::jinja {

namespace {

constexpr int kMaxNesting = 128;  // statements and expressions nested deeper than this are refused

class Parser {
 public:
  explicit Parser(const std::vector<Token>& tokens) : t_(tokens) {}

  Body parse_template() {
    std::string stopped;
    return parse_body({}, stopped, 0);
  }

 private:
  // ---- token helpers
  const Token& peek(size_t k = 0) const { return t_[std::min(i_ + k, t_.size() - 1)]; }
  bool is_op(const char* op, size_t k = 0) const { return peek(k).kind == Token::Kind::Op && peek(k).text == op; }
  bool is_name(const char* n, size_t k = 0) const { return peek(k).kind == Token::Kind::Name && peek(k).text == n; }
  const Token& next() { return t_[std::min(i_++, t_.size() - 1)]; }
  [[noreturn]] void fail(const std::string& msg, ErrorKind kind = ErrorKind::InvalidArgument) const {
    fail_at(peek().line, kind, msg);
  }
  std::string describe(const Token& t) const {
    switch (t.kind) {
      case Token::Kind::VarEnd: return "'}}'";
      case Token::Kind::BlockEnd: return "'%}'";
      case Token::Kind::End: return "the end of the template";
      default: return "'" + t.text + "'";
    }
  }
  void expect_op(const char* op) {
    if (!is_op(op)) fail(std::string("expected '") + op + "', found " + describe(peek()));
    next();
  }
  void expect(Token::Kind kind, const char* what) {
    if (peek().kind != kind) fail(std::string("expected ") + what + ", found " + describe(peek()));
    next();
  }
  std::string expect_name() {
    if (peek().kind != Token::Kind::Name) fail("expected a name, found " + describe(peek()));
    return next().text;
  }
  void enter() {
    if (++depth_ > kMaxNesting)
      fail("the template nests deeper than " + std::to_string(kMaxNesting) + " levels");
  }
  ExprPtr node(Expr::Kind kind, int line) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = line;
    return e;
  }

  // ---- statements
  // Statements up to a `{% name %}` whose name is one of `stop`; that name is consumed and returned in `stopped`.
  Body parse_body(const std::vector<std::string>& stop, std::string& stopped, int opened) {
    Body body;
    for (;;) {
      const Token& t = peek();
      if (t.kind == Token::Kind::End) {
        if (!stop.empty()) fail_at(opened, ErrorKind::InvalidArgument, "block is not closed with {% " + stop.back() + " %}");
        return body;
      }
      if (t.kind == Token::Kind::Text) {
        auto s = std::make_unique<Stmt>();
        s->line = t.line;
        s->text = next().text;
        body.push_back(std::move(s));
      } else if (t.kind == Token::Kind::VarBegin) {
        next();
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::Output;
        s->line = t.line;
        s->expr = parse_expression();
        expect(Token::Kind::VarEnd, "'}}'");
        body.push_back(std::move(s));
      } else {
        next();
        if (peek().kind == Token::Kind::Name &&
            std::find(stop.begin(), stop.end(), peek().text) != stop.end()) {
          stopped = next().text;
          return body;
        }
        body.push_back(parse_statement());
      }
    }
  }

  std::unique_ptr<Stmt> parse_statement() {
    enter();
    const int line = peek().line;
    const std::string word = expect_name();
    auto s = std::make_unique<Stmt>();
    s->line = line;
    if (word == "if") parse_if(*s);
    else if (word == "for") parse_for(*s);
    else if (word == "set") parse_set(*s);
    else if (word == "macro") parse_macro(*s);
    else if (word == "call") parse_call_block(*s);
    else if (word == "break" || word == "continue") {
      s->kind = word == "break" ? Stmt::Kind::Break : Stmt::Kind::Continue;
      expect(Token::Kind::BlockEnd, "'%}'");
    } else if (word == "generation") {  // transformers' marker of assistant text; it renders its body
      s->kind = Stmt::Kind::Group;
      expect(Token::Kind::BlockEnd, "'%}'");
      std::string stopped;
      s->bodies.push_back(parse_body({"endgeneration"}, stopped, line));
      expect(Token::Kind::BlockEnd, "'%}'");
    } else {
      fail_at(line, ErrorKind::Unsupported, "statement '" + word + "' is not supported");
    }
    --depth_;
    return s;
  }

  void parse_if(Stmt& s) {
    s.kind = Stmt::Kind::If;
    for (;;) {
      s.conditions.push_back(parse_expression());
      expect(Token::Kind::BlockEnd, "'%}'");
      std::string stopped;
      s.bodies.push_back(parse_body({"elif", "else", "endif"}, stopped, s.line));
      if (stopped == "elif") continue;
      if (stopped == "else") {
        expect(Token::Kind::BlockEnd, "'%}'");
        s.bodies.push_back(parse_body({"endif"}, stopped, s.line));
      }
      expect(Token::Kind::BlockEnd, "'%}'");
      return;
    }
  }

  void parse_for(Stmt& s) {
    s.kind = Stmt::Kind::For;
    do {
      s.targets.push_back(expect_name());
    } while (is_op(",") && next().kind == Token::Kind::Op);
    if (!is_name("in")) fail("expected 'in' in a for loop, found " + describe(peek()));
    next();
    s.expr = parse_tuple(false);
    if (is_name("if")) {
      next();
      s.conditions.push_back(parse_expression(false));
    }
    if (is_name("recursive")) fail("recursive for loops are not supported", ErrorKind::Unsupported);
    expect(Token::Kind::BlockEnd, "'%}'");
    std::string stopped;
    s.bodies.push_back(parse_body({"else", "endfor"}, stopped, s.line));
    if (stopped == "else") {
      expect(Token::Kind::BlockEnd, "'%}'");
      s.bodies.push_back(parse_body({"endfor"}, stopped, s.line));
    }
    expect(Token::Kind::BlockEnd, "'%}'");
  }

  void parse_set(Stmt& s) {
    s.kind = Stmt::Kind::Set;
    s.targets.push_back(expect_name());
    if (is_op(".")) {
      next();
      s.name = "attr";
      s.targets.push_back(expect_name());
    } else {
      while (is_op(",")) {
        next();
        s.targets.push_back(expect_name());
      }
    }
    if (is_op("=")) {
      next();
      s.expr = parse_tuple(true);
      expect(Token::Kind::BlockEnd, "'%}'");
      return;
    }
    if (s.targets.size() != 1 || !s.name.empty()) fail("a block set assigns one name");
    if (is_op("|")) fail("filters on a block set are not supported", ErrorKind::Unsupported);
    expect(Token::Kind::BlockEnd, "'%}'");
    s.kind = Stmt::Kind::SetBlock;
    std::string stopped;
    s.bodies.push_back(parse_body({"endset"}, stopped, s.line));
    expect(Token::Kind::BlockEnd, "'%}'");
  }

  void parse_parameters(Stmt& s) {
    expect_op("(");
    while (!is_op(")")) {
      s.targets.push_back(expect_name());
      ExprPtr def;
      if (is_op("=")) {
        next();
        def = parse_expression();
      }
      s.defaults.push_back(std::move(def));
      if (!is_op(")")) expect_op(",");
    }
    next();
  }

  void parse_macro(Stmt& s) {
    s.kind = Stmt::Kind::Macro;
    s.name = expect_name();
    parse_parameters(s);
    expect(Token::Kind::BlockEnd, "'%}'");
    std::string stopped;
    s.bodies.push_back(parse_body({"endmacro"}, stopped, s.line));
    if (peek().kind == Token::Kind::Name) next();  // {% endmacro name %}
    expect(Token::Kind::BlockEnd, "'%}'");
  }

  void parse_call_block(Stmt& s) {
    s.kind = Stmt::Kind::CallBlock;
    if (is_op("(")) parse_parameters(s);
    s.expr = parse_expression();
    if (s.expr->kind != Expr::Kind::Call) fail_at(s.line, ErrorKind::InvalidArgument, "{% call %} needs a macro call");
    expect(Token::Kind::BlockEnd, "'%}'");
    std::string stopped;
    s.bodies.push_back(parse_body({"endcall"}, stopped, s.line));
    expect(Token::Kind::BlockEnd, "'%}'");
  }

  // ---- expressions, loosest binding first
  ExprPtr parse_tuple(bool with_condition) {
    const int line = peek().line;
    ExprPtr first = parse_expression(with_condition);
    if (!is_op(",")) return first;
    ExprPtr tuple = node(Expr::Kind::Tuple, line);
    tuple->kids.push_back(std::move(first));
    while (is_op(",")) {
      next();
      if (peek().kind == Token::Kind::BlockEnd || peek().kind == Token::Kind::VarEnd || is_op(")")) break;
      tuple->kids.push_back(parse_expression(with_condition));
    }
    return tuple;
  }

  ExprPtr parse_expression(bool with_condition = true) {
    enter();
    ExprPtr e = parse_or();
    if (with_condition && is_name("if")) {
      ExprPtr cond = node(Expr::Kind::Cond, peek().line);
      next();
      cond->kids.push_back(std::move(e));
      cond->kids.push_back(parse_or());
      if (is_name("else")) {
        next();
        cond->kids.push_back(parse_expression());
      } else {
        cond->kids.push_back(nullptr);
      }
      e = std::move(cond);
    }
    --depth_;
    return e;
  }

  ExprPtr binary(const std::string& op, ExprPtr left, ExprPtr right) {
    ExprPtr e = node(Expr::Kind::Binary, left->line);
    e->name = op;
    e->kids.push_back(std::move(left));
    e->kids.push_back(std::move(right));
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr e = parse_and();
    while (is_name("or")) {
      next();
      e = binary("or", std::move(e), parse_and());
    }
    return e;
  }

  ExprPtr parse_and() {
    ExprPtr e = parse_not();
    while (is_name("and")) {
      next();
      e = binary("and", std::move(e), parse_not());
    }
    return e;
  }

  ExprPtr parse_not() {
    if (!is_name("not")) return parse_compare();
    ExprPtr e = node(Expr::Kind::Unary, next().line);
    e->name = "not";
    enter();
    e->kids.push_back(parse_not());
    --depth_;
    return e;
  }

  ExprPtr parse_compare() {
    ExprPtr first = parse_math1();
    ExprPtr e = node(Expr::Kind::Compare, first->line);
    e->kids.push_back(std::move(first));
    for (;;) {
      static const char* const ops[] = {"==", "!=", "<", "<=", ">", ">="};
      std::string op;
      for (const char* o : ops)
        if (is_op(o)) op = o;
      if (op.empty() && is_name("in")) op = "in";
      if (op.empty() && is_name("not") && is_name("in", 1)) {
        next();
        op = "not in";
      }
      if (op.empty()) return e->kids.size() == 1 ? std::move(e->kids[0]) : std::move(e);
      next();
      e->keywords.push_back(op);
      e->kids.push_back(parse_math1());
    }
  }

  ExprPtr parse_math1() {
    ExprPtr e = parse_concat();
    while (is_op("+") || is_op("-")) {
      const std::string op = next().text;
      e = binary(op, std::move(e), parse_concat());
    }
    return e;
  }

  ExprPtr parse_concat() {
    ExprPtr e = parse_math2();
    while (is_op("~")) {
      next();
      e = binary("~", std::move(e), parse_math2());
    }
    return e;
  }

  ExprPtr parse_math2() {
    ExprPtr e = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const std::string op = next().text;
      e = binary(op, std::move(e), parse_pow());
    }
    return e;
  }

  ExprPtr parse_pow() {
    ExprPtr e = parse_unary(true);
    while (is_op("**")) {
      next();
      e = binary("**", std::move(e), parse_unary(true));
    }
    return e;
  }

  ExprPtr parse_unary(bool with_filter) {
    enter();
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      e = node(Expr::Kind::Unary, peek().line);
      e->name = next().text;
      e->kids.push_back(parse_unary(false));
    } else {
      e = parse_postfix(parse_primary());
    }
    if (with_filter) e = parse_filters(std::move(e));
    --depth_;
    return e;
  }

  ExprPtr parse_primary() {
    const Token& t = peek();
    ExprPtr e = node(Expr::Kind::Literal, t.line);
    switch (t.kind) {
      case Token::Kind::Name:
        next();
        if (t.text == "true" || t.text == "True") e->value = Value::from(true);
        else if (t.text == "false" || t.text == "False") e->value = Value::from(false);
        else if (t.text == "none" || t.text == "None") e->value = Value::none();
        else {
          e->kind = Expr::Kind::Name;
          e->name = t.text;
        }
        return e;
      case Token::Kind::String: {
        std::string s;
        while (peek().kind == Token::Kind::String) s += next().text;  // adjacent literals join
        e->value = Value::from(std::move(s));
        return e;
      }
      case Token::Kind::Int: e->value = Value::from(next().integer); return e;
      case Token::Kind::Float: e->value = Value::from(next().real); return e;
      default: break;
    }
    if (is_op("(")) {
      next();
      if (is_op(")")) {
        next();
        e->kind = Expr::Kind::Tuple;
        return e;
      }
      ExprPtr inner = parse_tuple(true);
      expect_op(")");
      return inner;
    }
    if (is_op("[")) return parse_sequence(Expr::Kind::List, "]");
    if (is_op("{")) return parse_sequence(Expr::Kind::Dict, "}");
    fail("unexpected " + describe(t));
  }

  ExprPtr parse_sequence(Expr::Kind kind, const char* close) {
    ExprPtr e = node(kind, next().line);
    while (!is_op(close)) {
      e->kids.push_back(parse_expression());
      if (kind == Expr::Kind::Dict) {
        expect_op(":");
        e->kids.push_back(parse_expression());
      }
      if (!is_op(close)) expect_op(",");
    }
    next();
    return e;
  }

  ExprPtr parse_postfix(ExprPtr e) {
    for (;;) {
      if (is_op(".")) {
        const int line = next().line;
        ExprPtr a = node(Expr::Kind::Attr, line);
        if (peek().kind == Token::Kind::Int) {
          a->kind = Expr::Kind::Item;
          a->kids.push_back(std::move(e));
          a->kids.push_back(node(Expr::Kind::Literal, line));
          a->kids.back()->value = Value::from(next().integer);
        } else {
          a->name = expect_name();
          a->kids.push_back(std::move(e));
        }
        e = std::move(a);
      } else if (is_op("[")) {
        e = parse_subscript(std::move(e));
      } else if (is_op("(")) {
        ExprPtr call = node(Expr::Kind::Call, peek().line);
        call->kids.push_back(std::move(e));
        parse_arguments(*call);
        e = std::move(call);
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr object) {
    ExprPtr e = node(Expr::Kind::Item, next().line);
    e->kids.push_back(std::move(object));
    std::vector<ExprPtr> parts(1);
    while (!is_op("]")) {
      if (is_op(":")) {
        next();
        parts.emplace_back();
      } else {
        if (parts.back()) fail("expected ':' or ']', found " + describe(peek()));
        parts.back() = parse_expression();
      }
    }
    next();
    if (parts.size() == 1) {
      if (!parts[0]) fail("an empty subscript");
      e->kids.push_back(std::move(parts[0]));
      return e;
    }
    if (parts.size() > 3) fail("a slice has at most three parts");
    e->kind = Expr::Kind::Slice;
    parts.resize(3);
    for (auto& p : parts) e->kids.push_back(std::move(p));
    return e;
  }

  void parse_arguments(Expr& call) {
    expect_op("(");
    while (!is_op(")")) {
      if (is_op("*") || is_op("**")) fail("*args and **kwargs in calls are not supported", ErrorKind::Unsupported);
      if (peek().kind == Token::Kind::Name && is_op("=", 1)) {
        call.keywords.push_back(next().text);
        next();
        call.kids.push_back(parse_expression());
      } else {
        if (!call.keywords.empty()) fail("a positional argument follows a keyword argument");
        call.kids.push_back(parse_expression());
      }
      if (!is_op(")")) expect_op(",");
    }
    next();
  }

  ExprPtr parse_filters(ExprPtr e) {
    for (;;) {
      if (is_op("|")) {
        ExprPtr f = node(Expr::Kind::Filter, next().line);
        f->name = expect_name();
        if (!is_filter(f->name)) fail_at(f->line, ErrorKind::Unsupported, "unknown filter '" + f->name + "'");
        f->kids.push_back(std::move(e));
        if (is_op("(")) parse_arguments(*f);
        e = std::move(f);
      } else if (is_name("is")) {
        ExprPtr t = node(Expr::Kind::Test, next().line);
        if (is_name("not")) {
          next();
          t->negated = true;
        }
        t->name = expect_name();
        if (!is_test(t->name)) fail_at(t->line, ErrorKind::Unsupported, "unknown test '" + t->name + "'");
        t->kids.push_back(std::move(e));
        const Token& a = peek();
        const bool bare_argument = (a.kind == Token::Kind::Name || a.kind == Token::Kind::String ||
                                    a.kind == Token::Kind::Int || a.kind == Token::Kind::Float || is_op("[") || is_op("{")) &&
                                   !is_name("else") && !is_name("or") && !is_name("and");
        if (is_op("(")) parse_arguments(*t);
        else if (bare_argument) t->kids.push_back(parse_postfix(parse_primary()));
        e = std::move(t);
      } else {
        return e;
      }
    }
  }

  const std::vector<Token>& t_;
  size_t i_ = 0;
  int depth_ = 0;
};

}  // namespace

Body parse(const std::vector<Token>& tokens) { return Parser(tokens).parse_template(); }

}  // namespace hs::jinja
