// hyprstream.v1.Inference: Generate and StreamGenerate through the scheduler, with the HTTP API's request
// checks (generation_params.h).
#include <cmath>
#include <deque>

#include "api/grpc/grpc_status.h"
#include "api/grpc/mailbox.h"
#include "api/grpc/services.h"
#include "api/server/generation_params.h"
#include "common/utf8.h"
#include "hyprstream/v1/inference.grpc.pb.h"
#include "serving/service.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace hs::api {

namespace {

namespace pb = hyprstream::v1;

float finite(double v, const char* field) {
  if (!std::isfinite(v)) throw Error(ErrorKind::InvalidArgument, std::string("'") + field + "' must be finite");
  return static_cast<float>(v);
}

GenerationParams read_params(const pb::GenerateRequest& in, const SamplingParams& defaults) {
  GenerationParams g;
  SamplingParams& p = g.sampling;
  p = defaults;
  const pb::Sampling& s = in.sampling();
  if (s.has_temperature()) p.temperature = finite(s.temperature(), "temperature");
  if (s.has_top_p()) p.top_p = finite(s.top_p(), "top_p");
  if (s.has_top_k()) p.top_k = std::max(0, s.top_k());
  if (s.has_min_p()) p.min_p = finite(s.min_p(), "min_p");
  if (s.has_repetition_penalty()) p.repetition_penalty = finite(s.repetition_penalty(), "repetition_penalty");
  if (s.has_presence_penalty()) p.presence_penalty = finite(s.presence_penalty(), "presence_penalty");
  if (s.has_frequency_penalty()) p.frequency_penalty = finite(s.frequency_penalty(), "frequency_penalty");
  if (s.has_seed()) p.seed = s.seed() < 0 ? -1 : s.seed();
  if (s.has_max_tokens()) {
    if (s.max_tokens() < 1 || s.max_tokens() > (int64_t{1} << 31))
      throw Error(ErrorKind::InvalidArgument, "'max_tokens' must lie in [1, 2147483648]");
    g.max_tokens = s.max_tokens();
  }
  if (s.stop_size() > 16) throw Error(ErrorKind::InvalidArgument, "'stop' holds at most 16 strings");
  p.stop.assign(s.stop().begin(), s.stop().end());
  for (const std::string& x : p.stop)
    if (x.empty()) throw Error(ErrorKind::InvalidArgument, "'stop' must hold non-empty strings");
  for (int32_t id : s.stop_token_ids())
    if (id < 0) throw Error(ErrorKind::InvalidArgument, "'stop_token_ids' must hold token ids (from 0)");
  p.stop_token_ids.assign(s.stop_token_ids().begin(), s.stop_token_ids().end());
  p.ignore_eos = s.ignore_eos();
  if (s.top_logprobs() < 0 || s.top_logprobs() > 20)
    throw Error(ErrorKind::InvalidArgument, "'top_logprobs' must lie in [0, 20]");
  p.top_logprobs = s.top_logprobs();
  p.logprobs = true;
  validate_sampling(p);
  g.adapter = in.adapter();
  if (in.has_adapter_scale()) g.adapter_scale = finite(in.adapter_scale(), "adapter_scale");
  g.adapter_version = in.adapter_version();
  return g;
}

std::vector<int32_t> read_prompt(const pb::GenerateRequest& in, const Service& service) {
  const Tokenizer& tok = require_tokenizer(service.engine());
  switch (in.prompt_case()) {
    case pb::GenerateRequest::kText: return encode(tok, in.text(), true);
    case pb::GenerateRequest::kTokenIds:
      for (int32_t id : in.token_ids().ids())
        if (id < 0) throw Error(ErrorKind::InvalidArgument, "'token_ids' must hold token ids (from 0)");
      return {in.token_ids().ids().begin(), in.token_ids().ids().end()};
    case pb::GenerateRequest::kChat: {
      std::vector<ChatMessage> messages;
      for (const pb::ChatMessage& m : in.chat().messages()) messages.push_back({m.role(), m.content()});
      if (messages.empty()) throw Error(ErrorKind::InvalidArgument, "'chat' needs at least one message");
      const bool thinking = !in.chat().has_enable_thinking() || in.chat().enable_thinking();
      const nlohmann::ordered_json kwargs =
          thinking ? nlohmann::ordered_json::object() : nlohmann::ordered_json{{"enable_thinking", false}};
      return encode(tok, render_chat(service.chat_template(), messages, true, kwargs), false);
    }
    case pb::GenerateRequest::PROMPT_NOT_SET: break;
  }
  throw Error(ErrorKind::InvalidArgument, "a request needs a prompt: 'text', 'token_ids' or 'chat'");
}

GenerationRequest read_request(ApiContext& ctx, const pb::GenerateRequest& in, grpc::ServerContext& call) {
  const Engine& engine = ctx.service.engine();
  const GenerationParams g = read_params(in, engine.defaults);
  GenerationRequest request;
  request.id = in.request_id().empty() ? "grpc-" + call.peer() : in.request_id();
  request.prompt = read_prompt(in, ctx.service);
  prepare_request(ctx, g, request, ctx.service.scheduler().max_request_tokens());
  return request;
}

void fill_token(const Tokenizer& tok, const TokenEvent& ev, pb::Token& out) {
  out.set_id(ev.id);
  out.set_text(ev.text);
  out.set_logprob(ev.logprob);
  for (const auto& [id, lp] : ev.top_logprobs) {
    pb::TopLogprob* t = out.add_top_logprobs();
    t->set_id(id);
    t->set_text(utf8_replace_invalid(token_bytes(tok, id)));
    t->set_logprob(lp);
  }
}

template <typename Out>
void fill_result(const GenerationResult& r, Out& out) {
  out.set_finish_reason(r.finish_reason);
  out.set_text(r.text);
  pb::Usage* u = out.mutable_usage();
  u->set_prompt_tokens(r.prompt_tokens);
  u->set_completion_tokens(static_cast<int64_t>(r.ids.size()));
  u->set_cached_tokens(r.cached_tokens);
  u->set_recalled_tokens(r.recalled_tokens);
  pb::AdapterUsed* a = out.mutable_adapter();
  a->set_name(r.adapter);
  a->set_version(r.adapter_version);
  a->set_scope(r.adapter_scope);
  a->set_scope_similarity(r.scope_similarity);
}

// One request's events as the engine thread hands them over (it must not block), taken by the handler.
struct Feed {
  Mailbox<TokenEvent> tokens;  // closed once the result is in
  std::optional<GenerationResult> result;

