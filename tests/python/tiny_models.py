"""Tiny random Llama, Mistral, Qwen2 and Qwen3 models, saved by transformers as our loader expects to find them."""
import json

import torch
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

VOCAB = 320
# The pre-training context of the rope-scaled configurations below: prompts past it exercise the scaling.
ORIGINAL_CONTEXT = 32
MODEL_CLASSES = {LlamaConfig: LlamaForCausalLM, MistralConfig: MistralForCausalLM, Qwen2Config: Qwen2ForCausalLM,
                 Qwen3Config: Qwen3ForCausalLM}

TINY_CONFIGS = {
    # head_dim 24 differs from hidden/heads = 16, GQA 4:2, tied embeddings
    "qwen3_tied_gqa": (Qwen3Config, dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                                          num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                                          tie_word_embeddings=True, rope_theta=1e6)),
    # untied, multi-query attention, head_dim = hidden/heads
    "qwen3_untied_mqa": (Qwen3Config, dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                                            tie_word_embeddings=False, rope_theta=10000.0)),
    "llama_gqa": (LlamaConfig, dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                    num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False,
                                    rope_theta=100000.0)),
    "llama_tied": (LlamaConfig, dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True)),
    # q/k/v biases without an o bias
    "qwen2_bias": (Qwen2Config, dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                     rope_theta=1e6)),
    # head_dim 16 at theta 1e4 puts wavelengths in all three llama3 bands (6.3, 19.9 and 62.8 over a context of 32)
    "llama_llama3": (LlamaConfig, dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                                       rope_parameters=dict(rope_type="llama3", rope_theta=10000.0, factor=8.0,
                                                            low_freq_factor=1.0, high_freq_factor=4.0,
                                                            original_max_position_embeddings=ORIGINAL_CONTEXT))),
    "llama_linear": (LlamaConfig, dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                       rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=4.0))),
    # YaRN with its defaults: attention factor from the factor, truncated correction range
    "qwen3_yarn": (Qwen3Config, dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                     tie_word_embeddings=True,
                                     rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0,
                                                          original_max_position_embeddings=ORIGINAL_CONTEXT))),
    # YaRN with every knob set: betas, an explicit attention factor, an untruncated correction range
    "llama_yarn_explicit": (LlamaConfig, dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                              num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                                              rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=8.0,
                                                                   original_max_position_embeddings=ORIGINAL_CONTEXT,
                                                                   beta_fast=16.0, beta_slow=2.0,
                                                                   attention_factor=1.25, truncate=False))),
    # a window of 12 keys, shorter than every test prompt
    "mistral_window": (MistralConfig, dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                                           sliding_window=12)),
}


def build_tiny_model(name, folder, seed=0, max_position_embeddings=256, save_dtype=torch.float32,
                     max_shard_size=None):
    cls, kwargs = TINY_CONFIGS[name]
    config = cls(vocab_size=VOCAB, max_position_embeddings=max_position_embeddings, rms_norm_eps=1e-6,
                 initializer_range=0.1, bos_token_id=None, eos_token_id=None, pad_token_id=None, **kwargs)
    torch.manual_seed(seed)
    model = MODEL_CLASSES[cls](config).eval().to(torch.float32)
    # Norm weights start at one and biases at zero; perturb them so a wrong norm or bias shows in the logits.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight") or n.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.to(save_dtype).save_pretrained(folder, safe_serialization=True, **kwargs)
    return model.to(torch.float32)


@torch.no_grad()
def hf_logits(model, ids):
    """transformers' fp32 logits of one prompt."""
    return model(torch.tensor([ids])).logits[0].float().numpy()


@torch.no_grad()
def hf_greedy(model, ids, n):
    """transformers' greedy continuation of n tokens, with no end-of-text stop."""
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         do_sample=False, max_new_tokens=n, min_new_tokens=n, eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


def prompt_of(length, seed):
    """Random token ids, reproducible from the seed."""
    return torch.randint(0, VOCAB, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


# The ChatML template of Hugging Face's chat-templating guide, without a default system prompt.
CHATML_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                   "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                   "{% endif %}")


def add_tiny_tokenizer(folder, chat=False):
    """A byte-level BPE tokenizer of VOCAB ids trained by HF `tokenizers`, saved beside a tiny model, so the
    model can be trained from text events. Its end-of-text token is the EOS; with chat, it has ChatML's
    special tokens and template, and <|im_end|> is the EOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>"] + (["<|im_start|>", "<|im_end|>"] if chat else [])
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["the quick brown fox jumps over the lazy dog", "online learning of sparse adapters",
              "every event is applied exactly once", "questions and answers about invented places"] * 20
    tok.train_from_iterator(corpus, trainer)
    assert tok.get_vocab_size() <= VOCAB
    tok.save(str(folder / "tokenizer.json"))
    config = {"eos_token": "<|im_end|>", "chat_template": CHATML_TEMPLATE} if chat else {"eos_token": "<|endoftext|>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return tok
