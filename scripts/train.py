"""Train a MIDI language model (GPT-2, MusicMamba or MusicXLSTM) with accelerate.

    accelerate launch --config_file accelerate_configs/single_gpu.yaml scripts/train.py \\
        scripts/configs/mamba-small.yaml
    accelerate launch --config_file accelerate_configs/cpu_2proc.yaml scripts/train.py \\
        scripts/configs/transformer-tiny.yaml --max_steps 50 --output_dir outputs/tiny
    python scripts/train.py scripts/configs/xlstm-small.yaml --resume_from_checkpoint latest

A YAML preset gives the defaults, `--key value` overrides them. `--init_from` fine-tunes a
trained model (its weights and tokenizer) instead of training a preset from scratch:
`--add_composers` gives it new condition tokens, `--lora_rank` trains LoRA adapters (peft)
instead of all its weights and writes the adapter (`--merge_lora`: the merged model). Sources
are tokenized once into a token cache (`--no_token_cache` tokenizes on the fly); each
process streams its own share of the training pieces in blocks that each start with their
piece's condition. The validation split is evaluated every `eval_steps`: loss, bits per token,
bits per note, and likelihood identification (does the model's likelihood name the composer
of held-out windows?) with the condition gain.
Checkpoints (`checkpoint-N/` in `output_dir`) resume exactly: model, optimizer, scheduler,
random states and every process's position in the data. At the end `output_dir` holds the
model (safetensors and its code), the tokenizer and a model card, ready for
`AutoModelForCausalLM.from_pretrained(output_dir)` and the Hub. A run cut short ends the same
way after the step in flight: at `--time_limit` (evaluated, exit status 0) or on SIGTERM or
SIGINT (a pre-emption: not evaluated again, exit status 128 + the signal's number); both
leave a checkpoint to resume from and the export.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedType, ProjectConfiguration, set_seed
from peft import PeftModel
from torchdata.stateful_dataloader import StatefulDataLoader
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForCausalLM, get_scheduler

import modeling
from command_line import CommandParser
from evaluation import identification, identification_windows, window_tokens
from evaluation.identification import summary_metrics
from evaluation.likelihood import evaluate
from model_cards import model_card
from modeling.adapters import add_condition_rows, save_adapter, with_lora
from modeling.training import (
    StopRequest,
    build_accelerator,
    describe_strategy,
    list_checkpoints,
    load_checkpoint,
    model_kernels,
    parameter_digest,
    prepare_worker,
    push_folder,
    read_trainer_state,
    remove_partial_checkpoints,
    resolve_checkpoint,
    save_checkpoint,
    weight_decay_groups,
)
from tokenization import (
    BlockCollator,
    MusicTokenizer,
    TokenBlockStream,
    build_caches,
    condition_counts,
    evaluation_blocks,
    open_pieces,
    pieces_of,
    skip_summary,
    split_names,
    tokenizer_for,
)
from tokenization.conditions import KINDS
from tokenization.hub import hub_access, looks_local
from tokenization.sources import label_of

logger = get_logger(__name__)


@dataclass
class ModelArguments:
    family: str = field(default="transformer", metadata={"help": f"One of {', '.join(modeling.FAMILIES)}."})
    preset: str = field(default="tiny", metadata={"help": "Model size: tiny, small or base."})
    config_overrides: str | None = field(
        default=None, metadata={"help": "Config fields to change, as a YAML mapping: '{n_layer: 4, n_embd: 128}'."}
    )
    init_from: str | None = field(
        default=None,
        metadata={
            "help": "A trained model folder or Hub repo id to fine-tune: its configuration, weights and tokenizer "
            "take the place of family, preset and --tokenizer."
        },
    )
    tokenizer: str | None = field(
        default=None,
        metadata={
            "help": "Tokenizer folder or Hub repo id; by default the one saved in a token-cache source, else one "
            "built from the sources."
        },
    )
    add_composers: list[str] | None = field(
        default=None,
        metadata={
            "help": "New condition tokens for the --init_from model (a composer, artist or style), each starting "
            "from the mean of its condition embeddings."
        },
    )
    lora_rank: int = field(
        default=0,
        metadata={
            "help": "Train LoRA adapters of this rank on the --init_from model instead of all its weights, and "
            "write the adapter (0: all weights)."
        },
    )
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA scale numerator; left out: 2 x rank."})
    merge_lora: bool = field(
        default=False, metadata={"help": "Write the model with the adapter merged in (a whole model) instead."}
    )
    bpe_vocab_size: int = field(default=0, metadata={"help": "BPE vocabulary of a built tokenizer (0: no BPE)."})
    bpe_max_files: int = field(default=2000, metadata={"help": "Training files a built tokenizer learns BPE on."})


@dataclass
class DataArguments:
    sources: list[str] = field(
        default_factory=lambda: ["bundled"],
        metadata={
            "help": "MIDI sources (folders, Hub dataset ids, hf://datasets/..., bundled, bundled:lakh) or token-cache "
            "folders."
        },
    )
    source_weights: list[float] | None = field(
        default=None, metadata={"help": "Probability of drawing the next file from each source; left out: equal."}
    )
    block_size: int = field(default=1024, metadata={"help": "Tokens per training block."})
    shuffle_buffer: int = field(default=256, metadata={"help": "Blocks in the shuffle buffer (0: file order)."})
    condition_dropout: float = field(
        default=0.1, metadata={"help": "Share of blocks trained as Composer_Unknown (for guidance)."}
    )
    condition_every_block: bool = field(
        default=True,
        metadata={
            "help": "Start every block with its piece's condition; false: the earlier packing (pieces concatenated "
            "and cut, so mid-piece blocks carry none), to compare against."
        },
    )
    token_cache: bool = field(
        default=True,
        metadata={"help": "Read pieces from each source's token cache, built on first use (--no_token_cache: MIDI)."},
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Where token caches live; left out: $MIDI_LM_CACHE or the HF home."}
    )
    rebuild_token_cache: bool = field(
        default=False, metadata={"help": "Build the sources' token caches again, though they look whole and current."}
    )
    num_proc: int | None = field(default=None, metadata={"help": "Processes building a token cache; left out: cores."})
    num_workers: int = field(default=1, metadata={"help": "DataLoader worker processes per training process."})
    eval_max_files: int | None = field(
        default=32, metadata={"help": "Validation pieces evaluated (all: leave empty); the same ones every time."}
    )
    identification_condition: str = field(
        default="composer",
        metadata={"help": "What likelihood identification names: composer, or genre, tempo or mode (MidiCaps)."},
    )
    identification_min_files: int = field(
        default=100, metadata={"help": "Training pieces a composer needs to be a likelihood-identification candidate."}
    )
    identification_max_pieces: int | None = field(
        default=20, metadata={"help": "Validation pieces per candidate composer read for identification (all: empty)."}
    )
    identification_tokens: int = field(default=512, metadata={"help": "Music tokens per identification window."})


@dataclass
class TrainArguments:
    output_dir: str = field(default="outputs/run", metadata={"help": "Checkpoints, logs and the final model."})
    per_device_train_batch_size: int = field(default=8)
    per_device_eval_batch_size: int = field(default=8)
    gradient_accumulation_steps: int = field(default=1)
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate (AdamW)."})
    weight_decay: float = field(default=0.1)
    adam_beta2: float = field(default=0.95)
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping (0: off)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "A transformers scheduler name."})
    warmup_steps: int = field(default=100)
    max_steps: int = field(default=1000, metadata={"help": "Optimizer steps, unless max_train_tokens is set."})
    max_train_tokens: int | None = field(default=None, metadata={"help": "Train on this many tokens (all ranks)."})
    evaluate_first: bool = field(
        default=False, metadata={"help": "Evaluate the starting model before the first step (logged as step 0)."}
    )
    time_limit: float | None = field(
        default=None,
        metadata={"help": "Seconds after the start at which training stops early, checkpointed and exported."},
    )
    logging_steps: int = field(default=10)
    eval_steps: int = field(default=200, metadata={"help": "Evaluate every N steps (0: only at the end)."})
    save_steps: int = field(default=200, metadata={"help": "Checkpoint every N steps (0: only at the end)."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept (empty: all)."})
    export_at_checkpoints: bool = field(
        default=False, metadata={"help": "Also write (and push) the model folder at each checkpoint."}
    )
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "'latest' (in output_dir; starts afresh if none) or a checkpoint folder."}
    )
    seed: int = field(default=42)
    report_to: str = field(
        default="tensorboard", metadata={"help": "accelerate tracker(s), comma-separated, or none."}
    )
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the model folder to hub_model_id."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repo id, e.g. me/mamba-classical."})
    hub_private: bool = field(default=False)
    license: str = field(default="mit", metadata={"help": "Model card licence (the training data's terms apply)."})


ARGUMENT_CLASSES = (ModelArguments, DataArguments, TrainArguments)


def parse_arguments(argv: list[str]) -> tuple[ModelArguments, DataArguments, TrainArguments]:
    """`[preset.yaml] [--key value ...]`: the YAML file's values are defaults the flags override."""
    parser = CommandParser(ARGUMENT_CLASSES, usage="%(prog)s [PRESET.yaml] [--key value ...]")
    if argv and argv[0].endswith((".yaml", ".yml")):
        preset, argv = Path(argv[0]), argv[1:]
        if not preset.is_file():
            parser.error(f"preset {preset} not found: see scripts/configs/ for the shipped ones")
        values = yaml.safe_load(preset.read_text()) or {}
        known = {f.name for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            parser.error(f"unknown key(s) {', '.join(unknown)} in {preset}: valid keys are {', '.join(sorted(known))}")
        if isinstance(values.get("config_overrides"), dict):
            values["config_overrides"] = json.dumps(values["config_overrides"])
        parser.set_defaults(**values)
    model_args, data_args, train_args = parser.parse(argv)
    with parser.failures():
        check_arguments(model_args, data_args, train_args)
    return model_args, data_args, train_args


def check_arguments(model_args: ModelArguments, data_args: DataArguments, train_args: TrainArguments) -> None:
    """Fail before any work on what would fail later: names, sources, numbers."""
    if model_args.family not in modeling.PRESETS:
        raise ValueError(f"unknown model family {model_args.family!r}: choose one of {', '.join(modeling.FAMILIES)}")
    presets = modeling.PRESETS[model_args.family]
    if model_args.preset not in presets:
        raise ValueError(f"unknown preset {model_args.preset!r}: choose one of {', '.join(presets)}")
    config_overrides(model_args)
    if model_args.init_from:
        if model_args.tokenizer:
            raise ValueError("--init_from brings its own tokenizer: leave out --tokenizer")
        if not Path(model_args.init_from).is_dir() and looks_local(model_args.init_from):
            raise FileNotFoundError(f"no model folder {model_args.init_from} to start from (--init_from)")
        with hub_access("model", model_args.init_from, "give a model folder to start from (--init_from)"):
            AutoConfig.from_pretrained(model_args.init_from)  # raises when there is no model there
            check_new_composers(model_args)
    elif model_args.add_composers or model_args.lora_rank or model_args.merge_lora:
        raise ValueError("--add_composers, --lora_rank and --merge_lora fine-tune a model: give it with --init_from")
    if model_args.lora_rank < 0:
        raise ValueError(f"--lora_rank must be 0 (all weights) or a positive rank, got {model_args.lora_rank}")
    if model_args.merge_lora and not model_args.lora_rank:
        raise ValueError("--merge_lora merges LoRA adapters: give --lora_rank too")
    if model_args.tokenizer:
        MusicTokenizer.from_pretrained(model_args.tokenizer)  # a missing one fails here, not after the data
    for source in data_args.sources:
        splits = split_names(source)  # raises when the source does not exist
        for split in ("train", "validation"):
            if split not in splits:
                raise ValueError(
                    f"source {source!r} has no MIDI files in its {split} split (files go to train, validation and "
                    "test by a hash of their path, 90/5/5 %): give a larger source"
                )
    if data_args.source_weights and len(data_args.source_weights) != len(data_args.sources):
        raise ValueError("--source_weights needs one weight per source")
    if data_args.block_size < 3:
        raise ValueError(f"--block_size must be at least 3 (a condition and a target), got {data_args.block_size}")
    if data_args.identification_condition not in KINDS:
        raise ValueError(
            f"--identification_condition {data_args.identification_condition}: choose one of {', '.join(KINDS)}"
        )
    counts = {
        "per_device_train_batch_size": train_args.per_device_train_batch_size,
        "per_device_eval_batch_size": train_args.per_device_eval_batch_size,
        "gradient_accumulation_steps": train_args.gradient_accumulation_steps,
        "max_steps": train_args.max_train_tokens or train_args.max_steps,
        "logging_steps": train_args.logging_steps,
        "identification_tokens": data_args.identification_tokens,
    }
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f"--{name} must be a positive number, got {value}")
    if train_args.time_limit is not None and train_args.time_limit <= 0:
        raise ValueError(f"--time_limit is a number of seconds above 0, got {train_args.time_limit}")
    if not 0.0 <= data_args.condition_dropout <= 1.0:
        raise ValueError(f"--condition_dropout is a probability, got {data_args.condition_dropout}")
    if train_args.push_to_hub and not train_args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id <user>/<name>")
    if train_args.resume_from_checkpoint not in (None, "latest"):
        resolve_checkpoint(train_args.output_dir, train_args.resume_from_checkpoint)
    if not train_args.resume_from_checkpoint and list_checkpoints(train_args.output_dir):
        raise ValueError(
            f"{train_args.output_dir} already holds checkpoints: continue with --resume_from_checkpoint latest, "
            "or give another --output_dir"
        )


