"""Our Jinja interpreter (src/tokenizer/jinja/) renders real chat templates byte for byte as transformers'
apply_chat_template does (jinja2 underneath), through the probe's "chat" mode. Templates: tests/python/chat_templates/
(sources in its README) and Qwen3's own, from the tokenizer shipped in the venv."""
import json
from pathlib import Path

import jinja2
import pytest
from transformers import AutoTokenizer

from conftest import qwen3_tokenizer_dir, run_probe

TEMPLATE_DIR = Path(__file__).parent / "chat_templates"

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name, e.g. Paris"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}]

TOOL_CALL = {"id": "call0a1b2c3d4", "type": "function",
             "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}

CONVERSATIONS = {
    "user": [{"role": "user", "content": "Hi there"}],
    "system": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "2+2?"}],
    "empty_system": [{"role": "system", "content": ""}, {"role": "user", "content": "Hello"}],
    "multi_turn": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Tell me a joke"},
                   {"role": "assistant", "content": "Why did the chicken cross the road?"},
                   {"role": "user", "content": "  Another one, with spaces  "}],
    "no_system_multi_turn": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                             {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}],
    "thinking": [{"role": "user", "content": "q1"},
                 {"role": "assistant", "content": "<think>\nreasoning here\n</think>\n\nanswer one"},
                 {"role": "user", "content": "q2"},
                 {"role": "assistant", "content": "answer two", "reasoning_content": "more reasoning"}],
    "tool_calls": [{"role": "system", "content": "Use tools when useful."},
                   {"role": "user", "content": "Weather in Paris?"},
                   {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
                   {"role": "tool", "tool_call_id": "call0a1b2c3d4", "name": "get_weather",
                    "content": "{\"temperature\": 21, \"sky\": \"clear\"}"},
                   {"role": "assistant", "content": "It is 21 °C and clear in Paris."}],
    "tool_calls_string_arguments": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "",
         "tool_calls": [{**TOOL_CALL, "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "call0a1b2c3d4", "content": "-3 C"}],
    "unicode": [{"role": "user", "content": "multi\nline\n\ncontent with <b>markup</b>, \"quotes\", 'ticks', émoji 🙂"
                                            " and a backslash \\ and a tab\t"}],
}


def load_templates():
    out = {p.stem: p.read_text() for p in sorted(TEMPLATE_DIR.glob("*.jinja"))}
    out["qwen3"] = json.loads((qwen3_tokenizer_dir() / "tokenizer_config.json").read_text())["chat_template"]
    return out


TEMPLATES = load_templates()


@pytest.fixture(scope="module")
def hf():
    """A real tokenizer whose apply_chat_template we call with each template; its special tokens are passed to
    both renderers, with BOS and EOS set explicitly as kwargs (which override them in transformers)."""
    return AutoTokenizer.from_pretrained(qwen3_tokenizer_dir())


def option_sets(template):
    sets = {"generation_prompt": {"add_generation_prompt": True}, "no_generation_prompt": {"add_generation_prompt": False}}
    if "tools" in template:
        sets["tools"] = {"add_generation_prompt": True, "tools": TOOLS}
    if "thinking" in template:
        sets["thinking_off"] = {"add_generation_prompt": True, "enable_thinking": False}
        sets["thinking_on"] = {"add_generation_prompt": True, "enable_thinking": True}
    return sets


def reference(hf, template, conversation, options):
    """transformers' rendering, or None where it refuses the conversation (raise_exception, undefined values)."""
    try:
        return hf.apply_chat_template(conversation, chat_template=template, tokenize=False, bos_token="<s>",
                                      eos_token="</s>", **options)
    except Exception:  # noqa: BLE001 - any refusal counts; ours must refuse too
        return None


def ours(hf, template, conversations, options, tmp_path):
    kwargs = {**hf.special_tokens_map, "bos_token": "<s>", "eos_token": "</s>",
              **{k: v for k, v in options.items() if k != "add_generation_prompt"}}
    out = run_probe({"mode": "chat", "template": template, "conversations": conversations, "kwargs": kwargs,
                     "add_generation_prompt": options["add_generation_prompt"]}, tmp_path)
    assert len(out["rendered"]) == len(conversations)
    return out["rendered"], out["errors"]


def test_at_least_25_templates():
    assert len(TEMPLATES) >= 25, sorted(TEMPLATES)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_template_renders_as_transformers(name, hf, tmp_path):
    template = TEMPLATES[name]
    compared = 0
    for option_name, options in option_sets(template).items():
        convs = list(CONVERSATIONS.values())
        got, errors = ours(hf, template, convs, options, tmp_path)
        for conv_name, conv, mine, error in zip(CONVERSATIONS, convs, got, errors):
            ref = reference(hf, template, conv, options)
            where = f"{name} / {option_name} / {conv_name}"
            if ref is None:
                assert mine is None, f"{where}: transformers refuses this conversation, we rendered {mine!r}"
                continue
            assert error is None, f"{where}: we refused what transformers renders: {error}"
            assert mine == ref, where
            compared += 1
    # A template that refuses nearly everything would make this test pass on nothing.
    assert compared >= 4, f"{name}: only {compared} renderings compared"


# Command R7B ends every rendering, the last reply's included, with the chatbot turn's header, so where its reply
# ends is ambiguous (<|END_OF_TURN_TOKEN|> could belong to the reply or the next header): we refuse its history
# rather than cut a turn short.
HISTORY_REFUSED = {"command-r7b-tools"}


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_history_is_what_a_longer_conversation_starts_with(name, tmp_path, hf):
    """What a scope recalls of a conversation (render_chat_history) is the start of transformers' rendering of that
    conversation followed by a later user turn, and holds every earlier turn."""
    template = TEMPLATES[name]
    conv = CONVERSATIONS["no_system_multi_turn"]
    later = {"role": "user", "content": "And then?"}
    out = run_probe({"mode": "chat", "template": template, "bos_token": "<s>", "eos_token": "</s>",
                     "kwargs": hf.special_tokens_map, "conversations": [conv], "history": True}, tmp_path)
    history, error = out["rendered"][0], out["errors"][0]
    longer = reference(hf, template, conv + [later], {"add_generation_prompt": True})
    if longer is None:
        pytest.skip("transformers cannot render this conversation with this template (Phi-4-mini's needs tools)")
    if name in HISTORY_REFUSED:
        assert history is None and "does not render a conversation turn by turn" in error, (history, error)
        return
    assert error is None, error
    assert longer.startswith(history) and "a2" in history
    assert "And then?" in longer[len(history):] and "a2" not in longer[len(history):]


def test_an_unsupported_filter_is_refused_by_name(tmp_path):
    template = "{% for m in messages %}\n{{ m.content | wordwrap(5) }}\n{% endfor %}"
    conv = [{"role": "user", "content": "a few words to wrap"}]
    # jinja2 has this filter: we refuse a real feature, we do not render it wrongly.
    assert jinja2.Environment().from_string(template).render(messages=conv)
    out = run_probe({"mode": "chat", "template": template, "conversations": [conv]}, tmp_path)
    assert out["rendered"] == [None]
    assert "chat template line 2: unknown filter 'wordwrap'" in out["errors"][0]


def test_an_unsupported_statement_is_refused_by_name(tmp_path):
    template = "{% for m in messages %}{% filter upper %}{{ m.content }}{% endfilter %}{% endfor %}"
    out = run_probe({"mode": "chat", "template": template, "conversations": [[{"role": "user", "content": "x"}]]},
                    tmp_path)
    assert "chat template line 1: statement 'filter' is not supported" in out["errors"][0]


def test_a_runaway_loop_is_stopped(tmp_path):
    template = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    out = run_probe({"mode": "chat", "template": template, "conversations": [[]]}, tmp_path, timeout=60)
    assert out["rendered"] == [None] and "steps; it may not terminate" in out["errors"][0]


def test_runaway_recursion_is_stopped(tmp_path):
    template = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}\n{{ f(0) }}"
    with pytest.raises(RecursionError):  # jinja2 fails too, only later and by exhausting Python's stack
        jinja2.Environment().from_string(template).render()
    out = run_probe({"mode": "chat", "template": template, "conversations": [[]]}, tmp_path)
    assert out["rendered"] == [None] and "calls nest deeper than 64 levels" in out["errors"][0]


def test_a_raised_exception_carries_the_template_message(tmp_path):
    template = "{% if messages[0].role != 'user' %}{{ raise_exception('Conversations must start with a user') }}" \
               "{% endif %}ok"
    out = run_probe({"mode": "chat", "template": template,
                     "conversations": [[{"role": "assistant", "content": "x"}], [{"role": "user", "content": "x"}]]},
                    tmp_path)
    assert "the template raised an error: Conversations must start with a user" in out["errors"][0]
    assert out["rendered"][1] == "ok"


def test_openai_chat_passes_tool_calls_tool_results_and_template_kwargs_to_the_template(tmp_path, hf):
    """The OpenAI route hands messages to the model's template as sent (tool_calls, tool results, in their key
    order) with chat_template_kwargs (tools, enable_thinking): the prompt it counts is transformers'
    rendering. A tiny random Qwen3 with Qwen3's real tokenizer and template."""
    import shutil

    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from server import Server
    folder = tmp_path / "qwen3"
    config = Qwen3Config(vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, tie_word_embeddings=True,
                         max_position_embeddings=1024, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(qwen3_tokenizer_dir() / name, folder)
    # Qwen3's template needs a content on the tool-calling turn (transformers fails on a missing one).
    messages = [{**m, "content": m["content"] or ""} for m in CONVERSATIONS["tool_calls"]]
    messages.append({"role": "user", "content": "And in Rome?"})
    kwargs = {"tools": TOOLS, "enable_thinking": False}
    expected = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False, **kwargs)
    rendered = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
    with Server("--model", folder, adapter_dir=tmp_path / "adapters") as srv:
        status, chat, _ = srv.request("POST", "/v1/chat/completions", {
            "messages": messages, "chat_template_kwargs": kwargs, "max_tokens": 3, "temperature": 0, "logprobs": True})
        assert status == 200, chat
        assert chat["usage"]["prompt_tokens"] == len(expected)
        # The same prompt token for token: the logprobs of the answer equal those of a completion of transformers'
        # text (a tool schema or arguments with their keys reordered would change them).
        status, plain, _ = srv.request("POST", "/v1/completions", {
            "prompt": rendered, "max_tokens": 3, "temperature": 0, "logprobs": 1})
        assert status == 200, plain
        assert plain["usage"]["prompt_tokens"] == len(expected)
        assert [t["logprob"] for t in chat["choices"][0]["logprobs"]["content"]] == pytest.approx(
            plain["choices"][0]["logprobs"]["token_logprobs"], abs=1e-6)
        status, bare, _ = srv.request("POST", "/v1/chat/completions", {
            "messages": messages, "max_tokens": 1, "temperature": 0})
        assert status == 200, bare
        # Without tools the template renders a shorter system turn: the kwargs above did reach it.
        assert bare["usage"]["prompt_tokens"] == len(hf.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=True, return_dict=False)) < len(expected)


