import dataclasses
import importlib
import inspect
import os
import re
import subprocess
import sys

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import AutoModel, AutoModelForCausalLM, GPT2LMHeadModel
from transformers.utils import ModelOutput

import modeling
from conftest import ROOT, Ids
from modeling import FAMILIES, build_config
from modeling.modeling_music_xlstm import MusicXLSTMCache

CUSTOM = ["mamba", "xlstm"]


def tiny(family: str, **overrides):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(build_config(family, "tiny", Ids(), **overrides)).eval()


def run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env})


@pytest.mark.parametrize(
    "family, overrides",
    [
        ("mamba", {}),
        ("mamba", {"ngroups": 2}),  # the step's per-group B, C and gated norm
        ("xlstm", {"slstm_backend": "native"}),
        ("xlstm", {"slstm_backend": "vanilla"}),
    ],
)
def test_stepping_matches_the_full_forward(family, overrides):
    model = tiny(family, **overrides)
    ids = torch.randint(0, 96, (3, 37))  # not a multiple of the chunk size
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        out = model(ids[:, :1], use_cache=True)
        steps = [out.logits]
        for t in range(1, ids.shape[1]):
            out = model(ids[:, t : t + 1], cache=out.cache, use_cache=True)
            steps.append(out.logits)
        prefix = model(ids[:, :20], use_cache=True)
        rest = model(ids[:, 20:], cache=prefix.cache, use_cache=True).logits
    assert (full - torch.cat(steps, dim=1)).abs().max() <= 1e-4
    assert (full - torch.cat([prefix.logits, rest], dim=1)).abs().max() <= 1e-4


@pytest.mark.parametrize("family", CUSTOM)
def test_generation_keeps_a_fixed_size_state(family):
    model = tiny(family)
    prompt = torch.randint(0, 96, (2, 5))
    greedy = model.generate(prompt, max_new_tokens=30, do_sample=False, use_cache=True, eos_token_id=None)
    assert greedy.shape == (2, 35)
    with torch.no_grad():  # greedy tokens are the argmax of the full forward
        assert torch.equal(model(greedy, use_cache=False).logits[:, 4:-1].argmax(-1), greedy[:, 5:])
    sampled = model.generate(prompt, max_new_tokens=30, do_sample=True, top_k=20, eos_token_id=None)
    assert sampled.shape == (2, 35) and not torch.equal(sampled, greedy)

    def state_size(length):
        with torch.no_grad():
            cache = model(torch.randint(0, 96, (2, length)), use_cache=True).cache
        if isinstance(cache, MusicXLSTMCache):
            tensors = [t for state in cache.states for t in state]
        else:
            tensors = [
                t for layer in cache.layers for t in (*layer.conv_states.values(), *layer.recurrent_states.values())
            ]
        return sum(t.numel() for t in tensors)

    assert state_size(10) == state_size(300) > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_every_parameter_learns(family):
    model = tiny(family).train()
    ids = torch.randint(0, 96, (2, 24))
    model(ids, labels=ids).loss.backward()
    assert [name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()] == []


@pytest.mark.parametrize("family", FAMILIES)
def test_save_and_load_through_auto_classes(family, tmp_path):
    model = tiny(family)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    ids = torch.randint(0, 96, (2, 16))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
        # the base model alone, from the same folder, with transformers' named outputs
        base = AutoModel.from_pretrained(tmp_path).eval()
        assert type(base) is type(model.base_model)
        expected = model.base_model(input_ids=ids)
        assert isinstance(expected, ModelOutput) and expected.cache is not None  # named, as transformers returns
        assert torch.equal(base(input_ids=ids).last_hidden_state, expected.last_hidden_state)
    assert (tmp_path / "model.safetensors").is_file()


