#pragma once
// What the base model answers, kept as teacher targets (Learning without Forgetting, Li & Hoiem 2016): general
// prompts are answered greedily by the base model, and at every answer position its next-token distribution
// is kept as the top k log-probabilities plus the log of the mass outside them. Training pulls the adapter's
// distributions toward these (a KL term in the loss, learning/lora_gradients.h); the publication guard measures
// how far a candidate version moved from them on canary prompts. The teacher is free: it is the same model with
// no adapter. Targets are stored in the domain's training folder, so that a replay after a crash trains against
// exactly the same ones. Torch-free.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace hs {

struct Model;
struct Tokenizer;
struct ChatTemplate;

struct TeacherTargets {
  std::string prompt;           // the user prompt it was made from
  std::vector<int32_t> tokens;  // the templated prompt, then the base model's greedy answer
  int64_t first = 0;            // positions first .. tokens.size() - 2 predict the answer tokens
  int64_t top_k = 0;
  std::vector<int32_t> top_ids;       // per position, the teacher's k most likely next tokens
  std::vector<float> top_logprobs;    // and their log-probabilities
  std::vector<float> rest_logprobs;   // per position: log of the probability of every other token

  int64_t positions() const { return static_cast<int64_t>(tokens.size()) - 1 - first; }
};

struct TeacherOptions {
  int64_t answer_tokens = 32;  // longest greedy answer kept
  int64_t top_k = 32;
};

// A user prompt as the model sees it: rendered with `chat` as one user turn asking for an answer when given,
// else as plain text.
std::vector<int32_t> prompt_tokens(const Tokenizer& tokenizer, const ChatTemplate* chat, const std::string& prompt);

// The base model's greedy answers to `prompts` (rendered with `chat` when given, else as plain text) and its
// distributions along them, computed as training computes them (float rounding aside, a fresh adapter's KL to
// them is zero). A prompt leaving no room for a whole answer in the model's context is left out.
std::vector<TeacherTargets> build_teacher_targets(const Model& model, const Tokenizer& tokenizer,
                                                  const ChatTemplate* chat, const std::vector<std::string>& prompts,
                                                  const TeacherOptions& options = {});

// The teacher's distributions along given tokens: positions first .. tokens.size() - 2, top k each.
TeacherTargets teacher_targets_for(const Model& model, std::vector<int32_t> tokens, int64_t first, int64_t top_k);

// Throws CorruptFile unless every target fits `model` (token ids within the vocabulary, sequences within the
// context) with `options`' top k and finite log-probabilities: stored files are checked before they index tensors.
void validate_teacher_targets(const Model& model, const std::vector<TeacherTargets>& targets,
                              const TeacherOptions& options);

// Written atomically, with the weights they were made on (weights_name: "int4", "float32", ...). Throws Io.
void write_teacher_targets(const std::string& path, const std::vector<std::string>& prompts,
                           const std::vector<TeacherTargets>& targets, const TeacherOptions& options,
                           const std::string& weights);
// The targets stored at `path`, when that file exists and was made from exactly `prompts` with `options` on
// `weights`; nothing otherwise (a changed prompt set, or the same model now loaded in another form, is rebuilt:
// a guard comparing int4 answers with float32 targets would see drift in an unchanged adapter). Throws
// CorruptFile for an unreadable file.
std::optional<std::vector<TeacherTargets>> read_teacher_targets(const std::string& path,
                                                                const std::vector<std::string>& prompts,
                                                                const TeacherOptions& options,
                                                                const std::string& weights);

}  // namespace hs
