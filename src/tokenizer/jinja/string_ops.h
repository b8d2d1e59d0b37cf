#pragma once
// Python's str operations that filters and methods share, over code points. Case mapping uses Unicode's simple
// mappings and refuses the characters whose Python (full) mapping differs.
#include <cstdint>
#include <string>
#include <vector>

namespace hs::jinja {

// The code point at byte `at` of UTF-8 text and its length in bytes; an invalid byte reads as -1, one byte long.
size_t next_code_point(const std::string& s, size_t at, int32_t& cp);
// Python's str.isprintable() for one code point: what repr() shows as is rather than escaped.
bool py_printable(int32_t cp);
// Python's str.isspace() for one code point.
bool is_py_space(int32_t cp);
std::string py_strip(const std::string& s, const std::string* chars, bool left, bool right);
// str.split(sep, maxsplit); a null sep splits on runs of whitespace.
std::vector<std::string> py_split(const std::string& s, const std::string* sep, long maxsplit);
std::string py_replace(const std::string& s, const std::string& from, const std::string& to, long count);
std::string py_upper(const std::string& s);
std::string py_lower(const std::string& s);
std::string py_capitalize(const std::string& s);
// str.title(), and jinja2's title filter, which starts words only after whitespace, dashes and brackets.
std::string py_title(const std::string& s);
std::string jinja_title(const std::string& s);
size_t utf8_length(const std::string& s);
// The code point at `index` (counted in code points), as its UTF-8 bytes; `index` must be below utf8_length(s).
std::string utf8_code_point_at(const std::string& s, size_t index);

}  // namespace hs::jinja
