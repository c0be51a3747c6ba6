"""Configuration of MusicXLSTM: an xLSTM language model (mLSTM and sLSTM blocks) over music tokens."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

SLSTM_BACKENDS = ("auto", "native", "vanilla", "flashrnn")


@strict
class MusicXLSTMConfig(PreTrainedConfig):
    r"""GPT-2-style sizes (`n_embd`, `n_layer` blocks, ...) plus the xLSTM fields.

    num_heads (`int`): heads of both block kinds.
    slstm_at (`list[int]`): indices of the sLSTM blocks; all others are mLSTM blocks. The
        original study used 11 blocks with sLSTM at 1, 4, 7, 10.
    chunk_size (`int`): chunk length of the mLSTM's chunkwise kernels (training and prefill).
    conv1d_kernel_size (`int`): causal conv width inside sLSTM blocks.
    qk_dim_factor, v_dim_factor (`float`): mLSTM key/query and value widths relative to `n_embd`.
    mlstm_proj_factor (`float`): width of the mLSTM blocks' SwiGLU feed-forward relative to `n_embd`.
    slstm_proj_factor (`float`): width of the sLSTM blocks' gated GELU feed-forward.
    gate_soft_cap (`float`): soft cap of the mLSTM gate pre-activations.
    slstm_backend (`str`): how sLSTM blocks run: "auto" (the fused kernel on CUDA where installed,
        else "native"), "native" (PyTorch with a hand-written backward, every device), "vanilla"
        (the `xlstm` package's reference loop, slow) or "flashrnn" (CUDA). Every backend reads
        the same weights, so a checkpoint runs on all of them.
    """

    model_type = "music_xlstm"
    attribute_map = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer"}

    vocab_size: int = 1024
    n_embd: int = 256
    n_layer: int = 6
    num_heads: int = 4
    slstm_at: list[int] | tuple[int, ...] = (1, 4)
    chunk_size: int = 64
    conv1d_kernel_size: int = 4
    qk_dim_factor: float = 0.5
    v_dim_factor: float = 1.0
    mlstm_proj_factor: float = 2.667
    slstm_proj_factor: float = 1.3
    gate_soft_cap: float = 15.0
    slstm_backend: str = "auto"
    layer_norm_epsilon: float = 1e-6
    initializer_range: float = 0.02
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = 0
    tie_word_embeddings: bool = True
    use_cache: bool = True

    def validate_architecture(self):
        """Checked by `@strict` on creation."""
        if self.n_embd % self.num_heads:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of num_heads ({self.num_heads})")
        if self.slstm_backend not in SLSTM_BACKENDS:
            raise ValueError(
                f"unknown slstm_backend {self.slstm_backend!r}: choose one of {', '.join(SLSTM_BACKENDS)}"
            )
        if any(not 0 <= i < self.n_layer for i in self.slstm_at):
            raise ValueError(f"slstm_at {list(self.slstm_at)} must index blocks 0..{self.n_layer - 1}")


__all__ = ["MusicXLSTMConfig"]
