#pragma once
// Standard base64 (RFC 4648, with padding), for binary data inside JSON text. Torch-free.
#include <string>
#include <string_view>

namespace hs {

std::string base64_encode(std::string_view bytes);
// Throws InvalidArgument naming `what` when the text is not padded base64.
std::string base64_decode(std::string_view text, const std::string& what);

}  // namespace hs