def check_new_composers(model_args: ModelArguments) -> None:
    """`--add_composers` names new conditions: one the model knows already is refused."""
    known = MusicTokenizer.from_pretrained(model_args.init_from)
    for name in model_args.add_composers or ():
        if known.condition_name(name) is not None:
            raise ValueError(
                f"{name!r} is a condition of {model_args.init_from} already: choose another name, or fine-tune "
                "without --add_composers to train that condition on"
            )


def config_overrides(model_args: ModelArguments) -> dict:
    if not model_args.config_overrides:
        return {}
    values = yaml.safe_load(model_args.config_overrides)
    if not isinstance(values, dict):
        raise ValueError(f"--config_overrides must be a mapping like '{{n_layer: 4}}', got {values!r}")
    return values


def load_tokenizer(accelerator: Accelerator, model_args: ModelArguments, data_args: DataArguments, output_dir: Path):
    """The run's tokenizer, built (or loaded) by the main process and saved in `output_dir`,
    where the other processes read it."""
    if accelerator.is_main_process:
        name = model_args.init_from or model_args.tokenizer
        tokenizer = tokenizer_for(name, data_args.sources, model_args.bpe_vocab_size, model_args.bpe_max_files)
        tokenizer.add_composers(model_args.add_composers or ())
        tokenizer.save_pretrained(output_dir)
    accelerator.wait_for_everyone()
    return MusicTokenizer.from_pretrained(output_dir)


