// Base64 against RFC 4648's test vectors, round trips of every byte, and refusals of what is not base64.
#include <gtest/gtest.h>

#include "common/base64.h"
#include "test_support.h"

namespace hs {
namespace {

TEST(Base64, EncodesTheRfcVectorsAndDecodesThemBack) {
  const std::pair<std::string, std::string> vectors[] = {{"", ""},         {"f", "Zg=="},         {"fo", "Zm8="},
                                                         {"foo", "Zm9v"},  {"foob", "Zm9vYg=="},  {"fooba", "Zm9vYmE="},
                                                         {"foobar", "Zm9vYmFy"}};
  for (const auto& [plain, coded] : vectors) {
    EXPECT_EQ(base64_encode(plain), coded);
    EXPECT_EQ(base64_decode(coded, "v"), plain);
  }
  std::string every;
  for (int i = 0; i < 256; ++i) every += static_cast<char>(i);
  for (size_t n = 0; n <= every.size(); ++n) EXPECT_EQ(base64_decode(base64_encode(every.substr(0, n)), "v"), every.substr(0, n));
}

TEST(Base64, RefusesTextThatIsNotPaddedBase64) {
  for (const char* bad : {"Zg=", "Zm9v!A==", "Z===", "Zg==Zg==", "=Zg="})
    EXPECT_EQ(kind_of([&] { base64_decode(bad, "the field"); }), ErrorKind::InvalidArgument) << bad;
}

}  // namespace
}  // namespace hs
