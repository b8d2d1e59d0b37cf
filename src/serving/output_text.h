#pragma once
// The text of one generation as its tokens arrive: detokenized as whole UTF-8, with stop strings cut off and
// any text that might still become a stop string held back until it cannot. Torch-free.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace hs {

struct Tokenizer;
class StreamingDetokenizer;

class OutputText {
 public:
  // Without a tokenizer the text stays empty (token ids only).
  OutputText(const Tokenizer* tokenizer, std::vector<std::string> stop);
  ~OutputText();

  // Appends a token; returns the text it releases. Sets *hit_stop when a stop string ended the text.
  std::string push(int32_t id, bool* hit_stop);
  // The generation ended without a stop string: releases what was held back and any partial character.
  std::string finish();
  const std::string& text() const { return text_; }

 private:
  std::unique_ptr<StreamingDetokenizer> detok_;
  std::vector<std::string> stop_;
  std::string text_;     // everything decoded so far (cut at a stop string)
  size_t emitted_ = 0;   // bytes of text_ already released
  bool stopped_ = false;
};

}  // namespace hs
