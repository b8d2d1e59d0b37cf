"""Sampling semantics of sample_next (src/serving/sampling.cpp, driven through the probe's "sample" mode) against
transformers' logits processors, statistically: fixed seeds, and enough draws that each test also shows the
same counts would reject the likely wrong rule (temperature ignored, top-k ignored, top-p on untempered
probabilities...). The generation defaults read from generation_config.json are checked through the CLI."""
import json
import math

import numpy as np
import pytest
import torch
from transformers import (AutoModelForCausalLM, MinPLogitsWarper, RepetitionPenaltyLogitsProcessor,
                          TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

from conftest import run_cli, run_probe
from tiny_models import add_tiny_tokenizer, build_tiny_model

DRAWS = 20000
OFF = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0}
# Twelve logits in no particular order: distinct, spanning a range where every rule below has an effect.
LOGITS = [0.3, 2.0, -1.5, 1.2, -0.4, 1.5, -4.0, 0.9, -0.8, 0.0, -2.5, 0.5]
# Relative to the most likely token (logit 0): exp(-2.254) = 0.105 is kept at min_p 0.1, exp(-2.354) = 0.095 is
# not; every kept token is likely enough to be drawn hundreds of times in DRAWS.
MIN_P_LOGITS = [-1.1, -2.354, 0.0, -0.3, -3.0, -2.254, -0.7, -5.0, -1.6, -4.0]
PENALTY_LOGITS = (np.random.default_rng(3).standard_normal(64) * 3).astype(np.float32)
PENALTY_LOGITS[5] = 0.0
PENALTY_HISTORY = [5, 7, 7, 12, 40, 12, 63, 0] + [int(i) for i in np.flatnonzero(PENALTY_LOGITS < -2)[:4]]
CHAIN_LOGITS = (np.random.default_rng(5).standard_normal(40) * 1.5).astype(np.float32).tolist()
CHAIN_HISTORY = [3, 9, 9, 17, 22]
CHAIN = dict(temperature=0.9, top_k=12, top_p=0.8, min_p=0.08, repetition_penalty=1.4)


def case(logits=LOGITS, draws=DRAWS, history=(), **params):
    return {"logits": [float(x) for x in logits], "params": {**OFF, **params}, "seed": 1, "draws": draws,
            "history": list(history)}


