"""Model configurations by family and size, built from a tokenizer's ids.

At each size the three families share `n_embd` (so embeddings match) and their blocks are
sized to the same parameter count within 10 %: a Mamba-2 block has about half the
parameters of a GPT-2 block, hence twice the layers. `base` is the original study's
scale (about 100M parameters), `small` about 10M (CPU), `tiny` is for tests. The xLSTM
keeps the original study's sLSTM positions (1, 4, 7, 10) and adds mLSTM blocks to match.
"""

from __future__ import annotations

from typing import Protocol

from transformers import GPT2Config, PreTrainedConfig

from .configuration_music_mamba import MusicMambaConfig
from .configuration_music_xlstm import MusicXLSTMConfig

PRESETS: dict[str, dict[str, dict]] = {
    "transformer": {
        "tiny": {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 256},
        "small": {"n_embd": 256, "n_layer": 12, "n_head": 8, "n_positions": 2048},
        "base": {"n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 2048},
    },
    "mamba": {
        "tiny": {"n_embd": 64, "n_layer": 4, "d_state": 16, "headdim": 16, "chunk_size": 16},
        "small": {"n_embd": 256, "n_layer": 24, "d_state": 64, "headdim": 32, "chunk_size": 64},
        "base": {"n_embd": 768, "n_layer": 24, "d_state": 128, "headdim": 64, "chunk_size": 128},
    },
    "xlstm": {
        "tiny": {
            "n_embd": 64,
            "n_layer": 3,
            "num_heads": 2,  # mLSTM key width 16: the Triton kernels need at least 16
            "slstm_at": [1],
            "chunk_size": 16,
            "mlstm_proj_factor": 2.0,
            "slstm_proj_factor": 1.0,
        },
        "small": {"n_embd": 256, "n_layer": 14, "num_heads": 4, "slstm_at": [1, 4, 7, 10], "chunk_size": 64},
        "base": {"n_embd": 768, "n_layer": 14, "num_heads": 4, "slstm_at": [1, 4, 7, 10], "chunk_size": 64},
    },
}
FAMILIES = tuple(PRESETS)
CONFIG_CLASSES: dict[str, type[PreTrainedConfig]] = {
    "transformer": GPT2Config,
    "mamba": MusicMambaConfig,
    "xlstm": MusicXLSTMConfig,
}
# GPT-2's default dropout (0.1 on attention) turns off PyTorch's fused attention on CPU:
# 4x slower and 2.4x the memory. The recurrent families have none either.
GPT2_DEFAULTS = {"attn_pdrop": 0.0, "resid_pdrop": 0.0, "embd_pdrop": 0.0}


class TokenizerIds(Protocol):
    """What a config needs from a tokenizer (our `MusicTokenizer` has it)."""

    bos_token_id: int
    eos_token_id: int
    pad_token_id: int

    def __len__(self) -> int: ...


def build_config(family: str, preset: str, tokenizer: TokenizerIds, **overrides) -> PreTrainedConfig:
    """The config of `family` (transformer, mamba, ...) at `preset` size for this tokenizer's vocabulary."""
    if family not in PRESETS:
        raise ValueError(f"unknown model family {family!r}: choose one of {', '.join(FAMILIES)}")
    if preset not in PRESETS[family]:
        raise ValueError(f"unknown preset {preset!r} for {family}: choose one of {', '.join(PRESETS[family])}")
    values = {
        **(GPT2_DEFAULTS if family == "transformer" else {}),
        **PRESETS[family][preset],
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        **overrides,
    }
    return CONFIG_CLASSES[family](**values)