def jinja2_render(template, **variables):
    """transformers' own compiled jinja2 environment (the one apply_chat_template uses)."""
    from transformers.utils.chat_template_utils import _compile_jinja_template
    return _compile_jinja_template(template).render(**variables)


def ours_one(template, tmp_path, **kwargs):
    out = run_probe({"mode": "chat", "template": template, "conversations": [[]], "kwargs": kwargs}, tmp_path)
    return out["rendered"][0], out["errors"][0]


# Snippets from the review of the interpreter: each renders exactly as jinja2 does.
RENDERED_AS_JINJA2 = [
    "{{ (-9223372036854775807 - 1) % -1 }}|{{ 7 // -1 }}|{{ -7 // 2 }}|{{ -7 % 3 }}|{{ 7 % -3 }}",
    "{{ 7.5 % -2 }}|{{ -0.0 % 2 }}|{{ 0.0 % -2 }}|{{ 7.5 // -2 }}",
    "{{ 3 ** 39 }}|{{ 9007199254740993 ** 1 }}|{{ (-2) ** 63 }}|{{ 2 ** -1 }}|{{ 2 ** 0.5 }}",
    "{{ 9223372036854775806 + 1 }}|{{ -9223372036854775807 - 1 }}|{{ -3 | abs }}|{{ true + true }}",
    "{{ [1,2,3][2::9223372036854775806] }}|{{ 'abc'[2::9223372036854775807] }}|{{ 'abc'[::-9223372036854775807] }}",
    "{{ 'héllo'[1] }}{{ 'héllo'[-4] }}|{{ 'héllo'[1:3] }}|{{ [1, 2, 3][-1] }}|{{ 'ab'[5] }}|",
    "{{ range(0, 9223372036854775807, 4611686018427387904) | list }}|{{ range(5, -9223372036854775807, -4611686018427387904) | list }}",
    "{{ 5e-324 }}|{{ 1e-320 }}|{{ 1e400 }}|{{ 1.7976931348623157e308 }}",
    "{{ '\u3000a\u3000 '.strip() | length }}|{{ '\xa0x' | trim }}|{{ '\u2028x\u2029\x85'.strip() }}|{{ ' a\u3000b\u202fc '.split() }}",
    "{{ 'éxé'.strip('é') }}|{{ 'héllo' | upper }}|{{ 'ÉA' | lower }}|{{ 'é' | capitalize }}|{{ 'ǆemal' | capitalize }}",
    "{{ \"they're bill's-friends (ok) [x] élan\" | title }}|{{ \"they're élan\".title() }}|{{ 'ǅ' | lower }}",
    "{{ 2.675 | round(2) }} {{ 3 | round }} {{ 3 | round(1) }} {{ 1.5 | round }} {{ 0.5 | round }} {{ 2.5 | round }}",
    "{{ 1e300 | round(2) }} {{ 3.14159 | round(20) }} {{ 2.57 | round(1, 'floor') }} {{ 2.1 | round(1, 'ceil') }}",
    "{{ 1e300 | round(300) }} {{ 1.5e-300 | round(300) }} {{ 5e-324 | round(330) }} {{ -0.5 | round }} {{ 1e16 | round }}",
    "{{ ['\u200b', '\xa0', 'é', '\x7f', '\x1b', '\U0001f642', '\U000e0001', '\ud7ff', \"it's\"] }}",
    "{{ '5e-324' | float }}|{{ '1e400' | float }}|{{ ' 1.5 ' | float }}|{{ '0x10' | float }}|{{ 'nan' | float }}|{{ '1e' | float(7) }}",
    "{{ '42.23' | int }}|{{ '1e400' | int }}|{{ ' -12 ' | int }}|{{ 'x' | int(5) }}|{{ 3.9 | int }}|{{ 'nan' | int(4) }}",
    "{% set ns = namespace(found=true, name='x') %}{{ ns }}",
    "{% for k in {'a': 1, 'b': 2}.keys() %}{{ k }}{% endfor %}|{{ range(3) | list }}|{{ range(3) | length }}",
]


