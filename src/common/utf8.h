#pragma once
#include <cstddef>
#include <string>
#include <string_view>

namespace hs {

// Length of the sequence a lead byte starts (1 for ASCII and for invalid lead bytes).
size_t utf8_sequence_length(unsigned char lead);
bool utf8_is_valid(std::string_view s);
// Removes and returns the longest prefix of `pending` that is whole UTF-8, keeping a trailing partial
// character; bytes that can never become valid are replaced by U+FFFD.
std::string utf8_take_complete(std::string& pending);
std::string utf8_replace_invalid(std::string_view s);
// Bytes outside valid sequences written as \xNN, so a message quoting a client's bytes stays valid UTF-8
// and still shows what was sent.
std::string utf8_escape_invalid(std::string_view s);

}  // namespace hs
