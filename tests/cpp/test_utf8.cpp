#include <gtest/gtest.h>

#include "tokenizer/byte_level.h"
#include "common/utf8.h"

namespace hs {

TEST(Utf8, HoldsBackAPartialCharacterUntilItCompletes) {
  std::string pending = "a\xE2\x82";  // "a" then the first two bytes of the euro sign
  EXPECT_EQ(utf8_take_complete(pending), "a");
  EXPECT_EQ(pending, "\xE2\x82");
  pending += "\xAC";
  EXPECT_EQ(utf8_take_complete(pending), "\xE2\x82\xAC");
  EXPECT_TRUE(pending.empty());
}

TEST(Utf8, ReplacesBytesThatCanNeverBeValid) {
  std::string pending = "\xFFok\xC0\xAF";
  EXPECT_EQ(utf8_take_complete(pending), "\xEF\xBF\xBDok\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(utf8_replace_invalid("\xE2\x82"), "\xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST(Utf8, ValidatesSurrogatesAndOverlongs) {
  EXPECT_TRUE(utf8_is_valid("h\xC3\xA9llo \xF0\x9F\x98\x80"));
  EXPECT_FALSE(utf8_is_valid("\xED\xA0\x80"));  // UTF-16 surrogate
  EXPECT_FALSE(utf8_is_valid("\xE0\x80\xAF"));  // overlong '/'
  EXPECT_FALSE(utf8_is_valid("\xF4\x90\x80\x80"));  // above U+10FFFF
}

TEST(ByteLevel, RoundTripsEveryByte) {
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  std::string mapped = byte_level_encode(all);
  EXPECT_TRUE(utf8_is_valid(mapped));
  EXPECT_EQ(byte_level_decode(mapped), all);
  // GPT-2's mapping: space becomes U+0120 ('Ġ'), newline U+010A ('Ċ').
  EXPECT_EQ(byte_level_encode(" \n"), "\xC4\xA0\xC4\x8A");
}

}  // namespace hs
