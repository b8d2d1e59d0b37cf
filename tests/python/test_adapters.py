"""Sparse LoRA adapters against PEFT on tiny random Qwen3 models: our exported adapters load in PEFT with the
same logits, PEFT adapters import with PEFT's logits, and mixed-adapter batches give each row its own result."""
import copy
import json

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file as load_torch
from safetensors.torch import save_file as save_torch

from conftest import create_adapter, probe_logits, run_cli
from tiny_models import build_tiny_model, hf_logits, prompt_of

TOL = 1e-4
MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen3_tied_gqa")
    return folder, build_tiny_model("qwen3_tied_gqa", folder)


def cli_ok(*args):
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_sparse_adapter_matches_peft_loading_our_export(tiny, tmp_path):
    folder, model = tiny
    adir = tmp_path / "adapters"
    info = create_adapter(folder, adir, "sparse", tmp_path, seed=3)
    assert info["version"] == 2
    peft_dir = tmp_path / "peft"
    cli_ok("adapters", "export", "sparse", peft_dir, "--adapter-dir", adir)

    # The export is tile-sparse: non-zero entries only inside the listed 8x8 tiles, B filled there.
    tensors = load_torch(peft_dir / "adapter_model.safetensors")
    for t in info["tensors"]:
        side = "B" if t["is_b"] else "A"
        group = "self_attn" if t["module"] in MODULES[:4] else "mlp"
        w = tensors[f"base_model.model.model.layers.{t['layer']}.{group}.{t['module']}.lora_{side}.weight"]
        mask = torch.zeros_like(w, dtype=torch.bool)
        for r, c in t["tiles"]:
            mask[8 * r:8 * r + 8, 8 * c:8 * c + 8] = True
        assert torch.all(w[~mask] == 0)
        assert torch.all(w[mask] != 0)
        assert 0 < mask.sum() < mask.numel()

    peft_model = PeftModel.from_pretrained(copy.deepcopy(model), peft_dir).eval()
    ids = prompt_of(32, 1)
    ours = probe_logits(folder, [ids], tmp_path, adapter_dir=str(adir), adapters=["sparse"])[0]
    theirs = hf_logits(peft_model, ids)
    base = hf_logits(model, ids)
    assert np.abs(theirs - base).max() > 0.05, "the adapter should change the logits"
    assert np.abs(ours - theirs).max() < TOL


# Subsets leave parts of the forward's fused projections without an adapter: k alone in q/k/v, gate in gate/up.
@pytest.mark.parametrize("rank,alpha,rslora,targets", [(16, 32, False, MODULES), (4, 8, True, MODULES),
                                                       (16, 16, False, ["q_proj", "v_proj", "up_proj"]),
                                                       (8, 8, False, ["k_proj", "gate_proj", "down_proj"])])
def test_peft_adapter_imported_dense_matches_peft(tiny, tmp_path, rank, alpha, rslora, targets):
    folder, model = tiny
    cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0, use_rslora=rslora,
                     init_lora_weights=False)
    torch.manual_seed(7)
    peft_model = get_peft_model(copy.deepcopy(model), cfg).eval()
    peft_dir = tmp_path / "peft"
    peft_model.save_pretrained(peft_dir)
    adir = tmp_path / "adapters"
    out = json.loads(cli_ok("adapters", "import", "imported", peft_dir, "--model", folder, "--adapter-dir", adir))
    assert out["density"] == 1.0
    assert out["rank"] == (16 if rank == 16 else 8)  # rank padded to a multiple of 8
    ids = prompt_of(24, 2)
    ours = probe_logits(folder, [ids], tmp_path, adapter_dir=str(adir), adapters=["imported"])[0]
    theirs = hf_logits(peft_model, ids)
    assert np.abs(theirs - hf_logits(model, ids)).max() > 0.05
    assert np.abs(ours - theirs).max() < TOL


