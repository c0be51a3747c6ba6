"""Model folders small enough to bundle: 8-bit floating-point weights, restored at load.

The repository ships trained models of all three families and must stay small enough to copy
to a training machine; float16 `small` models take 22 MB each. `save_compact` rewrites a
model folder's weights in transformers' fine-grained FP8 format: every weight matrix as
float8 (e4m3) with one float32 scale per `BLOCK` consecutive weights of a row (an outlier
then coarsens only its own block), and a `quantization_config` with `dequantize: true` in
`config.json`. `from_pretrained` hands such a folder to transformers' own FP8 loader, which
multiplies the scales back in and returns an ordinary float16 model on any device, so the
folder loads like any other, also as Hub remote code where nothing of ours is installed.
Norms, biases, convolution kernels and the sLSTM's recurrent kernel stay float16.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import FineGrainedFP8Config
from transformers.quantizers.quantizer_finegrained_fp8 import FineGrainedFP8HfQuantizer

BLOCK = 64  # divides every matrix width of the presets (GPT-2's 64-wide heads, the xLSTM's 704)
WEIGHTS = "model.safetensors"


def compact_config() -> FineGrainedFP8Config:
    return FineGrainedFP8Config(weight_block_size=(1, BLOCK), dequantize=True)


def compact_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Matrices named `*.weight` as float8 plus `*.weight_scale_inv`, everything else float16."""
    quantize = FineGrainedFP8HfQuantizer(compact_config()).get_quantize_ops()
    compact = {}
    for name, tensor in state_dict.items():
        if name.endswith(".weight") and tensor.ndim >= 2 and tensor.shape[-1] % BLOCK == 0:
            compact.update(quantize.convert({name: tensor.float()}))
        else:
            compact[name] = tensor.half()
    return compact


def save_compact(model_dir: str | Path, output_dir: str | Path) -> dict[str, int]:
    """Copy the model folder `model_dir` (config, code, tokenizer, card) to `output_dir` with its
    weights in the compact format; return the weights' bytes before and after."""
    source, target = Path(model_dir), Path(output_dir)
    shards = sorted(source.glob("model*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no safetensors weights in {source}: give a folder written by save_pretrained")
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.suffix in (".json", ".py", ".md") and not path.name.startswith(WEIGHTS):  # not a shard index
            shutil.copy2(path, target / path.name)
    state_dict = {name: tensor for shard in shards for name, tensor in load_file(shard).items()}
    save_file(compact_state_dict(state_dict), target / WEIGHTS, metadata={"format": "pt"})
    config = json.loads((source / "config.json").read_text())
    config |= {"quantization_config": compact_config().to_dict(), "dtype": "float16"}
    (target / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return {"bytes_before": sum(p.stat().st_size for p in shards), "bytes_after": (target / WEIGHTS).stat().st_size}
