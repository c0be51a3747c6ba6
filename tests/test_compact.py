"""Compact copies of model folders (`modeling.compact`): FP8 weights that transformers' own loader
restores at load, for every family, with or without this project importable."""

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from modeling import FAMILIES, build_config
from modeling.compact import BLOCK, save_compact
from tokenization import MusicTokenizer

FP8_MAX = 448.0  # the largest float8 e4m3 number: a block's largest weight is stored as it


def quantized(name: str, weight: torch.Tensor) -> bool:
    return name.endswith(".weight") and weight.ndim >= 2 and weight.shape[-1] % BLOCK == 0


def fp8_bound(weight: torch.Tensor) -> torch.Tensor:
    """How far an e4m3 copy of `weight` may be from it: half a step of its 3 mantissa bits (1/16 of
    the value), or of the smallest step (2^-9 of the scale) near zero, then float16's rounding."""
    scale = weight.abs().unflatten(-1, (-1, BLOCK)).amax(-1, keepdim=True) / FP8_MAX
    floor = (scale * 2**-10).expand(*scale.shape[:-1], BLOCK).flatten(-2)
    return weight.abs() / 16 + floor + weight.abs() * 2**-10 + 1e-12


@pytest.fixture(scope="module", params=FAMILIES)
def copies(request, tokenizer, tmp_path_factory) -> tuple[str, torch.nn.Module, dict, object]:
    family, folder = request.param, tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(build_config(family, "tiny", tokenizer)).eval()
    model.save_pretrained(folder / "full")
    tokenizer.save_pretrained(folder / "full")
    sizes = save_compact(folder / "full", folder / "compact")
    return family, model, sizes, folder / "compact"


def test_a_compact_copy_takes_a_third_of_the_float32_bytes(copies):
    _, _, sizes, _ = copies
    assert sizes["bytes_after"] < 0.35 * sizes["bytes_before"]  # 1 byte a weight and a 4-byte scale per 64


def test_a_compact_copy_loads_as_a_plain_float16_model_with_its_tokenizer(copies, tokenizer):
    family, model, _, folder = copies
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    assert loaded.dtype == torch.float16 and not hasattr(loaded.config, "quantization_config")
    assert MusicTokenizer.from_pretrained(folder).fingerprint() == tokenizer.fingerprint()
    assert json.loads((folder / "config.json").read_text())["quantization_config"]["dequantize"] is True
    original = dict(model.named_parameters())
    stored = 0
    for name, parameter in loaded.named_parameters():
        weight, restored = original[name].detach(), parameter.detach().float()
        if quantized(name, weight):
            stored += 1
            assert (restored - weight).abs().le(fp8_bound(weight)).all(), name
            assert not torch.equal(restored, weight.half().float()), f"{name} was not stored in 8 bits"
        else:
            assert torch.equal(restored, weight.half().float()), name
    assert stored >= 3  # the embeddings and every block's projections
    ids = torch.randint(3, len(tokenizer), (2, 48))
    with torch.no_grad():
        expected, found = model(ids).logits, loaded.float()(ids).logits
    assert (found - expected).norm() / expected.norm() < 0.25  # a misplaced weight gives about 1


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "transformer"])
def test_a_compact_copy_loads_as_remote_code_without_this_project(family, tokenizer, tmp_path):
    """transformers restores the weights itself: the custom families load from their own code."""
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(build_config(family, "tiny", tokenizer)).save_pretrained(tmp_path / "full")
    save_compact(tmp_path / "full", tmp_path / "compact")
    ids = [[1, 5, 9, 14, 20, 31]]
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(tmp_path / "compact").float()(torch.tensor(ids)).logits
    code = f"""
import sys, torch
sys.modules["modeling"] = sys.modules["tokenization"] = None  # this project is not importable
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "compact")!r}, trust_remote_code=True).float()
assert "transformers_modules" in type(model).__module__, type(model).__module__
with torch.no_grad():
    print(model(torch.tensor({ids})).logits.flatten().tolist())
"""
    env = os.environ | {"HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    found = torch.tensor(json.loads(result.stdout.strip().splitlines()[-1]))
    assert torch.allclose(found, expected.flatten(), atol=1e-5)


def test_a_folder_without_weights_is_refused_with_a_reason(tmp_path):
    with pytest.raises(FileNotFoundError, match="no safetensors weights in"):
        save_compact(tmp_path, tmp_path / "compact")