def hf_probs(logits, history=(), temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0):
    """The sampling distribution transformers' generate() uses: the repetition penalty, then the warpers in its
    order (temperature, top-k, top-p, min-p), then softmax. Removed tokens get probability 0."""
    scores = torch.tensor([logits], dtype=torch.float32)
    ids = torch.tensor([list(history) or [0]])
    if repetition_penalty != 1.0:
        scores = RepetitionPenaltyLogitsProcessor(repetition_penalty)(ids, scores)
    if temperature != 1.0:
        scores = TemperatureLogitsWarper(temperature)(ids, scores)
    if top_k:
        scores = TopKLogitsWarper(top_k)(ids, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(ids, scores)
    if min_p > 0.0:
        scores = MinPLogitsWarper(min_p)(ids, scores)
    return torch.softmax(scores.double(), -1)[0].numpy()


def chi_square(counts, probs):
    """Pearson's statistic of counts against probs; infinite when a token of probability 0 was drawn."""
    n = counts.sum()
    if counts[probs == 0].any():
        return math.inf
    support = probs > 0
    expected = n * probs[support]
    return float(((counts[support] - expected) ** 2 / expected).sum())


def chi_square_bound(df, z=5.0):
    """The chi-square quantile at a normal deviate z (Wilson-Hilferty); z = 5 is a 3e-7 false-alarm rate."""
    h = 2.0 / (9.0 * df)
    return df * (1.0 - h + z * math.sqrt(h)) ** 3


def assert_follows(counts, probs, *wrong):
    """Counts are draws from probs, and the same counts reject every distribution in `wrong`."""
    df = max(int((probs > 0).sum()) - 1, 1)
    bound = chi_square_bound(df)
    stat = chi_square(counts, probs)
    assert stat < bound, f"chi-square {stat:.1f} over {df} degrees of freedom exceeds {bound:.1f}"
    for w in wrong:
        assert chi_square(counts, w) > bound, "these draws cannot tell the right rule from a wrong one"


def kept(probs):
    return set(np.flatnonzero(probs > 0).tolist())


def top3_mass(temperature):
    return float(np.sort(hf_probs(LOGITS, temperature=temperature))[::-1][:3].sum())


# Every test's draws, made by one probe run (a process start costs more than all the draws).
CASES = {
    "temperature 0.5": case(temperature=0.5),
    "temperature 2.0": case(temperature=2.0),
    "top-k": case(temperature=0.8, top_k=4),
    # top_p a hair below and above the tempered mass of the three most likely tokens.
    "top-p below": case(temperature=0.7, top_p=top3_mass(0.7) - 1e-4),
    "top-p above": case(temperature=0.7, top_p=top3_mass(0.7) + 1e-4),
    "min-p": case(MIN_P_LOGITS, min_p=0.1),
    "min-p at T 2": case(MIN_P_LOGITS, min_p=0.1, temperature=2.0),
    "penalty 1.3": case(PENALTY_LOGITS, draws=1, history=PENALTY_HISTORY, temperature=0.0, repetition_penalty=1.3),
    "penalty 0.7": case(PENALTY_LOGITS, draws=1, history=PENALTY_HISTORY, temperature=0.0, repetition_penalty=0.7),
    "chain": case(CHAIN_LOGITS, history=CHAIN_HISTORY, **CHAIN),
}


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    out = run_probe({"mode": "sample", "cases": list(CASES.values())}, tmp_path_factory.mktemp("sample"))["results"]
    assert len(out) == len(CASES)
    return {name: (np.array(r["counts"]), np.array(r["processed"], dtype=np.float32))
            for name, r in zip(CASES, out)}


def reference(name, **change):
    """transformers' distribution for a case, optionally with some parameters changed (a wrong rule)."""
    c = CASES[name]
    return hf_probs(c["logits"], c["history"], **{**c["params"], **change})


def drawn(counts):
    return set(np.flatnonzero(counts).tolist())


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_draws_follow_softmax_of_logits_over_t(sampled, temperature):
    name = f"temperature {temperature}"
    counts, _ = sampled[name]
    expected = reference(name)
    exact = np.exp(np.array(LOGITS) / temperature)
    np.testing.assert_allclose(expected, exact / exact.sum(), rtol=1e-5)  # the reference is softmax(logits / T)
    assert_follows(counts, expected, reference(name, temperature=1.0))  # temperature ignored would fail


def test_top_k_keeps_the_k_most_likely_in_proportion(sampled):
    counts, _ = sampled["top-k"]
    expected = reference("top-k")
    assert kept(expected) == {1, 3, 5, 7}
    assert drawn(counts) == kept(expected)
    # Wrong rules: top-k ignored, k off by one either way, the temperature ignored.
    assert_follows(counts, expected, reference("top-k", top_k=0), reference("top-k", top_k=3),
                   reference("top-k", top_k=5), reference("top-k", temperature=1.0))


@pytest.mark.parametrize("side", ["below", "above"])
def test_top_p_at_a_boundary_keeps_the_set_transformers_keeps(sampled, side):
    """top_p a hair below and above the tempered mass of the three most likely tokens: transformers keeps
    three, then four tokens, and so must we."""
    name = f"top-p {side}"
    counts, _ = sampled[name]
    expected = reference(name)
    assert len(kept(expected)) == (3 if side == "below" else 4)
    assert drawn(counts) == kept(expected)
    # Wrong rules: the nucleus of the untempered distribution, or no nucleus at all.
    assert_follows(counts, expected, reference(name, temperature=1.0), reference(name, top_p=1.0))


def test_min_p_keeps_every_token_transformers_keeps_and_no_other(sampled):
    counts, _ = sampled["min-p"]
    expected = reference("min-p")
    assert kept(expected) == {0, 2, 3, 5, 6, 8}
    assert drawn(counts) == kept(expected)
    assert counts[list(kept(expected))].min() > 500
    # Wrong rules: min-p ignored, or a slightly higher threshold (which drops the token at 0.105).
    assert_follows(counts, expected, reference("min-p", min_p=0.0), reference("min-p", min_p=0.12))
    # min-p after temperature, as transformers applies it: at T = 2 the ratios are square roots, so more stay.
    counts, _ = sampled["min-p at T 2"]
    expected = reference("min-p at T 2")
    assert kept(expected) == {0, 1, 2, 3, 4, 5, 6, 8, 9}
    assert drawn(counts) == kept(expected)
    assert_follows(counts, expected, reference("min-p at T 2", temperature=1.0),
                   reference("min-p at T 2", min_p=0.0))


@pytest.mark.parametrize("penalty", [1.3, 0.7])
def test_repetition_penalty_equals_transformers_processor(sampled, penalty):
    counts, processed = sampled[f"penalty {penalty}"]
    ref = RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor([PENALTY_HISTORY]),
                                                    torch.from_numpy(PENALTY_LOGITS[None]))[0].numpy()
    assert np.array_equal(processed, ref)
    assert not np.array_equal(processed, PENALTY_LOGITS)
    assert int(np.argmax(counts)) == int(np.argmax(ref))  # greedy takes the argmax of the penalised logits


