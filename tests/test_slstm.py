"""MusicXLSTM's sLSTM backends: the vanilla loop's math and results on the same weights."""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import AutoModelForCausalLM

from conftest import ROOT, Ids
from modeling import build_config
from modeling import modeling_music_xlstm as xlstm
from modeling.modeling_music_xlstm import SLSTMScan, slstm_backend


def tiny_xlstm(**overrides):
    """The tiny preset with random recurrent weights (the package starts them at zero)."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(build_config("xlstm", "tiny", Ids(), **overrides))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("_recurrent_kernel_"):
                parameter.normal_(std=0.1)
    return model


def logits_and_gradients(model, ids: torch.Tensor, backend: str) -> tuple[torch.Tensor, dict]:
    model.config.slstm_backend = backend
    model.zero_grad()
    out = model(ids, labels=ids, use_cache=False)
    out.loss.backward()
    return out.logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def relative(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value - reference).abs().max() / reference.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-4), (torch.float64, 1e-12)])
def test_native_backend_gives_the_vanilla_logits_and_gradients(dtype, tolerance):
    model = tiny_xlstm().to(dtype).train()
    ids = torch.randint(3, 96, (2, 45))
    logits, gradients = logits_and_gradients(model, ids, "vanilla")
    native_logits, native_gradients = logits_and_gradients(model, ids, "native")
    assert relative(native_logits, logits) <= tolerance
    assert max(relative(native_gradients[name], gradients[name]) for name in gradients) <= tolerance


def test_native_backward_passes_gradcheck_from_zeros_and_from_a_state():
    """Finite differences, float64, of y at every step and of the last state in its true scale
    (c and n times e^m: apart, c, n and m depend on where the stabiliser sits)."""
    torch.manual_seed(0)
    heads, batch, head_dim, steps = 2, 3, 4, 6
    wx = torch.randn(steps, heads, batch, 4 * head_dim, dtype=torch.float64, requires_grad=True)
    recurrent = (0.5 * torch.randn(heads, 4 * head_dim, head_dim, dtype=torch.float64)).requires_grad_()
    zeros = torch.zeros(4, heads, batch, head_dim, dtype=torch.float64)
    with torch.no_grad():
        _, state = SLSTMScan.apply(torch.randn_like(wx), recurrent, zeros, True)

    def scan(wx, recurrent, state, fresh):
        ys, (y, c, n, m) = SLSTMScan.apply(wx, recurrent, state, fresh)
        return ys, y, c * m.exp(), n * m.exp()

    assert torch.autograd.gradcheck(lambda w, r: scan(w, r, zeros, True), (wx, recurrent))
    assert torch.autograd.gradcheck(lambda w, r, s: scan(w, r, s, False), (wx, recurrent, state.requires_grad_()))


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-4), (torch.float64, 1e-12)])
def test_gradients_pass_through_a_carried_state_as_in_vanilla(dtype, tolerance):
    """Two chunks through one cache with the loss on both: what truncated backpropagation sees."""
    model = tiny_xlstm().to(dtype).train()
    ids = torch.randint(3, 96, (2, 40))
    gradients = {}
    for backend in ("vanilla", "native"):
        model.config.slstm_backend = backend
        model.zero_grad()
        first = model(ids[:, :25], labels=ids[:, :25], use_cache=True)
        second = model(ids[:, 25:], labels=ids[:, 25:], cache=first.cache, use_cache=True)
        (first.loss + second.loss).backward()
        gradients[backend] = {name: p.grad.clone() for name, p in model.named_parameters()}
    assert max(relative(gradients["native"][k], gradients["vanilla"][k]) for k in gradients["vanilla"]) <= tolerance


@pytest.mark.parametrize("first, then", [("vanilla", "native"), ("native", "vanilla"), ("native", "native")])
def test_cached_generation_equals_the_full_forward_across_backends(first, then):
    """A prefill, single steps and a chunk through one cache, the backend switched after the prefill."""
    model = tiny_xlstm(slstm_backend=first).eval()
    ids = torch.randint(3, 96, (2, 30))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        pieces = [model(ids[:, :17], use_cache=True)]
        model.config.slstm_backend = then
        for start, end in ((17, 18), (18, 19), (19, 30)):
            pieces.append(model(ids[:, start:end], cache=pieces[-1].cache, use_cache=True))
    assert relative(torch.cat([piece.logits for piece in pieces], dim=1), full) <= 1e-5


def test_a_checkpoint_saved_on_one_backend_trains_on_another(tmp_path):
    """One layout on disk: from the same checkpoint, a step on either backend moves the weights alike."""
    model = tiny_xlstm(slstm_backend="native").train()
    ids = torch.randint(3, 96, (2, 40))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(ids, labels=ids).loss.backward()
    optimizer.step()
    model.save_pretrained(tmp_path)
    saved = {name: p.detach().clone() for name, p in model.named_parameters()}
    updates = {}
    for backend in ("native", "vanilla"):
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path, slstm_backend=backend).train()
        assert loaded.config.slstm_backend == backend
        optimizer = torch.optim.SGD(loaded.parameters(), lr=1.0)
        loaded(ids, labels=ids).loss.backward()
        optimizer.step()
        updates[backend] = {name: p.detach() - saved[name] for name, p in loaded.named_parameters()}
    assert all(update.abs().max() > 0 for update in updates["native"].values())
    assert max(relative(updates["native"][name], updates["vanilla"][name]) for name in saved) <= 1e-4


def test_backend_choice_and_errors(monkeypatch):
    fp32 = torch.float32
    assert slstm_backend("auto", "cpu", fp32, 64) == "native"
    assert slstm_backend("vanilla", "cuda", fp32, 64) == "vanilla"
    assert slstm_backend("auto", "cuda", fp32, 48) == "native"  # flashrnn's kernel needs a power-of-two head width
    assert slstm_backend("auto", "cuda", torch.float64, 64) == "native"
    with pytest.raises(StrictDataclassClassValidationError, match="unknown slstm_backend 'cuda': choose one of auto"):
        build_config("xlstm", "tiny", Ids(), slstm_backend="cuda")
    monkeypatch.setattr(xlstm, "flashrnn", None)
    assert slstm_backend("auto", "cuda", fp32, 64) == "native"
    with pytest.raises(ImportError, match=r"needs the flashrnn package: pip install -e '\.\[cuda\]'"):
        tiny_xlstm(slstm_backend="flashrnn")(torch.ones(1, 4, dtype=torch.long))
    monkeypatch.setattr(xlstm, "flashrnn", lambda *args, **kwargs: None)
    with pytest.raises(ValueError, match="runs in float32, float16 or bfloat16: use slstm_backend 'native'"):
        tiny_xlstm(slstm_backend="flashrnn").double()(torch.ones(1, 4, dtype=torch.long))


FLASHRNN = importlib.util.find_spec("flashrnn") is not None and importlib.util.find_spec("triton") is not None


@pytest.mark.skipif(not FLASHRNN, reason="flashrnn and triton are not installed (the [cuda] extra)")
def test_flashrnn_kernel_agrees_with_native_in_the_triton_interpreter():
    """The GPU kernel's weight layout, checked on a CPU: Triton's interpreter runs the same kernel."""
    code = """