def pieces(tokenizer, data_args: DataArguments, split: str, **kwargs):
    """The pieces of `split` of all sources, from their token caches or their MIDI files."""
    return open_pieces(
        data_args.sources,
        split,
        tokenizer,
        cached=data_args.token_cache,
        cache_dir=data_args.cache_dir,
        num_proc=data_args.num_proc,
        **kwargs,
    )


def train_loader(tokenizer, data_args: DataArguments, train_args: TrainArguments, accelerator) -> StatefulDataLoader:
    stream = TokenBlockStream(
        pieces(tokenizer, data_args, "train", weights=data_args.source_weights, seed=train_args.seed),
        tokenizer,
        data_args.block_size,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        shuffle_buffer=data_args.shuffle_buffer,
        condition_dropout=data_args.condition_dropout,
        condition_every_block=data_args.condition_every_block,
        seed=train_args.seed,
        loop=True,
    )
    return StatefulDataLoader(
        stream,
        batch_size=train_args.per_device_train_batch_size,
        collate_fn=BlockCollator(tokenizer.pad_token_id),
        num_workers=data_args.num_workers,
        prefetch_factor=8 if data_args.num_workers else None,
        persistent_workers=data_args.num_workers > 0,
        worker_init_fn=prepare_worker,
    )


def eval_batches(tokenizer, data_args: DataArguments, train_args: TrainArguments, accelerator):
    """This process's share of the validation blocks, as batches, and the notes of the whole set."""
    source = pieces(tokenizer, data_args, "validation", repeat=False)
    blocks, notes, skipped = evaluation_blocks(
        source, tokenizer, data_args.block_size, max_files=data_args.eval_max_files
    )
    if not blocks:
        raise ValueError(f"no usable validation pieces in {', '.join(data_args.sources)} ({skip_summary(skipped)})")
    logger.info("validation: %d blocks, %d notes; %s", len(blocks), notes, skip_summary(skipped))
    mine = blocks[accelerator.process_index :: accelerator.num_processes]
    collate = BlockCollator(tokenizer.pad_token_id)
    size = train_args.per_device_eval_batch_size
    batches = collate.batches(mine, size)
    # Every process runs the same number of forwards (FSDP gathers weights in each): the
    # ones with fewer blocks add a batch that predicts nothing.
    while len(batches) < math.ceil(math.ceil(len(blocks) / accelerator.num_processes) / size):
        filler = collate(blocks[:1])
        filler["labels"].fill_(-100)
        batches.append(filler)
    return batches, notes


