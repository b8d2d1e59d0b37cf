#pragma once
// A parsed Jinja template and its rendering, for the subset of Jinja2 that Hugging Face chat templates use,
// compiled as transformers compiles them (trim_blocks, lstrip_blocks, loop controls, its tojson and
// raise_exception). Rendering is bounded: output size, steps (statements and loop iterations) and the depth
// of macro calls each have a limit, so a runaway template stops with an error rather than hanging.
#include <cstdint>
#include <memory>
#include <string>

#include "tokenizer/jinja/value.h"

namespace hs::jinja {

struct Stmt;

struct RenderLimits {
  size_t max_output_bytes = size_t{16} << 20;
  uint64_t max_steps = 5'000'000;
  int max_call_depth = 64;
};

class Template {
 public:
  // Throws hs::Error naming the line of a syntax error or of an unsupported statement.
  explicit Template(const std::string& source);
  // `variables` are the template's globals (messages, add_generation_prompt, ...).
  std::string render(const Dict& variables, const RenderLimits& limits = {}) const;

 private:
  std::shared_ptr<const std::vector<std::unique_ptr<Stmt>>> body_;
};

}  // namespace hs::jinja
