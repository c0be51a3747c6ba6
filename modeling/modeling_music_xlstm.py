"""MusicXLSTM: an xLSTM language model over music tokens, built on the `xlstm` package.

A stack of pre-norm residual blocks: mLSTM blocks (matrix memory, from `xlstm.xlstm_large`:
chunkwise kernels, so training cost grows linearly with length) with sLSTM blocks (scalar
memory with recurrent mixing, `xlstm.blocks.slstm`) at `config.slstm_at`.

Kernels: the mLSTM uses the package's pure-PyTorch chunkwise kernel on CPU and its Triton
kernels on CUDA, chosen per call from the input's device. The sLSTM keeps the package's
modules and parameters (one layout on disk: the "vanilla" backend's) and runs on a backend
chosen per call by `config.slstm_backend` and the input's device:

- "vanilla": the package's reference loop. Autograd records ~30 small ops per time step and
  copies its whole state buffer at each one in backward: quadratic in length.
- "native": the same math as one autograd function with a hand-written backward: the input
  projections for all steps in one matmul, ~15 ops per step forward, ~12 backward, and the
  recurrent weight gradient as one matmul after the loop. Pure PyTorch: runs everywhere.
- "flashrnn": the fused Triton sLSTM kernel of `flashrnn` (CUDA; no compiler needed, Triton
  builds it once per sequence length and batch size), fed the same weights permuted to its
  layout at each call.
- "auto": "flashrnn" on CUDA where it is installed and suits the head width, else "native".

Generation carries one fixed-size state per block (mLSTM: C, n, m; sLSTM: conv window and
y, c, n, m) in a `MusicXLSTMCache`: the cost of a new token does not depend on the context.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from mlstm_kernels.torch.backend_module import mLSTMBackend, mLSTMBackendConfig
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils import logging
from xlstm.blocks.slstm.block import sLSTMBlock, sLSTMBlockConfig
from xlstm.blocks.slstm.layer import sLSTMLayerConfig
from xlstm.components.feedforward import FeedForwardConfig
from xlstm.xlstm_large.components import RMSNorm
from xlstm.xlstm_large.model import mLSTMBlock, xLSTMLargeConfig

from .configuration_music_xlstm import MusicXLSTMConfig

try:  # the [cuda] extra: fused sLSTM kernels in Triton
    from flashrnn import flashrnn
except ImportError:
    flashrnn = None

logger = logging.get_logger(__name__)

KERNELS = {
    "cpu": {
        "chunkwise_kernel": "chunkwise--native_autograd",
        "sequence_kernel": "native_sequence__native",
        "step_kernel": "native",
    },
    "cuda": {
        "chunkwise_kernel": "chunkwise--triton_limit_chunk",
        "sequence_kernel": "native_sequence__triton",
        "step_kernel": "triton",
    },
}

State = tuple[torch.Tensor, ...]
# Linear layers of an mLSTM block by name suffix, for `_init_weights`; the rest are "projection".
INIT_ROLES = (
    ("fgate_preact", "forget_gate"),
    ("igate_preact", "input_gate"),
    ("out_proj", "residual"),
    ("proj_down", "residual"),
)


def slstm_scan(
    wx: torch.Tensor, recurrent: torch.Tensor, state: torch.Tensor, fresh: bool
) -> tuple[torch.Tensor, ...]:
    """The sLSTM recurrence of the package's vanilla backend, in fewer and larger ops.

    wx: input pre-activations with bias, [steps, heads, batch, 4 * head_dim], gates i, f, z, o
    in the last dimension. recurrent: the vanilla layout [heads, 4 * head_dim, head_dim].
    state: y, c, n, m as [4, heads, batch, head_dim]. fresh: the state is all zeros, where the
    package starts the stabiliser m at the input gate (its `n == 0` branch); after one step
    n >= 1, so the branch can only be taken at the first.

    Returns the pre-activations, the gate activations [steps, 4, ...] (exp(i - m),
    exp(log sigmoid f + m' - m), tanh z, sigmoid o), y, c and n for steps 0..S (index 0: the
    state given) and the last m: everything the hand-written backward needs.
    """
    steps, heads, batch, width = wx.shape
    head_dim = width // 4
    recurrent_t = recurrent.transpose(1, 2).contiguous()
    raw = torch.empty_like(wx)
    gates = wx.new_empty(steps, 4, heads, batch, head_dim)
    ys, cs, ns = (wx.new_empty(steps + 1, heads, batch, head_dim) for _ in range(3))
    ys[0], cs[0], ns[0] = state[0], state[1], state[2]
    m, log_f = state[3].clone(), torch.empty_like(state[3])
    gate_views = raw.view(steps, heads, batch, 4, head_dim)
    for t in range(steps):  # views made per step die with it: thousands kept alive would wake the full GC
        torch.baddbmm(wx[t], ys[t], recurrent_t, out=raw[t])
        i, f, z, o = gate_views[t].unbind(2)
        i_act, f_act, z_act, o_act = gates[t].unbind(0)
        c, n, c_next, n_next = cs[t], ns[t], cs[t + 1], ns[t + 1]
        torch.tanh(z, out=z_act)
        torch.sigmoid(o, out=o_act)
        if t == 0 and fresh:  # c = n = 0: the forget gate multiplies nothing
            m = i.clone()
            i_act.fill_(1.0)
            f_act.zero_()
            c_next.copy_(z_act)
            n_next.fill_(1.0)
        else:
            torch.add(nn.functional.logsigmoid(f), m, out=log_f)
            m = torch.maximum(i, log_f)
            torch.sub(i, m, out=i_act).exp_()
            torch.sub(log_f, m, out=f_act).exp_()
            torch.mul(f_act, c, out=c_next).addcmul_(i_act, z_act)
            torch.addcmul(i_act, f_act, n, out=n_next)
        torch.div(c_next, n_next, out=ys[t + 1]).mul_(o_act)
    return raw, gates, ys, cs, ns, m


class SLSTMScan(torch.autograd.Function):
    """`slstm_scan` with its backward written out: autograd would record every step's ops.

    The stabiliser m is a constant in the backward: y does not depend on it (c and n both
    carry its factor), so this is the gradient the vanilla backend computes through it. For
    the same reason the last m's gradient is implied by c's and n's and the given state's m
    gets dc * c + dn * n: gradients pass through a carried state as they do in vanilla.
    """

    @staticmethod
    def forward(ctx, wx: torch.Tensor, recurrent: torch.Tensor, state: torch.Tensor, fresh: bool):
        """Also without gradients: the saved tensors are only referenced, and dropped with `ctx`."""
        raw, gates, ys, cs, ns, m = slstm_scan(wx, recurrent, state, fresh)
        ctx.save_for_backward(recurrent, raw, gates, ys, cs, ns)
        return ys[1:], torch.stack((ys[-1], cs[-1], ns[-1], m))

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor, grad_last: torch.Tensor):
        recurrent, raw, gates, ys, cs, ns = ctx.saved_tensors
        steps, heads, batch, width = raw.shape
        i_act, f_act, z_act, o_act = gates.unbind(1)
        h = cs[1:] / ns[1:]
        forget_slope = torch.sigmoid(-raw.view(steps, heads, batch, 4, -1)[..., 1, :]) * f_act
        # d(loss)/d(pre-activations) per step from dy (the output's and the recurrence's), dc, dn:
        coefficients = torch.stack(
            (
                o_act,  # dh = dy * o
                ns[1:].reciprocal(),  # dc += dh / n
                h / ns[1:],  # dn -= dh * h / n
                h * o_act * (1 - o_act),  # do = dy * h * o (1 - o)
                i_act * (1 - z_act * z_act),  # dz = dc * i (1 - tanh^2)
                z_act * i_act,  # di = dc * tanh z * i + dn * i
                i_act,
                cs[:-1] * forget_slope,  # df = (dc * c' + dn * n') * f * sigmoid(-f)
                ns[:-1] * forget_slope,
                f_act,  # dc' = dc * f, dn' = dn * f
            ),
            dim=1,
        )
        grad_raw = torch.empty_like(raw)
        grad_gates = grad_raw.view(steps, heads, batch, 4, -1)
        dy, dc, dn = grad_y[-1] + grad_last[0], grad_last[1].clone(), grad_last[2].clone()
        dh = torch.empty_like(dc)
        for t in range(steps - 1, -1, -1):
            if t < steps - 1:
                torch.baddbmm(grad_y[t], grad_raw[t + 1], recurrent, out=dy)
            o, inv_n, h_n, d_o, d_z, d_i, i, d_fc, d_fn, f = coefficients[t].unbind(0)
            grad_i, grad_f, grad_z, grad_o = grad_gates[t].unbind(2)
            torch.mul(dy, o, out=dh)
            dc.addcmul_(dh, inv_n)
            dn.addcmul_(dh, h_n, value=-1.0)
            torch.mul(dy, d_o, out=grad_o)
            torch.mul(dc, d_z, out=grad_z)
            torch.mul(dc, d_i, out=grad_i).addcmul_(dn, i)
            torch.mul(dc, d_fc, out=grad_f).addcmul_(dn, d_fn)
            dc.mul_(f)
            dn.mul_(f)
        grad_recurrent = torch.bmm(
            grad_raw.transpose(0, 1).reshape(heads, steps * batch, width).transpose(1, 2),
            ys[:-1].transpose(0, 1).reshape(heads, steps * batch, -1),
        )
        grad_state = torch.stack((torch.bmm(grad_raw[0], recurrent), dc, dn, dc * cs[0] + dn * ns[0]))
        return grad_raw, grad_recurrent, grad_state, None


def slstm_flashrnn(wx: torch.Tensor, recurrent: torch.Tensor, state: torch.Tensor, fresh: bool):
    """`SLSTMScan` on flashrnn's fused Triton kernel, the weights permuted to its layout.

    flashrnn takes inputs [batch, steps, 4, heads, head_dim], the recurrent weights as
    [4, heads, out, in] and states [4, batch, 1, heads, head_dim]; it finds a fresh state itself
    (per element, not per batch as the package: the same for our states, n = 0 only at the start).
    In float32 its matmuls use TF32 unless TRITON_F32_DEFAULT=ieee.
    """
    if flashrnn is None:
        raise ImportError(
            "slstm_backend 'flashrnn' needs the flashrnn package: pip install -e '.[cuda]', or use 'native'"
        )
    if wx.dtype == torch.float64:
        raise ValueError("flashrnn's sLSTM kernel runs in float32, float16 or bfloat16: use slstm_backend 'native'")
    steps, heads, batch, width = wx.shape
    head_dim = width // 4
    h, last = flashrnn(
        wx.view(steps, heads, batch, 4, head_dim).permute(2, 0, 3, 1, 4).contiguous(),
        recurrent.view(heads, 4, head_dim, head_dim).transpose(0, 1).contiguous(),
        wx.new_zeros(4, heads, head_dim, dtype=torch.float32),  # the bias is in wx
        states=state.transpose(1, 2).unsqueeze(2).contiguous(),
        function="slstm",
        backend="triton_fused",
        dtype=str(wx.dtype).removeprefix("torch."),
    )
    return h[0].permute(1, 2, 0, 3), last[:, :, 0].transpose(1, 2)


# each returns y for every step [steps, heads, batch, head_dim] and the last y, c, n, m
SLSTM_RUNNERS = {"native": SLSTMScan.apply, "flashrnn": slstm_flashrnn}


def slstm_backend(choice: str, device_type: str, dtype: torch.dtype, head_dim: int) -> str:
    """The backend that `choice` (a `config.slstm_backend`) names for inputs on `device_type`.

    "auto" takes flashrnn's kernel on CUDA where it is installed and suits the head width (a
    power of two, at least 16: the `small` preset's 64 does, `base`'s 192 does not) and the
    dtype (not float64).
    """
    if choice != "auto":
        return choice
    fused = device_type == "cuda" and dtype != torch.float64 and head_dim >= 16 and head_dim & (head_dim - 1) == 0
    if fused and flashrnn is None:
        logger.warning_once(
            "MusicXLSTM on CUDA runs its sLSTM blocks in PyTorch ('native'), not flashrnn's fused kernel: "
            "flashrnn is not installed (pip install -e '.[cuda]')"
        )
    return "flashrnn" if fused and flashrnn is not None else "native"


def kept(owner: nn.Module, parameters: Sequence[torch.Tensor], build) -> tuple[torch.Tensor, ...]:
    """`build()` (tensors derived from `parameters`), kept on `owner` until one of them changes
    (an optimizer step or a load bumps its version): made once per model, not once per step.
    One such value per owner."""
    key = tuple((p.data_ptr(), p._version) for p in parameters)
    if getattr(owner, "_kept_key", None) != key:
        owner._kept, owner._kept_key = build(), key
    return owner._kept


def fused_linear(owner: nn.Module, layers: Sequence[nn.Linear], x: torch.Tensor) -> torch.Tensor:
    """`x` (`[b, in]`) through `layers` at once, their outputs side by side: a generation step
    calls one matmul where the package calls one per layer. The stacked weights are kept as
    `[in, out]`: at batch 1 on a CPU, `x @ W` reads the weights 1.5x faster than `x @ W.T`
    (48 matrices of 256 x 1168 and 512 x 256, read from memory on 2 cores: 4.9 -> 3.0 ms), and
    the stacked copy costs that layout nothing."""

    def build() -> tuple[torch.Tensor, torch.Tensor]:
        bias = [layer.weight.new_zeros(layer.out_features) if layer.bias is None else layer.bias for layer in layers]
        return torch.cat([layer.weight for layer in layers]).t().contiguous(), torch.cat(bias)

    weight, bias = kept(owner, [p for layer in layers for p in (layer.weight, layer.bias) if p is not None], build)
    return torch.addmm(bias, x, weight)


def rms_norm(norm: RMSNorm, x: torch.Tensor) -> torch.Tensor:
    """The package's `RMSNorm` (float32 reduction, weight, no bias) as one fused call."""
    return F.rms_norm(x.float(), (x.shape[-1],), eps=norm.eps).to(x.dtype) * norm.weight