def identification_setup(tokenizer, data_args: DataArguments, config, added: list[str]) -> tuple[list, list[str], str]:
    """(windows, candidates, kind) of likelihood identification of `--identification_condition`:
    the opening and middle windows of up to `identification_max_pieces` validation pieces of each
    composer (or genre, ...) with enough training pieces and of the `added` composers (a
    fine-tuning's new conditions, however few their pieces)."""
    kind = data_args.identification_condition
    counts = tokenizer.training_pieces if kind == "composer" else tokenizer.condition_pieces.get(kind, {})
    well_trained = {name for name, n in counts.items() if n >= data_args.identification_min_files}
    new = {tokenizer.condition_name(name) for name in added} if kind == "composer" else set()
    candidates = sorted(name for name in well_trained | new if name in tokenizer.values(kind))
    if len(candidates) < 2:
        logger.info(
            "likelihood identification off: fewer than 2 values of the %s with %d training pieces",
            kind,
            data_args.identification_min_files,
        )
        return [], [], kind
    taken, chosen = Counter(), []
    for piece in pieces_of(pieces(tokenizer, data_args, "validation", repeat=False), tokenizer, Counter()):
        limit, label = data_args.identification_max_pieces, label_of(piece, kind)
        if label in candidates and (limit is None or taken[label] < limit):
            taken[label] += 1
            chosen.append(piece)
    length = window_tokens(config, data_args.identification_tokens, tokenizer)
    windows = identification_windows(chosen, candidates, length, tokenizer, kind)
    logger.info("likelihood identification of the %s: %d windows of %s", kind, len(windows), ", ".join(candidates))
    return windows, candidates, kind


def build_model(model_args: ModelArguments, tokenizer: MusicTokenizer, overrides: dict) -> torch.nn.Module:
    """A preset's fresh model, or the `--init_from` model in float32 (mixed precision is accelerate's)
    with rows for the added condition tokens, wrapped for LoRA when asked."""
    if not model_args.init_from:
        config = modeling.build_config(model_args.family, model_args.preset, tokenizer, **overrides)
        return AutoModelForCausalLM.from_config(config)
    model = AutoModelForCausalLM.from_pretrained(model_args.init_from, dtype=torch.float32, **overrides)
    known = model.config.vocab_size
    if model_args.add_composers and known < len(tokenizer):
        add_condition_rows(model, len(tokenizer), range(tokenizer.base_vocab_size, known))
    if model_args.lora_rank:
        model = with_lora(model, model_args.lora_rank, model_args.lora_alpha, range(known, len(tokenizer)))
    if model.config.vocab_size != len(tokenizer):
        raise ValueError(
            f"{model_args.init_from} has {model.config.vocab_size} token embeddings for a {len(tokenizer)}-token "
            "tokenizer: resize them (model.resize_token_embeddings) before fine-tuning"
        )
    return model