def test_peft_import_sparsified_by_tile_magnitude(tiny, tmp_path):
    folder, model = tiny
    cfg = LoraConfig(r=16, lora_alpha=16, target_modules=MODULES, lora_dropout=0.0, init_lora_weights=False)
    torch.manual_seed(11)
    peft_model = get_peft_model(copy.deepcopy(model), cfg)
    peft_dir = tmp_path / "peft"
    peft_model.save_pretrained(peft_dir)
    original = load_torch(peft_dir / "adapter_model.safetensors")
    adir = tmp_path / "adapters"
    cli_ok("adapters", "import", "sparse", peft_dir, "--model", folder, "--adapter-dir", adir, "--sparsity", "0.75")
    back = tmp_path / "back"
    cli_ok("adapters", "export", "sparse", back, "--adapter-dir", adir)
    exported = load_torch(back / "adapter_model.safetensors")
    for key, w in original.items():
        e = exported[key]
        kept = e != 0
        assert torch.equal(e[kept], w[kept])  # kept entries are unchanged
        tiles = w.reshape(w.shape[0] // 8, 8, w.shape[1] // 8, 8).pow(2).sum((1, 3))
        kept_tiles = kept.reshape(tiles.shape[0], 8, tiles.shape[1], 8).any(3).any(1)
        # Per group of 8 rank components (A's tile rows, B's tile columns) the kept tiles are the largest.
        groups = tiles.T if "lora_B" in key else tiles
        kept_g = kept_tiles.T if "lora_B" in key else kept_tiles
        n_groups, per_group = groups.shape
        total = min(max(n_groups, round(0.25 * n_groups * per_group)), n_groups * per_group)
        for g in range(n_groups):
            assert kept_g[g].sum() == total // n_groups + (1 if g < total % n_groups else 0)
            if (~kept_g[g]).any():
                assert groups[g][kept_g[g]].min() >= groups[g][~kept_g[g]].max()


ROWS = ["a0", "a1", None, "a2", "a3", "a0", None, "a2", "a1", "a3"]
SCALES = [1.0, 0.5, 1.0, 1.0, 2.0, 1.0, 1.0, -1.0, 1.0, 1.0]


@pytest.fixture(scope="module")
def mixed_batch(tiny, tmp_path_factory):
    """Four adapters (two densities) and one batch of ten rows mixing them, no adapter and scales 0.5, 2, -1."""
    folder, _ = tiny
    tmp = tmp_path_factory.mktemp("mixed")
    adir = tmp / "adapters"
    for i in range(4):
        create_adapter(folder, adir, f"a{i}", tmp, seed=10 + i, sparsity=0.9 if i % 2 else 0.99)
    prompts = [prompt_of(5 + 3 * i, 100 + i) for i in range(len(ROWS))]
    conts = [prompt_of(4 + (i % 3), 200 + i) for i in range(len(ROWS))]
    batched = probe_logits(folder, prompts, tmp, continuations=conts, chunk=8, adapter_dir=str(adir), adapters=ROWS,
                           adapter_scales=SCALES)
    return adir, prompts, conts, batched


def test_mixed_batch_rows_match_running_alone(tiny, mixed_batch, tmp_path):
    folder, _ = tiny
    adir, prompts, conts, batched = mixed_batch
    for i, name in enumerate(ROWS):
        alone = probe_logits(folder, [prompts[i]], tmp_path, continuations=[conts[i]], adapter_dir=str(adir),
                             adapters=[name], adapter_scales=[SCALES[i]])[0]
        assert batched[i].shape == alone.shape
        assert np.abs(batched[i] - alone).max() < 1e-5, f"row {i} ({name})"
    base = probe_logits(folder, [prompts[0]], tmp_path, continuations=[conts[0]])[0]
    assert np.abs(batched[0] - base).max() > 0.05


def test_mixed_batch_scaled_rows_match_peft_with_the_scaled_adapter(tiny, mixed_batch, tmp_path):
    """Rows at scales 0.5, 2 and -1 against PEFT loading our export with B multiplied by the scale (the forward
    adds alpha/rank * scale * B A x), and the rows without an adapter against the base model."""
    folder, model = tiny
    adir, prompts, conts, batched = mixed_batch
    checked = set()
    for i, (name, scale) in enumerate(zip(ROWS, SCALES)):
        ids = prompts[i] + conts[i]
        if name is None:
            assert np.abs(batched[i] - hf_logits(model, ids)).max() < TOL, f"row {i} (no adapter)"
            continue
        if scale == 1.0:
            continue
        peft_dir = tmp_path / f"{name}-x{scale}"
        cli_ok("adapters", "export", name, peft_dir, "--adapter-dir", adir)
        weights = load_torch(peft_dir / "adapter_model.safetensors")
        scaled = {k: v * scale if ".lora_B." in k else v for k, v in weights.items()}
        save_torch(scaled, peft_dir / "adapter_model.safetensors")
        peft_model = PeftModel.from_pretrained(copy.deepcopy(model), peft_dir).eval()
        theirs = hf_logits(peft_model, ids)
        assert np.abs(theirs - hf_logits(model, ids)).max() > 0.05, "the scaled adapter should change the logits"
        assert np.abs(batched[i] - theirs).max() < TOL, f"row {i} ({name} at scale {scale})"
        checked.add(scale)
    assert checked == {0.5, 2.0, -1.0}


@pytest.mark.slow
def test_adapter_files_refuse_damage_and_keep_previous_version(default_model_path, tmp_path):
    adir = tmp_path / "adapters"
    info = create_adapter(default_model_path, adir, "news", tmp_path, b_std=0.02)
    assert info["version"] == 2
    gen = ["generate", "--model", "default", "--adapter-dir", adir, "--prompt", "The capital of France is",
           "--max-tokens", "4", "--temperature", "0", "--json"]
    ok = run_cli(*gen, "--adapter", "news")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout.splitlines()[-1])["adapter"] == {"name": "news", "version": 2}

    v2 = adir / "news" / "v00000002.hsl"
    pristine = v2.read_bytes()
    for damage in ("flip", "truncate"):
        data = bytearray(pristine)
        if damage == "flip":
            data[len(data) * 2 // 3] ^= 0x10
        else:
            data = data[:len(data) - 100]
        v2.write_bytes(bytes(data))
        bad = run_cli(*gen, "--adapter", "news")
        assert bad.returncode == 4, bad.stderr
        assert "v00000002.hsl" in bad.stderr and ("CRC" in bad.stderr or "truncated" in bad.stderr)
        prev = run_cli(*gen, "--adapter", "news", "--adapter-version", "1")
        assert prev.returncode == 0, prev.stderr
    out = json.loads(cli_ok("adapters", "rollback", "news", "1", "--adapter-dir", adir))
    assert out["version"] == 1
    after = run_cli(*gen, "--adapter", "news")
    assert after.returncode == 0 and json.loads(after.stdout.splitlines()[-1])["adapter"]["version"] == 1


def test_adapter_refused_on_another_base_model(tiny, tmp_path):
    folder, _ = tiny
    other = tmp_path / "other"
    build_tiny_model("qwen3_tied_gqa", other, seed=1)
    adir = tmp_path / "adapters"
    create_adapter(folder, adir, "mine", tmp_path)
    req = tmp_path / "req.json"
    req.write_text(json.dumps({"mode": "logits", "model": str(other), "prompts": [[1, 2, 3]],
                               "out": str(tmp_path / "x.safetensors"), "adapter_dir": str(adir), "adapters": ["mine"]}))
    import subprocess
    from conftest import PROBE
    r = subprocess.run([str(PROBE), str(req)], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "was made for base model" in r.stderr


def test_adapter_cli_errors(tmp_path):
    adir = tmp_path / "adapters"
    cases = [
        (["adapters", "create", "../escape", "--model", "default"], 2, "invalid adapter name"),
        (["adapters", "create", "x", "--model", "default", "--rank", "12"], 2, "multiple of 8"),
        (["adapters", "create", "x", "--model", "default", "--sparsity", "1.5"], 2, "sparsity"),
        (["adapters", "create", "x", "--model", "default", "--targets", "lm_head"], 2, "unknown LoRA target"),
        (["adapters", "show", "missing"], 3, "no adapter named"),
        (["adapters", "import", "x", tmp_path / "nope", "--model", "default"], 3, "adapter_config.json"),
        (["generate", "--model", "default", "--adapter", "missing", "--prompt", "hi"], 3, "no adapter named"),
    ]
    for args, code, text in cases:
        r = run_cli(*args, "--adapter-dir", adir)
        assert r.returncode == code, (args, r.stderr)
        assert text in r.stderr, (args, r.stderr)
    cli_ok("adapters", "create", "twice", "--model", "default", "--adapter-dir", adir)
    r = run_cli("adapters", "create", "twice", "--model", "default", "--adapter-dir", adir)
    assert r.returncode == 9 and "already exists" in r.stderr
    listed = json.loads(cli_ok("adapters", "list", "--json", "--adapter-dir", adir))
    assert [a["name"] for a in listed] == ["twice"]
    cli_ok("adapters", "rm", "twice", "--adapter-dir", adir)
    assert json.loads(cli_ok("adapters", "list", "--json", "--adapter-dir", adir)) == []


def test_int4_model_takes_the_adapters_of_its_dense_form(default_model_path, tmp_path):
    """An adapter made on the float32 model serves on the same file loaded with --quantize int4 (the same base
    model: its fingerprint reads the embedding rows as the file holds them), changes the text, and at scale 0
    gives the int4 base model's text."""
    adir = tmp_path / "adapters"
    create_adapter(default_model_path, adir, "loud", tmp_path, b_std=1.0, sparsity=0.9)
    gen = ["generate", "--model", "default", "--quantize", "int4", "--adapter-dir", adir, "--prompt",
           "The capital of France is", "--max-tokens", "16", "--temperature", "0", "--json"]

    def final(*extra):
        return json.loads(cli_ok(*gen, *extra).splitlines()[-1])

    base = final()
    assert final("--adapter", "loud", "--adapter-scale", "0")["text"] == base["text"]
    adapted = final("--adapter", "loud")
    assert adapted["adapter"] == {"name": "loud", "version": 2}
    assert adapted["text"] != base["text"]


def test_cli_adapter_changes_generation_and_scale_zero_is_the_base_model(default_model_path, tmp_path):
    adir = tmp_path / "adapters"
    create_adapter(default_model_path, adir, "loud", tmp_path, b_std=1.0, sparsity=0.9)
    gen = ["generate", "--model", "default", "--adapter-dir", adir, "--prompt", "The capital of France is",
           "--max-tokens", "16", "--temperature", "0", "--json"]

    def final(*extra):
        r = run_cli(*gen, *extra)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout.splitlines()[-1])

    base = final()
    assert base["adapter"] is None
    assert final("--adapter", "loud", "--adapter-scale", "0")["text"] == base["text"]
    adapted = final("--adapter", "loud")
    assert adapted["adapter"] == {"name": "loud", "version": 2}
    assert adapted["text"] != base["text"]