def test_every_rule_together_matches_transformers_pipeline(sampled):
    counts, _ = sampled["chain"]
    expected = reference("chain")
    assert 3 <= len(kept(expected)) < 12  # every rule removes something
    assert drawn(counts) == kept(expected)
    assert_follows(counts, expected, reference("chain", repetition_penalty=1.0))


# --- defaults from generation_config.json, through the CLI -------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_with_tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gen_defaults")
    build_tiny_model("llama_gqa", folder)
    add_tiny_tokenizer(folder)
    return folder


def generated_ids(folder, *flags, prompt="the quick brown fox", max_tokens=12):
    r = run_cli("generate", "--model", folder, "--prompt", prompt, "--max-tokens", max_tokens, "--json", *flags)
    assert r.returncode == 0, r.stderr
    return [json.loads(line)["id"] for line in r.stdout.splitlines()[:-1]]


def test_generation_config_defaults_are_reported_and_used(tiny_with_tokenizer):
    folder = tiny_with_tokenizer
    config = {"do_sample": True, "temperature": 1.7, "top_k": 1, "top_p": 0.9, "min_p": 0.02,
              "repetition_penalty": 1.25, "eos_token_id": 0}
    (folder / "generation_config.json").write_text(json.dumps(config))
    r = run_cli("info", "--model", folder, "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)["generation_defaults"]
    for key in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty"):
        assert got[key] == pytest.approx(config[key], rel=1e-6), key
    assert 0 in got["eos_token_ids"]
    # top_k 1 from the file makes any seed greedy; the flag --top-k 0 overrides it and sampling at 1.7 departs.
    greedy = generated_ids(folder, "--temperature", "0")
    assert generated_ids(folder, "--seed", "1") == generated_ids(folder, "--seed", "2") == greedy
    assert generated_ids(folder, "--seed", "1", "--top-k", "0") != greedy


def test_greedy_generation_config_matches_transformers_generate(tiny_with_tokenizer):
    """do_sample false and a repetition penalty in generation_config.json: our generate with no sampling flags
    gives transformers' generate() on the same folder, which reads the same file."""
    folder = tiny_with_tokenizer
    (folder / "generation_config.json").write_text(json.dumps({"do_sample": False, "repetition_penalty": 1.8}))
    tokens = run_cli("tokenize", "--model", folder, "--text", "the quick brown fox", "--json")
    prompt = json.loads(tokens.stdout)["ids"]
    ours = generated_ids(folder, max_tokens=16)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert model.generation_config.repetition_penalty == 1.8
    with torch.no_grad():
        ref = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=16, min_new_tokens=16, pad_token_id=0)[0, len(prompt):].tolist()
        plain = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                               max_new_tokens=16, min_new_tokens=16, pad_token_id=0,
                               repetition_penalty=1.0)[0, len(prompt):].tolist()
    assert ref != plain, "the penalty should change this generation"
    assert ours == ref[:len(ours)]
    assert len(ours) == 16 or ref[len(ours)] == 0  # ours stops early only at the tokenizer's EOS (id 0)


def test_malformed_generation_config_is_a_corrupt_file(tiny_with_tokenizer):
    folder = tiny_with_tokenizer
    (folder / "generation_config.json").write_text(json.dumps({"temperature": "hot"}))
    r = run_cli("info", "--model", folder, "--json")
    assert r.returncode == 4, r.stderr
    assert "generation_config.json" in r.stderr and "internal error" not in r.stderr
    (folder / "generation_config.json").write_text(json.dumps({"temperature": None, "top_k": None}))
    r = run_cli("info", "--model", folder, "--json")
    assert r.returncode == 0, r.stderr
    (folder / "generation_config.json").unlink()