def card_fields(
    model_args: ModelArguments,
    data_args: DataArguments,
    train_args: TrainArguments,
    accelerator: Accelerator,
    tokenizer: MusicTokenizer,
    parameters: int,
    tokens_per_step: int,
    max_steps: int,
) -> dict:
    """What the model card says of the run before its first evaluation; `training` is the
    procedure as its table shows it (the loop adds the training time and what stopped the run)."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    processes = accelerator.num_processes
    parallel = accelerator.distributed_type.value
    base = f"{tokenizer.base_vocab_size:,} REMI" + (" and BPE" if tokenizer.base.is_trained else "")
    training = {
        "start": start_description(model_args),
        "hardware": f"{processes} x {device}" + (f" ({parallel})" if processes > 1 else ""),
        "precision": {"no": "float32"}.get(accelerator.mixed_precision, accelerator.mixed_precision),
        "batch": (
            f"{tokens_per_step:,} tokens per step: {train_args.per_device_train_batch_size} blocks of "
            f"{data_args.block_size} x {train_args.gradient_accumulation_steps} accumulation x "
            f"{processes} process{'es' if processes > 1 else ''}"
        ),
        "schedule": (
            f"{max_steps:,} steps; AdamW, learning rate {train_args.learning_rate:g}, {train_args.warmup_steps} "
            f"warm-up steps then {train_args.lr_scheduler_type}, weight decay {train_args.weight_decay:g}"
        ),
        "conditioning": (
            f"{', '.join(tokenizer.kinds)} token{'s' if len(tokenizer.kinds) > 1 else ''} at the head of "
            f"{'every block' if data_args.condition_every_block else 'each piece'}; each its kind's `Unknown` "
            f"instead for {data_args.condition_dropout:.0%} of them"
        ),
        "tokenizer": f"miditok, {base} tokens + {len(tokenizer.condition_token_ids)} condition tokens",
        "seed": str(train_args.seed),
    }
    return {
        "name": train_args.hub_model_id.split("/")[-1]
        if train_args.hub_model_id
        else Path(train_args.output_dir).resolve().name,
        "sources": data_args.sources,
        "base_model": model_args.init_from,
        "parameters": parameters,
        "training": training,
        "repo_id": train_args.hub_model_id or str(Path(train_args.output_dir)),
        "license": train_args.license,
        "metrics": {},
        "evaluated_on": "nothing yet: the run stopped before its first evaluation",
        "identified": data_args.identification_condition,
    }


def start_description(model_args: ModelArguments) -> str:
    """The model card's `start` row: the preset or the model fine-tuned, and how."""
    if not model_args.init_from:
        return f"`{model_args.family}-{model_args.preset}` preset, random weights"
    parts = [f"`{model_args.init_from}`"]
    if model_args.add_composers:
        parts.append(f"new conditions {', '.join(model_args.add_composers)} (from the mean of its others)")
    if model_args.lora_rank:
        merged = ", merged into the weights" if model_args.merge_lora else ""
        parts.append(f"LoRA adapters of rank {model_args.lora_rank} (peft){merged}, the rest frozen")
    return "; ".join(parts)


def build_optimizer(model: torch.nn.Module, train_args: TrainArguments) -> torch.optim.AdamW:
    groups = weight_decay_groups(model, train_args.weight_decay)
    return torch.optim.AdamW(groups, lr=train_args.learning_rate, betas=(0.9, train_args.adam_beta2))


def export(accelerator, model, tokenizer, output_dir: Path, fields: dict, merge_lora: bool = False) -> None:
    """Model (safetensors + code + auto_map), pipeline code, tokenizer and model card into `output_dir`;
    of a LoRA run, its adapter (or with `merge_lora` a copy merged into a whole model)."""
    state_dict = accelerator.get_state_dict(model)  # gathers FSDP shards
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        if accelerator.distributed_type == DistributedType.FSDP:
            # FSDP2 gives the model a class of its own, whose code save_pretrained would ship as the model's.
            unwrapped = AutoModelForCausalLM.from_config(unwrapped.config)
            unwrapped.load_state_dict(state_dict)
        tokenizer.save_pretrained(output_dir)  # first: the pipeline reads it
        if isinstance(unwrapped, PeftModel) and not merge_lora:
            base = fields["base_model"]
            save_adapter(unwrapped, output_dir, str(Path(base).resolve()) if Path(base).is_dir() else base)
            card = model_card(unwrapped.config, tokenizer, remote_code=False, adapter_of=base, **fields)
        else:
            if isinstance(unwrapped, PeftModel):  # a copy: training goes on with the adapter after a checkpoint
                unwrapped, state_dict = copy.deepcopy(unwrapped).merge_and_unload(), None
            generator = modeling.MidiGenerationPipeline(
                model=unwrapped, device=unwrapped.device, music_tokenizer=output_dir
            )
            generator.save_pretrained(output_dir, state_dict=state_dict)  # weights, model and pipeline code
            card = model_card(unwrapped.config, tokenizer, **fields)
        card.save(output_dir / "README.md")  # after the adapter: peft writes a card of its own
    accelerator.wait_for_everyone()


