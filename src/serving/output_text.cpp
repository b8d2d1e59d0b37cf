#include "serving/output_text.h"

#include <algorithm>

#include "tokenizer/tokenizer.h"

namespace hs {

namespace {

// Length of the longest suffix of `text` that is a proper prefix of some stop string.
size_t pending_stop_prefix(const std::string& text, const std::vector<std::string>& stops) {
  size_t best = 0;
  for (const auto& s : stops)
    for (size_t n = std::min(s.size() - 1, text.size()); n > best; --n)
      if (text.compare(text.size() - n, n, s, 0, n) == 0) {
        best = n;
        break;
      }
  return best;
}

}  // namespace

OutputText::OutputText(const Tokenizer* tokenizer, std::vector<std::string> stop) : stop_(std::move(stop)) {
  // Generated tokens follow their prompt: decoded as a continuation, the first keeps its leading space.
  if (tokenizer) detok_ = std::make_unique<StreamingDetokenizer>(*tokenizer, true, /*continuation=*/true);
}

OutputText::~OutputText() = default;

std::string OutputText::push(int32_t id, bool* hit_stop) {
  *hit_stop = false;
  if (!detok_ || stopped_) return "";
  text_ += detok_->push(id);
  size_t cut = std::string::npos;
  for (const auto& s : stop_) {
    size_t at = text_.find(s, emitted_ > s.size() ? emitted_ - s.size() : 0);
    if (at != std::string::npos) cut = std::min(cut, at);
  }
  if (cut != std::string::npos) {
    text_.resize(cut);
    *hit_stop = stopped_ = true;
  }
  size_t release_to = stopped_ ? text_.size() : text_.size() - pending_stop_prefix(text_, stop_);
  release_to = std::max(release_to, emitted_);
  std::string piece = text_.substr(emitted_, release_to - emitted_);
  emitted_ = release_to;
  return piece;
}

std::string OutputText::finish() {
  if (detok_ && !stopped_) text_ += detok_->flush();
  std::string rest = text_.size() > emitted_ ? text_.substr(emitted_) : "";
  emitted_ = text_.size();
  return rest;
}

}  // namespace hs
