#include "tokenizer/normalizer.h"

#include <utf8proc.h>

#include <cstdlib>

#include "common/error.h"

namespace hs {

namespace {

// With an explicit length (no UTF8PROC_NULLTERM), utf8proc treats NUL as U+0000, so text after it is kept.
std::string unicode_form(const std::string& s, bool compat) {
  const auto* in = reinterpret_cast<const utf8proc_uint8_t*>(s.data());
  const auto options = static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE |
                                                      (compat ? UTF8PROC_COMPAT : 0));
  utf8proc_uint8_t* out = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(in, static_cast<utf8proc_ssize_t>(s.size()), &out, options);
  if (n < 0) throw Error(ErrorKind::InvalidArgument, std::string("text cannot be normalized: ") + utf8proc_errmsg(n));
  std::string r(reinterpret_cast<char*>(out), static_cast<size_t>(n));
  std::free(out);
  return r;
}

}  // namespace

std::string replace_all(std::string_view text, std::string_view from, std::string_view to) {
  if (from.empty()) return std::string(text);
  std::string out;
  out.reserve(text.size());
  size_t pos = 0;
  for (size_t at; (at = text.find(from, pos)) != std::string_view::npos; pos = at + from.size()) {
    out.append(text.substr(pos, at - pos));
    out.append(to);
  }
  out.append(text.substr(pos));
  return out;
}

std::string normalize(const std::vector<NormalizerStep>& steps, std::string_view text, bool prepend) {
  std::string s(text);
  for (const auto& step : steps) {
    switch (step.kind) {
      case NormalizerStep::Kind::Nfc: s = unicode_form(s, false); break;
      case NormalizerStep::Kind::Nfkc: s = unicode_form(s, true); break;
      case NormalizerStep::Kind::Prepend:
        if (prepend && !s.empty()) s.insert(0, step.text);
        break;
      case NormalizerStep::Kind::Replace: s = replace_all(s, step.text, step.with); break;
    }
  }
  return s;
}

}  // namespace hs
