"""The Hub model card of a trained model: YAML metadata the Hub indexes, then what the model
is, how to use it, its data, metrics and settings (template: `music_model.md`)."""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import PreTrainedConfig

from tokenization.sources import resolve

TEMPLATE = Path(__file__).with_name("music_model.md")
FAMILY_NAMES = {"gpt2": "GPT-2 Transformer", "music_mamba": "Mamba-2", "music_xlstm": "xLSTM"}
HUB = "hf://datasets/"


def hub_datasets(sources: list[str]) -> list[str]:
    """The Hub dataset ids among `sources` (local folders and the bundled corpus have none)."""
    urls = (resolve(source)[0] for source in sources)
    return ["/".join(url.removeprefix(HUB).split("/")[:2]) for url in urls if url.startswith(HUB)]


def hub_model(name: str | None) -> str | None:
    """`name` if it is a Hub repo id rather than a local folder (the Hub's `base_model` must be one)."""
    if not name or Path(name).exists():
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def model_card(
    config: PreTrainedConfig,
    *,
    parameters: int,
    conditions: list[str],
    sources: list[str],
    metrics: dict[str, float],
    training: dict,
    tokens_trained: int,
    repo_id: str | None = None,
    base_model: str | None = None,
    license: str = "mit",
) -> ModelCard:
    """Fill the template. `repo_id` goes into the usage snippet (a placeholder when None);
    `base_model` is the model this one was fine-tuned from, if any."""
    name = repo_id.split("/")[-1] if repo_id else f"{config.model_type}-midi"
    data = ModelCardData(
        library_name="transformers",
        # The Hub only accepts its own task names; ours (midi-generation) goes into the tags.
        pipeline_tag="text-generation",
        tags=["music", "midi", "symbolic-music", "midi-generation", config.model_type],
        datasets=hub_datasets(sources) or None,
        license=license,
        model_name=name,
        base_model=hub_model(base_model),
    )
    return ModelCard.from_template(
        data,
        template_path=str(TEMPLATE),
        model_name=name,
        family_name=FAMILY_NAMES.get(config.model_type, config.model_type),
        parameters=f"{parameters / 1e6:.3g}M",
        repo_id=repo_id or "path/to/this/folder",
        condition_name="composer",
        condition_count=len(conditions),
        conditions=", ".join(f"`{c}`" for c in conditions),
        example_composer=next((c for c in ("bach", *conditions) if c in conditions), "Unknown"),
        condition_dropout=training.get("condition_dropout", 0.0),
        sources=sources,
        metrics={k: f"{v:.4f}" if isinstance(v, float) else v for k, v in metrics.items()},
        training=training,
        tokens_trained=f"{tokens_trained:,}",
        base_model=base_model,
        config_json=json.dumps(config.to_diff_dict(), indent=2, sort_keys=True),
    )
