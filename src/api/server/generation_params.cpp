#include "api/server/generation_params.h"

#include <cmath>

#include "serving/service.h"
#include "tokenizer/tokenizer.h"

namespace hs::api {

namespace {

[[noreturn]] void bad(const std::string& key, const std::string& what, const std::string& reason = "wrong_type") {
  throw RequestError(ErrorKind::InvalidArgument, "'" + key + "' " + what, reason);
}

const json* present(const json& body, const std::string& key) {
  auto it = body.find(key);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

std::vector<std::string> read_stop(const json& body) {
  const json* v = present(body, "stop");
  if (!v) return {};
  if (v->is_string()) return {v->get<std::string>()};
  if (!v->is_array() || v->size() > 16) bad("stop", "must be a string or an array of at most 16 strings");
  std::vector<std::string> out;
  for (const json& s : *v) {
    if (!s.is_string() || s.get<std::string>().empty()) bad("stop", "must hold non-empty strings");
    out.push_back(s.get<std::string>());
  }
  return out;
}

}  // namespace

std::optional<double> get_number(const json& body, const std::string& key) {
  const json* v = present(body, key);
  if (!v) return std::nullopt;
  if (!v->is_number()) bad(key, "must be a number");
  const double x = v->get<double>();
  if (!std::isfinite(x)) bad(key, "must be finite", "invalid_value");
  return x;
}

std::optional<int64_t> get_integer(const json& body, const std::string& key, int64_t min, int64_t max) {
  const json* v = present(body, key);
  if (!v) return std::nullopt;
  if (!v->is_number_integer()) bad(key, "must be an integer");
  if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(max))
    bad(key, "must lie in [" + std::to_string(min) + ", " + std::to_string(max) + "]", "invalid_value");
  const int64_t x = v->get<int64_t>();
  if (x < min || x > max)
    bad(key, "must lie in [" + std::to_string(min) + ", " + std::to_string(max) + "], not " + v->dump(), "invalid_value");
  return x;
}

std::optional<bool> get_bool(const json& body, const std::string& key) {
  const json* v = present(body, key);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) bad(key, "must be true or false");
  return v->get<bool>();
}

std::optional<std::string> get_string(const json& body, const std::string& key) {
  const json* v = present(body, key);
  if (!v) return std::nullopt;
  if (!v->is_string()) bad(key, "must be a string");
  return v->get<std::string>();
}

const std::set<std::string>& generation_fields() {
  static const std::set<std::string> fields = {
      "model", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
      "frequency_penalty", "seed", "stop", "stop_token_ids", "max_tokens", "max_completion_tokens", "n", "stream",
      "stream_options", "ignore_eos", "adapter", "adapter_scale", "adapter_version", "user"};
  return fields;
}

void check_fields(const json& body, const std::set<std::string>& allowed) {
  for (const auto& [key, value] : body.items())
    if (!allowed.count(key)) throw RequestError(ErrorKind::InvalidArgument, "unknown field '" + key + "'", "unknown_field");
}

GenerationParams read_generation_params(const json& body, const SamplingParams& defaults) {
  GenerationParams g;
  SamplingParams& p = g.sampling;
  p = defaults;
  if (auto v = get_number(body, "temperature")) p.temperature = static_cast<float>(*v);
  if (auto v = get_number(body, "top_p")) p.top_p = static_cast<float>(*v);
  if (auto v = get_integer(body, "top_k", -1, 1 << 20)) p.top_k = static_cast<int32_t>(std::max<int64_t>(0, *v));
  if (auto v = get_number(body, "min_p")) p.min_p = static_cast<float>(*v);
  if (auto v = get_number(body, "repetition_penalty")) p.repetition_penalty = static_cast<float>(*v);
  if (auto v = get_number(body, "presence_penalty")) p.presence_penalty = static_cast<float>(*v);
  if (auto v = get_number(body, "frequency_penalty")) p.frequency_penalty = static_cast<float>(*v);
  if (auto v = get_integer(body, "seed", INT64_MIN, INT64_MAX)) p.seed = *v < 0 ? -1 : *v;
  if (auto v = get_bool(body, "ignore_eos")) p.ignore_eos = *v;
  p.stop = read_stop(body);
  if (const json* ids = present(body, "stop_token_ids")) p.stop_token_ids = read_token_ids(*ids, "stop_token_ids");
  const int64_t limit = int64_t{1} << 31;
  g.max_tokens = get_integer(body, "max_completion_tokens", 1, limit);
  if (!g.max_tokens) g.max_tokens = get_integer(body, "max_tokens", 1, limit);
  g.n = static_cast<int>(get_integer(body, "n", 1, 16).value_or(1));
  g.stream = get_bool(body, "stream").value_or(false);
  if (const json* so = present(body, "stream_options")) {
    if (!so->is_object()) bad("stream_options", "must be an object");
    g.include_usage = get_bool(*so, "include_usage").value_or(false);
  }
  if (auto v = get_string(body, "adapter")) g.adapter = *v;
  if (auto v = get_number(body, "adapter_scale")) g.adapter_scale = *v;
  if (auto v = get_integer(body, "adapter_version", 1, INT64_MAX)) g.adapter_version = static_cast<uint64_t>(*v);
  try {
    validate_sampling(p);
  } catch (const Error& e) {
    throw RequestError(e.kind(), e.what(), "invalid_value");
  }
  return g;
}

std::vector<int32_t> read_token_ids(const json& ids, const std::string& key) {
  if (!ids.is_array()) bad(key, "must be an array of token ids");
  std::vector<int32_t> out;
  for (const json& id : ids) {
    if (!id.is_number_integer() || (id.is_number_unsigned() && id.get<uint64_t>() > INT32_MAX) ||
        id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX)
      bad(key, "must hold token ids: integers from 0 to 2147483647");
    out.push_back(static_cast<int32_t>(id.get<int64_t>()));
  }
  return out;
}

std::vector<int32_t> read_prompt(const json& body, const Tokenizer& tokenizer) {
  const json* p = present(body, "prompt");
  if (p && p->is_string()) return encode(tokenizer, p->get<std::string>(), true);
  if (p && p->is_array()) return read_token_ids(*p, "prompt");
  throw RequestError(ErrorKind::InvalidArgument, "'prompt' must be a string or an array of token ids", "wrong_type");
}

void prepare_request(ApiContext& ctx, const GenerationParams& params, GenerationRequest& request,
                     int64_t default_max_tokens) {
  if (!params.adapter.empty()) {
    try {
      request.adapter = ctx.service.adapter(params.adapter, params.adapter_version);
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::NotFound) throw;
      throw RequestError(ErrorKind::NotFound, e.what(), "unknown_adapter");
    }
  }
  request.adapter_scale = params.adapter_scale;
  request.sampling = params.sampling;
  const int64_t limit = ctx.service.scheduler().max_request_tokens();
  const int64_t prompt = static_cast<int64_t>(request.prompt.size());
  const int64_t room = std::max<int64_t>(1, limit - prompt);
  const int64_t max_tokens = params.max_tokens.value_or(std::min(default_max_tokens, room));
  if (prompt + max_tokens > limit)
    throw Error(ErrorKind::ContextOverflow,
                "this server's maximum context length is " + std::to_string(limit) + " tokens; the request has " +
                    std::to_string(prompt) + " in the prompt and asks for " + std::to_string(max_tokens) +
                    " more (max_tokens), " + std::to_string(prompt + max_tokens) + " in all");
  request.sampling.max_tokens = static_cast<int32_t>(max_tokens);
  request.max_tokens_defaulted = !params.max_tokens;
}

}  // namespace hs::api
