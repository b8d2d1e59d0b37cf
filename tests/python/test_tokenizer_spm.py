"""SentencePiece-style vocabularies ("▁" for spaces, <0xXX> byte fallback) against references nobody here wrote:
Hugging Face `tokenizers` for tokenizer.json files built and trained here, llama.cpp (llama-cpp-python) for GGUF
`llama` vocabularies written here with gguf-py."""
import json
import subprocess

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, trainers

from conftest import PROBE, run_probe
from test_tokenizer import corpus, random_codepoints

SPACE = "\u2581"
SPECIALS = ["<unk>", "<s>", "</s>"]
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


def trained_vocab(vocab_size=500, limit_alphabet=70):
    """Vocabulary and merges of a BPE trained on a small corpus with a small alphabet, so that many characters
    of the test strings fall back to bytes."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)])
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, limit_alphabet=limit_alphabet,
                                  show_progress=False)
    tok.train_from_iterator(corpus(["<s>"], n=400, seed=7), trainer)
    model = json.loads(tok.to_str())["model"]
    return model["vocab"], model["merges"]


@pytest.fixture(scope="module")
def vocab_and_merges():
    return trained_vocab()


def with_bytes(vocab, byte_tokens):
    """The trained vocabulary with the byte tokens after it (the trainer makes none)."""
    out = dict(vocab)
    for t in byte_tokens:
        out.setdefault(t, len(out))
    return out


def added(content, id_, special=True, normalized=False):
    return {"id": id_, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": normalized, "special": special}


LLAMA2_NORMALIZER = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": SPACE},
                                                         {"type": "Replace", "pattern": {"String": " "},
                                                          "content": SPACE}]}
LLAMA_DECODER = {"type": "Sequence", "decoders": [
    {"type": "Replace", "pattern": {"String": SPACE}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"},
    {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
BOS_TEMPLATE = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                                         {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}


def metaspace(scheme, split):
    return {"type": "Metaspace", "replacement": SPACE, "prepend_scheme": scheme, "split": split}


def tokenizer_json(vocab, merges, *, normalizer=None, pre_tokenizer=None, decoder=LLAMA_DECODER, merges_as_text=False,
                   byte_tokens=BYTE_TOKENS, fuse_unk=True, ignore_merges=False, extra_added=()):
    vocab = with_bytes(vocab, byte_tokens)
    added_tokens = [added(t, vocab[t]) for t in SPECIALS]
    for content, normalized in extra_added:  # user tokens that are not in the model's vocabulary
        added_tokens.append(added(content, len(vocab) + len(added_tokens) - len(SPECIALS), False, normalized))
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added_tokens,
            "normalizer": normalizer, "pre_tokenizer": pre_tokenizer, "post_processor": BOS_TEMPLATE,
            "decoder": decoder,
            "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": fuse_unk, "byte_fallback": True,
                      "ignore_merges": ignore_merges, "vocab": vocab,
                      "merges": [" ".join(m) for m in merges] if merges_as_text else merges}}


STYLES = {
    # Llama 2 / Mistral 7B v0.1: normalizer Prepend + Replace, no pre-tokenizer, merges written as "a b".
    "llama2": dict(normalizer=LLAMA2_NORMALIZER, merges_as_text=True, extra_added=[("hello world", True)]),
    # transformers' Llama converter with legacy=False: Metaspace (first, no split).
    "metaspace_first": dict(pre_tokenizer=metaspace("first", False), extra_added=[("hello world", True)]),
    # A trained SentencePiece-like tokenizer: Metaspace (always, split) and its own decoder; byte tokens stay text.
    "metaspace_always": dict(pre_tokenizer=metaspace("always", True), ignore_merges=True,
                             decoder={"type": "Metaspace", "replacement": SPACE, "prepend_scheme": "always",
                                      "split": True}),
    # Metaspace as files written before `tokenizers` 0.14 spell it (add_prefix_space, no prepend_scheme).
    "metaspace_legacy": dict(pre_tokenizer={"type": "Metaspace", "replacement": SPACE, "add_prefix_space": True},
                             decoder={"type": "Metaspace", "replacement": SPACE, "add_prefix_space": True}),
    # NFKC before Metaspace: compatibility characters (ﬁ, ①, ℌ, full-width spaces) fold first.
    "nfkc_metaspace": dict(normalizer={"type": "NFKC"}, pre_tokenizer=metaspace("always", True)),
    # Bytes only for ASCII: other characters become one <unk> per run (fuse_unk).
    "llama2_ascii_bytes": dict(normalizer=LLAMA2_NORMALIZER, byte_tokens=BYTE_TOKENS[:128],
                               extra_added=[("<tool>", False), ("<tool>x", False)]),  # longest first
}


def write_tokenizer(folder, spec):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))
    return folder


@pytest.mark.parametrize("style", sorted(STYLES))
def test_sentencepiece_style_tokenizer_json_matches_hf(style, vocab_and_merges, tmp_path):
    spec = tokenizer_json(*vocab_and_merges, **STYLES[style])
    hf = Tokenizer.from_str(json.dumps(spec))
    folder = write_tokenizer(tmp_path / style, spec)
    specials = SPECIALS + [content for content, _ in STYLES[style].get("extra_added", [])]
    texts = corpus(specials, n=2000, seed=2026)
    texts[:8] = ["", " ", "  ", "\t", " leading", "trailing ", "  two  spaces  ", "<s> after"]
    ours = run_probe({"mode": "tokenize", "model": str(folder), "texts": texts}, tmp_path)
    expected = [hf.encode(t, add_special_tokens=False).ids for t in texts]
    bad = [(t, o, e) for t, o, e in zip(texts, ours["ids"], expected) if o != e]
    assert not bad, f"{len(bad)} of {len(texts)} encodings differ; first: {bad[0]!r}"
    byte_ids = {spec["model"]["vocab"][b] for b in BYTE_TOKENS if b in spec["model"]["vocab"]}
    fell_back = sum(any(i in byte_ids for i in ids) for ids in expected)
    assert fell_back > 400, "too few strings reach the byte fallback for the test to mean anything"
    decoded = [hf.decode(ids, skip_special_tokens=False) for ids in expected]
    bad = [(t, o, e) for t, o, e in zip(texts, ours["decoded"], decoded) if o != e]
    assert not bad, f"{len(bad)} of {len(texts)} decodings differ; first: {bad[0]!r}"
    bad = [(t, o, e) for t, o, e in zip(texts, ours["streamed"], decoded) if o != e]
    assert not bad, f"{len(bad)} of {len(texts)} streamed decodings differ; first: {bad[0]!r}"
    with_bos = run_probe({"mode": "tokenize", "model": str(folder), "texts": texts[:200],
                          "add_special_tokens": True}, tmp_path)
    assert with_bos["ids"] == [hf.encode(t).ids for t in texts[:200]]
    print(f"{style}: {len(texts)} strings identical to HF, {fell_back} through byte fallback")


@pytest.mark.parametrize("component, where, value", [
    ("Unigram", "model", {"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0]], "byte_fallback": True}),
    ("WordPiece", "model", {"type": "WordPiece", "unk_token": "<unk>", "continuing_subword_prefix": "##",
                            "max_input_chars_per_word": 100, "vocab": {"<unk>": 0}}),
    ("Lowercase", "normalizer", {"type": "Lowercase"}),
    ("Whitespace", "pre_tokenizer", {"type": "Whitespace"}),
    ("WordPiece", "decoder", {"type": "WordPiece", "prefix": "##", "cleanup": True}),
    ("Replace normalizer with a regex", "normalizer",
     {"type": "Replace", "pattern": {"Regex": " +"}, "content": SPACE}),
])
def test_unsupported_tokenizer_json_is_refused_by_name(component, where, value, vocab_and_merges, tmp_path):
    spec = tokenizer_json(*vocab_and_merges, **STYLES["llama2"])
    spec[where] = value
    Tokenizer.from_str(json.dumps(spec))  # a valid file for `tokenizers`, so the refusal is ours
    folder = write_tokenizer(tmp_path / "bad", spec)
    req = tmp_path / "req.json"
    req.write_text(json.dumps({"mode": "tokenize", "model": str(folder), "texts": ["hello"]}))
    r = subprocess.run([str(PROBE), str(req)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert component in r.stderr and "not supported" in r.stderr, r.stderr


USER_TOKEN = "<tool>"


def write_llama_vocab_gguf(path, vocab, merges, special_ids=None):
    """A vocabulary-only GGUF of type `llama` (SentencePiece BPE): scores rank the merged tokens by the order the
    trainer learned them, as SentencePiece's own scores do."""
    import gguf
    pieces = [t for t in sorted(vocab, key=vocab.get) if t not in SPECIALS]
    tokens = SPECIALS + [USER_TOKEN] + BYTE_TOKENS + pieces
    rank = {a + b: r for r, (a, b) in enumerate(merges)}
    scores = [0.0] * (len(SPECIALS) + 1 + 256) + [-float(rank.get(t, 0)) for t in pieces]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED] + \
        [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * len(pieces)
    w = gguf.GGUFWriter(str(path), "llama")
    # The hyperparameters llama.cpp reads even for a vocabulary-only load.
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    special_ids = {"bos": 1, "eos": 2, **(special_ids or {})}
    w.add_bos_token_id(special_ids["bos"])
    w.add_eos_token_id(special_ids["eos"])
    if "pad" in special_ids:
        w.add_pad_token_id(special_ids["pad"])
    w.add_unk_token_id(0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tokens


def test_gguf_llama_vocabulary_matches_llama_cpp(vocab_and_merges, tmp_path):
    from llama_cpp import Llama
    path = tmp_path / "spm-vocab.gguf"
    tokens = write_llama_vocab_gguf(path, *vocab_and_merges)
    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    texts = corpus(SPECIALS + [USER_TOKEN], n=400, seed=31)
    texts[:6] = ["", " ", "  two  spaces ", "\n\nx", "<s>x</s> y", "日本語 🙂"]
    ours = run_probe({"mode": "tokenize", "model": str(path), "texts": texts}, tmp_path)
    expected = [llm.tokenize(t.encode(), add_bos=False, special=True) for t in texts]
    bad = [(t, o, e) for t, o, e in zip(texts, ours["ids"], expected) if o != e]
    assert not bad, f"{len(bad)} of {len(texts)} encodings differ; first: {bad[0]!r}"
    assert sum(any(tokens[i] in BYTE_TOKENS for i in ids) for ids in expected) > 100
    with_bos = run_probe({"mode": "tokenize", "model": str(path), "texts": texts[:50], "add_special_tokens": True},
                         tmp_path)
    assert with_bos["ids"] == [llm.tokenize(t.encode(), add_bos=True, special=True) for t in texts[:50]]
    # Decoding drops the space the encoder put in front, so text without special tokens comes back unchanged.
    plain = [(t, d, s) for t, d, s in zip(texts, ours["decoded"], ours["streamed"]) if not any(x in t for x in SPECIALS + [USER_TOKEN])]
    assert len(plain) > 300
    assert all(d == t and s == t for t, d, s in plain), next((p for p in plain if p[1] != p[0] or p[2] != p[0]))


def cli_tokenize(model, text="hello"):
    from conftest import run_cli
    return run_cli("tokenize", "--model", model, "--text", text, "--json")


@pytest.mark.parametrize("case", ["negative added id", "added id past the listed tokens", "vocab id past 2^31",
                                  "negative vocab id"])
def test_token_ids_outside_the_file_are_refused(case, vocab_and_merges, tmp_path):
    spec = tokenizer_json(*vocab_and_merges, **STYLES["llama2"])
    vocab = spec["model"]["vocab"]
    if case == "negative added id":
        spec["added_tokens"].append(added("<bad>", -3))
    elif case == "added id past the listed tokens":
        spec["added_tokens"].append(added("<bad>", 10**6))
    elif case == "vocab id past 2^31":
        vocab["<bad>"] = 2**31 + 5
    else:
        vocab["<bad>"] = -1
    r = cli_tokenize(write_tokenizer(tmp_path / "bad", spec))
    assert r.returncode == 4, (r.returncode, r.stderr)  # CorruptFile, not a crash
    assert "'<bad>'" in r.stderr and "outside" in r.stderr, r.stderr


@pytest.mark.parametrize("replacement", ["", "ab", SPACE + SPACE])
def test_metaspace_replacement_must_be_one_character(replacement, vocab_and_merges, tmp_path):
    spec = tokenizer_json(*vocab_and_merges, **STYLES["metaspace_first"])
    spec["pre_tokenizer"] = {**spec["pre_tokenizer"], "replacement": replacement}  # STYLES' own stays as is
    r = cli_tokenize(write_tokenizer(tmp_path / "bad", spec))
    assert r.returncode == 4, (r.returncode, r.stderr)
    assert f"replacement '{replacement}'" in r.stderr and "one character" in r.stderr, r.stderr


def random_id_sequences(spec, rng, n):
    """(prompt, generated) id lists: prompts of vocabulary pieces, sometimes after <s>; generations of pieces,
    special and added tokens, and the byte tokens of whole characters (so that every text is valid UTF-8)."""
    vocab = spec["model"]["vocab"]
    pieces = [i for t, i in vocab.items() if t not in SPECIALS and t not in BYTE_TOKENS]
    others = [vocab[t] for t in SPECIALS] + [a["id"] for a in spec["added_tokens"]]
    out = []
    for _ in range(n):
        prompt = ([vocab["<s>"]] if rng.random() < 0.5 else []) + rng.choices(pieces, k=rng.randint(1, 6))
        gen = []
        for _ in range(rng.randint(1, 12)):
            r = rng.random()
            if r < 0.7:
                gen.append(rng.choice(pieces))
            elif r < 0.85:
                all_bytes = "<0xFF>" in vocab
                char = random_codepoints(rng, 1) if all_bytes and rng.random() < 0.7 else rng.choice(" \n\tA~")
                gen += [vocab[f"<0x{b:02X}>"] for b in char.encode()]
            else:
                gen.append(rng.choice(others))
        out.append((prompt, gen))
    return out


@pytest.mark.parametrize("skip_special", [True, False])
@pytest.mark.parametrize("style", sorted(STYLES))
def test_generated_tokens_decode_as_continuation_of_the_prompt(style, skip_special, vocab_and_merges, tmp_path):
    """Streamed text of generated ids equals transformers' decode(prompt + generated) minus decode(prompt): the
    first generated token keeps its leading space (" Paris", not "Paris")."""
    import random
    spec = tokenizer_json(*vocab_and_merges, **STYLES[style])
    hf = Tokenizer.from_str(json.dumps(spec))
    folder = write_tokenizer(tmp_path / style, spec)
    seqs = random_id_sequences(spec, random.Random(11), 400)
    expected = []
    for prompt, gen in seqs:
        before, full = hf.decode(prompt, skip_special), hf.decode(prompt + gen, skip_special)
        assert full.startswith(before), (prompt, gen, before, full)
        expected.append(full[len(before):])
    ours = run_probe({"mode": "tokenize", "model": str(folder), "ids": [g for _, g in seqs], "continuation": True,
                      "skip_special": skip_special}, tmp_path)
    bad = [(s, o, e) for s, o, e in zip(seqs, ours["streamed"], expected) if o != e]
    assert not bad, f"{len(bad)} of {len(seqs)} continuations differ; first: {bad[0]!r}"
    alone = [hf.decode(g, skip_special) for _, g in seqs]
    assert ours["decoded"] == alone
    assert sum(a != e for a, e in zip(alone, expected)) > 50, "too few cases where the start-of-text rule acts"


def in_context_pairs(encode, prompts, completions, unk_id):
    """(completion, previous token, expected ids): the tokens a completion gets after its prompt,
    encode(prompt + completion) minus encode(prompt), where the prompt's tokens are a prefix of those (no token
    crosses the boundary; an unk is excluded too, as a fused run of unknown characters can)."""
    out = []
    for p, c in zip(prompts, completions):
        before, full = encode(p), encode(p + c)
        if before and full[:len(before)] == before and before[-1] != unk_id:
            out.append((c, before[-1], full[len(before):]))
    return out


def check_continuations(model, pairs, encode_alone, tmp_path):
    """Our continuation encodings against the expected ids; the number of completions whose encoding alone
    differs. Completions we encode unlike the reference even alone are left to the other tests (a few
    characters newer than the reference's Unicode tables, which NFKC maps differently)."""
    texts = [c for c, _, _ in pairs]
    alone = run_probe({"mode": "tokenize", "model": str(model), "texts": texts}, tmp_path)["ids"]
    kept = [(pair, a) for pair, a in zip(pairs, alone) if a == encode_alone(pair[0])]
    assert len(kept) > 0.99 * len(pairs)
    ours = run_probe({"mode": "tokenize", "model": str(model), "texts": [c for (c, _, _), _ in kept],
                      "previous": [p for (_, p, _), _ in kept], "continuation": True}, tmp_path)
    bad = [(c, o, e) for ((c, _, e), _), o in zip(kept, ours["ids"]) if o != e]
    assert not bad, f"{len(bad)} of {len(kept)} continuations differ; first: {bad[0]!r}"
    return sum(a != e for (_, _, e), a in kept)


@pytest.mark.parametrize("style", sorted(STYLES))
def test_completion_encodes_as_in_context_after_its_prompt(style, vocab_and_merges, tmp_path):
    spec = tokenizer_json(*vocab_and_merges, **STYLES[style])
    hf = Tokenizer.from_str(json.dumps(spec))
    folder = write_tokenizer(tmp_path / style, spec)
    specials = SPECIALS + [content for content, _ in STYLES[style].get("extra_added", [])]
    encode = lambda t: hf.encode(t, add_special_tokens=False).ids  # noqa: E731
    pairs = in_context_pairs(encode, corpus(specials, n=1500, seed=5), corpus(specials, n=1500, seed=6),
                             spec["model"]["vocab"]["<unk>"])
    assert len(pairs) > 500
    differ = check_continuations(folder, pairs, encode, tmp_path)
    print(f"{style}: {len(pairs)} completions as in context, {differ} of them unlike their encoding alone")
    assert differ > 100, "too few completions whose encoding alone differs for the test to mean anything"


def test_completion_encodes_as_in_context_with_gguf_llama_vocabulary(vocab_and_merges, tmp_path):
    from llama_cpp import Llama
    path = tmp_path / "spm-vocab.gguf"
    write_llama_vocab_gguf(path, *vocab_and_merges)
    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    encode = lambda t: llm.tokenize(t.encode(), add_bos=False, special=True)  # noqa: E731
    specials = SPECIALS + [USER_TOKEN]
    pairs = in_context_pairs(encode, corpus(specials, n=600, seed=8), corpus(specials, n=600, seed=9), 0)
    assert len(pairs) > 200
    assert check_continuations(path, pairs, encode, tmp_path) > 50


@pytest.mark.parametrize("which, key", [("bos", "bos_token_id"), ("eos", "eos_token_id"),
                                        ("pad", "padding_token_id")])
def test_gguf_special_ids_outside_the_vocabulary_are_refused(which, key, vocab_and_merges, tmp_path):
    path = tmp_path / "bad-special.gguf"
    tokens = write_llama_vocab_gguf(path, *vocab_and_merges, special_ids={which: 100000})
    assert len(tokens) < 100000
    r = cli_tokenize(path)
    assert r.returncode == 4, (r.returncode, r.stderr)  # CorruptFile
    assert f"tokenizer.ggml.{key}" in r.stderr and "100000" in r.stderr, r.stderr


def event_examples(model, pairs, tmp_path):
    events = [json.dumps({"id": f"e{i}", "prompt": p, "completion": c}) for i, (p, c) in enumerate(pairs)]
    return run_probe({"mode": "event_targets", "model": str(model), "events": events}, tmp_path)["examples"]


def check_training_examples(model, encode_with_bos, eos, texts, tmp_path):
    """A prompt/completion event trains on the completion's tokens as they are in context: encode(prompt +
    completion) with BOS, targets after the prompt's tokens (where those are a prefix), then EOS if any."""
    pairs, expected = [], []
    for p, c in zip(texts[::2], texts[1::2]):
        before, full = encode_with_bos(p), encode_with_bos(p + c)
        if c and full[:len(before)] == before and before[-1] != 0:
            pairs.append((p, c))
            tail = full[len(before):] + eos
            expected.append({"tokens": full + eos, "targets": [0] * len(before) + [1] * len(tail)})
    assert len(pairs) > 300
    ours = event_examples(model, pairs, tmp_path)
    bad = [(pair, o, e) for pair, o, e in zip(pairs, ours, expected) if o != e]
    assert not bad, f"{len(bad)} of {len(pairs)} training examples differ; first: {bad[0]!r}"


@pytest.mark.parametrize("style", ["llama2", "metaspace_first"])
def test_training_completion_tokens_are_those_in_context(style, vocab_and_merges, tmp_path):
    spec = tokenizer_json(*vocab_and_merges, **STYLES[style])
    hf = Tokenizer.from_str(json.dumps(spec))
    folder = write_tokenizer(tmp_path / style, spec)
    texts = ["The capital of France is", " Paris"] + corpus(SPECIALS, n=1000, seed=12)
    check_training_examples(folder, lambda t: hf.encode(t).ids, [], texts, tmp_path)


def test_training_completion_tokens_are_those_in_context_with_gguf_llama(vocab_and_merges, tmp_path):
    from llama_cpp import Llama
    path = tmp_path / "spm-vocab.gguf"
    write_llama_vocab_gguf(path, *vocab_and_merges)
    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    texts = ["The capital of France is", " Paris"] + corpus(SPECIALS + [USER_TOKEN], n=1000, seed=13)
    check_training_examples(path, lambda t: llm.tokenize(t.encode(), add_bos=True, special=True), [2], texts,
                            tmp_path)


@pytest.mark.parametrize("style", ["metaspace_always", "llama2_ascii_bytes"])
def test_cli_generation_keeps_the_leading_space_of_its_first_token(style, vocab_and_merges, tmp_path):
    """`hyprstream generate` on a tiny random Llama with a SentencePiece-style tokenizer: the streamed and final
    text equal transformers' decode(prompt + generated, skip_special_tokens) minus decode(prompt)."""
    import torch
    from conftest import run_cli
    from tiny_models import MODEL_CLASSES, TINY_CONFIGS
    spec = tokenizer_json(*vocab_and_merges, **STYLES[style])
    hf = Tokenizer.from_str(json.dumps(spec))
    folder = write_tokenizer(tmp_path / style, spec)
    cls, kwargs = TINY_CONFIGS["llama_tied"]
    config = cls(vocab_size=hf.get_vocab_size(), max_position_embeddings=128, rms_norm_eps=1e-6,
                 initializer_range=0.1, bos_token_id=None, eos_token_id=None, pad_token_id=None, **kwargs)
    torch.manual_seed(0)
    model = MODEL_CLASSES[cls](config)
    with torch.no_grad():  # tied embeddings: larger rows give larger logits, so spaced tokens come often
        spaced = [i for t, i in hf.get_vocab().items() if t.startswith(SPACE)]
        model.model.embed_tokens.weight[spaced] *= 4
    model.save_pretrained(folder, safe_serialization=True)
    prompt = "The capital of France is"
    starts_with_space = 0
    for seed in range(16):
        r = run_cli("generate", "--model", folder, "--prompt", prompt, "--json", "--temperature", "1", "--top-k", "0",
                    "--top-p", "1", "--min-p", "0", "--max-tokens", "8", "--seed", str(seed))
        assert r.returncode == 0, r.stderr
        lines = [json.loads(line) for line in r.stdout.split("\n") if line]  # text may hold U+2028 or U+0085
        ids = [t["id"] for t in lines[:-1]]
        before = hf.decode(hf.encode(prompt).ids, skip_special_tokens=True)
        full = hf.decode(hf.encode(prompt).ids + ids, skip_special_tokens=True)
        assert full.startswith(before)
        assert lines[-1]["text"] == "".join(t["text"] for t in lines[:-1]) == full[len(before):], ids
        starts_with_space += full[len(before):].startswith(" ")
    print(f"{style}: {starts_with_space} of 16 generations start with a space")
    assert starts_with_space >= 4, "too few generations start with a spaced token for the test to mean anything"
