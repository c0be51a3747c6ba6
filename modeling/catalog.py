"""Which models this machine has: the bundled ones (`pretrained/`), those trained into
`outputs/`, and how a name given by a user (a family, a folder, a Hub repo id) resolves."""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub.utils import HFValidationError, validate_repo_id

from .adapters import ADAPTER_CONFIG
from .presets import CONFIG_CLASSES, FAMILIES

FAMILY_OF_MODEL_TYPE = {config.model_type: family for family, config in CONFIG_CLASSES.items()}
DEFAULT_FAMILY = "transformer"


def bundled_models() -> dict[str, Path]:
    """The models shipped in this project (`modeling/pretrained/`), by family."""
    folders = sorted(p for p in (Path(__file__).parent / "pretrained").iterdir() if p.is_dir())
    return {family: p for p in folders if (family := family_of(p))}


def default_model() -> Path:
    """The bundled GPT-2 when there is one: of the three families it samples fastest on a CPU."""
    bundled = bundled_models()
    return bundled.get(DEFAULT_FAMILY) or next(iter(bundled.values()))


def available_models() -> list[str]:
    """What `--model` can name on this machine without the Hub: families, bundled and trained (or
    fine-tuned) folders."""
    trained = sorted(
        {str(p.parent) for p in Path("outputs").glob("*/config.json") if family_of(p.parent)}
        | {str(p.parent) for p in Path("outputs").glob(f"*/{ADAPTER_CONFIG}")}
    )
    return [*FAMILIES, *(str(p) for p in bundled_models().values()), *trained]


def family_of(folder: Path) -> str | None:
    config = folder / "config.json"
    return FAMILY_OF_MODEL_TYPE.get(json.loads(config.read_text()).get("model_type")) if config.is_file() else None


def resolve_model(name: str | None) -> tuple[str, str]:
    """`(what to load, name for the output folder)` from `--model`."""
    if name is None:
        default = default_model()
        return str(default), default.name
    if name in FAMILIES:
        trained, bundled = Path("outputs") / f"{name}-small", bundled_models()
        if family_of(trained) == name:
            return str(trained), name
        if name in bundled:
            return str(bundled[name]), name
        raise ValueError(
            f"no {name} model: {trained} holds none and none is bundled (only {', '.join(bundled)}); train one "
            f"with `python scripts/train.py scripts/configs/{name}-small.yaml`, or pass a folder or repo id"
        )
    path = Path(name)
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / ADAPTER_CONFIG).is_file():
            holds = "a tokenizer but no model" if (path / "music_tokenizer.json").is_file() else "no model"
            raise ValueError(
                f"--model {name}: the folder holds {holds} (no config.json); give a model folder "
                f"(train.py's --output_dir); models here: {', '.join(available_models())}"
            )
        return str(path), path.resolve().name
    if name.startswith((".", "/", "~")) or path.parts[0] in ("outputs", "modeling") or Path(path.parts[0]).is_dir():
        raise ValueError(f"--model {name}: no such folder; models here: {', '.join(available_models())}")
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ValueError(f"--model {name}: no such folder, and not a family name or a Hub repo id") from None
    if name.count("/") != 1:
        raise ValueError(f"--model {name}: no such folder, and not a family name or a Hub repo id (owner/name)")
    return name, name.split("/")[1]