@pytest.mark.parametrize("template", RENDERED_AS_JINJA2)
def test_snippet_renders_as_jinja2(template, tmp_path):
    mine, error = ours_one(template, tmp_path)
    assert error is None, error
    assert mine == jinja2_render(template)


# Snippets jinja2 renders with Python's unbounded integers, full Unicode case mapping or its own repr of
# ranges and views, or that build gigabytes: we refuse them, naming the line (the snippet is on line 2).
REFUSED = [
    "{{ (-9223372036854775807 - 1) // -1 }}", "{{ 9223372036854775807 + 1 }}", "{{ 9223372036854775807 * 2 }}",
    "{{ -9223372036854775807 - 2 }}", "{{ 10 ** 20 }}", "{{ 2 ** 63 }}", "{{ -(-9223372036854775807 - 1) }}",
    "{{ (-9223372036854775807 - 1) | abs }}", "{{ '99999999999999999999' | int }}", "{{ 1e300 | int }}",
    "{{ (('a' * 100000) * 100000) | length }}", "{{ ([1] * 100000) * 1000 }}",
    "{% set ns = namespace(s='a' * 100000) %}{% for i in range(9) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
    "{{ 'straße' | upper }}", "{{ 'İ' | lower }}", "{{ 'ΟΔΟΣ' | lower }}", "{{ 'ﬁx' | capitalize }}",
    "{{ 2.5 | round(-1) }}", "{{ (-8) ** (1/3) }}", "{{ range(3) }}", "{{ {'a': 1}.keys() }}",
    "{{ range(3) == [0, 1, 2] }}", "{{ {'a': 1}.items() | tojson }}", "{{ '1_000' | int }}",
]


