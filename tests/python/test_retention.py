"""Learning with the default settings of `hyprstream train` (the teaching recipe, issue 12), asked through
`hyprstream serve` with the official OpenAI SDK: ten invented facts from the evaluation set
(bench/data/learning_eval.json) taught in one batch are recalled and paraphrased (at least 7 in 10, issue 12's
goal; a paraphrase is served with the taught conversation nearest it recalled), their version passes the
publication guard, and the base model and another domain keep their answers. The trained adapter's own answers to
40 unrelated prompts keep their first sentence (at least 95% of them, issue 12's goal): its relevance scope
sends them to the base model. The scope's keys are the hidden states transformers computes. A harmful update (a
learning rate a user might mistype, without early stopping or distillation) is refused by the guard: the served
version stays, the candidate is reported."""
import json
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openai
import pytest

from conftest import cli_ok, json_lines
from server import Server

DATA = json.loads((Path(__file__).resolve().parents[2] / "bench" / "data" / "learning_eval.json").read_text())
FACTS = DATA["facts"][:10]
CONTROLS = [c["prompt"] for c in DATA["controls"][:40]]


def first_sentence(text):
    """As bench/bench_learning_eval.cpp compares answers: up to the first sentence end or line break."""
    text = text.lstrip(" \n\t")
    ends = [i for i in (text.find(c) for c in ".!?\n") if i >= 0]
    return text[:min(ends) + 1] if ends else text


def answers(srv, model, questions):
    """Greedy answers of up to 32 tokens, asked concurrently (the scheduler batches them)."""
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="not-needed", max_retries=0, timeout=900)

    def one(q):
        out = client.chat.completions.create(model=model, messages=[{"role": "user", "content": q}],
                                             temperature=0, max_tokens=32)
        return out.choices[0].message.content
    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(one, questions))


# The exact model for tests that compare answers across server runs: with the default --quantize auto the
# bundled GGUF computes in int4, whose bfloat16 roundings make a greedy answer depend on the batch it shared
# (README, "The CLI"); the recipe itself does as well in int4 (one run, 2026-11-29: recalled 10/10, paraphrases
# 19/20, controls 38/40 kept, as dense).
DENSE = ("--quantize", "none")


def teach(model, adir, tmp_path, domain, facts, *flags):
    """`hyprstream train --json` on the facts as chat examples, one batch; its JSON lines."""
    data = tmp_path / f"{domain}.jsonl"
    data.write_text("".join(json.dumps({"id": f"{domain}-{i}", "messages": [
        {"role": "user", "content": f["question"]}, {"role": "assistant", "content": f["answer"]}]}) + "\n"
        for i, f in enumerate(facts)))
    r = cli_ok("train", "--domain", domain, "--data", data, "--model", model, "--adapter-dir", adir, "--json",
               *flags, timeout=3600)
    return json_lines(r.stdout)


def base_model(srv):
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="not-needed").models.list().data[0].id