@pytest.mark.parametrize("family", CUSTOM)
def test_remote_code_and_offline_hub_cache_without_this_project(family, tmp_path):
    """A folder saved for the Hub loads where this project cannot be imported, from a
    filled Hugging Face cache by repo id with HF_HUB_OFFLINE=1."""
    model = tiny(family)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / f"models--someone--music-{family}"
    model.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    ids = torch.randint(0, 96, (1, 12))
    with torch.no_grad():
        expected = model(ids).logits.sum().item()
        expected_hidden = model.base_model(input_ids=ids).last_hidden_state.sum().item()
    code = f"""
import sys
sys.modules["modeling"] = sys.modules["tokenization"] = None  # this project is not importable
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import AutoModel, AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained("someone/music-{family}", trust_remote_code=True).eval()
assert "transformers_modules" in type(model).__module__, type(model).__module__
base = AutoModel.from_pretrained("someone/music-{family}", trust_remote_code=True).eval()
assert "transformers_modules" in type(base).__module__ and type(base).__name__.endswith("Model"), type(base)
with torch.no_grad():
    print(model(torch.tensor({ids.tolist()})).logits.sum().item())
    print(model.generate(torch.tensor({ids.tolist()}), max_new_tokens=5, do_sample=False).shape[1])
    print(base(input_ids=torch.tensor({ids.tolist()})).last_hidden_state.sum().item())
"""
    result = run(
        code, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"), HF_MODULES_CACHE=str(tmp_path / "modules")
    )
    assert result.returncode == 0, result.stderr[-3000:]
    logits_sum, length, hidden_sum = result.stdout.split()
    assert abs(float(logits_sum) - expected) < 1e-3 and int(length) == 17
    assert abs(float(hidden_sum) - expected_hidden) < 1e-3


COPIED = re.compile(r"^# Copied from (\w+)\.(\w+) with (.+)\nclass (\w+)", re.MULTILINE)


def test_deliberate_copies_stay_in_step():
    """A class marked `# Copied from module.Class with A->B, ...` is that class's source with
    the names replaced (transformers checks its copies the same way): a change to one family's
    wrapper that misses the other fails here."""
    copies = 0
    for path in sorted((ROOT / "modeling").glob("modeling_*.py")):
        for module, name, renames, copy in COPIED.findall(path.read_text()):
            source = inspect.getsource(getattr(importlib.import_module(f"modeling.{module}"), name))
            for rename in renames.split(","):
                old, new = (part.strip() for part in rename.split("->"))
                source = source.replace(old, new)
            assert inspect.getsource(getattr(importlib.import_module(f"modeling.{path.stem}"), copy)) == source
            copies += 1
    assert copies == 1  # MusicXLSTMForCausalLM


def test_the_custom_configs_share_their_common_fields():
    """What the tokenizer, training and generation read from any config is the same in both."""
    mamba, xlstm = modeling.MusicMambaConfig(), modeling.MusicXLSTMConfig()
    assert mamba.attribute_map == xlstm.attribute_map == {"hidden_size": "n_embd", "num_hidden_layers": "n_layer"}
    shared = ["vocab_size", "n_embd", "initializer_range", "bos_token_id", "eos_token_id", "pad_token_id"]
    shared += ["tie_word_embeddings", "use_cache"]
    assert {k: getattr(mamba, k) for k in shared} == {k: getattr(xlstm, k) for k in shared}
    fields = {f.name: f.type for f in dataclasses.fields(mamba)}
    assert all(fields[k] == {f.name: f.type for f in dataclasses.fields(xlstm)}[k] for k in shared)


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_presets_match_in_parameter_count(size):
    counts = {}
    for family in FAMILIES:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(build_config(family, size, Ids()))
        counts[family] = sum(p.numel() for p in model.parameters())
    assert max(counts.values()) / min(counts.values()) <= 1.1, counts
    expected = {"tiny": (1e5, 1e6), "small": (8e6, 12e6), "base": (80e6, 120e6)}[size]
    assert all(expected[0] <= n <= expected[1] for n in counts.values()), counts


def test_transformer_is_plain_gpt2_without_dropout():
    model = tiny("transformer")
    assert type(model) is GPT2LMHeadModel
    assert model.config.attn_pdrop == model.config.resid_pdrop == model.config.embd_pdrop == 0.0


def test_bad_family_or_preset_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown model family 'rnn': choose one of transformer, mamba, xlstm"):
        build_config("rnn", "tiny", Ids())
    with pytest.raises(ValueError, match="unknown preset 'huge' for mamba: choose one of tiny, small, base"):
        build_config("mamba", "huge", Ids())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for the fast kernels")
@pytest.mark.parametrize("family", CUSTOM)
def test_cuda_kernels_agree_with_the_pytorch_path(family):
    """mamba_ssm's / the xlstm package's Triton kernels on CUDA against the CPU path, same weights."""
    if family == "mamba" and modeling.modeling_music_mamba.mamba_chunk_scan_combined is None:
        pytest.skip(f"no Triton scan: {modeling.modeling_music_mamba.TRITON_SCAN_MISSING}")
    model = tiny(family)
    ids = torch.randint(0, 96, (2, 100))
    with torch.no_grad():
        reference = model(ids, use_cache=False).logits
        model.cuda()
        assert model.kernels()["scan" if family == "mamba" else "mlstm"] in ("triton", "chunkwise--triton_limit_chunk")
        fast = model(ids.cuda(), use_cache=False).logits.cpu()
        generated = model.generate(ids[:, :10].cuda(), max_new_tokens=20, do_sample=False, eos_token_id=None)
    assert (fast - reference).abs().max() <= 1e-2 * reference.abs().max()
    assert generated.shape == (2, 30)


