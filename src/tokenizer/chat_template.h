#pragma once
// Chat formatting for the template families we implement natively (no Jinja engine): ChatML, with or
// without a default system prompt (SmolLM2, Qwen2.5), and Qwen3's ChatML with thinking blocks.
// A template outside these families is refused rather than approximated.
#include <string>
#include <vector>

namespace hs {

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

enum class ChatFormat { ChatML, Qwen3 };

struct ChatTemplate {
  ChatFormat format = ChatFormat::ChatML;
  std::string default_system;  // inserted when the conversation has no system message; may be empty
};

// Recognises the family of a Jinja chat template; throws Unsupported when it is not one we honour.
ChatTemplate detect_chat_template(const std::string& jinja);

// Renders messages as the template would with add_generation_prompt; enable_thinking only matters for Qwen3.
std::string render_chat(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages,
                        bool add_generation_prompt, bool enable_thinking = true);

// Renders messages as the template renders them when a later user turn follows: the text a longer conversation
// starts with (Qwen3 drops the reasoning of assistant turns before the last user turn).
std::string render_chat_history(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages);

}  // namespace hs
