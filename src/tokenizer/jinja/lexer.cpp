#include "tokenizer/jinja/lexer.h"

#include <cstdlib>
#include <cstring>

#include "tokenizer/jinja/template_error.h"

namespace hs::jinja {

namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
bool is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }

// jinja2 reads the template with its newlines normalised to "\n" and, by default, drops one trailing newline.
std::string normalise_newlines(const std::string& source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out += source[i];
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xc0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xe0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  }
}

class Lexer {
 public:
  explicit Lexer(const std::string& source) : src_(normalise_newlines(source)) {}

  std::vector<Token> run() {
    while (pos_ < src_.size()) {
      const size_t at = next_tag();
      emit_text(at);
      if (at == std::string::npos) break;
      const char kind = src_[at + 1];
      pos_ = at + 2;
      if (pos_ < src_.size() && (src_[pos_] == '-' || src_[pos_] == '+')) ++pos_;
      if (kind == '#') {
        skip_comment();
      } else {
        push(kind == '{' ? Token::Kind::VarBegin : Token::Kind::BlockBegin, "");
        lex_tag(kind == '{' ? "}}" : "%}");
      }
    }
    push(Token::Kind::End, "");
    return std::move(out_);
  }

 private:
  size_t next_tag() const {
    for (size_t at = src_.find('{', pos_); at != std::string::npos; at = src_.find('{', at + 1))
      if (at + 1 < src_.size() && (src_[at + 1] == '{' || src_[at + 1] == '%' || src_[at + 1] == '#')) return at;
    return std::string::npos;
  }

  void push(Token::Kind kind, std::string text) {
    Token t;
    t.kind = kind;
    t.text = std::move(text);
    t.line = line_;
    out_.push_back(std::move(t));
  }

  void advance_to(size_t to) {
    for (; pos_ < to; ++pos_)
      if (src_[pos_] == '\n') ++line_;
  }

  // The text up to a tag, less the whitespace that markers and lstrip_blocks remove around it.
  void emit_text(size_t at) {
    const size_t end = at == std::string::npos ? src_.size() : at;
    std::string text = src_.substr(pos_, end - pos_);
    const bool line_start = pos_ == 0 || src_[pos_ - 1] == '\n';
    if (strip_next_) {
      size_t first = 0;
      while (first < text.size() && is_space(text[first])) ++first;
      text.erase(0, first);
    }
    if (at != std::string::npos) {
      const char marker = at + 2 < src_.size() ? src_[at + 2] : '\0';
      const char kind = src_[at + 1];
      if (marker == '-') {
        while (!text.empty() && is_space(text.back())) text.pop_back();
      } else if ((kind == '%' || kind == '#') && marker != '+') {
        const size_t nl = text.rfind('\n');
        const size_t tail = nl == std::string::npos ? 0 : nl + 1;
        bool blank = true;
        for (size_t i = tail; i < text.size(); ++i) blank = blank && (text[i] == ' ' || text[i] == '\t');
        if (blank && (nl != std::string::npos || (line_start && !strip_next_) || text.empty())) text.erase(tail);
      }
    }
    strip_next_ = false;
    const int line = line_;
    advance_to(end);
    if (!text.empty()) {
      Token t;
      t.kind = Token::Kind::Text;
      t.text = std::move(text);
      t.line = line;
      out_.push_back(std::move(t));
    }
  }

  // trim_blocks: the newline right after a block or comment tag goes, unless the tag ends with `+`.
  void close_block(bool plus) {
    if (!plus && !strip_next_ && pos_ < src_.size() && src_[pos_] == '\n') advance_to(pos_ + 1);
  }

  void skip_comment() {
    const size_t end = src_.find("#}", pos_);
    if (end == std::string::npos) fail_at(line_, ErrorKind::InvalidArgument, "a comment is not closed with '#}'");
    const char before = end > pos_ ? src_[end - 1] : '\0';
    advance_to(end + 2);
    strip_next_ = before == '-';
    close_block(before == '+');
  }

  bool closes(const char* close) {
    const size_t n = std::strlen(close);
    if ((src_[pos_] == '-' || src_[pos_] == '+') && src_.compare(pos_ + 1, n, close) == 0) {
      const bool plus = src_[pos_] == '+';
      strip_next_ = src_[pos_] == '-';
      advance_to(pos_ + 1 + n);
      push(close[0] == '}' ? Token::Kind::VarEnd : Token::Kind::BlockEnd, "");
      if (close[0] == '%') close_block(plus);
      return true;
    }
    if (src_.compare(pos_, n, close) != 0) return false;
    advance_to(pos_ + n);
    push(close[0] == '}' ? Token::Kind::VarEnd : Token::Kind::BlockEnd, "");
    if (close[0] == '%') close_block(false);
    return true;
  }

