#pragma once
// One HTTP generation: its n choices submitted to the scheduler, their events written to the client as they
// come (SSE) or gathered into one answer, and the choices cancelled when the client goes away. The JSON of each
// route (OpenAI chat, OpenAI completions, native) is a Format.
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "api/server/api_context.h"
#include "serving/scheduler.h"

namespace hs::api {

struct Choice {
  std::vector<TokenEvent> tokens;
  GenerationResult result;
};

class Format {
 public:
  virtual ~Format() = default;
  // Server-sent events, each a JSON text (the job adds "data: " and the blank line).
  virtual std::vector<json> on_start(size_t choice) { return {}; }
  virtual std::vector<json> on_token(size_t choice, const TokenEvent& token) = 0;
  virtual std::vector<json> on_finish(size_t choice, const GenerationResult& result) = 0;
  virtual std::vector<json> on_all_done(const std::vector<Choice>& choices) { return {}; }
  virtual bool done_marker() const { return true; }  // "data: [DONE]" at the end
  // The whole answer, without streaming.
  virtual json whole(const std::vector<Choice>& choices) = 0;
};

class GenerationJob : public std::enable_shared_from_this<GenerationJob> {
 public:
  GenerationJob(ApiContext& ctx, std::shared_ptr<http::Responder> responder, std::unique_ptr<Format> format,
                bool stream);
  // Submits the requests (one per choice) and answers when they end. Throws what submit() throws (Busy,
  // InvalidArgument) before anything was sent.
  void run(std::vector<GenerationRequest> requests);

 private:
  void token(size_t choice, const TokenEvent& ev);
  void finish(size_t choice, const GenerationResult& r);
  void send_events(const std::vector<json>& events);

  ApiContext& ctx_;
  std::shared_ptr<http::Responder> responder_;
  std::unique_ptr<Format> format_;
  bool stream_;
  std::mutex mu_;
  std::vector<Choice> choices_;
  std::vector<std::shared_ptr<RequestHandle>> handles_;
  size_t finished_ = 0;
  bool cancelled_ = false;
};

// Token text for logprobs: the token's bytes, with invalid UTF-8 replaced, and the bytes as numbers.
json token_text(const Tokenizer& tok, int32_t id);

}  // namespace hs::api
