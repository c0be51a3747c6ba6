"""MusicXLSTM: an xLSTM language model over music tokens, built on the `xlstm` package.

A stack of pre-norm residual blocks: mLSTM blocks (matrix memory, from `xlstm.xlstm_large`:
chunkwise kernels, so training cost grows linearly with length) with sLSTM blocks (scalar
memory with recurrent mixing, `xlstm.blocks.slstm`) at `config.slstm_at`.

Kernels: the mLSTM uses the package's pure-PyTorch chunkwise kernel on CPU and its Triton
kernels on CUDA, chosen per call from the input's device. The sLSTM uses the package's
"vanilla" PyTorch backend everywhere: its CUDA backend compiles at start-up and stores the
recurrent weights in another layout, so checkpoints would not move between devices.

Generation carries one fixed-size state per block (mLSTM: C, n, m; sLSTM: conv window and
y, c, n, m) in a `MusicXLSTMCache`: the cost of a new token does not depend on the context.
"""

from __future__ import annotations

import math

import torch
from mlstm_kernels.torch.backend_module import mLSTMBackend, mLSTMBackendConfig
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import CausalLMOutputWithPast
from xlstm.blocks.slstm.block import sLSTMBlock, sLSTMBlockConfig
from xlstm.blocks.slstm.layer import sLSTMLayerConfig
from xlstm.components.feedforward import FeedForwardConfig
from xlstm.xlstm_large.components import RMSNorm
from xlstm.xlstm_large.model import mLSTMBlock, xLSTMLargeConfig

from .configuration_music_xlstm import MusicXLSTMConfig

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
        self.block.mlstm_layer.mlstm_backend = self._backend(x.device.type)
        return self.block(x, state)


class MusicXLSTMSLSTMBlock(nn.Module):
    """The package's sLSTM block (norm, sLSTM layer, norm, gated GELU), returning its final state.

    Its own `forward` cannot return the state and its `step` returns the old one, so the
    layer is called directly with `return_last_state=True`, also for single tokens.
    """

    def __init__(self, config: MusicXLSTMConfig, block_idx: int) -> None:
        super().__init__()
        self.conv_width = config.conv1d_kernel_size
        self.block = sLSTMBlock(
            sLSTMBlockConfig(
                slstm=sLSTMLayerConfig(
                    embedding_dim=config.n_embd,
                    num_heads=config.num_heads,
                    backend="vanilla",
                    conv1d_kernel_size=self.conv_width,
                    bias_init="powerlaw_blockdependent",
                    dtype="float32",
                ),
                feedforward=FeedForwardConfig(proj_factor=config.slstm_proj_factor, act_fn="gelu"),
                _num_blocks=config.n_layer,
                _block_idx=block_idx,
            )
        )

    def forward(self, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        if state is None:  # an explicit zero conv window: with None a short prompt returns a short one
            batch, width = x.shape[0], x.shape[-1]
            state = (x.new_zeros(batch, max(self.conv_width - 1, 0), width), x.new_zeros(4, batch, width))
        conv_state, slstm_state = state
        y, last = self.block.xlstm(
            self.block.xlstm_norm(x), conv_state=conv_state, slstm_state=slstm_state, return_last_state=True
        )
        x = x + y
        x = x + self.block.ffn(self.block.ffn_norm(x))
        return x, (last["conv_state"], last["slstm_state"])


class MusicXLSTMPreTrainedModel(PreTrainedModel):
    config: MusicXLSTMConfig
    config_class = MusicXLSTMConfig
    base_model_prefix = "backbone"
    _no_split_modules = ["MusicXLSTMMLSTMBlock", "MusicXLSTMSLSTMBlock"]
    _is_stateful = True
    supports_gradient_checkpointing = False

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
        inputs_embeds: torch.FloatTensor | None = None,
        cache: MusicXLSTMCache | None = None,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
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
        return self.norm_f(hidden_states), all_hidden_states


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
        hidden_states, all_hidden_states = self.backbone(
            input_ids, inputs_embeds, cache if use_cache else None, bool(output_hidden_states)
        )
        logits = self.lm_head(hidden_states[:, -logits_to_keep:] if logits_to_keep else hidden_states).float()
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, cache=cache if use_cache else None, hidden_states=all_hidden_states
        )


__all__ = ["MusicXLSTMCache", "MusicXLSTMForCausalLM", "MusicXLSTMModel", "MusicXLSTMPreTrainedModel"]