import torch
from test_slstm import logits_and_gradients, relative, tiny_xlstm
model = tiny_xlstm().train()
ids = torch.randint(3, 96, (3, 21))
logits, gradients = logits_and_gradients(model, ids, "native")
fused_logits, fused_gradients = logits_and_gradients(model, ids, "flashrnn")
model.eval()
with torch.no_grad():
    prefix = model(ids[:, :9], use_cache=True)
    rest = model(ids[:, 9:], cache=prefix.cache, use_cache=True).logits
print(relative(fused_logits, logits), max(relative(fused_gradients[k], gradients[k]) for k in gradients))
print(relative(torch.cat([prefix.logits, rest], dim=1), logits))
"""
    env = {**os.environ, "TRITON_INTERPRET": "1", "TRITON_F32_DEFAULT": "ieee"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), str(ROOT), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    logits_error, gradient_error, cache_error = map(float, result.stdout.split())
    assert logits_error <= 1e-5 and gradient_error <= 1e-4 and cache_error <= 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_flashrnn_on_cuda_agrees_with_native_in_bfloat16():
    if xlstm.flashrnn is None:
        pytest.skip("flashrnn is not installed (pip install -e '.[cuda]')")
    assert slstm_backend("auto", "cuda", torch.bfloat16, 64) == "flashrnn"
    model = tiny_xlstm().cuda().train()
    ids = torch.randint(3, 96, (4, 200), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits, gradients = logits_and_gradients(model, ids, "native")
        fused_logits, fused_gradients = logits_and_gradients(model, ids, "flashrnn")
    assert (fused_logits - logits).abs().max() <= 1e-2 * (logits.max() - logits.min())
    for name, gradient in gradients.items():
        similarity = torch.nn.functional.cosine_similarity(fused_gradients[name].flatten(), gradient.flatten(), dim=0)
        assert similarity >= 0.95, (name, similarity.item())  # a layout error scores near 0
