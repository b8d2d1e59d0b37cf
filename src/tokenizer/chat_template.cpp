#include "tokenizer/chat_template.h"

#include "common/error.h"

namespace hs {

namespace {

bool contains(const std::string& s, const char* needle) { return s.find(needle) != std::string::npos; }

std::string strip_newlines(std::string s, bool left, bool right) {
  if (left) s.erase(0, s.find_first_not_of('\n') == std::string::npos ? s.size() : s.find_first_not_of('\n'));
  if (right) {
    size_t end = s.find_last_not_of('\n');
    s.erase(end == std::string::npos ? 0 : end + 1);
  }
  return s;
}

void check_roles(const std::vector<ChatMessage>& messages) {
  for (const auto& m : messages)
    if (m.role != "system" && m.role != "user" && m.role != "assistant")
      throw Error(ErrorKind::InvalidArgument, "chat role '" + m.role + "' is not supported (system, user, assistant)");
}

std::string turn(const std::string& role, const std::string& content) {
  return "<|im_start|>" + role + "\n" + content + "<|im_end|>\n";
}

// Qwen3: the system turn first; assistant turns after the last user turn keep their <think> block,
// earlier ones lose it; the generation prompt may carry an empty think block to disable thinking.
std::string render_qwen3(const std::vector<ChatMessage>& messages, bool add_generation_prompt, bool enable_thinking) {
  std::string out;
  int last_user = static_cast<int>(messages.size()) - 1;
  for (int i = static_cast<int>(messages.size()) - 1; i >= 0; --i)
    if (messages[i].role == "user") {
      last_user = i;
      break;
    }
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role == "user" || m.role == "system") {
      out += turn(m.role, m.content);
      continue;
    }
    std::string content = m.content, reasoning;
    size_t close = content.rfind("</think>");
    if (close != std::string::npos) {
      std::string before = strip_newlines(content.substr(0, content.find("</think>")), false, true);
      size_t open = before.rfind("<think>");
      reasoning = strip_newlines(open == std::string::npos ? before : before.substr(open + 7), true, false);
      content = strip_newlines(content.substr(close + 8), true, false);
    }
    const bool is_last = i + 1 == messages.size();
    if (static_cast<int>(i) > last_user && (is_last || !reasoning.empty())) {
      out += "<|im_start|>assistant\n<think>\n" + strip_newlines(reasoning, true, true) + "\n</think>\n\n" +
             strip_newlines(content, true, false);
    } else {
      out += "<|im_start|>assistant\n" + content;
    }
    out += "<|im_end|>\n";
  }
  if (add_generation_prompt) {
    out += "<|im_start|>assistant\n";
    if (!enable_thinking) out += "<think>\n\n</think>\n\n";
  }
  return out;
}

}  // namespace

ChatTemplate detect_chat_template(const std::string& jinja) {
  if (jinja.empty())
    throw Error(ErrorKind::Unsupported, "the model has no chat template; use `generate` with a raw prompt");
  if (!contains(jinja, "<|im_start|>") || !contains(jinja, "<|im_end|>"))
    throw Error(ErrorKind::Unsupported,
                "the model's chat template is not ChatML-style and is not supported; use `generate` with a raw prompt");
  ChatTemplate t;
  if (contains(jinja, "enable_thinking") || contains(jinja, "reasoning_content")) {
    t.format = ChatFormat::Qwen3;
    return t;
  }
  // A default system prompt is written literally inside the template, after "system" and a newline that
  // is either escaped in the Jinja string or a real one (GGUF converters unescape it); the first counts.
  const std::string open = "<|im_start|>system";
  for (size_t at = jinja.find(open); at != std::string::npos; at = jinja.find(open, at + 1)) {
    size_t begin = at + open.size();
    if (jinja.compare(begin, 2, "\\n") == 0) {
      begin += 2;
    } else if (jinja.compare(begin, 1, "\n") == 0) {
      begin += 1;
    } else {
      continue;
    }
    size_t end = jinja.find("<|im_end|>", begin);
    if (end == std::string::npos) break;
    std::string text = jinja.substr(begin, end - begin);
    if (!contains(text, "{") && !contains(text, "'") && !contains(text, "\"") && !contains(text, "\\")) {
      t.default_system = text;
      break;
    }
  }
  return t;
}

std::string render_chat(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages,
                        bool add_generation_prompt, bool enable_thinking) {
  check_roles(messages);
  if (tmpl.format == ChatFormat::Qwen3) return render_qwen3(messages, add_generation_prompt, enable_thinking);
  std::string out;
  if (!tmpl.default_system.empty() && !messages.empty() && messages[0].role != "system")
    out += turn("system", tmpl.default_system);
  for (const auto& m : messages) out += turn(m.role, m.content);
  if (add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

std::string render_chat_history(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages) {
  std::vector<ChatMessage> longer = messages;
  longer.push_back({"user", ""});
  const std::string text = render_chat(tmpl, longer, false), later = turn("user", "");
  if (messages.empty() || text.size() < later.size() || text.compare(text.size() - later.size(), later.size(), later) != 0)
    throw Error(ErrorKind::Internal, "the chat template does not render a later user turn last");
  return text.substr(0, text.size() - later.size());
}

}  // namespace hs