@pytest.mark.slow
def test_ten_taught_facts_are_recalled_pass_the_guard_and_leave_the_base_and_other_domains_alone(
        default_model_path, tmp_path):
    model, adir = default_model_path, tmp_path / "adapters"
    questions = [f["question"] for f in FACTS]
    paraphrases = [p for f in FACTS for p in f["paraphrases"]]
    # Another domain, taught something else first: adapters stay isolated from each other.
    teach(model, adir, tmp_path, "other", [{"question": "What is the secret word?",
                                           "answer": "The secret word is Marmalade."}], *DENSE)
    with Server("--model", model, *DENSE, adapter_dir=adir) as srv:
        base = base_model(srv)
        assert not any(f["key"] in a for f, a in zip(FACTS, answers(srv, base, questions)))  # not known before
        before = answers(srv, base, CONTROLS)
        other_before = answers(srv, "other", CONTROLS[:10])
        assert srv.stop() == 0, "".join(srv.log)
    lines = teach(model, adir, tmp_path, "facts", FACTS, *DENSE)
    done = lines[-1]
    assert done["version"] == 1 + done["batches"] and done["rejected_versions"] == 0, lines
    assert 0 < done["guard"]["last_drift"] <= done["guard"]["max_drift"], done
    with Server("--model", model, *DENSE, adapter_dir=adir) as srv:
        recalled = answers(srv, "facts", questions)
        paraphrased = answers(srv, "facts", paraphrases)
        kept_answers = answers(srv, "facts", CONTROLS)
        hits = sum(f["key"] in a for f, a in zip(FACTS, recalled))
        para_hits = sum(FACTS[i // 2]["key"] in a for i, a in enumerate(paraphrased))
        changed = [(q, b, a) for q, b, a in zip(CONTROLS, before, kept_answers)
                   if first_sentence(a) != first_sentence(b)]
        print(f"\nrecalled {hits}/10, paraphrases {para_hits}/20, controls kept {40 - len(changed)}/40; "
              f"{done['steps']} steps, canary drift {done['guard']['last_drift']:.3f}")
        for q, b, a in changed[:5]:
            print(f"  changed: {q!r}\n    base:    {b!r}\n    adapter: {a!r}")
        assert hits >= 9, list(zip(questions, recalled))
        # 19 of 20 measured by the eval bench, 12 without recalling the taught conversation; the goal is 14.
        assert para_hits >= 14, list(zip(paraphrases, paraphrased))
        assert len(changed) <= 2, changed  # at least 38 of 40 (95%) unchanged
        assert answers(srv, base, CONTROLS) == before
        assert answers(srv, "other", CONTROLS[:10]) == other_before
        assert srv.stop() == 0, "".join(srv.log)


@pytest.mark.slow
def test_guard_refuses_a_harmful_version_and_the_served_version_stays(default_model_path, tmp_path):
    """The teaching recipe but for a learning rate 50 times higher, without early stopping or distillation: the
    version trained that way breaks the model's other answers, and the guard keeps it from being published."""
    model, adir = default_model_path, tmp_path / "adapters"
    fact = FACTS[0]
    lines = teach(model, adir, tmp_path, "harm", [fact], "--lr", "0.5", "--stop-loss", "0", "--distill-weight", "0",
                  *DENSE)
    refused = [x for x in lines if x["event"] == "refused"]
    assert len(refused) == 1 and refused[0]["ids"] == ["harm-0"], lines
    assert "publication guard refused" in refused[0]["reason"]
    guard = refused[0]["guard"]
    assert guard["drift"] > guard["max_drift"] == 0.5 and (adir / "harm" / "training" / "quarantine").exists()
    assert Path(guard["candidate"]).stat().st_size > 0
    done = lines[-1]
    assert done["version"] == 1 and done["rejected_versions"] == 1 and not [x for x in lines if x["event"] == "applied"]
    with Server("--model", model, *DENSE, adapter_dir=adir) as srv:
        # Still the first version (a fresh adapter): the base model's answers, the fact unknown.
        assert answers(srv, "harm", CONTROLS[:8] + [fact["question"]]) == answers(srv, base_model(srv),
                                                                                 CONTROLS[:8] + [fact["question"]])
        assert srv.stop() == 0, "".join(srv.log)


def read_scope(path):
    """A version's scope file (src/adapters/scope.h): its JSON header and float32 keys, after checking its CRC."""
    data = path.read_bytes()
    assert data[:8] == b"HSSCOPE2" and zlib.crc32(data[:-4]) == struct.unpack("<I", data[-4:])[0]
    (length,) = struct.unpack("<Q", data[8:16])
    meta = json.loads(data[16:16 + length])
    keys = np.frombuffer(data[16 + length:-4], dtype=np.float32).reshape(meta["rows"], meta["dim"])
    return meta, keys


def test_scope_keys_are_the_hidden_states_transformers_computes(default_model_path, hf_gguf_model, tmp_path):
    """A taught prompt's keys in the published version's scope are the base model's hidden states after six of
    its 30 layers (transformers' hidden_states[6]) at every token of the prompt, scaled to unit length."""
    import torch
    adir = tmp_path / "adapters"
    teach(default_model_path, adir, tmp_path, "keys", FACTS[:2], "--steps-per-batch", "1", "--distill-weight", "0",
          "--max-drift", "0", "--stop-loss", "0", *DENSE)  # the exact model, as transformers
    manifest = json.loads((adir / "keys" / "manifest.json").read_text())
    version = manifest["versions"][-1]
    assert version["scope"]["examples"] == 2, version
    meta, keys = read_scope(adir / "keys" / version["scope"]["file"])
    assert meta["layers"] == 6 and meta["dim"] == hf_gguf_model.config.hidden_size
    assert (np.abs(np.linalg.norm(keys, axis=1) - 1) < 1e-5).all()
    for example in meta["examples"]:
        ids = torch.tensor([example["tokens"]])
        with torch.no_grad():
            hidden = hf_gguf_model(ids, output_hidden_states=True).hidden_states[6][0]
        expected = torch.nn.functional.normalize(hidden, dim=1).numpy()
        got = keys[example["rows"]]
        # The chat template's opening (the system prompt) is keyed but left out of comparisons.
        assert 0 < example["first"] < len(example["tokens"]) - 3 and 0 < example["radius"] < 1
        assert np.abs(got - expected).max() < 2e-4, np.abs(got - expected).max()


def test_a_question_inside_the_scope_is_served_after_the_taught_conversation(default_model_path, hf_gguf_tokenizer,
                                                                             tmp_path):
    """Each taught conversation is kept in the scope as transformers' apply_chat_template renders it, with its
    system block as its opening. A request inside the scope is served with it as earlier turns: the prompt the
    server counts is the template's rendering of the taught turns followed by the request's own. The taught question
    itself, a chat that already holds the exchange, a request that opens with another system block, or one
    outside, is served with its own prompt; so is one the slot has no room for, unless its max_tokens was left to
    the server and 64 tokens remain."""
    tok, adir = hf_gguf_tokenizer, tmp_path / "adapters"
    convs = [[{"role": "user", "content": FACTS[0]["question"]}, {"role": "assistant", "content": FACTS[0]["answer"]}],
             [{"role": "system", "content": "You answer questions about invented places."},
              {"role": "user", "content": FACTS[1]["question"]}, {"role": "assistant", "content": FACTS[1]["answer"]}]]

    def rendered(messages, generation_prompt=True):
        return list(tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
                    ["input_ids"])

    data = tmp_path / "recall.jsonl"
    data.write_text("".join(json.dumps({"id": f"r{i}", "messages": c}) + "\n" for i, c in enumerate(convs)))
    cli_ok("train", "--domain", "recall", "--data", data, "--model", default_model_path, "--adapter-dir", adir,
           "--steps-per-batch", "1", "--distill-weight", "0", "--max-drift", "0", "--stop-loss", "0", timeout=1800)
    version = json.loads((adir / "recall" / "manifest.json").read_text())["versions"][-1]
    meta, _ = read_scope(adir / "recall" / version["scope"]["file"])
    for conv, example in zip(convs, meta["examples"], strict=True):
        assert example["memory"] == rendered(conv, False)
        opening = tok.decode(example["memory"][:example["memory_opening"]])
        system = conv[0]["content"] if conv[0]["role"] == "system" else None
        assert opening.startswith("<|im_start|>system\n") and opening.endswith("<|im_end|>\n"), opening
        assert system is None or opening == f"<|im_start|>system\n{system}<|im_end|>\n", opening

    def ask(srv, messages, **extra):
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="not-needed", max_retries=0, timeout=600)
        out = client.chat.completions.create(model="recall", messages=messages, temperature=0, **extra)
        return out.usage, out.model_extra["adapter"]["scope"]

    def paraphrased(conv, fact):
        return conv[:-2] + [{"role": "user", "content": fact["paraphrases"][0]}]

    own = paraphrased(convs[0], FACTS[0])
    served, alone = rendered(convs[0] + own[-1:]), rendered(own)
    with Server("--model", default_model_path, adapter_dir=adir) as srv:
        for conv, fact in zip(convs, FACTS):
            usage, scope = ask(srv, paraphrased(conv, fact), max_tokens=8)
            assert scope["decision"] == "inside", scope
            expected = rendered(conv + paraphrased(conv, fact)[-1:])
            assert (usage.prompt_tokens, scope["recalled_tokens"]) == (
                len(expected), len(expected) - len(rendered(paraphrased(conv, fact)))), scope
        # The taught question itself is what the adapter learnt to answer, and a chat that already holds the
        # taught exchange is not given it twice: both are served as they are.
        for messages in (convs[0][:-1], convs[0] + own[-1:]):
            usage, scope = ask(srv, messages, max_tokens=8)
            assert scope["decision"] == "inside" and scope["recalled_tokens"] == 0, scope
            assert usage.prompt_tokens == len(rendered(messages))
        other_system = [{"role": "system", "content": "Be brief."}, own[-1]]
        usage, scope = ask(srv, other_system, max_tokens=8)
        assert scope["decision"] == "inside" and scope["recalled_tokens"] == 0, scope
        assert usage.prompt_tokens == len(rendered(other_system))
        unrelated = [{"role": "user", "content": "What is the capital of France?"}]
        usage, scope = ask(srv, unrelated, max_tokens=8)
        assert scope == {**scope, "decision": "outside", "recalled_tokens": 0}
        assert usage.prompt_tokens == len(rendered(unrelated))
        assert srv.stop() == 0, "".join(srv.log)
    # A slot 64 tokens longer than the recalled prompt: 65 asked-for tokens keep the request's own prompt, while a
    # max_tokens left to the server gives way to the recalled conversation, down to 64.
    with Server("--model", default_model_path, "--max-seq-tokens", len(served) + 64, adapter_dir=adir) as srv:
        usage, scope = ask(srv, own, max_tokens=65)
        assert scope["recalled_tokens"] == 0 and usage.prompt_tokens == len(alone), scope
        usage, scope = ask(srv, own)
        assert scope["recalled_tokens"] == len(served) - len(alone) and usage.prompt_tokens == len(served), scope
        assert 1 <= usage.completion_tokens <= 64, usage
        assert srv.stop() == 0, "".join(srv.log)
