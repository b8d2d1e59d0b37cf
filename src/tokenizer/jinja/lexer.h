#pragma once
// Splits a Jinja template into text and the tokens inside its tags, applying the whitespace rules
// transformers compiles chat templates with: trim_blocks, lstrip_blocks, `-` markers that strip
// whitespace beside a tag, `+` markers that keep it, and one trailing newline dropped.
#include <cstdint>
#include <string>
#include <vector>

namespace hs::jinja {

struct Token {
  enum class Kind { Text, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, End };
  Kind kind = Kind::End;
  std::string text;  // text, name, string value or operator
  int64_t integer = 0;
  double real = 0;
  int line = 1;
};

std::vector<Token> lex(const std::string& source);

}  // namespace hs::jinja
