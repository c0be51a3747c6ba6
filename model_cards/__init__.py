"""The Hub model card of a trained model (template: `music_model.md`).

YAML metadata the Hub indexes (its `model-index` holds the measured results), then what the
model is for, its measured limits, how to use it outside midi-lm, its composers with their
training pieces, data (licence, labels), training procedure, evaluation with units and a
baseline, and a citation. Everything in it is filled from the run that made the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import PreTrainedConfig

from tokenization import MusicTokenizer
from tokenization.conditions import TOKEN_PREFIXES
from tokenization.sources import resolve

TEMPLATE = Path(__file__).with_name("music_model.md")
FAMILY_NAMES = {"gpt2": "GPT-2 Transformer", "music_mamba": "Mamba-2", "music_xlstm": "xLSTM"}
EXTRA_PACKAGES = {"music_xlstm": " xlstm"}  # what a family's remote code imports beyond transformers
HUB = "hf://datasets/"
WELL_TRAINED = 100  # training pieces from which a composer's token is learned well enough to tell apart
TASK = "other"  # the Hub has no symbolic-music task; text-generation would offer a text widget

# Known metrics: name in the card, unit.
METRICS = {
    "bits_per_token": ("bits per token", "bits/token"),
    "bits_per_note": ("bits per note", "bits/note"),
    "loss": ("cross-entropy", "nats/token"),
    "identification_opening": ("likelihood identification, opening window", "fraction"),
    "identification_middle": ("likelihood identification, mid-piece window", "fraction"),
    "identification_chance": ("chance of likelihood identification", "fraction"),
    "gain_over_unknown_opening": ("condition gain over `Composer_Unknown`, opening", "bits/window"),
    "gain_over_unknown_middle": ("condition gain over `Composer_Unknown`, middle", "bits/window"),
    "gain_over_wrong_opening": ("condition gain over a wrong composer, opening", "bits/window"),
    "gain_over_wrong_middle": ("condition gain over a wrong composer, middle", "bits/window"),
    "sample_identification": ("samples a composer classifier credits to the composer asked for", "fraction"),
}
INDEXED = ("bits_per_token", "bits_per_note", "identification_opening", "identification_middle")


@dataclass(frozen=True)
class SourceTerms:
    licence: str
    labels: str
    citation: str = ""


# What is known of a source's terms and labels, by a part of its location.
KNOWN_SOURCES = {
    "midicaps": SourceTerms(
        "CC-BY-SA 4.0 (per the dataset card of amaai-lab/MidiCaps; its MIDI is the Lakh MIDI Dataset, CC-BY 4.0, "
        "C. Raffel): credit both",
        "`Unknown` (MidiCaps names no artist); its genre, tempo bucket and mode come from `train.json` (the most "
        "probable genre, the tempo in bpm, the key's mode)",
        "@article{melechovsky2024midicaps,\n  author = {Jan Melechovsky and Abhinaba Roy and Dorien Herremans},\n"
        "  title = {MidiCaps: A Large-scale MIDI Dataset with Text Captions},\n  journal = {arXiv:2406.02255},\n"
        "  year = {2024}\n}",
    ),
    "midi-classical-music": SourceTerms(
        "MIT (per the dataset card of drengskapur/midi-classical-music)",
        "the file name's prefix (`bach-...mid`), with spellings of one composer merged (`haendel` is `handel`) "
        "and `unknown_artist` files as `Unknown`",
    ),
    "lakh": SourceTerms(
        "CC-BY 4.0 (the Lakh MIDI Dataset, C. Raffel): credit it",
        "the artist folder (`clean_midi/<Artist>/`)",
        "@phdthesis{raffel2016lakh,\n  author = {Colin Raffel},\n  title = {Learning-Based Methods for Comparing "
        "Sequences, with Applications to Audio-to-MIDI Alignment and Matching},\n  school = {Columbia University},\n"
        "  year = {2016}\n}",
    ),
}
UNKNOWN_SOURCE = SourceTerms(
    "not recorded: the source's own terms apply",
    "its layout's label (file-name prefix, artist folder, or `Unknown` for a plain folder)",
)


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


def source_terms(source: str) -> SourceTerms:
    url = resolve(source)[0].lower()
    return next((terms for key, terms in KNOWN_SOURCES.items() if key in url), UNKNOWN_SOURCE)


def composer_list(tokenizer: MusicTokenizer) -> str:
    """ "`bach` (412), `chopin` (301), ...": most training pieces first."""
    pieces = tokenizer.training_pieces
    names = sorted(tokenizer.composers, key=lambda name: (-pieces.get(name, 0), name))
    if not pieces:
        return ", ".join(f"`{name}`" for name in names) + " (training pieces not recorded)"
    return ", ".join(f"`{name}` ({pieces.get(name, 0)})" for name in names)


def example_condition(tokenizer: MusicTokenizer) -> tuple[str, str]:
    """(kind, value) the usage example asks for: Bach where the model knows him, else its first
    composer, else the first value of its other conditions (a MidiCaps model's genre)."""
    composers = tokenizer.composers
    if composers:
        return "composer", "bach" if "bach" in composers else composers[0]
    return next(
        ((kind, tokenizer.values(kind)[0]) for kind in tokenizer.kinds if tokenizer.values(kind)),
        ("composer", "Unknown"),
    )


def other_conditions(tokenizer: MusicTokenizer) -> str:
    """The values of the conditions besides the composer, most training pieces first, one line per
    kind ("" for none)."""
    lines = []
    for kind in tokenizer.kinds[1:]:
        pieces = tokenizer.condition_pieces.get(kind, {})
        values = sorted(tokenizer.values(kind), key=lambda value: (-pieces.get(value, 0), value))
        lines.append(
            f"- `{kind}=`: " + ", ".join(f"`{v}` ({pieces.get(v, 0)})" if pieces else f"`{v}`" for v in values)
        )
    return "\n".join(lines)


def conditioning_sentence(metrics: dict, identified: str = "composer") -> str:
    """The measured strength of the conditioning on the composer (or on the `identified`
    condition, e.g. the genre), in words."""
    if "identification_opening" not in metrics:
        return (
            f"**How closely the {identified} is followed was not measured** (fewer than two {identified}s had "
            "enough pieces to test it)."
        )
    chance, found = metrics["identification_chance"], metrics["identification_opening"]
    if found < 1.25 * chance:
        lead, verdict = (
            "barely",
            f"no better than chance: the {identified} token hardly changes what the model expects",
        )
    elif found < 0.5:
        lead, verdict = "only weakly", f"{found / chance:.1f} times chance: a preference, not yet a recognisable style"
    else:
        lead, verdict = "more often than not", f"right for most windows, though not for every {identified}"
    middle = metrics.get("identification_middle")
    samples = metrics.get("sample_identification")
    question = "which composer wrote" if identified == "composer" else f"for the {identified} of"
    sentence = (
        f"**The {identified} is followed {lead}.** Asked {question} a held-out opening window, its own "
        f"likelihood names the right one for {found:.3f} of them"
    )
    if middle is not None:
        sentence += f" (mid-piece windows: {middle:.3f})"
    sentence += f", against a chance of {chance:.3f} among the {round(1 / chance)} {identified}s with enough pieces: "
    sentence += f"{verdict}."
    if samples:
        sentence += f" Of its samples, a composer classifier credits {samples} to the composer asked for."
    return sentence


def metric_rows(metrics: dict, identified: str = "composer") -> list[dict]:
    """The evaluation table's rows; identification and its gains named for the `identified` condition."""
    rows = []
    for key, value in metrics.items():
        name, unit = METRICS.get(key, (key.replace("_", " "), ""))
        if key.startswith(("identification_", "gain_")):
            name = name.replace("Composer_", TOKEN_PREFIXES[identified]).replace("composer", identified)
        rows.append(
            {"name": name, "value": f"{round(value, 4):g}" if isinstance(value, float) else value, "unit": unit}
        )
    return rows


def eval_results(metrics: dict, dataset: str, split: str) -> list[EvalResult] | None:
    """The `model-index` entries: the headline metrics, on the data they were measured on."""
    results = [
        EvalResult(
            task_type=TASK,
            task_name="Composer-conditioned MIDI generation",
            dataset_type=dataset,
            dataset_name=dataset,
            dataset_split=split,
            metric_type=key,
            metric_name=METRICS[key][0],
            metric_value=round(metrics[key], 4),
        )
        for key in INDEXED
        if isinstance(metrics.get(key), float) and math.isfinite(metrics[key])
    ]
    return results or None


def data_scope(sources: list[str], base_model: str | None) -> str:
    """What the model learned from: its sources, after what its start model learned from."""
    names = ", ".join(f"`{source}`" for source in sources)
    if base_model:
        return f"it learned from what `{base_model}` learned from, then from {names}."
    return f"it learned only from {names}."


def model_card(
    config: PreTrainedConfig,
    tokenizer: MusicTokenizer,
    *,
    name: str,
    parameters: int,
    sources: list[str],
    metrics: dict,
    evaluated_on: str,
    training: dict[str, str],
    tokens_trained: int,
    eval_split: str = "validation",
    repo_id: str | None = None,
    base_model: str | None = None,
    license: str = "mit",
    remote_code: bool = True,
    adapter_of: str | None = None,
    history: str = "",
    identified: str = "composer",
) -> ModelCard:
    """Fill the template.

    `metrics`: measured values by name (`bits_per_token`, `identification_opening`, ...),
    `evaluated_on`: on what, in words; `training`: the procedure's rows (hardware, precision,
    batch, schedule, ...); `repo_id`: the Hub id or folder the usage snippet loads (the model's
    name when None); `remote_code`: whether the folder carries the pipeline's code;
    `adapter_of`: the base model of a folder that holds LoRA adapters; `history`: a paragraph
    for what the rows cannot say (several training stages).
    """
    hub_ids = hub_datasets(sources)
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag=TASK,
        tags=["music", "midi", "symbolic-music", "music-generation", "midi-generation", config.model_type],
        datasets=hub_ids or None,
        license=license,
        model_name=name,
        base_model=hub_model(base_model),
        eval_results=eval_results(metrics, hub_ids[0] if hub_ids else sources[0], eval_split),
    )
    pieces = tokenizer.training_pieces
    composers = tokenizer.composers
    terms = [{"name": source, **vars(source_terms(source))} for source in sources]
    return ModelCard.from_template(
        data,
        template_path=str(TEMPLATE),
        model_name=name,
        family_name=FAMILY_NAMES.get(config.model_type, config.model_type),
        parameters=f"{parameters / 1e6:.3g}M",
        tokens_trained=f"{tokens_trained:,}",
        base_model=base_model,
        conditioning=conditioning_sentence(metrics, identified),
        well_represented=sum(pieces.get(name, 0) >= WELL_TRAINED for name in composers),
        well_trained=WELL_TRAINED,
        condition_count=len(composers),
        data_scope=data_scope(sources, base_model),
        remote_code=remote_code,
        adapter_of=adapter_of,
        extra_packages=EXTRA_PACKAGES.get(config.model_type, ""),
        repo_id=repo_id or name,
        requested=", ".join(tokenizer.kinds[:-1]) + " and " * (len(tokenizer.kinds) > 1) + tokenizer.kinds[-1],
        prefix_tokens=", ".join(["BOS", *(f"{TOKEN_PREFIXES[kind]}<name>" for kind in tokenizer.kinds)]),
        **dict(zip(("example_kind", "example_value"), example_condition(tokenizer), strict=True)),
        composers=composer_list(tokenizer) if composers else "none",
        other_conditions=other_conditions(tokenizer),
        sources=terms,
        training_total=f"{sum(pieces.values()):,}" if pieces else "An unrecorded number of",
        training=training,
        history=history,
        evaluated_on=evaluated_on,
        metrics=metric_rows(metrics, identified),
        vocab_size=f"{len(tokenizer):,}",
        uniform_bits=f"{math.log2(len(tokenizer)):.2f}",
    )