@pytest.mark.parametrize("snippet", REFUSED)
def test_snippet_beyond_our_subset_is_refused_with_its_line(snippet, tmp_path):
    mine, error = ours_one("first line\n" + snippet, tmp_path)
    assert mine is None, f"we rendered {mine!r}"
    assert error.startswith("chat template line 2: "), error


def test_request_integers_beyond_int64_are_refused(tmp_path):
    template = "{{ x }}|{{ x | tojson }}"
    assert jinja2_render(template, x=18446744073709551615) == "18446744073709551615|18446744073709551615"
    mine, error = ours_one(template, tmp_path, x=18446744073709551615)
    assert mine is None and "18446744073709551615 is beyond the 64-bit range" in error
    assert ours_one(template, tmp_path, x=9223372036854775807)[0] == jinja2_render(template, x=9223372036854775807)


BOS_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}[INST] {{ m.content }} [/INST]"
                "{% else %}{% if loop.last %}<think></think>{% endif %}{{ m.content }}</s>{% endif %}{% endfor %}")


def test_history_of_a_bos_template_keeps_the_last_eos(tmp_path):
    """A template that renders the last assistant turn differently and starts with a BOS: the history is
    transformers' rendering of the conversation and a later user turn, less that turn's own rendering."""
    conv = CONVERSATIONS["no_system_multi_turn"]
    later = {"role": "user", "content": "And then?"}
    def render(messages):  # transformers' apply_chat_template refuses an empty conversation: its environment does not
        return jinja2_render(BOS_TEMPLATE, messages=messages, bos_token="<s>", eos_token="</s>",
                             add_generation_prompt=False)
    longer, empty, alone = render(conv + [later]), render([]), render([later])
    assert alone.startswith(empty)
    turn = alone[len(empty):]
    assert longer.endswith(turn)
    out = run_probe({"mode": "chat", "template": BOS_TEMPLATE, "bos_token": "<s>", "eos_token": "</s>",
                     "conversations": [conv], "history": True}, tmp_path)
    assert out["errors"][0] is None, out["errors"][0]
    assert out["rendered"][0] == longer[:-len(turn)]
    assert out["rendered"][0].endswith("a2</s>")


