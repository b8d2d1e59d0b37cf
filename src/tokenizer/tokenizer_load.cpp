#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/fs_util.h"
#include "common/gguf_file.h"
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

void finish_added_tokens(Tokenizer& tok) {
  std::stable_sort(tok.added_tokens.begin(), tok.added_tokens.end(),
                   [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
  for (const auto& a : tok.added_tokens) {
    if (a.id >= tok.vocab_size()) resize_tables(tok, a.id + 1);
    tok.id_to_token[a.id] = a.content;
    tok.is_added[a.id] = 1;
    tok.is_special[a.id] = a.special;
    tok.token_to_id[a.content] = a.id;
  }
}

// Pre-tokenizer of tokenizer.json: Split / Digits / ByteLevel, alone or in a Sequence.
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
  if (type == "NFC") {
    tok.nfc = true;
  } else if (type == "Sequence") {
    for (const auto& sub : n.at("normalizers")) read_normalizer(tok, sub);
  } else {
    throw Error(ErrorKind::Unsupported, "normalizer '" + type + "' is not supported (only NFC)");
  }
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
  if (tok.chat_template.empty() && fs::exists(jinja)) tok.chat_template = read_text_file(jinja.string());
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
    const json& model = j.at("model");
    if (model.value("type", "BPE") != "BPE")
      throw Error(ErrorKind::Unsupported, "tokenizer model '" + model.value("type", "") + "' is not supported (BPE)");
    if (model.value("byte_fallback", false))
      throw Error(ErrorKind::Unsupported, "byte-fallback (SentencePiece-style) BPE is not supported");
    tok->ignore_merges = model.value("ignore_merges", false);
    const json& vocab = model.at("vocab");
    size_t n = 0;
    for (auto& [token, id] : vocab.items()) n = std::max<size_t>(n, id.get<int64_t>() + 1);
    resize_tables(*tok, n);
    for (auto& [token, id] : vocab.items()) {
      tok->id_to_token[id.get<int32_t>()] = token;
      tok->token_to_id[token] = id.get<int32_t>();
    }
    int32_t rank = 0;
    for (const auto& m : model.at("merges")) {
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        size_t sp = s.find(' ', 1);
        if (sp == std::string::npos) throw Error(ErrorKind::CorruptFile, "malformed merge '" + s + "'");
        add_merge(*tok, s.substr(0, sp), s.substr(sp + 1), rank++);
      } else {
        add_merge(*tok, m.at(0).get<std::string>(), m.at(1).get<std::string>(), rank++);
      }
    }
    for (const auto& a : j.value("added_tokens", json::array())) {
      AddedToken t;
      t.content = a.at("content").get<std::string>();
      t.id = a.at("id").get<int32_t>();
      t.special = a.value("special", false);
      t.lstrip = a.value("lstrip", false);
      t.rstrip = a.value("rstrip", false);
      t.single_word = a.value("single_word", false);
      tok->added_tokens.push_back(t);
    }
    finish_added_tokens(*tok);
    if (model.contains("unk_token") && model["unk_token"].is_string())
      tok->unk_id = tok->find_token(model["unk_token"].get<std::string>());
    read_normalizer(*tok, j.value("normalizer", json()));
    bool byte_level = false;
    read_pre_tokenizer(*tok, j.value("pre_tokenizer", json()), &byte_level);
    if (!byte_level) throw Error(ErrorKind::Unsupported, "only byte-level BPE tokenizers are supported");
    read_post_processor(*tok, j.value("post_processor", json()));
  } catch (const json::exception& e) {
    throw Error(ErrorKind::CorruptFile, "'" + path.string() + "' is malformed: " + e.what());
  }
  read_tokenizer_config(*tok, fs::path(folder) / "tokenizer_config.json");
  return tok;
}

std::shared_ptr<Tokenizer> load_tokenizer_gguf(const GgufFile& g) {
  const std::string model = g.get_string("tokenizer.ggml.model", "");
  if (model != "gpt2")
    throw Error(ErrorKind::Unsupported, "GGUF tokenizer model '" + model + "' is not supported (only gpt2-style BPE)");
  auto tok = std::make_shared<Tokenizer>();
  tok->source = g.file->path();
  std::vector<std::string> tokens = g.get_string_array("tokenizer.ggml.tokens");
  std::vector<int64_t> types = g.has("tokenizer.ggml.token_type") ? g.get_int_array("tokenizer.ggml.token_type")
                                                                   : std::vector<int64_t>(tokens.size(), 1);
  if (types.size() != tokens.size()) throw Error(ErrorKind::CorruptFile, "GGUF token types do not match the tokens");
  resize_tables(*tok, tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    tok->id_to_token[i] = tokens[i];
    tok->token_to_id[tokens[i]] = static_cast<int32_t>(i);
    // Control (3) and user-defined (4) tokens are matched literally before BPE, as HF's added tokens are.
    if (types[i] == 3 || types[i] == 4) {
      AddedToken a;
      a.content = tokens[i];
      a.id = static_cast<int32_t>(i);
      a.special = types[i] == 3;
      tok->added_tokens.push_back(a);
    }
  }
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
    tok->nfc = true;
    add_rule(*tok, kQwen2SplitPattern);
  } else if (pre == "llama-bpe" || pre == "llama3") {
    tok->ignore_merges = true;
    add_rule(*tok, kLlama3SplitPattern);
  } else if (pre == "default" || pre == "gpt2") {
    add_rule(*tok, kGpt2SplitPattern);
  } else {
    throw Error(ErrorKind::Unsupported, "GGUF pre-tokenizer '" + pre + "' is not supported (smollm, qwen2, llama-bpe, gpt2)");
  }
  auto id_or = [&](const char* key) { return static_cast<int32_t>(g.get_int(key, -1)); };
  tok->bos_id = id_or("tokenizer.ggml.bos_token_id");
  tok->eos_id = id_or("tokenizer.ggml.eos_token_id");
  tok->pad_id = id_or("tokenizer.ggml.padding_token_id");
  if (g.get_bool("tokenizer.ggml.add_bos_token", false) && tok->bos_id >= 0) tok->prefix_ids.push_back(tok->bos_id);
  if (g.get_bool("tokenizer.ggml.add_eos_token", false) && tok->eos_id >= 0) tok->suffix_ids.push_back(tok->eos_id);
  tok->chat_template = g.get_string("tokenizer.chat_template", "");
  return tok;
}

std::shared_ptr<Tokenizer> load_tokenizer(const std::string& model_path) {
  if (fs::is_directory(model_path))
    return fs::exists(fs::path(model_path) / "tokenizer.json") ? load_tokenizer_json(model_path) : nullptr;
  GgufFile g = read_gguf(model_path);
  return g.has("tokenizer.ggml.model") ? load_tokenizer_gguf(g) : nullptr;
}

}  // namespace hs
