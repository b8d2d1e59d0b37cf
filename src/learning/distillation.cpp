#include "learning/distillation.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/fs_util.h"
#include "model/forward.h"
#include "model/model.h"
#include "storage/atomic_file.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace hs {

namespace {

constexpr int kFormat = 1;

}  // namespace

std::vector<int32_t> prompt_tokens(const Tokenizer& tok, const ChatTemplate* chat, const std::string& prompt) {
  // As learning events render a conversation (learning/events.cpp): the template's text, no added specials.
  if (chat) return encode(tok, render_chat(*chat, {{"user", prompt}}, true), false);
  return encode(tok, prompt, true);
}

namespace {

// Greedy continuations of every prompt at once, through the KV-cache forward that generation uses; each stops
// after its end-of-sequence token or `limit` tokens.
std::vector<std::vector<int32_t>> greedy_answers(const Model& model, const std::vector<std::vector<int32_t>>& prompts,
                                                 int32_t eos, int64_t limit) {
  const int64_t rows = static_cast<int64_t>(prompts.size());
  int64_t longest = 0;
  for (const auto& p : prompts) longest = std::max<int64_t>(longest, p.size());
  KvCache cache = make_kv_cache(model, rows, longest + limit);
  at::Tensor logits = forward(model, cache, prefill_chunk(prompts, 0, longest, model.device));
  std::vector<std::vector<int32_t>> answers(rows);
  std::vector<int64_t> pos(rows);
  for (int64_t b = 0; b < rows; ++b) pos[b] = static_cast<int64_t>(prompts[b].size());
  std::vector<bool> done(rows, false);
  for (int64_t t = 0; t < limit; ++t) {
    const at::Tensor next = logits.argmax(-1).to(at::kCPU);
    std::vector<int64_t> tokens(rows, 0), n_new(rows, 0);
    bool any = false;
    for (int64_t b = 0; b < rows; ++b) {
      if (done[b]) continue;
      const int32_t id = static_cast<int32_t>(next[b].item<int64_t>());
      answers[b].push_back(id);
      done[b] = id == eos || static_cast<int64_t>(answers[b].size()) == limit;
      if (done[b]) continue;
      tokens[b] = id;
      n_new[b] = 1;
      any = true;
    }
    if (!any) break;
    logits = forward(model, cache, make_step(tokens, 1, pos, n_new, model.device));
    for (int64_t b = 0; b < rows; ++b) pos[b] += n_new[b];
  }
  return answers;
}

// The teacher's distributions at one sequence's answer positions, from the cache-free causal forward that
// training runs, so that a fresh adapter reproduces them.
void fill_distributions(const Model& model, TeacherTargets& t) {
  const int64_t T = static_cast<int64_t>(t.tokens.size());
  std::vector<int64_t> ids(t.tokens.begin(), t.tokens.end());
  const at::Tensor tokens = at::tensor(ids, at::kLong).view({1, T}).to(model.device);
  const LayerContext ctx = causal_context(model, 1, T);
  at::Tensor x = embed_tokens(model, tokens);
  for (int64_t li = 0; li < model.config.num_layers; ++li) x = decoder_layer(model, li, x, ctx, nullptr);
  const at::Tensor logits = output_logits(model, x[0].narrow(0, t.first, t.positions())).to(at::kFloat);
  const at::Tensor lse = logits.logsumexp(-1, true);
  const auto [top, idx] = logits.topk(t.top_k, -1);
  const at::Tensor rest = logits.scatter(-1, idx, -INFINITY).logsumexp(-1, true) - lse;
  const at::Tensor lp = (top - lse).contiguous().to(at::kCPU);
  const at::Tensor id32 = idx.to(at::kInt).contiguous().to(at::kCPU);
  const at::Tensor r = rest.contiguous().to(at::kCPU);
  t.top_logprobs.assign(lp.data_ptr<float>(), lp.data_ptr<float>() + lp.numel());
  t.top_ids.assign(id32.data_ptr<int32_t>(), id32.data_ptr<int32_t>() + id32.numel());
  t.rest_logprobs.assign(r.data_ptr<float>(), r.data_ptr<float>() + r.numel());
}

}  // namespace

std::vector<TeacherTargets> build_teacher_targets(const Model& model, const Tokenizer& tokenizer,
                                                  const ChatTemplate* chat, const std::vector<std::string>& prompts,
                                                  const TeacherOptions& options) {
  if (options.answer_tokens < 1 || options.top_k < 1 || options.top_k >= model.config.vocab_size)
    throw Error(ErrorKind::InvalidArgument, "teacher answers need at least one token and 1 <= top_k < vocabulary");
  c10::NoGradGuard no_grad;
  // A prompt that leaves no room for an answer in the model's context is skipped (tiny test models).
  std::vector<std::vector<int32_t>> encoded;
  std::vector<std::string> kept;
  for (const std::string& p : prompts) {
    std::vector<int32_t> tokens = prompt_tokens(tokenizer, chat, p);
    if (tokens.empty() || static_cast<int64_t>(tokens.size()) + options.answer_tokens > model.config.context_length)
      continue;
    encoded.push_back(std::move(tokens));
    kept.push_back(p);
  }
  std::vector<TeacherTargets> out;
  if (encoded.empty()) return out;
  const std::vector<std::vector<int32_t>> answers =
      greedy_answers(model, encoded, tokenizer.eos_id, options.answer_tokens);
  for (size_t i = 0; i < encoded.size(); ++i) {
    std::vector<int32_t> tokens = encoded[i];
    tokens.insert(tokens.end(), answers[i].begin(), answers[i].end());
    out.push_back(teacher_targets_for(model, std::move(tokens), static_cast<int64_t>(encoded[i].size()) - 1,
                                      options.top_k));
    out.back().prompt = kept[i];
  }
  return out;
}

