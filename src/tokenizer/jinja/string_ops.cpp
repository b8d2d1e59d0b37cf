#include "tokenizer/jinja/string_ops.h"

#include <algorithm>
#include <cstdio>
#include <iterator>

#include <utf8proc.h>

#include "common/error.h"

#include "tokenizer/jinja/value.h"

namespace hs::jinja {

// The code point at byte `at` and its length in bytes; an invalid byte reads as itself (-1), one byte long.
size_t next_code_point(const std::string& s, size_t at, int32_t& cp) {
  const auto n = utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(s.data()) + at,
                                  static_cast<utf8proc_ssize_t>(s.size() - at), &cp);
  if (n > 0) return static_cast<size_t>(n);
  cp = -1;
  return 1;
}

bool py_printable(int32_t cp) {
  if (cp == ' ') return true;
  switch (utf8proc_category(cp)) {
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO:
    case UTF8PROC_CATEGORY_CN:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
    case UTF8PROC_CATEGORY_ZS: return false;
    default: return true;
  }
}

namespace {

bool in_ranges(int32_t cp, const int32_t (*ranges)[2], size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (cp >= ranges[i][0] && cp <= ranges[i][1]) return true;
  return false;
}

// Characters whose Python str.upper() (full Unicode case mapping, SpecialCasing.txt) is more than one character
// (ß -> SS, ŉ, ǰ, ΐ, ﬁ...); utf8proc only has the one-character simple mapping, so these are refused.
constexpr int32_t kMultiCharUpper[][2] = {
    {0xdf, 0xdf},     {0x149, 0x149},   {0x1f0, 0x1f0},   {0x390, 0x390},   {0x3b0, 0x3b0},   {0x587, 0x587},
    {0x1e96, 0x1e9a}, {0x1f50, 0x1f50}, {0x1f52, 0x1f52}, {0x1f54, 0x1f54}, {0x1f56, 0x1f56}, {0x1f80, 0x1faf},
    {0x1fb2, 0x1fb4}, {0x1fb6, 0x1fb7}, {0x1fbc, 0x1fbc}, {0x1fc2, 0x1fc4}, {0x1fc6, 0x1fc7}, {0x1fcc, 0x1fcc},
    {0x1fd2, 0x1fd3}, {0x1fd6, 0x1fd7}, {0x1fe2, 0x1fe4}, {0x1fe6, 0x1fe7}, {0x1ff2, 0x1ff4}, {0x1ff6, 0x1ff7},
    {0x1ffc, 0x1ffc}, {0xfb00, 0xfb06}, {0xfb13, 0xfb17}};
// İ lowers to two characters; Σ lowers to σ or, at a word's end, ς (Python's final-sigma rule).
constexpr int32_t kSpecialLower[][2] = {{0x130, 0x130}, {0x3a3, 0x3a3}};

enum class Case { Upper, Lower, Title };

int32_t map_case(int32_t cp, Case c) {
  if (cp < 0) return cp;
  const bool special = c == Case::Lower ? in_ranges(cp, kSpecialLower, std::size(kSpecialLower))
                                        : in_ranges(cp, kMultiCharUpper, std::size(kMultiCharUpper));
  if (special) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "U+%04X", static_cast<unsigned>(cp));
    throw Error(ErrorKind::Unsupported, std::string("changing the case of ") + buf +
                                            " is not supported (Python maps it by special rules)");
  }
  return c == Case::Upper ? utf8proc_toupper(cp) : c == Case::Lower ? utf8proc_tolower(cp) : utf8proc_totitle(cp);
}

void append_code_point(std::string& out, int32_t cp, const std::string& s, size_t at) {
  if (cp < 0) {
    out += s[at];
    return;
  }
  utf8proc_uint8_t buf[4];
  out.append(reinterpret_cast<const char*>(buf), static_cast<size_t>(utf8proc_encode_char(cp, buf)));
}

// Maps each code point of `s`; `how(index of the code point, previous code point)` picks its case.
template <typename How>
std::string map_string(const std::string& s, How how) {
  std::string out;
  int32_t previous = -2;
  size_t index = 0;
  for (size_t at = 0; at < s.size();) {
    int32_t cp = 0;
    const size_t n = next_code_point(s, at, cp);
    if (cp >= 0) append_code_point(out, map_case(cp, how(index, previous, cp)), s, at);
    else out += s[at];
    previous = cp;
    at += n;
    ++index;
  }
  return out;
}

}  // namespace

bool is_py_space(int32_t cp) {
  return (cp >= 0x9 && cp <= 0xd) || (cp >= 0x1c && cp <= 0x20) || cp == 0x85 || cp == 0xa0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 || cp == 0x202f || cp == 0x205f ||
         cp == 0x3000;
}

