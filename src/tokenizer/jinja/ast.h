#pragma once
// The syntax tree of a chat template: expressions and the statements that hold them.
#include <memory>
#include <string>
#include <vector>

#include "tokenizer/jinja/value.h"

namespace hs::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    Literal,  // value
    Name,     // name
    List,     // kids: items
    Tuple,    // kids: items
    Dict,     // kids: key, value, key, value...
    Attr,     // kids[0].name
    Item,     // kids[0][kids[1]]
    Slice,    // kids[0][kids[1]:kids[2]:kids[3]], any of the bounds null
    Call,     // kids[0](kids[1..]); the last keywords.size() arguments are named
    Filter,   // kids[0] | name(kids[1..])
    Test,     // kids[0] is [not] name(kids[1..])
    Unary,    // name kids[0]: "-", "+", "not"
    Binary,   // kids[0] name kids[1]: arithmetic, "~", "and", "or"
    Compare,  // kids[0] keywords[0] kids[1] keywords[1] kids[2]...: "==", "<", "in", "not in"...
    Cond,     // kids[0] if kids[1] else kids[2] (null: undefined)
  };
  Kind kind = Kind::Literal;
  int line = 0;
  Value value;
  std::string name;
  std::vector<ExprPtr> kids;
  std::vector<std::string> keywords;
  bool negated = false;
};

struct Stmt;
using Body = std::vector<std::unique_ptr<Stmt>>;

struct Stmt {
  enum class Kind { Text, Output, If, For, Set, SetBlock, Macro, CallBlock, Break, Continue, Group };
  Kind kind = Kind::Text;
  int line = 0;
  std::string text;                   // Text
  ExprPtr expr;                       // Output, Set value, For iterable, CallBlock call
  std::vector<ExprPtr> conditions;    // If: one per branch; For: the `if` filter (0 or 1)
  std::vector<Body> bodies;           // If: one per condition, then else; For: body, else; others: body
  std::vector<std::string> targets;   // For/Set names; Set `ns.attr`: {ns, attr}; Macro/CallBlock: parameters
  std::vector<ExprPtr> defaults;      // Macro/CallBlock parameter defaults (null where none)
  std::string name;                   // Macro name; Set: "attr" when setting an attribute
};

}  // namespace hs::jinja