def log_metrics(accelerator, output_dir: Path, step: int, values: dict) -> None:
    """To the trackers and, for scripts and plots, as one JSON line in metrics.jsonl."""
    accelerator.log(values, step=step)
    if accelerator.is_main_process:
        with open(output_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps({"step": step, **values}) + "\n")


def trim_metrics(output_dir: Path, step: int) -> None:
    """Drop what a killed run logged after the checkpoint it resumes from."""
    path = output_dir / "metrics.jsonl"
    if path.is_file():
        lines = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in lines))


def start_accelerator(train_args: TrainArguments, output_dir: Path) -> Accelerator:
    """The accelerator the launch asked for, seeded, and `output_dir` ready (without the partial
    checkpoint a killed run may have left); a launch this run cannot honour ends with one line."""
    trackers = [] if train_args.report_to == "none" else train_args.report_to.split(",")
    try:
        accelerator = build_accelerator(
            # `accelerate launch` does not pass a config's `use_cpu` to multi-process runs.
            cpu=not torch.cuda.is_available(),
            gradient_accumulation_steps=train_args.gradient_accumulation_steps,
            log_with=trackers or None,
            project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "runs")),
        )
    except ValueError as error:  # the launch asked for what this run cannot do
        sys.exit(f"error: {error}")
    logger.info(accelerator.state, main_process_only=False)
    set_seed(train_args.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_partial_checkpoints(output_dir)
    accelerator.wait_for_everyone()
    return accelerator


def find_checkpoint(model_args: ModelArguments, train_args: TrainArguments) -> tuple[Path | None, str, dict]:
    """(the checkpoint to resume from or None, the model's name, its config overrides): a checkpoint
    of another model than this run asks for is refused."""
    output_dir, checkpoint = Path(train_args.output_dir), None
    if train_args.resume_from_checkpoint:
        checkpoint = resolve_checkpoint(output_dir, train_args.resume_from_checkpoint)
        if checkpoint is None:
            logger.info("no checkpoint in %s yet: starting from scratch", output_dir)
    overrides = config_overrides(model_args)
    base = f"from {model_args.init_from}" if model_args.init_from else f"{model_args.family}-{model_args.preset}"
    added = f"+ {', '.join(model_args.add_composers)}" if model_args.add_composers else ""
    lora = f"LoRA rank {model_args.lora_rank}" if model_args.lora_rank else ""
    model_name = " ".join(part for part in (base, added, lora, str(overrides or "")) if part)
    saved_model = read_trainer_state(checkpoint)["model"] if checkpoint else model_name
    if saved_model != model_name:
        raise ValueError(
            f"{checkpoint} holds a {saved_model} model, this run asks for {model_name}: "
            "resume with the run's own preset and overrides"
        )
    return checkpoint, model_name, overrides


def count_training_pieces(
    accelerator: Accelerator, tokenizer: MusicTokenizer, data_args: DataArguments, adding_to: str | None
) -> None:
    """Build the missing token caches (the main process first, the others then open them) and
    record the training pieces of each composer (and genre, ...) in the tokenizer, which is saved
    with the model: which conditions it learned from much data (a model given new conditions,
    `adding_to`: that model's pieces and these)."""
    cache_options = {"cached": data_args.token_cache, "cache_dir": data_args.cache_dir, "num_proc": data_args.num_proc}
    if data_args.token_cache:
        with accelerator.main_process_first():  # the others find them built, so only the main one rebuilds
            rebuild = data_args.rebuild_token_cache and accelerator.is_main_process
            build_caches(data_args.sources, tokenizer, data_args.cache_dir, data_args.num_proc, rebuild)
    counts = condition_counts(data_args.sources, "train", tokenizer, tokenizer.kinds, **cache_options)
    if adding_to:
        base = MusicTokenizer.from_pretrained(adding_to)
        counts["composer"] += Counter(base.training_pieces)
        for kind, pieces in base.condition_pieces.items():
            counts[kind] += Counter(pieces)
    tokenizer.training_pieces = dict(counts.pop("composer"))
    tokenizer.condition_pieces = {kind: dict(pieces) for kind, pieces in counts.items()}  # genre, tempo, mode


def training_length(data_args: DataArguments, train_args: TrainArguments, processes: int) -> tuple[int, int]:
    """(tokens per optimizer step, optimizer steps): `max_train_tokens` wins over `max_steps`."""
    tokens_per_step = (
        data_args.block_size
        * train_args.per_device_train_batch_size
        * train_args.gradient_accumulation_steps
        * processes
    )
    if train_args.max_train_tokens:
        return tokens_per_step, math.ceil(train_args.max_train_tokens / tokens_per_step)
    return tokens_per_step, train_args.max_steps


def restore(accelerator: Accelerator, checkpoint: Path | None, loader: StatefulDataLoader, state: dict) -> dict:
    """The trainer state to go on from: `state` for a fresh run, else the checkpoint's, with the
    weights, optimizer, scheduler, random states and this process's data position loaded."""
    if checkpoint is None:
        return state
    saved, rank_state = load_checkpoint(accelerator, checkpoint)
    loader.load_state_dict(rank_state["data"])
    saved.pop("stopped_by", None)  # this run goes on
    logger.info("resumed from %s at step %d (%d tokens)", checkpoint, saved["step"], saved["tokens"])
    return saved


def start_trackers(accelerator: Accelerator, arguments: tuple, max_steps: int) -> None:
    """The trackers (`report_to`) get every argument, flattened to plain values."""
    run_config = {k: v for group in arguments for k, v in dataclasses.asdict(group).items()}
    run_config |= {"max_steps": max_steps, "num_processes": accelerator.num_processes}
    accelerator.init_trackers(
        "train", config={k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in run_config.items()}
    )


def train_step(
    model, batches, optimizer, accelerator: Accelerator, train_args: TrainArguments, digest
) -> torch.Tensor:
    """One optimizer step over `gradient_accumulation_steps` batches (each hashed into `digest`,
    which shows that two runs read the same data); this process's mean loss."""
    mean_loss = torch.zeros((), device=accelerator.device)
    for _ in range(train_args.gradient_accumulation_steps):
        batch = next(batches)
        digest.update(batch["input_ids"].numpy().tobytes())
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.accumulate(model):
            loss = model(**batch).loss
            accelerator.backward(loss)
            if accelerator.sync_gradients and train_args.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), train_args.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
        mean_loss += loss.detach() / train_args.gradient_accumulation_steps
    return mean_loss