def write_gguf_tokenizer(path, template: bytes):
    """A tokenizer-only GGUF (gpt2-style BPE) whose chat template holds `template` as it is, UTF-8 or not."""
    from gguf import GGUFWriter
    w = GGUFWriter(str(path), arch="llama")
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["<s>", "</s>", "h", "i", "hi"])
    w.add_token_types([3, 3, 1, 1, 1])
    w.add_token_merges(["h i"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_string("tokenizer.chat_template", template)  # bytes are written unchecked
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_a_gguf_template_that_is_not_utf8_is_refused_naming_it(tmp_path):
    """GGUF strings are UTF-8 and the interpreter's string operations work by code point: a template with other
    bytes is a damaged file, refused when the tokenizer loads, never rendered."""
    good = b"{% for m in messages %}{{ m.content | upper }}{% endfor %}"
    path = tmp_path / "tok.gguf"
    write_gguf_tokenizer(path, good)
    conv = [{"role": "user", "content": "hi"}]
    out = run_probe({"mode": "chat", "model": str(path), "conversations": [conv]}, tmp_path)
    assert out == {"rendered": ["HI"], "errors": [None]}
    for bad in [good.replace(b"upper", b"upper }}\xff{{ 'x'"), b"\xc3{{ messages[0].content[1:] }}\xe2\x82",
                b"{{ '\xed\xa0\x80' | length }}"]:
        write_gguf_tokenizer(path, bad)
        out = run_probe({"mode": "chat", "model": str(path), "conversations": [conv]}, tmp_path)
        assert out["rendered"] == [None], out
        assert "tokenizer.chat_template" in out["errors"][0] and "not valid UTF-8" in out["errors"][0], out


def test_a_chat_template_jinja_file_that_is_not_utf8_is_refused_naming_it(tmp_path):
    """transformers 5 keeps the template in chat_template.jinja, read as it is: the same check applies."""
    folder = tmp_path / "model"
    folder.mkdir()
    src = qwen3_tokenizer_dir()
    (folder / "tokenizer.json").write_bytes((src / "tokenizer.json").read_bytes())
    config = json.loads((src / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    conv = [{"role": "user", "content": "hi"}]
    for template, rendered in [(b"{{ messages[0].content }}\xc3\xa9", "hi\u00e9"), (b"{{ messages[0].content }}\xe9", None)]:
        (folder / "chat_template.jinja").write_bytes(template)
        out = run_probe({"mode": "chat", "model": str(folder), "conversations": [conv]}, tmp_path)
        assert out["rendered"] == [rendered], out
        if rendered is None:
            assert "chat_template.jinja' is not valid UTF-8" in out["errors"][0], out