std::string py_strip(const std::string& s, const std::string* chars, bool left, bool right) {
  std::vector<int32_t> strip_set;
  if (chars)
    for (size_t at = 0; at < chars->size();) {
      int32_t cp = 0;
      at += next_code_point(*chars, at, cp);
      strip_set.push_back(cp);
    }
  auto strippable = [&](int32_t cp) {
    return chars ? std::find(strip_set.begin(), strip_set.end(), cp) != strip_set.end() : is_py_space(cp);
  };
  std::vector<std::pair<size_t, int32_t>> cps;  // byte offset, code point
  for (size_t at = 0; at < s.size();) {
    int32_t cp = 0;
    const size_t n = next_code_point(s, at, cp);
    cps.emplace_back(at, cp);
    at += n;
  }
  size_t b = 0, e = cps.size();
  if (left)
    while (b < e && strippable(cps[b].second)) ++b;
  if (right)
    while (e > b && strippable(cps[e - 1].second)) --e;
  const size_t from = b < cps.size() ? cps[b].first : s.size(), to = e < cps.size() ? cps[e].first : s.size();
  return s.substr(from, to - from);
}

std::vector<std::string> py_split(const std::string& s, const std::string* sep, long maxsplit) {
  std::vector<std::string> out;
  if (sep) {
    size_t from = 0;
    for (size_t at; (maxsplit < 0 || static_cast<long>(out.size()) < maxsplit) &&
                    (at = s.find(*sep, from)) != std::string::npos;
         from = at + sep->size())
      out.push_back(s.substr(from, at - from));
    out.push_back(s.substr(from));
    return out;
  }
  auto space_at = [&](size_t at, size_t& n) {
    int32_t cp = 0;
    n = next_code_point(s, at, cp);
    return is_py_space(cp);
  };
  size_t i = 0, n = 0;
  while (i < s.size()) {
    while (i < s.size() && space_at(i, n)) i += n;
    if (i == s.size()) break;
    if (maxsplit >= 0 && static_cast<long>(out.size()) == maxsplit) {
      out.push_back(py_strip(s.substr(i), nullptr, false, true));
      break;
    }
    size_t j = i;
    while (j < s.size() && !space_at(j, n)) j += n;
    out.push_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

std::string py_replace(const std::string& s, const std::string& from, const std::string& to, long count) {
  if (from.empty()) {
    std::string out;
    long n = 0;
    for (size_t i = 0; i <= s.size(); ++i) {
      if (count < 0 || n < count) {
        out += to;
        check_built_size(out.size());
        ++n;
      }
      if (i < s.size()) out += s[i];
    }
    return out;
  }
  std::string out;
  size_t pos = 0;
  long n = 0;
  for (size_t at; (count < 0 || n < count) && (at = s.find(from, pos)) != std::string::npos; ++n) {
    out += s.substr(pos, at - pos) + to;
    check_built_size(out.size());
    pos = at + from.size();
  }
  return out + s.substr(pos);
}

std::string py_upper(const std::string& s) {
  return map_string(s, [](size_t, int32_t, int32_t) { return Case::Upper; });
}

std::string py_lower(const std::string& s) {
  return map_string(s, [](size_t, int32_t, int32_t) { return Case::Lower; });
}

// str.capitalize(): the first character in title case (Python 3.8+), the rest lower.
std::string py_capitalize(const std::string& s) {
  return map_string(s, [](size_t i, int32_t, int32_t) { return i == 0 ? Case::Title : Case::Lower; });
}

// str.title(): a character after an uncased one is title-cased, after a cased one lower-cased ("They'Re").
std::string py_title(const std::string& s) {
  auto cased = [](int32_t cp) {
    if (cp < 0) return false;
    const auto c = utf8proc_category(cp);
    return c == UTF8PROC_CATEGORY_LU || c == UTF8PROC_CATEGORY_LL || c == UTF8PROC_CATEGORY_LT;
  };
  return map_string(s, [&](size_t, int32_t previous, int32_t) { return cased(previous) ? Case::Lower : Case::Title; });
}

// jinja2's title filter: words begin after whitespace, '-', '(', '{', '[' or '<'; their first character is
// upper-cased (str.upper), the rest lower-cased.
std::string jinja_title(const std::string& s) {
  auto separator = [](int32_t cp) { return is_py_space(cp) || cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<'; };
  return map_string(s, [&](size_t i, int32_t previous, int32_t cp) {
    if (separator(cp)) return Case::Lower;
    return i == 0 || separator(previous) ? Case::Upper : Case::Lower;
  });
}

std::string utf8_code_point_at(const std::string& s, size_t index) {
  size_t at = 0;
  for (size_t seen = 0; at < s.size(); ++at)
    if ((static_cast<unsigned char>(s[at]) & 0xc0) != 0x80 && seen++ == index) break;
  size_t end = at + 1;
  while (end < s.size() && (static_cast<unsigned char>(s[end]) & 0xc0) == 0x80) ++end;
  return s.substr(at, end - at);
}

size_t utf8_length(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xc0) != 0x80;
  return n;
}

}  // namespace hs::jinja