TeacherTargets teacher_targets_for(const Model& model, std::vector<int32_t> tokens, int64_t first, int64_t top_k) {
  if (first < 0 || first + 1 >= static_cast<int64_t>(tokens.size()) || top_k < 1 || top_k >= model.config.vocab_size)
    throw Error(ErrorKind::InvalidArgument, "teacher targets need a position to predict and 1 <= top_k < vocabulary");
  c10::NoGradGuard no_grad;
  TeacherTargets t;
  t.tokens = std::move(tokens);
  t.first = first;
  t.top_k = top_k;
  fill_distributions(model, t);
  return t;
}

void validate_teacher_targets(const Model& model, const std::vector<TeacherTargets>& targets,
                              const TeacherOptions& options) {
  const int64_t vocab = model.config.vocab_size;
  auto in_vocab = [vocab](int32_t id) { return id >= 0 && id < vocab; };
  auto finite = [](float x) { return std::isfinite(x); };
  for (const TeacherTargets& t : targets) {
    const bool ok = t.top_k == options.top_k && static_cast<int64_t>(t.tokens.size()) <= model.config.context_length &&
                    std::all_of(t.tokens.begin(), t.tokens.end(), in_vocab) &&
                    std::all_of(t.top_ids.begin(), t.top_ids.end(), in_vocab) &&
                    std::all_of(t.top_logprobs.begin(), t.top_logprobs.end(), finite) &&
                    std::all_of(t.rest_logprobs.begin(), t.rest_logprobs.end(), finite);
    if (!ok)
      throw Error(ErrorKind::CorruptFile, "stored teacher targets for '" + t.prompt +
                                              "' do not fit this model (delete the file to rebuild them)");
  }
}

void write_teacher_targets(const std::string& path, const std::vector<std::string>& prompts,
                           const std::vector<TeacherTargets>& targets, const TeacherOptions& options,
                           const std::string& weights) {
  nlohmann::json list = nlohmann::json::array();
  for (const TeacherTargets& t : targets)
    list.push_back({{"prompt", t.prompt},
                    {"tokens", t.tokens},
                    {"first", t.first},
                    {"top_k", t.top_k},
                    {"top_ids", t.top_ids},
                    {"top_logprobs", t.top_logprobs},
                    {"rest_logprobs", t.rest_logprobs}});
  const nlohmann::json j = {
      {"format", kFormat},       {"prompts", prompts}, {"answer_tokens", options.answer_tokens},
      {"top_k", options.top_k}, {"weights", weights}, {"targets", list}};
  write_file_atomically(path, j.dump() + "\n");
}

std::optional<std::vector<TeacherTargets>> read_teacher_targets(const std::string& path,
                                                                const std::vector<std::string>& prompts,
                                                                const TeacherOptions& options,
                                                                const std::string& weights) {
  if (::access(path.c_str(), F_OK) != 0) return std::nullopt;
  std::vector<TeacherTargets> out;
  try {
    const nlohmann::json j = nlohmann::json::parse(read_text_file(path, ErrorKind::CorruptFile));
    if (j.at("format").get<int>() != kFormat || j.at("prompts").get<std::vector<std::string>>() != prompts ||
        j.at("answer_tokens").get<int64_t>() != options.answer_tokens || j.at("top_k").get<int64_t>() != options.top_k ||
        j.value("weights", std::string()) != weights)
      return std::nullopt;
    for (const nlohmann::json& e : j.at("targets")) {
      TeacherTargets t;
      t.prompt = e.at("prompt").get<std::string>();
      t.tokens = e.at("tokens").get<std::vector<int32_t>>();
      t.first = e.at("first").get<int64_t>();
      t.top_k = e.at("top_k").get<int64_t>();
      t.top_ids = e.at("top_ids").get<std::vector<int32_t>>();
      t.top_logprobs = e.at("top_logprobs").get<std::vector<float>>();
      t.rest_logprobs = e.at("rest_logprobs").get<std::vector<float>>();
      const int64_t n = t.positions();
      if (t.first < 0 || n < 1 || static_cast<int64_t>(t.top_ids.size()) != n * t.top_k ||
          t.top_logprobs.size() != t.top_ids.size() || static_cast<int64_t>(t.rest_logprobs.size()) != n)
        throw Error(ErrorKind::CorruptFile, "teacher targets in '" + path + "' have inconsistent sizes");
      out.push_back(std::move(t));
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::CorruptFile, "teacher targets in '" + path + "' are unreadable: " + e.what());
  }
  return out;
}

}  // namespace hs
