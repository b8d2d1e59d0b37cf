#include "api/server/generation_job.h"

#include "common/utf8.h"
#include "serving/service.h"
#include "tokenizer/tokenizer.h"

namespace hs::api {

json token_text(const Tokenizer& tok, int32_t id) {
  const std::string bytes = token_bytes(tok, id);
  json numbers = json::array();
  for (unsigned char c : bytes) numbers.push_back(static_cast<int>(c));
  return {{"token", utf8_replace_invalid(bytes)}, {"bytes", numbers}};
}

GenerationJob::GenerationJob(ApiContext& ctx, std::shared_ptr<http::Responder> responder,
                             std::unique_ptr<Format> format, bool stream)
    : ctx_(ctx), responder_(std::move(responder)), format_(std::move(format)), stream_(stream) {}

void GenerationJob::run(std::vector<GenerationRequest> requests) {
  choices_.resize(requests.size());
  auto self = shared_from_this();
  std::lock_guard<std::mutex> lock(mu_);  // callbacks wait until every choice is submitted
  for (size_t i = 0; i < requests.size(); ++i) {
    RequestCallbacks cb;
    cb.on_token = [self, i](const TokenEvent& ev) { self->token(i, ev); };
    cb.on_finish = [self, i](const GenerationResult& r) { self->finish(i, r); };
    try {
      handles_.push_back(ctx_.service.scheduler().submit(requests[i], std::move(cb)));
    } catch (...) {
      for (auto& h : handles_) h->cancel();  // the choices already queued end unseen
      cancelled_ = true;
      throw;
    }
  }
  if (stream_) {
    responder_->start_stream(200, "text/event-stream");
    for (size_t i = 0; i < choices_.size(); ++i) send_events(format_->on_start(i));
  }
  // A client that goes away frees its slots at the next step.
  responder_->on_disconnect([self] {
    std::lock_guard<std::mutex> lock(self->mu_);
    self->cancelled_ = true;
    for (auto& h : self->handles_) h->cancel();
  });
}

void GenerationJob::send_events(const std::vector<json>& events) {
  std::string out;
  for (const json& e : events) out += "data: " + e.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
  if (!out.empty()) responder_->write(std::move(out));
}

void GenerationJob::token(size_t choice, const TokenEvent& ev) {
  std::lock_guard<std::mutex> lock(mu_);
  if (cancelled_) return;
  if (stream_) {
    send_events(format_->on_token(choice, ev));
  } else {
    choices_[choice].tokens.push_back(ev);
  }
}

void GenerationJob::finish(size_t choice, const GenerationResult& r) {
  std::lock_guard<std::mutex> lock(mu_);
  choices_[choice].result = r;
  ++finished_;
  if (cancelled_) return;
  if (stream_) {
    if (r.error) {
      const Error& e = *r.error;
      send_events({error_json(http_status(ctx_, e), e.what(), reason_of(e))});
    } else {
      send_events(format_->on_finish(choice, r));
    }
  }
  if (finished_ < choices_.size()) return;
  if (stream_) {
    send_events(format_->on_all_done(choices_));
    if (format_->done_marker()) responder_->write("data: [DONE]\n\n");
    return responder_->end();
  }
  for (const Choice& c : choices_)
    if (c.result.error) return reply_error(ctx_, *responder_, *c.result.error);
  reply_json(*responder_, 200, format_->whole(choices_));
}

}  // namespace hs::api