  void lex_tag(const char* close) {
    const int opened = line_;
    depth_ = 0;
    for (;;) {
      while (pos_ < src_.size() && is_space(src_[pos_])) advance_to(pos_ + 1);
      if (pos_ >= src_.size())
        fail_at(opened, ErrorKind::InvalidArgument, std::string("a tag is not closed with '") + close + "'");
      if (depth_ == 0 && closes(close)) return;  // inside brackets "}}" closes a dict, as in jinja2
      const char c = src_[pos_];
      if (is_name_start(c)) {
        size_t end = pos_;
        while (end < src_.size() && (is_name_start(src_[end]) || is_digit(src_[end]))) ++end;
        push(Token::Kind::Name, src_.substr(pos_, end - pos_));
        advance_to(end);
      } else if (is_digit(c)) {
        lex_number();
      } else if (c == '\'' || c == '"') {
        lex_string(c);
      } else {
        lex_operator();
      }
    }
  }

  void lex_number() {
    size_t end = pos_;
    std::string digits;
    auto take_digits = [&] {
      while (end < src_.size() && (is_digit(src_[end]) || (src_[end] == '_' && end + 1 < src_.size() && is_digit(src_[end + 1]))))
        if (src_[end++] != '_') digits += src_[end - 1];
    };
    take_digits();
    bool real = false;
    if (end + 1 < src_.size() && src_[end] == '.' && is_digit(src_[end + 1])) {
      real = true;
      digits += src_[end++];
      take_digits();
    }
    if (end < src_.size() && (src_[end] == 'e' || src_[end] == 'E')) {
      size_t e = end + 1;
      if (e < src_.size() && (src_[e] == '+' || src_[e] == '-')) ++e;
      if (e < src_.size() && is_digit(src_[e])) {
        real = true;
        digits += src_.substr(end, e - end);
        end = e;
        take_digits();
      }
    }
    push(real ? Token::Kind::Float : Token::Kind::Int, digits);
    if (real) out_.back().real = std::strtod(digits.c_str(), nullptr);  // as Python: 1e400 is inf, 5e-324 denormal
    else
      try {
        out_.back().integer = std::stoll(digits);
      } catch (const std::out_of_range&) {
        fail_at(line_, ErrorKind::Unsupported, "integer literal " + digits + " is too large");
      }
    advance_to(end);
  }

  // A quoted string with Python's escapes, as jinja2 decodes them.
  void lex_string(char quote) {
    const int line = line_;
    std::string value;
    size_t i = pos_ + 1;
    for (; i < src_.size() && src_[i] != quote; ++i) {
      if (src_[i] != '\\' || i + 1 >= src_.size()) {
        value += src_[i];
        continue;
      }
      const char e = src_[++i];
      switch (e) {
        case 'n': value += '\n'; break;
        case 't': value += '\t'; break;
        case 'r': value += '\r'; break;
        case 'b': value += '\b'; break;
        case 'f': value += '\f'; break;
        case 'v': value += '\v'; break;
        case 'a': value += '\a'; break;
        case '0': value += '\0'; break;
        case '\\': value += '\\'; break;
        case '\'': value += '\''; break;
        case '"': value += '"'; break;
        case '\n': break;
        case 'x':
        case 'u':
        case 'U': {
          const size_t n = e == 'x' ? 2 : e == 'u' ? 4 : 8;
          if (i + n >= src_.size()) fail_at(line, ErrorKind::InvalidArgument, "a string escape is truncated");
          append_utf8(value, static_cast<uint32_t>(std::stoul(src_.substr(i + 1, n), nullptr, 16)));
          i += n;
          break;
        }
        default: value += '\\'; value += e;
      }
    }
    if (i >= src_.size()) fail_at(line, ErrorKind::InvalidArgument, "a string is not closed");
    push(Token::Kind::String, value);
    out_.back().line = line;
    advance_to(i + 1);
  }

  void lex_operator() {
    static const char* const two[] = {"//", "**", "==", "!=", ">=", "<="};
    for (const char* op : two)
      if (src_.compare(pos_, 2, op) == 0) {
        push(Token::Kind::Op, op);
        advance_to(pos_ + 2);
        return;
      }
    if (std::strchr("+-*/%~<>=.,:|()[]{}", src_[pos_]) == nullptr)
      fail_at(line_, ErrorKind::InvalidArgument, std::string("unexpected character '") + src_[pos_] + "'");
    const char c = src_[pos_];
    if (c == '(' || c == '[' || c == '{') ++depth_;
    if ((c == ')' || c == ']' || c == '}') && depth_ > 0) --depth_;
    push(Token::Kind::Op, std::string(1, c));
    advance_to(pos_ + 1);
  }

  std::string src_;
  size_t pos_ = 0;
  int line_ = 1;
  bool strip_next_ = false;
  int depth_ = 0;  // brackets open in the current tag
  std::vector<Token> out_;
};

}  // namespace

std::vector<Token> lex(const std::string& source) { return Lexer(source).run(); }

}  // namespace hs::jinja