def validate(model, tokenizer, evaluation: list, notes: int, identification_set: tuple, accelerator, batch_size: int):
    """Validation loss, bits per token and per note, and likelihood identification when it is on."""
    metrics = evaluate(model, evaluation, accelerator, notes)
    windows, candidates, kind = identification_set
    if windows:
        found = identification(model, tokenizer, windows, candidates, batch_size, accelerator, kind)
        metrics |= summary_metrics(found)
    return metrics


def main(argv: list[str] | None = None) -> None:
    launched = time.monotonic()
    model_args, data_args, train_args = parse_arguments(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    output_dir = Path(train_args.output_dir)
    accelerator = start_accelerator(train_args, output_dir)

    # The model and its tokenizer: a checkpoint holds its tokenizer, so a resumed run cannot drift
    # to another vocabulary.
    checkpoint, model_name, overrides = find_checkpoint(model_args, train_args)
    tokenizer = (
        MusicTokenizer.from_pretrained(checkpoint)
        if checkpoint
        else load_tokenizer(accelerator, model_args, data_args, output_dir)
    )
    model = build_model(model_args, tokenizer, overrides)
    parameters = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(
        "%s: %.2fM parameters (%.2fM trained), vocabulary %d",
        model_name,
        parameters / 1e6,
        trained / 1e6,
        len(tokenizer),
    )
    adding_to = model_args.init_from if model_args.add_composers else None
    count_training_pieces(accelerator, tokenizer, data_args, adding_to)

    # Optimizer and schedule; the scheduler is stepped by hand once per optimizer step (a prepared
    # scheduler steps once per process).
    tokens_per_step, max_steps = training_length(data_args, train_args, accelerator.num_processes)
    optimizer = build_optimizer(model, train_args)
    scheduler = get_scheduler(
        train_args.lr_scheduler_type, optimizer, num_warmup_steps=train_args.warmup_steps, num_training_steps=max_steps
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    logger.info(describe_strategy(accelerator, model), main_process_only=False)
    kernels = model_kernels(accelerator.unwrap_model(model), accelerator.device.type)
    logger.info("kernels on %s: %s", accelerator.device.type, ", ".join(f"{k} {v}" for k, v in kernels.items()))

    # Data, not prepared: every process reads its own share (rank, world_size) and keeps its own position.
    loader = train_loader(tokenizer, data_args, train_args, accelerator)
    evaluation, notes = eval_batches(tokenizer, data_args, train_args, accelerator)
    identification_set = identification_setup(
        tokenizer, data_args, accelerator.unwrap_model(model).config, model_args.add_composers or []
    )

    state = restore(accelerator, checkpoint, loader, {"tokens": 0, "step": 0, "seconds": 0.0, "model": model_name})
    start = state["step"]
    state["max_steps"] = max_steps  # a checkpoint tells whether its run is complete
    if accelerator.is_main_process:
        trim_metrics(output_dir, start)
    start_trackers(accelerator, (model_args, data_args, train_args), max_steps)
    card = card_fields(
        model_args, data_args, train_args, accelerator, tokenizer, parameters, tokens_per_step, max_steps
    )
    uploads = []

    def run_validation(step: int) -> None:
        batch_size = train_args.per_device_eval_batch_size
        metrics = validate(model, tokenizer, evaluation, notes, identification_set, accelerator, batch_size)
        log_metrics(accelerator, output_dir, step, {f"eval/{k}": v for k, v in metrics.items()})
        logger.info("step %d: eval %s", step, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "tokens"))
        card["metrics"] = {k: v for k, v in metrics.items() if k != "tokens"}
        card["evaluated_on"] = f"the validation split at step {step} ({metrics['tokens']:,} tokens, {notes:,} notes)"

    def checkpoint_and_export(step: int, final: bool) -> None:
        data_position = {"data": loader.state_dict()}
        limit = train_args.save_total_limit
        save_checkpoint(
            accelerator, output_dir, step, state, data_position, limit, save_extra=tokenizer.save_pretrained
        )
        if train_args.export_at_checkpoints or final:
            card["training"]["training time"] = f"{state['seconds'] / 3600:.2f} h (steps, not evaluation)"
            fields = card | {"tokens_trained": state["tokens"]}
            export(accelerator, model, tokenizer, output_dir, fields, model_args.merge_lora)
            if train_args.push_to_hub and accelerator.is_main_process:
                uploads.append(
                    push_folder(output_dir, train_args.hub_model_id, train_args.hub_private, f"step {step}")
                )

    # The loop: a step, its log line, validation, a checkpoint; a time limit or a signal ends it
    # after the step in flight.
    data_digest = hashlib.sha1()
    stop = StopRequest(accelerator, train_args.time_limit, launched)
    batches = iter(loader)
    progress = tqdm(total=max_steps, initial=start, desc="training", disable=not accelerator.is_local_main_process)
    cause = 0
    running_loss, running_steps, running_seconds = torch.zeros((), device=accelerator.device), 0, 0.0
    if train_args.evaluate_first and start == 0:
        run_validation(0)
    model.train()
    for step in range(start + 1, max_steps + 1):
        started = time.perf_counter()
        running_loss += train_step(model, batches, optimizer, accelerator, train_args, data_digest)
        scheduler.step()
        state["tokens"] += tokens_per_step
        running_steps += 1
        running_seconds += time.perf_counter() - started
        state["seconds"] = state.get("seconds", 0.0) + time.perf_counter() - started
        progress.update(1)
        cause = stop.cause()
        final = step == max_steps or cause != 0

        if step % train_args.logging_steps == 0 or final:
            train_loss = accelerator.reduce(running_loss, reduction="mean").item() / running_steps
            values = {
                "train/loss": train_loss,
                "train/learning_rate": scheduler.get_last_lr()[0],
                "train/tokens": state["tokens"],
                "train/tokens_per_second": tokens_per_step * running_steps / running_seconds,
            }
            running_loss.zero_()
            running_steps, running_seconds = 0, 0.0
            progress.set_postfix(loss=f"{train_loss:.3f}", lr=f"{values['train/learning_rate']:.2e}")
            log_metrics(accelerator, output_dir, step, values)
        # After a signal the job has seconds left: checkpoint and export without evaluating.
        if (train_args.eval_steps and step % train_args.eval_steps == 0) or (final and cause <= stop.TIME_LIMIT):
            run_validation(step)
        if (train_args.save_steps and step % train_args.save_steps == 0) or final:
            if cause:
                state["stopped_by"] = f"{stop.describe(cause)} at step {step} of {max_steps}"
                card["training"]["stopped by"] = state["stopped_by"]
            checkpoint_and_export(step, final)
        if cause:
            logger.warning(
                "stopped by %s after step %d of %d (%d tokens): checkpoint and export written to %s; continue "
                "with --resume_from_checkpoint latest",
                stop.describe(cause),
                step,
                max_steps,
                state["tokens"],
                output_dir,
            )
            break
    stop.close()
    progress.close()

    sharded = accelerator.distributed_type == DistributedType.FSDP  # each rank holds a slice of the weights
    ran = max_steps > start  # a resumed run that was complete reads no data: no digest to give
    logger.info(
        "rank %d: %s; data digest %s; parameter digest %s",
        accelerator.process_index,
        skip_summary(loader.dataset.skipped) if data_args.num_workers == 0 else "skips are logged by the workers",
        data_digest.hexdigest()[:12] if ran else f"none (no step left after step {start}: nothing read)",
        "n/a (sharded)" if sharded else parameter_digest(accelerator.unwrap_model(model)),
        main_process_only=False,
    )
    accelerator.end_training()
    for upload in uploads:
        upload.result()
    if accelerator.is_main_process:
        logger.info("model, tokenizer and model card saved to %s", output_dir)
    if cause > stop.TIME_LIMIT:
        sys.exit(128 + cause)  # a pre-empted job did not finish: schedulers and shells expect this status


if __name__ == "__main__":
    main()