class MusicXLSTMCache:
    """The recurrent state of every block, and how many tokens it has seen."""

    def __init__(self, n_layer: int) -> None:
        self.states: list[State | None] = [None] * n_layer
        self.seen_tokens = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens


class MusicXLSTMMLSTMBlock(nn.Module):
    """The package's mLSTM block (norm, mLSTM layer, norm, SwiGLU) returning its final state.

    Its "inference" mode pads any length to the chunk size inside the kernel call and
    steps single tokens with the step kernel; gradients flow through the chunkwise kernel.
    """

    def __init__(self, config: MusicXLSTMConfig) -> None:
        super().__init__()
        large_config = xLSTMLargeConfig(
            embedding_dim=config.n_embd,
            num_heads=config.num_heads,
            num_blocks=config.n_layer,
            vocab_size=config.vocab_size,
            norm_eps=config.layer_norm_epsilon,
            qk_dim_factor=config.qk_dim_factor,
            v_dim_factor=config.v_dim_factor,
            ffn_proj_factor=config.mlstm_proj_factor,
            gate_soft_cap=config.gate_soft_cap,
            mode="inference",
            chunk_size=config.chunk_size,
            return_last_states=True,
            inference_state_dtype="float32",
            **KERNELS["cpu"],
        )
        self.block = mLSTMBlock(large_config)
        self._backends = {"cpu": self.block.mlstm_layer.mlstm_backend}  # a plain dict: no parameters inside
        for name, module in self.block.named_modules():  # `_init_weights` sees leaf modules only
            if isinstance(module, nn.Linear):
                module.init_role = next((role for suffix, role in INIT_ROLES if name.endswith(suffix)), "projection")

    def _backend(self, device_type: str) -> mLSTMBackend:
        if device_type not in self._backends:
            kernels = KERNELS.get(device_type, KERNELS["cpu"])
            backend_config = self.block.mlstm_layer.config.mlstm_backend
            self._backends[device_type] = mLSTMBackend(mLSTMBackendConfig(**{**vars(backend_config), **kernels}))
        return self._backends[device_type]

    def forward(self, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        if x.shape[1] == 1 and state is not None and not torch.is_grad_enabled():
            return self.step(x, state)
        self.block.mlstm_layer.mlstm_backend = self._backend(x.device.type)
        return self.block(x, state)

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One token (`[b, 1, n_embd]`) from a carried state, updated in place: the package's block
        around its native step kernel (`mlstm_recurrent_step__native_fw`), the same math in fewer
        operations: one projection for q, k, v and the three gates, one for both halves of the
        feed-forward, the state written where it lies. Without gradients only (it writes in place)."""
        block, layer = self.block, self.block.mlstm_layer
        batch, heads = x.shape[0], layer.config.num_heads
        c, n, m = (t.contiguous() for t in state)  # [b, h, k, v], [b, h, k], [b, h, 1]: written in place
        gates = (layer.q, layer.k, layer.v, layer.ogate_preact, layer.igate_preact, layer.fgate_preact)
        projection = fused_linear(layer, gates, rms_norm(block.norm_mlstm, x[:, 0]))
        q, k, v, o, i_f = projection.split([layer.qk_dim, layer.qk_dim, layer.v_dim, layer.v_dim, 2 * heads], dim=-1)
        cap = layer.config.gate_soft_cap
        i, f = (cap * torch.tanh(i_f.float() / cap))[..., None].chunk(2, dim=1)  # [b, h, 1] each
        log_f = F.logsigmoid(f) + m
        m_new = torch.maximum(log_f, i)
        f_act, i_act = torch.exp(log_f - m_new), torch.exp(i - m_new)
        q, k, v = (t.float().view(batch, heads, -1) for t in (q, k, v))
        per_head = (batch * heads, k.shape[-1], v.shape[-1])
        keys, values = (k * i_act).view(*per_head[:2], 1), v.reshape(per_head[0], 1, -1)
        c.mul_(f_act[..., None]).view(per_head).baddbmm_(keys, values)
        n.mul_(f_act).addcmul_(i_act, k)
        m.copy_(m_new)
        q = q * k.shape[-1] ** -0.5
        numerator = torch.bmm(q.view(per_head[0], 1, -1), c.view(per_head)).view(batch, heads, -1)
        eps = layer.mlstm_backend.config.eps
        denominator = torch.maximum((q * n).sum(-1, keepdim=True).abs(), torch.exp(-m_new)) + eps
        h = F.layer_norm(numerator / denominator, (v.shape[-1],), eps=layer.multihead_norm.eps).view(batch, -1)
        h = layer.multihead_norm._apply_weight_bias(h.to(x.dtype))
        x = x + layer.out_proj(torch.sigmoid(o) * h)[:, None]
        ffn = block.ffn
        gate, up = fused_linear(ffn, (ffn.proj_up_gate, ffn.proj_up), rms_norm(block.norm_ffn, x[:, 0])).chunk(2, -1)
        return x + ffn.proj_down(F.silu(gate) * up)[:, None], (c, n, m)


class MusicXLSTMSLSTMBlock(nn.Module):
    """The package's sLSTM block (norm, sLSTM layer, norm, gated GELU), returning its final state.

    The package's modules hold the parameters; its layer's `forward` runs only on the vanilla
    backend. The others take the layer's conv and its four head-wise gate projections (one
    matmul for all gates and steps) and run the recurrence themselves.
    """

    def __init__(self, config: MusicXLSTMConfig, block_idx: int) -> None:
        super().__init__()
        self.config = config
        self.block = sLSTMBlock(
            sLSTMBlockConfig(
                slstm=sLSTMLayerConfig(
                    embedding_dim=config.n_embd,
                    num_heads=config.num_heads,
                    backend="vanilla",
                    conv1d_kernel_size=config.conv1d_kernel_size,
                    bias_init="powerlaw_blockdependent",
                    dtype="float32",
                ),
                feedforward=FeedForwardConfig(proj_factor=config.slstm_proj_factor, act_fn="gelu"),
                _num_blocks=config.n_layer,
                _block_idx=block_idx,
            )
        )

    def forward(self, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        if x.shape[1] == 1 and state is not None and not torch.is_grad_enabled():
            return self.step(x, state)
        fresh = state is None  # the package's first-step branch (see `slstm_scan`); a cache's n is >= 1
        if fresh:  # an explicit zero conv window: with None a short prompt returns a short one
            batch, width = x.shape[0], x.shape[-1]
            conv_window = max(self.config.conv1d_kernel_size - 1, 0)
            state = (x.new_zeros(batch, conv_window, width), x.new_zeros(4, batch, width))
        head_dim = x.shape[-1] // self.config.num_heads
        backend = slstm_backend(self.config.slstm_backend, x.device.type, x.dtype, head_dim)
        if backend == "vanilla":
            y, last = self.block.xlstm(self.block.xlstm_norm(x), *state, return_last_state=True)
            state = (last["conv_state"], last["slstm_state"])
        else:
            y, state = self.slstm_layer(self.block.xlstm_norm(x), *state, backend, fresh)
        x = x + y
        x = x + self.block.ffn(self.block.ffn_norm(x))
        return x, state

    def step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One token (`[b, 1, n_embd]`) from a carried state, updated in place: `slstm_layer` and
        `slstm_scan` for a single step, with every gate's input and recurrent weights in one
        head-wise matrix (`step_weights`), so all pre-activations are one batched matmul."""
        layer, block = self.block.xlstm, self.block
        conv_state, slstm_state = (t.contiguous() for t in state)  # written in place
        batch, width = x.shape[0], x.shape[-1]
        heads = layer.config.num_heads
        x_norm = block.xlstm_norm(x[:, 0])
        x_conv = x_norm
        if self.config.conv1d_kernel_size > 0:
            window = torch.cat([conv_state, x_norm[:, None]], dim=1)  # [b, kernel, width], oldest first
            conv = layer.conv1d.conv
            x_conv = torch.sum(window * conv.weight[:, 0].T, dim=1)
            x_conv = layer.conv_act_fn(x_conv if conv.bias is None else x_conv + conv.bias)
            conv_state.copy_(window[:, 1:])
        cell = slstm_state.view(4, batch, heads, -1).transpose(1, 2)  # y, c, n, m as [heads, b, head_dim]
        y, c, n, m = cell.unbind(0)
        inputs = torch.cat([t.view(batch, heads, -1) for t in (x_conv, x_norm)], dim=-1).transpose(0, 1)
        weights, bias = self.step_weights()
        raw = torch.baddbmm(bias, torch.cat([inputs.to(cell.dtype), y], dim=-1), weights)  # [heads, b, 4 * head_dim]
        i, f, z, o = raw.view(heads, batch, 4, -1).unbind(2)
        log_f = F.logsigmoid(f) + m
        m_new = torch.maximum(i, log_f)
        i_act, f_act = torch.exp(i - m_new), torch.exp(log_f - m_new)
        c.mul_(f_act).addcmul_(i_act, torch.tanh(z))
        n.mul_(f_act).add_(i_act)
        m.copy_(m_new)
        torch.mul(c / n, torch.sigmoid(o), out=y)
        out = layer.dropout(y.to(x.dtype).transpose(0, 1)[:, :, None])  # [b, heads, 1, head_dim]
        x = x + layer.group_norm(out).transpose(1, 2).reshape(batch, 1, width)
        return x + block.ffn(block.ffn_norm(x)), (conv_state, slstm_state)

    def step_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per head, `[x_conv, x, y] @ weights + bias` gives the cell's gates i, f, z, o: rows
        for the conv input (i, f), the input (z, o) and the last output (the recurrent kernel),
        zeros where a gate does not read an input."""
        layer = self.block.xlstm
        gates = (layer.fgate, layer.igate, layer.zgate, layer.ogate)  # the cell's slots i, f, z, o (see slstm_layer)
        recurrent = layer.slstm_cell._recurrent_kernel_  # [heads, 4 * head_dim, head_dim]
        bias = layer.slstm_cell._bias_

        def build() -> tuple[torch.Tensor, torch.Tensor]:
            heads, head_dim = recurrent.shape[0], recurrent.shape[-1]
            weights = recurrent.new_zeros(heads, 3 * head_dim, 4 * head_dim)
            for slot, gate in enumerate(gates):  # a gate's weight is [heads, out, in]
                rows = slice(0, head_dim) if slot < 2 else slice(head_dim, 2 * head_dim)
                weights[:, rows, slot * head_dim : (slot + 1) * head_dim] = gate.weight.transpose(1, 2)
            weights[:, 2 * head_dim :] = recurrent.transpose(1, 2)
            return weights, bias.view(4, heads, head_dim).transpose(0, 1).reshape(heads, 1, -1)

        return kept(self, [gate.weight for gate in gates] + [recurrent, bias], build)

    def slstm_layer(
        self, x: torch.Tensor, conv_state: torch.Tensor, slstm_state: torch.Tensor, backend: str, fresh: bool
    ) -> tuple[torch.Tensor, State]:
        """The package's `sLSTMLayer.forward` with the recurrence on `backend`."""
        layer = self.block.xlstm
        batch, steps, width = x.shape
        heads = layer.config.num_heads
        head_dim = width // heads
        if self.config.conv1d_kernel_size > 0:
            x_conv, conv_state = layer.conv1d(x, conv_state, return_last_state=True)
            x_conv = layer.conv_act_fn(x_conv)
        else:
            x_conv = x
        # the layer feeds its gates (fgate, igate, zgate, ogate) into the cell's slots i, f, z, o
        weights = torch.stack([layer.fgate.weight, layer.igate.weight, layer.zgate.weight, layer.ogate.weight])
        inputs = torch.stack([x_conv, x]).view(2, batch, steps, heads, head_dim)
        wx = torch.einsum("kbsni,kgnoi->snbkgo", inputs, weights.view(2, 2, heads, head_dim, head_dim))
        bias = layer.slstm_cell._bias_.view(4, heads, head_dim).transpose(0, 1).unsqueeze(1)  # gate-major on disk
        wx = (wx.reshape(steps, heads, batch, 4, head_dim) + bias).reshape(steps, heads, batch, 4 * head_dim)
        state = slstm_state.view(4, batch, heads, head_dim).transpose(1, 2)
        recurrent = layer.slstm_cell._recurrent_kernel_
        dtype = torch.promote_types(x.dtype, torch.float32)  # the recurrence runs in float32 at least ...
        if backend == "flashrnn" and torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)  # ... but the fused kernel follows autocast
        with torch.autocast(x.device.type, enabled=False):
            ys, last = SLSTM_RUNNERS[backend](
                wx.to(dtype).contiguous(), recurrent.to(dtype), state.to(dtype).contiguous(), fresh
            )
        y = layer.dropout(ys.to(x.dtype).permute(2, 1, 0, 3))  # [batch, heads, steps, head_dim]
        y = layer.group_norm(y).transpose(1, 2).reshape(batch, steps, width)
        return y, (conv_state, last.transpose(1, 2).reshape(4, batch, width).to(slstm_state.dtype))


