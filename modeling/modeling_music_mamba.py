"""MusicMamba: a Mamba-2 (state space duality) language model over music tokens.

Pre-norm residual blocks (RMSNorm) around a Mamba-2 mixer, tied embeddings. The mixer's
parameter names are those of `mamba_ssm.Mamba2` (`in_proj`, `conv1d`, `dt_bias`, `A_log`,
`D`, `norm`, `out_proj`), so weights move between this file and mamba_ssm.

Training and prefill run a chunked scan (`config.scan_backend`): `mamba_ssm`'s Triton kernel
on CUDA where its Python files and triton are installed, else the pure-PyTorch SSD algorithm
below (a few einsums per chunk, no Python loop over time steps). Generation carries, per layer,
the last `d_conv` conv inputs and a `[heads, headdim, d_state]` state in a `DynamicCache`: the
cost of a new token does not depend on how many came before.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils import logging

from .configuration_music_mamba import MusicMambaConfig

logger = logging.get_logger(__name__)

TRITON_SCAN = "mamba_ssm.ops.triton.ssd_combined"


def import_triton_scan() -> tuple[object | None, str | None]:
    """mamba_ssm's Triton chunked scan (`mamba_chunk_scan_combined`), or None and why not.

    The scan is Triton and Python alone, but `mamba_ssm/__init__.py` imports the compiled
    `selective_scan_cuda` first, which an install without compiling (`MAMBA_SKIP_CUDA_BUILD=TRUE`,
    `make cuda-install`, the offline GPU kit) lacks: a plain import then fails, and the model would
    fall back to the PyTorch scan on a GPU. So when the plain import fails, the scan's modules are
    imported under a bare `mamba_ssm` package whose `__init__` does not run; that stand-in leaves
    `sys.modules` afterwards, so `import mamba_ssm` elsewhere behaves as it did.
    """
    try:
        return importlib.import_module(TRITON_SCAN).mamba_chunk_scan_combined, None
    except ImportError:
        spec = importlib.util.find_spec("mamba_ssm")
    if spec is None:
        return None, "mamba_ssm is not installed (pip install -e '.[cuda]')"
    package = sys.modules["mamba_ssm"] = importlib.util.module_from_spec(spec)  # not executed
    try:
        return importlib.import_module(TRITON_SCAN).mamba_chunk_scan_combined, None
    except Exception as error:  # a missing triton, or a broken install: said, and the scan runs in PyTorch
        missing = isinstance(error, ModuleNotFoundError) and error.name
        return None, f"{missing} is not installed" if missing else f"mamba_ssm's Triton scan fails to import ({error})"
    finally:
        if sys.modules.get("mamba_ssm") is package:
            del sys.modules["mamba_ssm"]


mamba_chunk_scan_combined, TRITON_SCAN_MISSING = import_triton_scan()


def scan_kernel(choice: str, device_type: str) -> str:
    """The chunked scan that `choice` (a `config.scan_backend`) names for inputs on `device_type`:
    "triton" (mamba_ssm's kernel) or "torch". Asking for "triton" where it cannot run is an error,
    and "auto" falling back to PyTorch on CUDA says so once: a silent fallback costs a GPU run."""
    if choice == "torch":
        return "torch"
    missing = TRITON_SCAN_MISSING or (None if device_type == "cuda" else f"the inputs are on {device_type}, not CUDA")
    if choice == "triton" and missing:
        raise RuntimeError(f"scan_backend 'triton' cannot run: {missing}; use scan_backend 'auto' or 'torch'")
    if missing and device_type == "cuda":
        logger.warning_once(f"MusicMamba on CUDA scans in PyTorch, not with mamba_ssm's Triton kernel: {missing}")
    return "torch" if missing else "triton"


def segment_decay(dA_cumsum: torch.Tensor) -> torch.Tensor:
    """`out[..., i, j] = exp(dA[j+1] + ... + dA[i])` for `j <= i`, else 0, from the cumulative sums."""
    length = dA_cumsum.size(-1)
    lower = torch.tril(torch.ones(length, length, dtype=torch.bool, device=dA_cumsum.device))
    difference = dA_cumsum[..., :, None] - dA_cumsum[..., None, :]
    return torch.exp(difference.masked_fill(~lower, float("-inf")))


def ssd_chunked_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Mamba-2 scan `h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t`, `y_t = C_t h_t`, by chunks.

    Within a chunk the output is a decay-weighted, causally masked product `(C B^T) x`;
    chunk states are passed on by a short recurrence over chunks. Shapes: x `[b, l, h, p]`,
    dt `[b, l, h]` (after softplus), A `[h]`, B and C `[b, l, g, n]`, state `[b, h, p, n]`.
    Heads are split as `[g, r]` so that `C B^T` is computed once per group. Every einsum
    has two operands: with three, torch may pick an order with `[b, c, l, l, h, n]`
    intermediates (gigabytes at 4k tokens). Returns y `[b, l, h, p]` and the final state.
    """
    batch, length, heads, headdim = x.shape
    groups, d_state = B.shape[2], B.shape[3]
    pad = -length % chunk_size
    if pad:  # dt = 0 on padding neither adds input nor decays the state: the final state stays exact
        x, dt, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
    chunks = x.shape[1] // chunk_size
    shape = (batch, chunks, chunk_size, groups)
    x_dt = (x * dt[..., None]).reshape(*shape, -1, headdim)  # [b, c, l, g, r, p]
    B, C = B.reshape(*shape, d_state), C.reshape(*shape, d_state)  # [b, c, l, g, n]
    dA = (dt * A).reshape(*shape, -1).permute(0, 3, 4, 1, 2)  # [b, g, r, c, l]
    dA_cumsum = torch.cumsum(dA, dim=-1)
    to_chunk_layout = (0, 3, 4, 1, 2)  # [b, g, r, c, l] -> [b, c, l, g, r]

    # 1. outputs from inputs of the same chunk
    scores = torch.einsum("bclgn,bcsgn->bgcls", C, B)[:, :, None] * segment_decay(dA_cumsum)
    y = torch.einsum("bgrcls,bcsgrp->bclgrp", scores, x_dt)
    # 2. each chunk's own final state
    decay_to_end = torch.exp(dA_cumsum[..., -1:] - dA_cumsum).permute(to_chunk_layout)
    states = torch.einsum("bclgn,bclgrp->bcgrpn", B, x_dt * decay_to_end[..., None])
    # 3. states carried across chunks
    if initial_state is None:
        initial_state = states.new_zeros(batch, heads, headdim, d_state)
    initial_state = initial_state.reshape(batch, 1, groups, -1, headdim, d_state).to(states.dtype)
    states = torch.cat([initial_state, states], dim=1)
    chunk_decay = segment_decay(F.pad(dA_cumsum[..., -1], (1, 0)).cumsum(dim=-1))  # [b, g, r, c+1, c+1]
    states = torch.einsum("bgrzc,bcgrpn->bzgrpn", chunk_decay, states)
    states, final_state = states[:, :-1], states[:, -1]
    # 4. outputs from the state entering each chunk
    decay_in = torch.exp(dA_cumsum).permute(to_chunk_layout)
    y = y + torch.einsum("bclgn,bcgrpn->bclgrp", C, states) * decay_in[..., None]

    y = y.reshape(batch, chunks * chunk_size, heads, headdim)
    return y[:, :length], final_state.reshape(batch, heads, headdim, d_state)


class MusicMambaRMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)