def test_mamba_finds_the_triton_scan_without_the_compiled_extension(tmp_path):
    """mamba_ssm's `__init__` imports its compiled CUDA extension, which an install without
    compiling lacks: the Triton scan is found all the same, and `import mamba_ssm` fails as before."""
    triton_folder = tmp_path / "mamba_ssm" / "ops" / "triton"
    triton_folder.mkdir(parents=True)
    (tmp_path / "mamba_ssm" / "__init__.py").write_text("import selective_scan_cuda\n")
    for folder in (triton_folder.parent, triton_folder):
        (folder / "__init__.py").write_text("")
    (triton_folder / "ssd_combined.py").write_text("def mamba_chunk_scan_combined():\n    return 1\n")
    code = """
import sys
from modeling.modeling_music_mamba import mamba_chunk_scan_combined, scan_kernel
assert mamba_chunk_scan_combined() == 1 and "mamba_ssm" not in sys.modules
print(scan_kernel("auto", "cuda"), scan_kernel("auto", "cpu"))
import mamba_ssm
"""
    result = run(code, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    assert result.stdout.split() == ["triton", "torch"]
    assert "No module named 'selective_scan_cuda'" in result.stderr


def test_mamba_says_which_scan_runs_and_refuses_the_kernel_where_it_cannot_run():
    assert tiny("mamba").kernels() == {"scan": "torch", "step": "torch"}
    model = tiny("mamba", scan_backend="triton")
    with pytest.raises(
        RuntimeError, match=r"^scan_backend 'triton' cannot run: .+; use scan_backend 'auto' or 'torch'$"
    ):
        model(torch.ones(1, 4, dtype=torch.long))
    with pytest.raises(StrictDataclassClassValidationError, match="unknown scan_backend 'cuda': choose one of auto"):
        build_config("mamba", "tiny", Ids(), scan_backend="cuda")


def test_mamba_parameters_are_named_and_shaped_as_in_mamba_ssm():
    """Weights move between this model and mamba_ssm's Mamba2 / MambaLMHeadModel."""
    try:
        from mamba_ssm.modules.mamba2 import Mamba2
    except ImportError:
        pytest.skip("mamba_ssm is not installed (the [cuda] extra)")
    config = build_config("mamba", "tiny", Ids())
    ours = tiny("mamba").backbone.layers[0].mixer
    theirs = Mamba2(
        d_model=config.n_embd, d_state=config.d_state, d_conv=config.d_conv, expand=config.expand,
        headdim=config.headdim, ngroups=config.ngroups, chunk_size=config.chunk_size,
    )  # fmt: skip
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}


def test_xlstm_gates_start_with_forget_gates_open_and_input_gates_shut():
    model = tiny("xlstm")
    layer = model.backbone.blocks[0].block.mlstm_layer
    assert layer.fgate_preact.bias.min() >= 3.0 and layer.fgate_preact.bias.max() <= 6.0
    assert torch.all(layer.igate_preact.bias == -10.0)
    assert abs(layer.q.weight.std().item() - 0.02) < 0.005


@pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
)
def test_mamba_left_padded_prompts_generate_as_unpadded(device):
    model = tiny("mamba").to(device)
    short, long = torch.randint(3, 96, (1, 6), device=device), torch.randint(3, 96, (1, 9), device=device)
    batch = torch.cat([torch.cat([torch.zeros_like(short[:, :3]), short], dim=1), long])
    mask = (torch.arange(9, device=device) >= torch.tensor([[3], [0]], device=device)).long()
    together = model.generate(batch, attention_mask=mask, max_new_tokens=12, do_sample=False, eos_token_id=None)
    alone = model.generate(short, max_new_tokens=12, do_sample=False, eos_token_id=None)
    assert torch.equal(together[0, 9:], alone[0, 6:])
    with torch.no_grad():
        padded = model(batch, attention_mask=mask, use_cache=False).logits[0, 3:]
        assert (padded - model(short, use_cache=False).logits[0]).abs().max() <= 1e-4


def test_xlstm_refuses_left_padding():
    with pytest.raises(ValueError, match="cannot skip left padding"):
        tiny("xlstm")(torch.ones(1, 4, dtype=torch.long), attention_mask=torch.tensor([[0, 1, 1, 1]]))