class MusicXLSTMPreTrainedModel(PreTrainedModel):
    config: MusicXLSTMConfig
    config_class = MusicXLSTMConfig
    base_model_prefix = "backbone"
    _no_split_modules = ["MusicXLSTMMLSTMBlock", "MusicXLSTMSLSTMBlock"]
    _is_stateful = True
    supports_gradient_checkpointing = False

    def kernels(self, device_type: str | None = None) -> dict[str, str]:
        """What a forward on `device_type` (default: where the weights are) runs: the mLSTM's
        chunkwise kernel (training and prefill) and step kernel, and the sLSTM's backend."""
        device_type = device_type or self.device.type
        mlstm = KERNELS.get(device_type, KERNELS["cpu"])
        head_dim = self.config.n_embd // self.config.num_heads
        slstm = slstm_backend(self.config.slstm_backend, device_type, self.dtype, head_dim)
        return {"mlstm": mlstm["chunkwise_kernel"], "mlstm_step": mlstm["step_kernel"], "slstm": slstm}

    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2 normal init for embeddings and mLSTM projections, with the xLSTM gate biases
        (forget gates open, input gates nearly shut) that the package leaves at torch's
        defaults. sLSTM blocks keep the package's own initialisation."""
        std = self.config.initializer_range
        if isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Linear) and hasattr(module, "init_role"):
            residual = module.init_role == "residual"
            init.normal_(module.weight, mean=0.0, std=std / math.sqrt(2 * self.config.n_layer) if residual else std)
            if module.bias is None:
                return
            if module.init_role == "forget_gate":
                init.copy_(module.bias, torch.linspace(3.0, 6.0, module.bias.numel()))
            elif module.init_role == "input_gate":
                init.constant_(module.bias, -10.0)
            else:
                init.zeros_(module.bias)