class MusicMambaGatedRMSNorm(MusicMambaRMSNorm):
    """`RMSNorm(x * silu(z))` per group of channels, as `mamba_ssm`'s RMSNormGated (norm after gate)."""

    def __init__(self, size: int, group_size: int, eps: float) -> None:
        super().__init__(size, eps)
        self.group_size = group_size

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float() * F.silu(gate.float())
        groups = F.rms_norm(x.view(*x.shape[:-1], -1, self.group_size), (self.group_size,), eps=self.eps)
        return self.weight * groups.view_as(x).to(dtype)


class MusicMambaMixer(nn.Module):
    """The Mamba-2 mixer: projection, causal conv, selective scan, gated norm, projection."""

    def __init__(self, config: MusicMambaConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.d_inner, self.nheads, self.headdim = config.d_inner, config.nheads, config.headdim
        self.ngroups, self.d_state, self.d_conv = config.ngroups, config.d_state, config.d_conv
        self.chunk_size, self.scan_backend = config.chunk_size, config.scan_backend
        self.conv_dim = self.d_inner + 2 * self.ngroups * self.d_state
        self.in_proj = nn.Linear(config.n_embd, self.d_inner + self.conv_dim + self.nheads, bias=False)
        self.conv1d = nn.Conv1d(
            self.conv_dim, self.conv_dim, self.d_conv, groups=self.conv_dim
        )  # weights; see `_conv`
        self.dt_bias = nn.Parameter(torch.empty(self.nheads))
        self.A_log = nn.Parameter(torch.empty(self.nheads))
        self.D = nn.Parameter(torch.empty(self.nheads))
        self.norm = MusicMambaGatedRMSNorm(self.d_inner, self.d_inner // self.ngroups, config.layer_norm_epsilon)
        self.out_proj = nn.Linear(self.d_inner, config.n_embd, bias=False)

    def forward(
        self, hidden_states: torch.Tensor, cache: Cache | None = None, padding: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`padding` (`[b, l]`, True on pad tokens) makes those steps no-ops: zero conv
        input and dt = 0, so the state neither decays nor takes input there."""
        batch, length, _ = hidden_states.shape
        stepping = length == 1 and cache is not None and cache.get_recurrent_state(self.layer_idx) is not None
        if stepping and not torch.is_grad_enabled():  # in place: with gradients, the scan below
            return self._step(hidden_states, cache)
        gate, xBC, dt = self.in_proj(hidden_states).split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
        if padding is not None:
            xBC = xBC.masked_fill(padding[..., None], 0.0)
            dt = dt.masked_fill(padding[..., None], -1e4)  # softplus(-1e4) == 0 in any float type
        state = cache.get_recurrent_state(self.layer_idx) if cache is not None else None  # before `_conv` updates
        xBC = F.silu(self._conv(xBC, cache))
        x, B, C = xBC.split([self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        x = x.reshape(batch, length, self.nheads, self.headdim)
        B = B.reshape(batch, length, self.ngroups, self.d_state)
        C = C.reshape(batch, length, self.ngroups, self.d_state)
        y, state = self._scan(x, dt, B, C, state)
        if cache is not None:
            cache.update_recurrent_state(state, self.layer_idx)
        y = y + x * self.D[:, None].to(x.dtype)
        return self.out_proj(self.norm(y.reshape(batch, length, self.d_inner), gate))

    def _conv(self, xBC: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        """Causal depthwise conv, continuing from the cached last `d_conv` inputs if any.

        Written as `d_conv` shifted products: PyTorch's depthwise `conv1d` backward on CPU
        took 70 % of a training step.
        """
        length = xBC.shape[1]
        previous = cache.get_conv_state(self.layer_idx) if cache is not None else None
        if previous is None:
            history = xBC.new_zeros(xBC.shape[0], self.d_conv - 1, self.conv_dim)
        else:
            history = previous[..., 1:].transpose(1, 2).to(xBC.dtype)
        window = torch.cat([history, xBC], dim=1)  # [b, d_conv - 1 + l, conv_dim]
        if cache is not None:
            cache.update_conv_state(
                window[:, -self.d_conv :].transpose(1, 2), self.layer_idx, conv_kernel_size=self.d_conv
            )
        weight = self.conv1d.weight[:, 0]  # [conv_dim, d_conv]
        out = self.conv1d.bias + window[:, :length] * weight[:, 0]
        for k in range(1, self.d_conv):
            out = out + window[:, k : k + length] * weight[:, k]
        return out

    def _step(self, hidden_states: torch.Tensor, cache: Cache) -> torch.Tensor:
        """One new token (`[b, 1, n_embd]`), the recurrence itself, with the cached conv inputs and
        state updated in place: the same math as `_conv`, `_scan` and `norm` in as few operations
        as it takes (no chunking, no per-step copies, no module calls), because at batch 1 each
        operation's fixed cost, not its arithmetic, is most of a step (batch 1 after 256 tokens,
        `small`, 2 cores: 11.0-11.6 -> 10.4-10.6 ms per token).
        """
        batch, heads, groups = hidden_states.shape[0], self.nheads, self.ngroups
        projected = F.linear(hidden_states.view(batch, -1), self.in_proj.weight)
        gate, xBC, dt = projected.split([self.d_inner, self.conv_dim, heads], dim=-1)
        window = cache.update_conv_state(xBC[..., None], self.layer_idx)  # [b, conv_dim, 1 + d_conv], oldest first
        xBC = F.silu(torch.linalg.vecdot(window[..., 1:], self.conv1d.weight[:, 0]).add_(self.conv1d.bias))
        x, B, C = xBC.float().split([self.d_inner, groups * self.d_state, groups * self.d_state], dim=-1)
        dt = F.softplus(dt.float() + self.dt_bias.float())  # [b, heads]
        state = cache.get_recurrent_state(self.layer_idx)  # [b, heads, headdim, d_state], the cache's own
        state.mul_(torch.exp(dt * -torch.exp(self.A_log.float()))[..., None, None])
        x = x.view(batch, heads, self.headdim)
        per_group = (batch * groups, -1, self.d_state)  # the heads of a group share B and C
        B, C = B.reshape(batch * groups, 1, -1), C.reshape(batch * groups, -1, 1)
        state.view(per_group).baddbmm_((x * dt[..., None]).view(batch * groups, -1, 1), B)
        y = torch.bmm(state.view(per_group), C).view(batch, heads, self.headdim)
        y = torch.addcmul(y, x, self.D.float()[:, None]).view(batch, groups, -1)
        y = y * F.silu(gate.float()).view_as(y)
        y = y * torch.rsqrt(y.square().mean(-1, keepdim=True).add_(self.norm.eps))  # the gated norm, per group
        return F.linear(y.view(batch, 1, -1).to(hidden_states.dtype) * self.norm.weight, self.out_proj.weight)

    def _scan(self, x, dt, B, C, state):
        A = -torch.exp(self.A_log.float())
        if scan_kernel(self.scan_backend, x.device.type) == "triton":
            y, state = mamba_chunk_scan_combined(
                x, dt, A, B, C, self.chunk_size, dt_bias=self.dt_bias, dt_softplus=True,
                initial_states=state, return_final_states=True,
            )  # fmt: skip
            return y, state
        dt = F.softplus(dt.float() + self.dt_bias.float())
        y, state = ssd_chunked_scan(x.float(), dt, A, B.float(), C.float(), self.chunk_size, state)
        return y.to(x.dtype), state


class MusicMambaBlock(nn.Module):
    def __init__(self, config: MusicMambaConfig, layer_idx: int) -> None:
        super().__init__()
        self.norm = MusicMambaRMSNorm(config.n_embd, config.layer_norm_epsilon)
        self.mixer = MusicMambaMixer(config, layer_idx)

    def forward(
        self, hidden_states: torch.Tensor, cache: Cache | None = None, padding: torch.Tensor | None = None
    ) -> torch.Tensor:
        return hidden_states + self.mixer(self.norm(hidden_states), cache, padding)


class MusicMambaPreTrainedModel(PreTrainedModel):
    config: MusicMambaConfig
    config_class = MusicMambaConfig
    base_model_prefix = "backbone"
    _no_split_modules = ["MusicMambaBlock"]
    _is_stateful = True
    supports_gradient_checkpointing = False

    def kernels(self, device_type: str | None = None) -> dict[str, str]:
        """What a forward on `device_type` (default: where the weights are) runs: the chunked scan
        of training and prefill, and the one-token step of generation."""
        return {"scan": scan_kernel(self.config.scan_backend, device_type or self.device.type), "step": "torch"}

    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2 normal init for projections and embeddings; Mamba-2's for the mixer's dynamics."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, MusicMambaRMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, MusicMambaMixer):
            init.kaiming_uniform_(module.conv1d.weight, a=math.sqrt(5))
            init.zeros_(module.conv1d.bias)
            # dt log-uniform in [dt_min, dt_max]; dt_bias is its softplus inverse
            low, high = math.log(self.config.dt_min), math.log(self.config.dt_max)
            dt = torch.exp(torch.rand(module.nheads) * (high - low) + low).clamp(min=self.config.dt_init_floor)
            init.copy_(module.dt_bias, dt + torch.log(-torch.expm1(-dt)))
            init.copy_(module.A_log, torch.log(torch.empty(module.nheads).uniform_(1, 16)))
            init.ones_(module.D)
            # residual projections scaled by 1/sqrt(n_layer), as in GPT-2
            init.normal_(module.out_proj.weight, mean=0.0, std=std / math.sqrt(self.config.n_layer))


class MusicMambaModel(MusicMambaPreTrainedModel):
    def __init__(self, config: MusicMambaConfig) -> None:
        super().__init__(config)
        self.embedding = nn.Embedding(config.vocab_size, config.n_embd)
        self.layers = nn.ModuleList([MusicMambaBlock(config, i) for i in range(config.n_layer)])
        self.norm_f = MusicMambaRMSNorm(config.n_embd, config.layer_norm_epsilon)
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
        cache: Cache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """`attention_mask`: pad tokens (0) leave the recurrent state untouched, so left-padded
        prompts generate as if unpadded; packed training blocks need no mask."""
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        cache = cache if use_cache else None
        hidden_states = self.embedding(input_ids) if inputs_embeds is None else inputs_embeds
        padding = None  # a mask covering these tokens (not the cached ones) with zeros in it
        if (
            attention_mask is not None
            and attention_mask.shape[1] == hidden_states.shape[1]
            and not attention_mask.all()
        ):
            padding = attention_mask == 0
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        for layer in self.layers:
            hidden_states = layer(hidden_states, cache, padding)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
        return BaseModelOutputWithPast(
            last_hidden_state=self.norm_f(hidden_states), cache=cache, hidden_states=all_hidden_states
        )


class MusicMambaForCausalLM(MusicMambaPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "backbone.embedding.weight"}

    def __init__(self, config: MusicMambaConfig) -> None:
        super().__init__(config)
        self.backbone = MusicMambaModel(config)
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
        cache: Cache | None = None,
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


__all__ = ["MusicMambaForCausalLM", "MusicMambaModel", "MusicMambaPreTrainedModel"]
