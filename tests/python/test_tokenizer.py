"""Token ids against Hugging Face `tokenizers` on thousands of varied strings, for two real vocabularies."""
import copy
import json
import random
import unicodedata

import pytest
from tokenizers import Tokenizer, pre_tokenizers
from transformers import AutoTokenizer

from conftest import run_cli, run_probe

WORDS = ["hello", "world", "The", "quick", "brown", "fox", "don't", "I'm", "we'll", "they've", "she'd", "IT'S",
         "naïve", "café", "Straße", "déjà", "vu", "über", "año", "Ελληνικά", "русский", "язык", "العربية",
         "हिन्दी", "日本語", "中文字符", "한국어", "ไทย", "emoji", "🙂", "👍🏽", "👨‍👩‍👧", "🇫🇷", "∑", "√2", "≠",
         "x_1", "foo.bar", "__init__", "#include", "<stdio.h>", "http://example.com/a?b=c", "e-mail",
         "ﬁnance", "Å", "ℌ", "①", "¼", "٣", "Ⅻ"]
SPACES = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\t\t", "\u00a0", "\u2003", "\u3000", "\u200b",
          "\x0b", "\x0c", "\u0085", "    \n"]
CODE = ["def f(x):\n    return x ** 2\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
        "SELECT * FROM t WHERE id=42;", "const x = () => { return `tmpl ${y}`; };", "if a!=b and c>=d: pass",
        "    # comment\n        nested()\n", "x = [1,2,3]\ny = {'k': 'v'}"]
DECOMPOSED = ["e\u0301", "a\u0308", "n\u0303", "A\u030a", "\u1100\u1161\u11a8"]  # NFC composes these
# NUL and other control characters, which must not end the text (C strings would) nor be dropped.
CONTROLS = ["\x00", "a\x00b", "\x00\x00e\u0301", "\x01", "\x07", "\x08", "\x1b[0m", "\x1f", "\x7f", "\x80",
            "\x9f", "\u200e", "\ufeff"]


def number(rng):
    return rng.choice([str(rng.randint(0, 9)), str(rng.randint(10, 999)), str(rng.randint(1000, 10**9)),
                       f"{rng.random() * 1000:.3f}", "1,234,567", "3.14159", "-42", "2024-11-23", "0x1F"])


def random_codepoints(rng, n):
    out = []
    for _ in range(n):
        cp = rng.choice([rng.randint(0x20, 0x7E), rng.randint(0xA0, 0x2FFF), rng.randint(0x3000, 0x9FFF),
                         rng.randint(0xAC00, 0xD7A3), rng.randint(0x1F300, 0x1FAFF), rng.randint(0x10000, 0x10FFFF)])
        if 0xD800 <= cp <= 0xDFFF:
            cp = 0x41
        out.append(chr(cp))
    return "".join(out)


def corpus(specials, n=2200, seed=1234):
    rng = random.Random(seed)
    texts = ["", " ", "a", "\n", "  leading", "trailing  ", "123", "1234567890", "'s", "'S 'T", "...!!!???"]
    while len(texts) < n:
        kind = rng.randrange(7)
        parts = []
        for _ in range(rng.randint(1, 12)):
            r = rng.random()
            if r < 0.45:
                parts.append(rng.choice(WORDS))
            elif r < 0.6:
                parts.append(number(rng))
            elif r < 0.7:
                parts.append(rng.choice(".,;:!?()[]{}\"'`-–—/\\|@#$%^&*+=<>~"))
            elif r < 0.78:
                parts.append(rng.choice(DECOMPOSED))
            elif r < 0.86:
                parts.append(random_codepoints(rng, rng.randint(1, 6)))
            elif r < 0.89:
                parts.append(rng.choice(CONTROLS))
            elif r < 0.95 and kind >= 5:
                parts.append(rng.choice(specials))
            else:
                parts.append(rng.choice(CODE))
            parts.append(rng.choice(SPACES) if rng.random() < 0.35 else " ")
        text = "".join(parts)
        if kind == 0:
            text = text.strip()
        texts.append(text)
    return texts


def byte_symbols():
    """GPT-2's byte-to-character map, to tell which bytes a vocabulary can represent."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, extra = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def check_against(reference_encode, model, texts, tmp_path, vocab, normalize=lambda t: t):
    ours = run_probe({"mode": "tokenize", "model": str(model), "texts": texts}, tmp_path)
    mismatches = [(t, ours_ids, reference_encode(t)) for t, ours_ids in zip(texts, ours["ids"])
                  if ours_ids != reference_encode(t)]
    assert not mismatches, f"{len(mismatches)} of {len(texts)} differ; first: {mismatches[0]!r}"
    # decode(encode(s)) == s wherever the vocabulary covers every byte of s (HF drops uncovered bytes too).
    symbols = byte_symbols()
    round_tripped = 0
    for text, decoded in zip(texts, ours["decoded"]):
        if all(symbols[b] in vocab for b in normalize(text).encode()):
            assert decoded == normalize(text)
            round_tripped += 1
    assert round_tripped >= 0.75 * len(texts)  # most strings are fully covered, so the check is not vacuous
    return len(texts)


def test_smollm2_vocabulary_matches_hf(default_model_path, hf_gguf_tokenizer, tmp_path):
    hf = copy.deepcopy(hf_gguf_tokenizer)  # its pre-tokenizer is changed below; the shared one stays as read
    # transformers' GGUF converter keeps only the ByteLevel step; SmolLM2's published tokenizer.json (and
    # llama.cpp's "smollm" pre-tokenizer named in this GGUF) isolate every numeric character first.
    # Restore that so `tokenizers` runs the SmolLM2 pipeline itself. It differs only on non-ASCII numerals.
    hf.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    specials = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<file_sep>", "<jupyter_code>"]
    n = check_against(lambda t: hf.encode(t, add_special_tokens=False), default_model_path, corpus(specials),
                      tmp_path, hf.get_vocab())
    print(f"SmolLM2 vocabulary: {n} strings identical to HF")


def test_qwen3_vocabulary_matches_hf(qwen_tok_dir, tmp_path):
    hf = Tokenizer.from_file(str(qwen_tok_dir / "tokenizer.json"))
    specials = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>", "<tool_call>"]
    texts = corpus(specials, seed=99)
    assert sum("\x00" in t.rstrip("\x00") for t in texts) > 20  # NFC must keep what follows a NUL
    n = check_against(lambda t: hf.encode(t, add_special_tokens=False).ids, qwen_tok_dir, texts,
                      tmp_path, hf.get_vocab(), normalize=lambda t: unicodedata.normalize("NFC", t))
    print(f"Qwen3 vocabulary: {n} strings identical to HF")


def test_cli_tokenize_json(qwen_tok_dir):
    hf = Tokenizer.from_file(str(qwen_tok_dir / "tokenizer.json"))
    text = "Hello, wörld! 123 <|im_end|>"
    r = run_cli("tokenize", "--model", qwen_tok_dir, "--text", text, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    enc = hf.encode(text, add_special_tokens=False)
    assert out == {"ids": enc.ids, "tokens": enc.tokens}


def test_invalid_utf8_is_refused(default_model_path):
    import subprocess
    from conftest import CLI
    r = subprocess.run([str(CLI), "tokenize", "--model", str(default_model_path)], input=b"abc\xff\xfe",
                       capture_output=True, timeout=60)
    assert r.returncode == 2
    assert b"not valid UTF-8" in r.stderr