class MusicXLSTMModel(MusicXLSTMPreTrainedModel):
    def __init__(self, config: MusicXLSTMConfig) -> None:
        super().__init__(config)
        self.embedding = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(
            [
                MusicXLSTMSLSTMBlock(config, i) if i in config.slstm_at else MusicXLSTMMLSTMBlock(config)
                for i in range(config.n_layer)
            ]
        )
        self.norm_f = RMSNorm(config.n_embd, eps=config.layer_norm_epsilon, use_weight=True, use_bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embedding

    def set_input_embeddings(self, embeddings: nn.Embedding) -> None:
        self.embedding = embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        cache: MusicXLSTMCache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """`attention_mask` may only mark padding at the end (training batches, labels -100):
        the sLSTM recurrence cannot skip pad tokens, so left-padded prompts are refused. Checked
        when a sequence starts: later generation steps only append to a prompt checked then."""
        if cache is None and attention_mask is not None and (attention_mask.diff(dim=1) > 0).any():
            raise ValueError(
                "MusicXLSTM cannot skip left padding inside its recurrence: give prompts of equal length "
                "or generate them one at a time"
            )
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        if use_cache and cache is None:
            cache = MusicXLSTMCache(self.config.n_layer)
        cache = cache if use_cache else None
        hidden_states = self.embedding(input_ids) if inputs_embeds is None else inputs_embeds
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        for i, block in enumerate(self.blocks):
            hidden_states, state = block(hidden_states, cache.states[i] if cache is not None else None)
            if cache is not None:
                cache.states[i] = state
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
        if cache is not None:
            cache.seen_tokens += hidden_states.shape[1]
        return BaseModelOutputWithPast(
            last_hidden_state=self.norm_f(hidden_states), cache=cache, hidden_states=all_hidden_states
        )


# Copied from modeling_music_mamba.MusicMambaForCausalLM with MusicMamba->MusicXLSTM, Cache->MusicXLSTMCache
class MusicXLSTMForCausalLM(MusicXLSTMPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "backbone.embedding.weight"}

    def __init__(self, config: MusicXLSTMConfig) -> None:
        super().__init__(config)
        self.backbone = MusicXLSTMModel(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, embeddings: nn.Embedding) -> None:
        self.backbone.set_input_embeddings(embeddings)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """transformers' save, with the base model mapped to `AutoModel` in the saved `auto_map`
        too (transformers maps only the saved class): both load from the folder as remote code."""
        if self._auto_class is not None:
            module = type(self.backbone).__module__.rpartition(".")[2]
            self.config.auto_map = {
                **(getattr(self.config, "auto_map", None) or {}),
                "AutoModel": f"{module}.{type(self.backbone).__name__}",
            }
        super().save_pretrained(save_directory, **kwargs)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        cache: MusicXLSTMCache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            cache=cache,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
        )
        hidden_states = outputs.last_hidden_state
        logits = self.lm_head(hidden_states[:, -logits_to_keep:] if logits_to_keep else hidden_states).float()
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, cache=outputs.cache, hidden_states=outputs.hidden_states
        )


__all__ = ["MusicXLSTMCache", "MusicXLSTMForCausalLM", "MusicXLSTMModel", "MusicXLSTMPreTrainedModel"]
