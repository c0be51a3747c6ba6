"""LoRA fine-tuning with peft, and loading the folders it writes like any model.

An adapter folder holds peft's `adapter_config.json` (which names its base model) and
`adapter_model.safetensors` (the low-rank matrices of every block's projections, and the
embedding rows of the condition tokens the fine-tuning added), the tokenizer with those tokens,
and a model card: about 1.6 MB at rank 8 where the bundled `small` model's own weights take 12 MB
compacted (44 MB in float32). `load_model` grows the base's embeddings to the tokenizer's
vocabulary, applies the adapter and merges it into the weights: the recurrent families' stepping
code reads some weight matrices directly, so generation must see merged ones, and merged, a step
costs what the base's does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.utils import cached_file

from .pipeline_midi_generation import CONDITIONS_FILE  # the tokenizer's condition tokens: its vocabulary's size

ADAPTER_CONFIG = "adapter_config.json"
# The projections of each family's blocks (not the embeddings, norms, gates or the head).
LORA_TARGETS = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "music_mamba": ["in_proj", "out_proj"],
    "music_xlstm": ["q", "k", "v", "out_proj", "proj_up_gate", "proj_up", "proj_down"],
}


def adapter_config(name_or_path: str | Path) -> dict | None:
    """The adapter configuration of a folder or Hub repo, or None when it holds a whole model."""
    path = cached_file(str(name_or_path), ADAPTER_CONFIG, _raise_exceptions_for_missing_entries=False)
    return json.loads(Path(path).read_text()) if path else None


def add_condition_rows(model: PreTrainedModel, vocab_size: int, condition_ids: range) -> None:
    """Grow the token embeddings to `vocab_size`; each new row starts at the mean of the rows of
    `condition_ids` (the conditions the model knows), so a new composer or style begins as an
    average of the known ones rather than as noise the model never saw at a sequence's head."""
    old_size = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(vocab_size, mean_resizing=False)
    with torch.no_grad():
        weight = model.get_input_embeddings().weight  # tied to the head in every family
        weight[old_size:] = weight[condition_ids.start : condition_ids.stop].mean(0)


def with_lora(
    model: PreTrainedModel, rank: int, alpha: float | None = None, trainable_tokens: Sequence[int] = ()
) -> torch.nn.Module:
    """`model` wrapped by peft: LoRA of `rank` on its family's `LORA_TARGETS`, and the embedding
    rows of `trainable_tokens` (the added conditions) trained in full; everything else frozen."""
    from peft import LoraConfig, get_peft_model

    targets = LORA_TARGETS.get(model.config.model_type)
    if targets is None:
        raise ValueError(f"no LoRA targets for {model.config.model_type} models: fine-tune in full (no LoRA rank)")
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha or 2 * rank,
        target_modules=targets,
        fan_in_fan_out=model.config.model_type == "gpt2",  # GPT-2's Conv1D stores its weight as [in, out]
        trainable_token_indices=list(trainable_tokens) or None,
    )
    return get_peft_model(model, config)


def save_adapter(model: torch.nn.Module, folder: str | Path, base: str) -> None:
    """Write a peft model's adapter to `folder` with `base` as its base model. The embedding
    matrices are left out: the base has them, and the added rows are part of the adapter."""
    model.peft_config["default"].base_model_name_or_path = base
    model.save_pretrained(folder, save_embedding_layers=False)


def load_model(name_or_path: str | Path, **kwargs) -> PreTrainedModel:
    """A model folder or repo, as `AutoModelForCausalLM.from_pretrained` loads it; an adapter
    folder as its base with the adapter merged in (float32 unless `dtype` says otherwise). Its
    `name_or_path` is the adapter's, where the pipeline finds the tokenizer."""
    config = adapter_config(name_or_path)
    if config is None:
        return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    try:
        from peft import PeftModel
    except ImportError:
        raise ImportError(f"{name_or_path} holds a LoRA adapter, which needs peft: pip install peft") from None
    base = config["base_model_name_or_path"]
    if Path(base).is_absolute() and not Path(base).is_dir():
        raise FileNotFoundError(
            f"the adapter in {name_or_path} was fine-tuned from {base}, which is not here: copy that model there, "
            f"or point base_model_name_or_path in its {ADAPTER_CONFIG} to a copy"
        )
    kwargs.pop("config", None)  # the base's, which a pipeline read: the tokenizer here has more tokens
    kwargs.setdefault("dtype", torch.float32)
    model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    vocabulary = json.loads(Path(cached_file(str(name_or_path), CONDITIONS_FILE)).read_text())
    vocab_size = max(vocabulary["condition_tokens"].values()) + 1
    if vocab_size > model.config.vocab_size:
        model.resize_token_embeddings(vocab_size, mean_resizing=False)  # the adapter holds the new rows
    model = PeftModel.from_pretrained(model, str(name_or_path)).merge_and_unload()
    model.name_or_path = model.config._name_or_path = str(name_or_path)
    return model


class MusicModelForCausalLM:
    """What the `midi-generation` pipeline loads a name with: `load_model`, so that
    `pipeline("midi-generation", model=adapter_folder)` works as for a whole model."""

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **kwargs) -> PreTrainedModel:
        return load_model(name_or_path, **kwargs)
