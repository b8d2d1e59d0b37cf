#pragma once
// GPT-2's reversible byte-to-unicode mapping: every byte becomes a printable character so BPE
// vocabularies can be stored as text.
#include <string>
#include <string_view>

namespace hs {

std::string byte_level_encode(std::string_view bytes);
// Characters outside the mapping are kept as their UTF-8 bytes.
std::string byte_level_decode(std::string_view symbols);

}  // namespace hs
