// Health, metrics, the OpenAPI document, the dashboard, server stats and native generation.
#include <spdlog/spdlog.h>

#include "api/server/assets.h"
#include "api/server/generation_job.h"
#include "api/server/routes.h"
#include "api/server/views.h"
#include "common/metrics.h"
#include "serving/service.h"
#include "tokenizer/tokenizer.h"

namespace hs::api {

namespace {

// Records the status of the first answer of a request, in the metrics and the log (with the request's id).
class CountingResponder : public http::Responder {
 public:
  CountingResponder(std::shared_ptr<http::Responder> inner, MetricFamily* metric, std::string route,
                    const http::Request& req)
      : inner_(std::move(inner)), metric_(metric), route_(std::move(route)), id_(req.id), method_(req.method) {}
  void send(int status, const std::string& type, std::string body, http::Headers headers) override {
    count(status);
    inner_->send(status, type, std::move(body), std::move(headers));
  }
  void start_stream(int status, const std::string& type, http::Headers headers) override {
    count(status);
    inner_->start_stream(status, type, std::move(headers));
  }
  void write(std::string chunk) override { inner_->write(std::move(chunk)); }
  void end() override { inner_->end(); }
  void on_disconnect(std::function<void()> cb) override { inner_->on_disconnect(std::move(cb)); }

 private:
  void count(int status) {
    if (counted_.exchange(true)) return;
    if (metric_) metric_->add(1, {{"route", route_}, {"status", std::to_string(status)}});
    spdlog::log(status >= 500 ? spdlog::level::warn : spdlog::level::info, "request {} {} {} -> {}", id_, method_,
                route_, status);
  }
  std::shared_ptr<http::Responder> inner_;
  MetricFamily* metric_;
  std::string route_, id_, method_;
  std::atomic<bool> counted_{false};
};

void health(ApiContext&, http::Request&, std::shared_ptr<http::Responder> r) {
  reply_json(*r, 200, {{"status", "ok"}});
}

void ready(ApiContext& ctx, http::Request&, std::shared_ptr<http::Responder> r) {
  if (ctx.service.draining()) return reply_json(*r, 503, {{"status", "shutting down"}});
  reply_json(*r, 200, {{"status", "ready"}, {"model", ctx.model_name}});
}

void metrics(ApiContext& ctx, http::Request&, std::shared_ptr<http::Responder> r) {
  ctx.service.refresh_trainer_metrics();
  r->send(200, "text/plain; version=0.0.4; charset=utf-8", ctx.metrics.text());
}

void openapi(ApiContext&, http::Request&, std::shared_ptr<http::Responder> r) {
  r->send(200, "application/json", std::string(openapi_json()));
}

void dashboard(ApiContext&, http::Request&, std::shared_ptr<http::Responder> r) {
  r->send(200, "text/html; charset=utf-8", std::string(dashboard_html()));
}


void stats(ApiContext& ctx, http::Request&, std::shared_ptr<http::Responder> r) {
  const SchedulerStats s = ctx.service.scheduler().stats();
  json trainers = json::object();
  for (const auto& [domain, t] : ctx.service.all_trainer_stats()) trainers[domain] = trainer_stats_json(t);
  reply_json(*r, 200, {{"model", ctx.model_name},
                       {"running", s.running},
                       {"waiting", s.waiting},
                       {"kv_slots", s.kv_slots},
                       {"kv_slots_used", s.kv_slots_used},
                       {"kv_tokens_used", s.kv_tokens_used},
                       {"kv_tokens", s.kv_tokens},
                       {"prefix_blocks_used", s.prefix_blocks_used},
                       {"tokens_per_second", s.tokens_per_second},
                       {"steps", s.steps},
                       {"trainers", trainers}});
}

// Native generation: a prompt (text or token ids), the same sampling and adapter fields as the OpenAI routes,
// and a result with the tokens, their logprobs and the adapter version used.
struct NativeFormat : Format {
  explicit NativeFormat(const Tokenizer& tok) : tok(tok) {}
  static json token(const TokenEvent& ev) { return {{"id", ev.id}, {"text", ev.text}, {"logprob", ev.logprob}}; }
  json result(const Choice* c, const GenerationResult& r) const {
    json j = {{"text", r.text},
              {"finish_reason", r.finish_reason},
              {"usage", {{"prompt_tokens", r.prompt_tokens}, {"completion_tokens", r.ids.size()},
                         {"cached_tokens", r.cached_tokens}}},
              {"adapter", result_adapter_json(r)}};
    if (c) {
      j["tokens"] = json::array();
      for (const TokenEvent& ev : c->tokens) j["tokens"].push_back(token(ev));
    }
    return j;
  }
  std::vector<json> on_token(size_t, const TokenEvent& ev) override { return {{{"token", token(ev)}}}; }
  std::vector<json> on_finish(size_t, const GenerationResult& r) override {
    json j = result(nullptr, r);
    j["tail"] = r.tail;
    return {j};
  }
  json whole(const std::vector<Choice>& choices) override { return result(&choices[0], choices[0].result); }
  const Tokenizer& tok;
};

void generate(ApiContext& ctx, http::Request& req, std::shared_ptr<http::Responder> r) {
  const json body = parse_body(req);
  std::set<std::string> fields = generation_fields();
  fields.insert("prompt");
  check_fields(body, fields);
  GenerationParams g = read_generation_params(body, ctx.service.engine().defaults);
  if (g.n != 1) throw Error(ErrorKind::InvalidArgument, "'n' must be 1 on /v1/generate");
  const Tokenizer& tok = *ctx.service.engine().tokenizer;
  GenerationRequest request;
  request.id = req.id;
  request.prompt = read_prompt(body, tok);
  prepare_request(ctx, g, request, ctx.service.scheduler().max_request_tokens());
  std::make_shared<GenerationJob>(ctx, r, std::make_unique<NativeFormat>(tok), g.stream)->run({request});
}

}  // namespace

void add_route(ApiContext& ctx, http::Router& router, const std::string& method, const std::string& pattern,
               RouteFn fn, Runs runs) {
  router.add(method, pattern, [&ctx, pattern, fn, runs](http::Request& req, std::shared_ptr<http::Responder> r) {
    auto counted = std::make_shared<CountingResponder>(std::move(r), ctx.http_requests, pattern, req);
    if (runs == Runs::OnReaderPool)
      return run_blocking(
          ctx, counted,
          [&ctx, counted, fn, req = std::make_shared<http::Request>(std::move(req))] { fn(ctx, *req, counted); },
          ctx.readers);
    try {
      fn(ctx, req, counted);
    } catch (const Error& e) {
      reply_error(ctx, *counted, e);
    } catch (const std::exception& e) {
      reply_error(ctx, *counted, Error(ErrorKind::Internal, e.what()));
    }
  });
}

void add_native_routes(ApiContext& ctx, http::Router& router) {
  add_route(ctx, router, "GET", "/health", health);
  add_route(ctx, router, "GET", "/ready", ready);
  add_route(ctx, router, "GET", "/metrics", metrics);
  add_route(ctx, router, "GET", "/openapi.json", openapi);
  add_route(ctx, router, "GET", "/", dashboard);
  add_route(ctx, router, "GET", "/v1/stats", stats);
  add_route(ctx, router, "POST", "/v1/generate", generate, Runs::OnReaderPool);
}

}  // namespace hs::api
