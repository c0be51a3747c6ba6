"""Configuration of MusicMamba: a Mamba-2 (SSD) language model over music tokens."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

SCAN_BACKENDS = ("auto", "triton", "torch")


@strict
class MusicMambaConfig(PreTrainedConfig):
    r"""GPT-2-style sizes (`n_embd`, `n_layer`, ...) plus the Mamba-2 mixer's own fields.

    d_state (`int`): size of each head's state (N in the paper).
    d_conv (`int`): width of the causal depthwise convolution before the scan.
    expand (`int`): inner width = `expand * n_embd`.
    headdim (`int`): channels per head; heads = inner width / `headdim`.
    ngroups (`int`): groups sharing B and C (like grouped-query attention).
    chunk_size (`int`): block length of the chunked scan in training and prefill.
    scan_backend (`str`): how the chunked scan runs: "auto" (mamba_ssm's Triton kernel on CUDA
        where it imports, else PyTorch), "triton" (that kernel, an error where it cannot run) or
        "torch" (every device). Both read the same weights.
    """

    model_type = "music_mamba"
    attribute_map = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer"}

    vocab_size: int = 1024
    n_embd: int = 256
    n_layer: int = 4
    d_state: int = 64
    d_conv: int = 4
    expand: int = 2
    headdim: int = 32
    ngroups: int = 1
    chunk_size: int = 64
    scan_backend: str = "auto"
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = 0
    tie_word_embeddings: bool = True
    use_cache: bool = True

    @property
    def d_inner(self) -> int:
        return self.expand * self.n_embd

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def layer_types(self) -> list[str]:
        """Every layer keeps a recurrent state (and a conv window) in the cache, nothing grows."""
        return ["linear_attention"] * self.n_layer

    def validate_architecture(self):
        """Checked by `@strict` on creation."""
        if self.d_inner % self.headdim:
            raise ValueError(f"expand * n_embd ({self.d_inner}) must be a multiple of headdim ({self.headdim})")
        if self.nheads % self.ngroups:
            raise ValueError(f"the number of heads ({self.nheads}) must be a multiple of ngroups ({self.ngroups})")
        if self.scan_backend not in SCAN_BACKENDS:
            raise ValueError(f"unknown scan_backend {self.scan_backend!r}: choose one of {', '.join(SCAN_BACKENDS)}")


__all__ = ["MusicMambaConfig"]
