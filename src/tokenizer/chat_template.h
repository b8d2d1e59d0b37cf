#pragma once
// Chat formatting with the model's own Jinja chat template, rendered by our interpreter (tokenizer/jinja/) as
// transformers' apply_chat_template renders it. A template that uses something outside the supported subset
// fails with an error naming it, never with a different prompt.
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/error.h"

namespace hs {

namespace jinja {
class Template;
}
struct Tokenizer;

struct ChatMessage {
  std::string role;  // "system", "user", "assistant", "tool", ... as the template knows them
  std::string content;
  // Further fields the template may read, as an OpenAI request or transformers gives them: tool_calls,
  // tool_call_id, name, reasoning_content... A field here replaces role or content of the same name; a null
  // value removes the field, as transformers drops None fields.
  nlohmann::ordered_json extras = nlohmann::ordered_json::object();
};

// A parsed chat template with the special tokens it is rendered with.
struct ChatTemplate {
  std::shared_ptr<const jinja::Template> program;
  std::string bos_token, eos_token;  // empty: not passed to the template
  // The text a later user turn's content follows ("<|im_start|>user\n"), found once by compile_chat_template
  // since it depends on the template alone. Empty where the template does not render turn by turn: then
  // user_header_error says why, and history and opening are refused with it.
  std::string user_header;
  ErrorKind user_header_error_kind = ErrorKind::Unsupported;
  std::string user_header_error;
};

// Parses a template; throws Unsupported for an empty one and an error naming the line of a construct we do
// not support.
ChatTemplate compile_chat_template(const std::string& jinja, const std::string& bos_token = "",
                                   const std::string& eos_token = "");
// The tokenizer's template with its BOS and EOS tokens.
ChatTemplate chat_template_of(const Tokenizer& tokenizer);

// Renders messages as apply_chat_template(messages, add_generation_prompt=..., **kwargs) does. kwargs holds
// the template's extra inputs: "tools", "documents", "enable_thinking"...
std::string render_chat(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                        const nlohmann::ordered_json& kwargs = nlohmann::ordered_json::object());

// The text a longer conversation starts with: messages rendered as the template renders them when a later user
// turn follows (Qwen3 drops the reasoning of assistant turns before the last user turn), less that turn.
std::string render_chat_history(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages);

// The system block a rendering of `messages` opens with: of its own system message when it starts with one,
// else the template's default system prompt; empty when there is none (a bare BOS does not count) or the template
// does not render turn by turn.
std::string render_chat_opening(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages);

}  // namespace hs
