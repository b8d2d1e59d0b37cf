#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/fs_util.h"
#include "common/gguf_file.h"
#include "common/utf8.h"
#include "tokenizer/bpe.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer.h"

namespace hs {

using nlohmann::json;

namespace {

namespace fs = std::filesystem;

const char* const kQwen2SplitPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* const kLlama3SplitPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

void add_rule(Tokenizer& tok, const std::string& pattern, bool remove = false) {
  tok.pre_rules.push_back({compile_split_regex(pattern), remove});
}

void resize_tables(Tokenizer& tok, size_t n) {
  tok.id_to_token.resize(n);
  tok.is_special.resize(n, 0);
  tok.is_added.resize(n, 0);
}

void add_merge(Tokenizer& tok, const std::string& left, const std::string& right, int32_t rank) {
  int32_t a = tok.find_token(left), b = tok.find_token(right), m = tok.find_token(left + right);
  if (a < 0 || b < 0 || m < 0)
    throw Error(ErrorKind::CorruptFile, "tokenizer merge '" + left + " " + right + "' uses tokens not in the vocabulary");
  tok.merges.emplace((static_cast<uint64_t>(a) << 32) | static_cast<uint32_t>(b), std::make_pair(rank, m));
}

// Ids index the tables, so a file's ids must lie in [0, limit) (limit: the count of tokens it lists); others
// would be written out of bounds or size the tables from one wild number.
int32_t checked_id(int64_t id, int64_t limit, const std::string& token) {
  if (id < 0 || id >= limit)
    throw Error(ErrorKind::CorruptFile, "token '" + token + "' has id " + std::to_string(id) + ", outside 0.." +
                                            std::to_string(limit - 1) + " (the file lists " + std::to_string(limit) +
                                            " tokens)");
  return static_cast<int32_t>(id);
}

// Sorts the added tokens longest first and enters them in the tables; their ids were checked when read.
void finish_added_tokens(Tokenizer& tok) {
  std::stable_sort(tok.added_tokens.begin(), tok.added_tokens.end(),
                   [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
  for (auto& a : tok.added_tokens) {
    a.match = a.content;
    if (a.id >= tok.vocab_size()) resize_tables(tok, a.id + 1);
    tok.id_to_token[a.id] = a.content;
    tok.is_added[a.id] = 1;
    tok.is_special[a.id] = a.special;
    tok.token_to_id[a.content] = a.id;
  }
  tok.index_added_tokens();
}

Metaspace read_metaspace(const json& p) {
  Metaspace m;
  m.replacement = p.value("replacement", m.replacement);
  // `tokenizers` requires one character; an empty one would split the text byte by byte.
  if (m.replacement.empty() || !utf8_is_valid(m.replacement) ||
      utf8_sequence_length(static_cast<unsigned char>(m.replacement[0])) != m.replacement.size())
    throw Error(ErrorKind::CorruptFile,
                "Metaspace replacement '" + m.replacement + "' is not exactly one character");
  m.split = p.value("split", true);
  // Files written before `tokenizers` 0.14 say add_prefix_space instead of prepend_scheme.
  const std::string scheme = p.value("prepend_scheme", p.value("add_prefix_space", true) ? "always" : "never");
  if (scheme == "always") {
    m.prepend = Metaspace::Prepend::Always;
  } else if (scheme == "first") {
    m.prepend = Metaspace::Prepend::First;
  } else if (scheme == "never") {
    m.prepend = Metaspace::Prepend::Never;
  } else {
    throw Error(ErrorKind::Unsupported, "Metaspace prepend_scheme '" + scheme + "' is not supported");
  }
  return m;
}

// Pre-tokenizer of tokenizer.json: Split / Digits / ByteLevel / Metaspace, alone or in a Sequence.
void read_pre_tokenizer(Tokenizer& tok, const json& p, bool* byte_level) {
  if (p.is_null()) return;
  const std::string type = p.value("type", "");
  if (type == "Sequence") {
    for (const auto& sub : p.at("pretokenizers")) read_pre_tokenizer(tok, sub, byte_level);
  } else if (type == "Split") {
    const json& pat = p.at("pattern");
    std::string pattern;
    if (pat.contains("Regex")) {
      pattern = pat["Regex"].get<std::string>();
    } else {
      // A literal string: quote it for PCRE2.
      pattern = "\\Q" + pat.at("String").get<std::string>() + "\\E";
    }
    const std::string behavior = p.value("behavior", "Isolated");
    if (p.value("invert", false) || (behavior != "Isolated" && behavior != "Removed"))
      throw Error(ErrorKind::Unsupported, "Split pre-tokenizer with behaviour '" + behavior + "'" +
                                              (p.value("invert", false) ? " (inverted)" : "") + " is not supported");
    add_rule(tok, pattern, behavior == "Removed");
  } else if (type == "Digits") {
    add_rule(tok, p.value("individual_digits", false) ? "\\p{N}" : "\\p{N}+");
  } else if (type == "Metaspace") {
    tok.metaspace = read_metaspace(p);
  } else if (type == "ByteLevel") {
    *byte_level = true;
    tok.add_prefix_space = p.value("add_prefix_space", false);
    if (p.value("use_regex", true)) add_rule(tok, kGpt2SplitPattern);
  } else {
    throw Error(ErrorKind::Unsupported, "pre-tokenizer '" + type + "' is not supported");
  }
}

void read_normalizer(Tokenizer& tok, const json& n) {
  if (n.is_null()) return;
  const std::string type = n.value("type", "");
  using Kind = NormalizerStep::Kind;
  if (type == "NFC" || type == "NFKC") {
    tok.normalizer.push_back({type == "NFC" ? Kind::Nfc : Kind::Nfkc, "", ""});
  } else if (type == "Prepend") {
    tok.normalizer.push_back({Kind::Prepend, n.at("prepend").get<std::string>(), ""});
  } else if (type == "Replace") {
    if (!n.at("pattern").contains("String"))
      throw Error(ErrorKind::Unsupported, "Replace normalizer with a regex pattern is not supported (only a string)");
    tok.normalizer.push_back({Kind::Replace, n["pattern"]["String"].get<std::string>(), n.at("content").get<std::string>()});
  } else if (type == "Sequence") {
    for (const auto& sub : n.at("normalizers")) read_normalizer(tok, sub);
  } else {
    throw Error(ErrorKind::Unsupported,
                "normalizer '" + type + "' is not supported (NFC, NFKC, Prepend, Replace, Sequence)");
  }
}

// Decoder of a SentencePiece-style tokenizer.json: Metaspace, or a Sequence of Replace / ByteFallback / Fuse /
// Strip in the order the Llama converter writes, where Strip acts on the fused text.
void read_decoder_step(PieceDecoding& d, const json& step, bool* fused) {
  const std::string type = step.value("type", "");
  if (type == "Replace" && step.at("pattern").contains("String") && !*fused) {
    d.replacements.emplace_back(step["pattern"]["String"].get<std::string>(), step.at("content").get<std::string>());
  } else if (type == "ByteFallback" && !*fused) {
    d.byte_fallback = true;
  } else if (type == "Fuse") {
    *fused = true;
  } else if (type == "Strip" && *fused && step.value("stop", 0) == 0 && step.value("content", " ").size() == 1) {
    d.strip_char = step.value("content", " ")[0];
    d.strip_leading = step.value("start", 0);
  } else {
    throw Error(ErrorKind::Unsupported, "decoder '" + type + "' is not supported in this position (" + step.dump() +
                                            "); supported: Sequence[Replace, ByteFallback, Fuse, Strip] or Metaspace");
  }
}

void read_decoder(Tokenizer& tok, const json& d) {
  const std::string type = d.is_null() ? "none" : d.value("type", "");
  if (type == "Metaspace") {
    const Metaspace m = read_metaspace(d);
    tok.decoding.replacements.emplace_back(m.replacement, " ");
    if (m.prepend != Metaspace::Prepend::Never) tok.decoding.drop_in_first_token = m.replacement;
  } else if (type == "Sequence") {
    bool fused = false;
    for (const auto& step : d.at("decoders")) read_decoder_step(tok.decoding, step, &fused);
  } else {
    throw Error(ErrorKind::Unsupported, "decoder '" + type + "' is not supported for a tokenizer without ByteLevel "
                                        "(Sequence[Replace, ByteFallback, Fuse, Strip] or Metaspace)");
  }
}

// Added tokens marked "normalized" are matched in the normalized text, as their normalized content, which is
// also what `tokenizers` decodes them from.
void set_added_matches(Tokenizer& tok) {
  for (auto& a : tok.added_tokens) {
    if (!a.normalized) continue;
    a.match = normalize(tok.normalizer, a.content);
    tok.id_to_token[a.id] = a.match;
  }
  std::stable_sort(tok.added_tokens.begin(), tok.added_tokens.end(),
                   [](const AddedToken& a, const AddedToken& b) { return a.match.size() > b.match.size(); });
  tok.index_added_tokens();
}

void read_post_processor(Tokenizer& tok, const json& p) {
  if (p.is_null()) return;
  const std::string type = p.value("type", "");
  if (type == "Sequence") {
    for (const auto& sub : p.at("processors")) read_post_processor(tok, sub);
  } else if (type == "TemplateProcessing") {
    bool after_sequence = false;
    for (const auto& piece : p.at("single")) {
      if (piece.contains("Sequence")) {
        after_sequence = true;
      } else if (piece.contains("SpecialToken")) {
        int32_t id = tok.find_token(piece["SpecialToken"].at("id").get<std::string>());
        if (id < 0) throw Error(ErrorKind::CorruptFile, "post-processor names an unknown special token");
        (after_sequence ? tok.suffix_ids : tok.prefix_ids).push_back(id);
      }
    }
  } else if (type != "ByteLevel") {
    throw Error(ErrorKind::Unsupported, "post-processor '" + type + "' is not supported");
  }
}

std::string token_content(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content")) return v["content"].get<std::string>();
  return "";
}

// A chat template as its file holds it. Templates are text (GGUF strings are UTF-8 by the spec) and the Jinja
// interpreter's string operations work by code point, so other bytes would reach prompts as garbage: the file
// is damaged, and refused naming where the template lies.
std::string checked_chat_template(std::string text, const std::string& where) {
  if (!utf8_is_valid(text))
    throw Error(ErrorKind::CorruptFile, "the chat template in " + where +
                                            " is not valid UTF-8; the file is damaged, or was written in another "
                                            "encoding: re-export it");
  return text;
}

void read_tokenizer_config(Tokenizer& tok, const fs::path& path) {
  if (!fs::exists(path)) return;
  json c;
  try {
    c = json::parse(read_text_file(path.string()));
  } catch (const json::exception& e) {
    throw Error(ErrorKind::CorruptFile, "'" + path.string() + "' is not valid JSON: " + e.what());
  }
  if (c.contains("chat_template")) {
    const json& t = c["chat_template"];
    if (t.is_string()) {
      tok.chat_template = t.get<std::string>();
    } else if (t.is_array()) {
      for (const auto& named : t)
        if (named.value("name", "") == "default") tok.chat_template = named.value("template", "");
    }
  }
  if (c.contains("bos_token")) tok.bos_id = tok.find_token(token_content(c["bos_token"]));
  if (c.contains("eos_token")) tok.eos_id = tok.find_token(token_content(c["eos_token"]));
  if (c.contains("pad_token")) tok.pad_id = tok.find_token(token_content(c["pad_token"]));
  // transformers 5 keeps the template in its own file.
  fs::path jinja = path.parent_path() / "chat_template.jinja";
  if (tok.chat_template.empty() && fs::exists(jinja))
    tok.chat_template = checked_chat_template(read_text_file(jinja.string()), "'" + jinja.string() + "'");
}

// The BPE model: vocabulary, merges (as "a b" strings or as pairs) and options. `id_limit`: the count of
// tokens the file lists (vocabulary and added tokens), above which no id may lie.
void read_bpe_model(Tokenizer& tok, const json& model, int64_t id_limit) {
  if (model.value("type", "BPE") != "BPE")
    throw Error(ErrorKind::Unsupported, "tokenizer model '" + model.value("type", "") + "' is not supported (BPE)");
  tok.byte_fallback = model.value("byte_fallback", false);
  tok.fuse_unk = model.value("fuse_unk", false);
  tok.ignore_merges = model.value("ignore_merges", false);
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (model.contains(key) && model[key].is_string() && !model[key].get<std::string>().empty())
      throw Error(ErrorKind::Unsupported, std::string("BPE option '") + key + "' is not supported");
  if (model.contains("dropout") && model["dropout"].is_number() && model["dropout"].get<double>() > 0)
    throw Error(ErrorKind::Unsupported, "BPE dropout is not supported");
  const json& vocab = model.at("vocab");
  int32_t n = 0;
  for (auto& [token, id] : vocab.items()) n = std::max(n, checked_id(id.get<int64_t>(), id_limit, token) + 1);
  resize_tables(tok, static_cast<size_t>(n));
  for (auto& [token, id] : vocab.items()) {
    tok.id_to_token[id.get<int32_t>()] = token;
    tok.token_to_id[token] = id.get<int32_t>();
  }
  int32_t rank = 0;
  for (const auto& m : model.at("merges")) {
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      size_t sp = s.find(' ', 1);
      if (sp == std::string::npos) throw Error(ErrorKind::CorruptFile, "malformed merge '" + s + "'");
      add_merge(tok, s.substr(0, sp), s.substr(sp + 1), rank++);
    } else {
      add_merge(tok, m.at(0).get<std::string>(), m.at(1).get<std::string>(), rank++);
    }
  }
}

void read_added_tokens(Tokenizer& tok, const json& list, int64_t id_limit) {
  for (const auto& a : list) {
    AddedToken t;
    t.content = a.at("content").get<std::string>();
    t.id = checked_id(a.at("id").get<int64_t>(), id_limit, t.content);
    t.special = a.value("special", false);
    t.lstrip = a.value("lstrip", false);
    t.rstrip = a.value("rstrip", false);
    t.single_word = a.value("single_word", false);
    t.normalized = a.value("normalized", false);
    tok.added_tokens.push_back(t);
  }
  finish_added_tokens(tok);
}

// The combinations this tokenizer runs as `tokenizers` does; others are refused rather than approximated.
void check_pipeline(Tokenizer& tok, bool byte_level) {
  tok.byte_level = byte_level;
  if (byte_level && (tok.metaspace || tok.byte_fallback))
    throw Error(ErrorKind::Unsupported, std::string("a ByteLevel pre-tokenizer combined with ") +
                                            (tok.metaspace ? "Metaspace" : "byte_fallback") + " is not supported");
  if (tok.metaspace && !tok.pre_rules.empty())
    throw Error(ErrorKind::Unsupported, "the Metaspace pre-tokenizer combined with other pre-tokenizers is not supported");
}

}  // namespace

std::shared_ptr<Tokenizer> load_tokenizer_json(const std::string& folder) {
  fs::path path = fs::path(folder) / "tokenizer.json";
  if (!fs::exists(path)) throw Error(ErrorKind::NotFound, "'" + folder + "' has no tokenizer.json");
  json j;
  try {
    j = json::parse(read_text_file(path.string()));
  } catch (const json::exception& e) {
    throw Error(ErrorKind::CorruptFile, "'" + path.string() + "' is not valid JSON: " + e.what());
  }
  auto tok = std::make_shared<Tokenizer>();
  tok->source = path.string();
  try {
    const json added = j.value("added_tokens", json::array());
    const int64_t id_limit = static_cast<int64_t>(j.at("model").at("vocab").size() + added.size());
    read_bpe_model(*tok, j.at("model"), id_limit);
    read_added_tokens(*tok, added, id_limit);
    const json& model = j.at("model");
    if (model.contains("unk_token") && model["unk_token"].is_string())
      tok->unk_id = tok->find_token(model["unk_token"].get<std::string>());
    read_normalizer(*tok, j.value("normalizer", json()));
    set_added_matches(*tok);
    bool byte_level = false;
    read_pre_tokenizer(*tok, j.value("pre_tokenizer", json()), &byte_level);
    check_pipeline(*tok, byte_level);
    if (!byte_level) read_decoder(*tok, j.value("decoder", json()));
    read_post_processor(*tok, j.value("post_processor", json()));
  } catch (const json::exception& e) {
    throw Error(ErrorKind::CorruptFile, "'" + path.string() + "' is malformed: " + e.what());
  }
  read_tokenizer_config(*tok, fs::path(folder) / "tokenizer_config.json");
  return tok;
}

namespace {

std::vector<float> gguf_float_array(const GgufFile& g, const std::string& key) {
  const GgufValue& v = g.at(key);
  if (v.kind != GgufValue::Kind::Array) throw Error(ErrorKind::CorruptFile, "GGUF metadata '" + key + "' is not an array");
  std::vector<float> out;
  out.reserve(v.array.size());
  for (const auto& e : v.array) {
    if (e.kind != GgufValue::Kind::Float) throw Error(ErrorKind::CorruptFile, "GGUF metadata '" + key + "' is not float");
    out.push_back(static_cast<float>(e.f));
  }
  return out;
}

enum GgufTokenType { kGgufUnknown = 2, kGgufControl = 3, kGgufUserDefined = 4 };

// A GGUF vocabulary: ids are positions (the last of duplicates wins, as in llama.cpp). Control and user-defined
// tokens (and unknown ones when `match_unknown`) are matched literally in the text first, as HF's added tokens
// are; control and unknown ones are special.
void read_gguf_vocab(Tokenizer& tok, const std::vector<std::string>& tokens, const std::vector<int64_t>& types,
                     bool match_unknown) {
  if (types.size() != tokens.size()) throw Error(ErrorKind::CorruptFile, "GGUF token types do not match the tokens");
  resize_tables(tok, tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    tok.id_to_token[i] = tokens[i];
    tok.token_to_id[tokens[i]] = static_cast<int32_t>(i);
    if (types[i] == kGgufControl || types[i] == kGgufUserDefined || (match_unknown && types[i] == kGgufUnknown))
      tok.added_tokens.push_back({tokens[i], static_cast<int32_t>(i), types[i] != kGgufUserDefined});
  }
}

// GGUF `llama` vocabularies (SentencePiece BPE) as llama.cpp tokenizes them: a space before every text fragment
// that starts the text or follows a special token (add_space_prefix), spaces as "▁", merges by token score,
// characters outside the vocabulary as <0xXX> byte tokens. Unknown, control and user-defined tokens are matched
// literally in the text first.
std::shared_ptr<Tokenizer> load_spm_gguf(const GgufFile& g) {
  auto tok = std::make_shared<Tokenizer>();
  tok->source = g.file->path();
  tok->byte_level = false;
  const std::vector<std::string> tokens = g.get_string_array("tokenizer.ggml.tokens");
  tok->scores = gguf_float_array(g, "tokenizer.ggml.scores");
  if (tok->scores.size() != tokens.size())
    throw Error(ErrorKind::CorruptFile, "GGUF token scores do not match the tokens");
  read_gguf_vocab(*tok, tokens, g.get_int_array("tokenizer.ggml.token_type"), true);
  for (int b = 0; b < 256; ++b)
    if (tok->find_token(byte_token_name(static_cast<unsigned char>(b))) < 0)
      throw Error(ErrorKind::Unsupported,
                  "GGUF llama vocabulary lacks the byte token " + byte_token_name(static_cast<unsigned char>(b)));
  finish_added_tokens(*tok);
  if (g.get_bool("tokenizer.ggml.add_space_prefix", true)) {
    tok->normalizer.push_back({NormalizerStep::Kind::Prepend, "\xE2\x96\x81", ""});
    tok->decoding.strip_leading = 1;
  }
  tok->normalizer.push_back({NormalizerStep::Kind::Replace, " ", "\xE2\x96\x81"});
  tok->decoding.replacements.emplace_back("\xE2\x96\x81", " ");
  tok->decoding.byte_fallback = true;
  return tok;
}

// Defaults where the keys are absent differ by vocabulary type, as in llama.cpp (llama: bos 1, eos 2, add bos).
struct GgufSpecialDefaults {
  int32_t bos_id = -1, eos_id = -1;
  bool add_bos = false;
};

// A special id names a token of the vocabulary, or is -1 (none); another would reach the embedding.
int32_t gguf_special_id(const Tokenizer& tok, const GgufFile& g, const std::string& key, int64_t fallback) {
  const int64_t id = g.get_int(key, fallback);
  if (id != -1 && (id < 0 || id >= tok.vocab_size()))
    throw Error(ErrorKind::CorruptFile, "GGUF metadata '" + key + "' is " + std::to_string(id) +
                                            ", outside the vocabulary (0.." + std::to_string(tok.vocab_size() - 1) +
                                            ")");
  return static_cast<int32_t>(id);
}

void read_gguf_special_ids(Tokenizer& tok, const GgufFile& g, GgufSpecialDefaults d) {
  tok.bos_id = gguf_special_id(tok, g, "tokenizer.ggml.bos_token_id", d.bos_id);
  tok.eos_id = gguf_special_id(tok, g, "tokenizer.ggml.eos_token_id", d.eos_id);
  tok.pad_id = gguf_special_id(tok, g, "tokenizer.ggml.padding_token_id", -1);
  if (g.get_bool("tokenizer.ggml.add_bos_token", d.add_bos) && tok.bos_id >= 0) tok.prefix_ids.push_back(tok.bos_id);
  if (g.get_bool("tokenizer.ggml.add_eos_token", false) && tok.eos_id >= 0) tok.suffix_ids.push_back(tok.eos_id);
}

std::string gguf_chat_template(const GgufFile& g) {
  return checked_chat_template(g.get_string("tokenizer.chat_template", ""),
                               "'" + g.file->path() + "' (tokenizer.chat_template)");
}

}  // namespace

std::shared_ptr<Tokenizer> load_tokenizer_gguf(const GgufFile& g) {
  const std::string model = g.get_string("tokenizer.ggml.model", "");
  if (model == "llama") {
    auto tok = load_spm_gguf(g);
    read_gguf_special_ids(*tok, g, {1, 2, true});
    tok->chat_template = gguf_chat_template(g);
    return tok;
  }
  if (model != "gpt2")
    throw Error(ErrorKind::Unsupported,
                "GGUF tokenizer model '" + model + "' is not supported (gpt2-style BPE and llama SentencePiece)");
  auto tok = std::make_shared<Tokenizer>();
  tok->source = g.file->path();
  const std::vector<std::string> tokens = g.get_string_array("tokenizer.ggml.tokens");
  read_gguf_vocab(*tok, tokens,
                  g.has("tokenizer.ggml.token_type") ? g.get_int_array("tokenizer.ggml.token_type")
                                                     : std::vector<int64_t>(tokens.size(), 1),
                  false);
  int32_t rank = 0;
  for (const auto& m : g.get_string_array("tokenizer.ggml.merges")) {
    size_t sp = m.find(' ', 1);
    if (sp == std::string::npos) throw Error(ErrorKind::CorruptFile, "malformed GGUF merge '" + m + "'");
    add_merge(*tok, m.substr(0, sp), m.substr(sp + 1), rank++);
  }
  finish_added_tokens(*tok);
  const std::string pre = g.get_string("tokenizer.ggml.pre", "default");
  if (pre == "smollm") {
    add_rule(*tok, "\\p{N}");
    add_rule(*tok, kGpt2SplitPattern);
  } else if (pre == "qwen2") {
    tok->normalizer.push_back({NormalizerStep::Kind::Nfc, "", ""});
    add_rule(*tok, kQwen2SplitPattern);
  } else if (pre == "llama-bpe" || pre == "llama3") {
    tok->ignore_merges = true;
    add_rule(*tok, kLlama3SplitPattern);
  } else if (pre == "default" || pre == "gpt2") {
    add_rule(*tok, kGpt2SplitPattern);
  } else {
    throw Error(ErrorKind::Unsupported, "GGUF pre-tokenizer '" + pre + "' is not supported (smollm, qwen2, llama-bpe, gpt2)");
  }
  read_gguf_special_ids(*tok, g, {});
  tok->chat_template = gguf_chat_template(g);
  return tok;
}

std::shared_ptr<Tokenizer> load_tokenizer(const std::string& model_path) {
  if (fs::is_directory(model_path))
    return fs::exists(fs::path(model_path) / "tokenizer.json") ? load_tokenizer_json(model_path) : nullptr;
  GgufFile g = read_gguf(model_path);
  return g.has("tokenizer.ggml.model") ? load_tokenizer_gguf(g) : nullptr;
}

}  // namespace hs