  RequestCallbacks callbacks(const std::shared_ptr<Feed>& self) {
    return {[self](const TokenEvent& ev) { self->tokens.put(ev); },
            [self](const GenerationResult& r) {
              self->result = r;
              self->tokens.close();
            }};
  }

  // The next tokens; empty once the scheduler reported the end. Cancels the request when the call is cancelled
  // (or its deadline passes), then still waits for that end.
  std::deque<TokenEvent> next(grpc::ServerContext& call, RequestHandle& handle) {
    for (;;) {
      std::deque<TokenEvent> out = handle.cancelled() ? tokens.take() : tokens.take(call);
      if (!out.empty() || tokens.closed()) return out;
      handle.cancel();
    }
  }
};

class InferenceService final : public pb::Inference::Service {
 public:
  explicit InferenceService(ApiContext& ctx) : ctx_(ctx) {}

  grpc::Status Generate(grpc::ServerContext* call, const pb::GenerateRequest* in, pb::GenerateResponse* out) override {
    return guarded(ctx_, *call, [&] {
      const Tokenizer& tok = *ctx_.service.engine().tokenizer;
      auto feed = std::make_shared<Feed>();
      auto handle = ctx_.service.scheduler().submit(read_request(ctx_, *in, *call), feed->callbacks(feed));
      for (auto tokens = feed->next(*call, *handle); !tokens.empty(); tokens = feed->next(*call, *handle))
        for (const TokenEvent& ev : tokens) fill_token(tok, ev, *out->add_tokens());
      return finish(*call, *feed->result, *out);
    });
  }

  grpc::Status StreamGenerate(grpc::ServerContext* call, const pb::GenerateRequest* in,
                              grpc::ServerWriter<pb::GenerateChunk>* writer) override {
    return guarded(ctx_, *call, [&] {
      const Tokenizer& tok = *ctx_.service.engine().tokenizer;
      auto feed = std::make_shared<Feed>();
      auto handle = ctx_.service.scheduler().submit(read_request(ctx_, *in, *call), feed->callbacks(feed));
      for (auto tokens = feed->next(*call, *handle); !tokens.empty(); tokens = feed->next(*call, *handle)) {
        for (const TokenEvent& ev : tokens) {
          pb::GenerateChunk chunk;
          fill_token(tok, ev, *chunk.mutable_token());
          if (!handle->cancelled() && !writer->Write(chunk)) handle->cancel();  // the client went away
        }
      }
      pb::GenerateChunk last;
      grpc::Status status = finish(*call, *feed->result, *last.mutable_finish());
      last.mutable_finish()->set_tail(feed->result->tail);
      if (status.ok()) writer->Write(last);
      return status;
    });
  }

 private:
  template <typename Out>
  grpc::Status finish(grpc::ServerContext& call, const GenerationResult& r, Out& out) {
    if (r.error) return error_status(ctx_, call, *r.error);
    if (r.finish_reason == "cancelled") return grpc::Status(grpc::StatusCode::CANCELLED, "the request was cancelled");
    fill_result(r, out);
    return grpc::Status::OK;
  }

  ApiContext& ctx_;
};

}  // namespace

std::unique_ptr<grpc::Service> make_inference_service(ApiContext& ctx) {
  return std::make_unique<InferenceService>(ctx);
}

}  // namespace hs::api
