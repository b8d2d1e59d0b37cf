#pragma once
// Builds the syntax tree of a template from its tokens. A statement or construct outside the subset chat
// templates use is refused with an error naming it and its line.
#include "tokenizer/jinja/ast.h"
#include "tokenizer/jinja/lexer.h"

namespace hs::jinja {

Body parse(const std::vector<Token>& tokens);

}  // namespace hs::jinja
