#include <gtest/gtest.h>

#include "common/error.h"
#include "tokenizer/chat_template.h"

namespace hs {

TEST(ChatTemplate, RefusesTemplatesItCannotHonour) {
  EXPECT_THROW(detect_chat_template(""), Error);
  EXPECT_THROW(detect_chat_template("{% for m in messages %}[INST] {{ m.content }} [/INST]{% endfor %}"), Error);
}

TEST(ChatTemplate, RefusesUnknownRoles) {
  ChatTemplate t;
  EXPECT_THROW(render_chat(t, {{"tool", "x"}}, true), Error);
}

}  // namespace hs
