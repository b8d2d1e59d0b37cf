#include "tokenizer/chat_template.h"

#include <cstring>

#include "common/error.h"
#include "tokenizer/jinja/template.h"
#include "tokenizer/tokenizer.h"

namespace hs {

namespace {

using ojson = nlohmann::ordered_json;

// Stands for a user turn's text when we look for where the template puts it; plain text so that no filter
// (trim, tojson) changes it.
const char* const kSentinel = "hs-chat-sentinel-7b3e1";
// Stands for an assistant reply, to find where the template ends a reply.
const char* const kReply = "hs-chat-reply-5c1d2";

// The message as transformers hands it to the template: None fields dropped, and a message's reasoning under
// any of its names filled in as both `thinking` (first) and `reasoning_content` (last).
ojson message_json(const ChatMessage& m) {
  ojson merged = {{"role", m.role}, {"content", m.content}};
  for (const auto& [k, v] : m.extras.items()) merged[k] = v;
  ojson out = ojson::object();
  ojson reasoning;
  for (const char* key : {"reasoning_content", "thinking", "reasoning"})
    if (reasoning.is_null() && merged.contains(key) && !merged[key].is_null()) reasoning = merged[key];
  if (!reasoning.is_null()) out["thinking"] = reasoning;
  for (const auto& [k, v] : merged.items())
    if (!v.is_null()) out[k] = v;
  if (!reasoning.is_null()) out["reasoning_content"] = reasoning;
  return out;
}

std::vector<ChatMessage> with_user_turn(std::vector<ChatMessage> messages) {
  messages.push_back({"user", kSentinel});
  return messages;
}

// The text before the sentinel user turn in the rendering of `messages` and that turn.
std::string before_sentinel(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages) {
  const std::string text = render_chat(tmpl, with_user_turn(messages), false);
  const size_t at = text.rfind(kSentinel);
  if (at == std::string::npos) throw Error(ErrorKind::Unsupported, "the chat template does not render a user turn's text");
  return text.substr(0, at);
}

// The text the template puts before a later user turn's content: its header ("<|im_start|>user\n"). Where the
// conversation before that turn renders the same with and without it, the header is what follows. Where it
// does not (Qwen3 drops the last assistant turn's reasoning once it is no longer last), the header is what
// follows the reply's own ending ("</s>", "<|im_end|>\n": the text after the reply when it is last). Either way
// the first turn's text must follow it too, or the template is refused: guessing would cut into a turn.
std::string user_header(const ChatTemplate& tmpl) {
  const std::vector<ChatMessage> two = {{"user", "Hello"}, {"assistant", kReply}};
  const std::string before = render_chat(tmpl, two, false), after = before_sentinel(tmpl, two);
  std::string header;
  if (after.size() >= before.size() && after.compare(0, before.size(), before) == 0) {
    header = after.substr(before.size());
  } else {
    const size_t in_before = before.rfind(kReply), in_after = after.rfind(kReply);
    const std::string ending = in_before == std::string::npos ? "" : before.substr(in_before + std::strlen(kReply));
    const std::string tail = in_after == std::string::npos ? "" : after.substr(in_after + std::strlen(kReply));
    if (in_before == std::string::npos || in_after == std::string::npos || tail.compare(0, ending.size(), ending) != 0)
      throw Error(ErrorKind::Unsupported, "the chat template does not render a conversation turn by turn");
    header = tail.substr(ending.size());
  }
  const std::string first = before_sentinel(tmpl, {});
  if (header.empty() || first.size() < header.size() ||
      first.compare(first.size() - header.size(), header.size(), header) != 0)
    throw Error(ErrorKind::Unsupported, "the chat template does not put the same text before every user turn");
  return header;
}

// The rendering of messages and a later user turn, up to that turn's header.
std::string before_later_user_turn(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages, bool& found) {
  const std::string text = before_sentinel(tmpl, messages);
  if (tmpl.user_header.empty()) throw Error(tmpl.user_header_error_kind, tmpl.user_header_error);
  const std::string& header = tmpl.user_header;
  found = text.size() >= header.size() && text.compare(text.size() - header.size(), header.size(), header) == 0;
  return found ? text.substr(0, text.size() - header.size()) : "";
}

}  // namespace

ChatTemplate compile_chat_template(const std::string& jinja, const std::string& bos_token, const std::string& eos_token) {
  if (jinja.empty())
    throw Error(ErrorKind::Unsupported, "the model has no chat template; use `generate` with a raw prompt");
  ChatTemplate tmpl{std::make_shared<const jinja::Template>(jinja), bos_token, eos_token};
  try {
    tmpl.user_header = user_header(tmpl);
  } catch (const Error& e) {  // the template still renders whole conversations; history and opening report this
    tmpl.user_header_error_kind = e.kind();
    tmpl.user_header_error = e.what();
  }
  return tmpl;
}

ChatTemplate chat_template_of(const Tokenizer& tok) {
  auto special = [&](int32_t id) { return id >= 0 && id < tok.vocab_size() ? token_bytes(tok, id) : std::string(); };
  return compile_chat_template(tok.chat_template, special(tok.bos_id), special(tok.eos_id));
}

std::string render_chat(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                        const ojson& kwargs) {
  ojson list = ojson::array();
  for (const ChatMessage& m : messages) list.push_back(message_json(m));
  jinja::Dict vars;
  vars.set("messages", jinja::Value::from_json(list));
  vars.set("tools", jinja::Value::none());
  vars.set("documents", jinja::Value::none());
  vars.set("add_generation_prompt", jinja::Value::from(add_generation_prompt));
  if (!tmpl.bos_token.empty()) vars.set("bos_token", jinja::Value::from(tmpl.bos_token));
  if (!tmpl.eos_token.empty()) vars.set("eos_token", jinja::Value::from(tmpl.eos_token));
  if (!kwargs.is_null() && !kwargs.is_object())
    throw Error(ErrorKind::InvalidArgument, "chat template arguments must be a JSON object");
  if (kwargs.is_object())
    for (const auto& [k, v] : kwargs.items()) vars.set(k, jinja::Value::from_json(v));
  return tmpl.program->render(vars);
}

std::string render_chat_history(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages) {
  bool found = false;
  std::string text = before_later_user_turn(tmpl, messages, found);
  if (!found) throw Error(ErrorKind::Unsupported, "the chat template does not render a later user turn last");
  return text;
}

std::string render_chat_opening(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages) {
  std::vector<ChatMessage> system;
  if (!messages.empty() && messages.front().role == "system") system.push_back(messages.front());
  bool found = false;
  std::string text;
  try {
    text = before_later_user_turn(tmpl, system, found);
  } catch (const Error&) {
    return "";  // the template cannot render that conversation or not turn by turn: it has no opening we can find
  }
  return !found || text == tmpl.bos_token ? "" : text;
}

}  // namespace hs
