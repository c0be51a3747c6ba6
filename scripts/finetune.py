"""Fine-tune a model on your own MIDI in one command: a new condition for your style, LoRA adapters.

    python scripts/finetune.py --data path/to/midi --name "My style"
    make finetune DATA=path/to/midi NAME="My style"
    python scripts/generate.py --model outputs/finetune-my_style --composers "My style"

From the bundled model (or `--model`: a family, a folder or a Hub repo id), it adds a condition
token NAME that starts as the mean of the model's others, and trains LoRA adapters (peft) on
every block's projections, plus that token's embedding, on the folder's pieces; the rest stays
frozen. A fifth of the files (at least one) is held out. Before the first step and after the
last, the held-out files are scored: bits per token, and likelihood identification (does the
model's likelihood name NAME among the model's well-trained conditions?). The output folder
holds the adapter (about 1.6 MB for the bundled model), the tokenizer and a model card; the
pipeline, generate.py, evaluate.py and the web app load it on its base. `--merge` writes the
merged model instead, `--lora_rank 0` trains all weights. This is scripts/train.py underneath:
the same command again resumes an interrupted run from its last checkpoint.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import train
from command_line import CommandParser
from modeling.catalog import resolve_model
from tokenization import MusicTokenizer, TokenCache
from tokenization.blocks import skip_summary
from tokenization.composers import canonical_composer
from tokenization.sources import list_midi_files


@dataclass
class Arguments:
    data: str = field(metadata={"help": "A folder of your MIDI files (any tree of .mid/.midi)."})
    name: str = field(
        metadata={"help": "The condition the pieces get: a composer, artist or style, new to the model."}
    )
    model: str | None = field(
        default=None, metadata={"help": "The model to start from (a family, a folder, a Hub id); left out: bundled."}
    )
    output_dir: str | None = field(default=None, metadata={"help": "Left out: outputs/finetune-<name>."})
    lora_rank: int = field(default=8, metadata={"help": "Rank of the LoRA adapters (0: train all weights)."})
    merge: bool = field(default=False, metadata={"help": "Write a whole model, the adapters merged in."})
    epochs: float = field(default=4.0, metadata={"help": "Passes over the training pieces."})
    learning_rate: float = field(
        default=2e-3, metadata={"help": "Peak learning rate (AdamW), 10 % warm-up, then cosine."}
    )
    block_size: int = field(default=512, metadata={"help": "Tokens per training block."})
    batch_size: int = field(default=8, metadata={"help": "Blocks per step."})
    seed: int = field(default=42)


def check(args: Arguments, model: str) -> tuple[str, MusicTokenizer]:
    """The labelled source and the run's tokenizer; every bad input ends here, before anything
    is written: no MIDI, too few files, a name the model has, a model without a tokenizer."""
    folder = Path(args.data)
    if ":" in args.name or not args.name.strip():
        raise ValueError(f"--name {args.name!r}: give a name without ':', e.g. --name \"My style\"")
    if not folder.is_dir():
        raise FileNotFoundError(f"--data {args.data}: no such folder; give the folder that holds your MIDI files")
    source = f"label:{args.name}:{folder}"
    files = list_midi_files(source)
    if not files:
        raise ValueError(f"--data {args.data}: no .mid or .midi files in it (subfolders included)")
    if len(files) < 2:
        raise ValueError(f"--data {args.data}: one MIDI file; fine-tuning holds at least one out, so give 2 or more")
    tokenizer = MusicTokenizer.from_pretrained(model)  # a model without a tokenizer fails here
    if tokenizer.condition_name(args.name) is not None:
        raise ValueError(
            f"--name {args.name!r}: {model} has that condition already; choose a new name, or train that "
            f"condition on with scripts/train.py --init_from {model}"
        )
    if args.lora_rank < 0 or args.epochs <= 0 or args.batch_size < 1 or args.block_size < 3:
        raise ValueError("--lora_rank must be 0 or more, --epochs above 0, --batch_size 1 or more, --block_size 3+")
    tokenizer.add_composers([args.name])
    return source, tokenizer


def plan(args: Arguments, source: str, tokenizer: MusicTokenizer) -> tuple[int, dict]:
    """Optimizer steps for `epochs` passes over the training tokens, and what the data holds
    (the source's token cache, built here: the training run then finds it)."""
    cache = TokenCache.for_source(source, tokenizer)
    splits = {split: cache.indices(split) for split in ("train", "validation")}
    if not splits["train"] or not splits["validation"]:
        raise ValueError(
            f"--data {args.data}: {len(splits['train'])} usable training and {len(splits['validation'])} held-out "
            f"pieces ({skip_summary(cache.info['skipped'])}); give more readable MIDI files"
        )
    tokens = int(sum(len(ids) for ids in cache.dataset.select(splits["train"])["ids"]))
    steps = max(1, math.ceil(args.epochs * tokens / (args.block_size * args.batch_size)))
    held_out = cache.dataset.select(splits["validation"])["path"]
    return steps, {"training tokens": tokens, "training pieces": len(splits["train"]), "held out": held_out}


def train_arguments(
    args: Arguments, model: str, source: str, output_dir: Path, steps: int, held_out: int
) -> list[str]:
    """scripts/train.py's command line for this fine-tuning (every held-out piece evaluated)."""
    argv = [
        *("--init_from", model, "--add_composers", args.name, "--sources", source),
        *("--output_dir", str(output_dir), "--resume_from_checkpoint", "latest"),
        *("--lora_rank", str(args.lora_rank), "--learning_rate", str(args.learning_rate)),
        *("--block_size", str(args.block_size), "--per_device_train_batch_size", str(args.batch_size)),
        *("--max_steps", str(steps), "--warmup_steps", str(max(1, steps // 10)), "--seed", str(args.seed)),
        *("--eval_steps", "0", "--save_steps", str(max(1, steps // 4)), "--save_total_limit", "1"),
        *("--evaluate_first", "--eval_max_files", str(held_out), "--identification_max_pieces", str(held_out)),
        *("--condition_dropout", "0", "--logging_steps", str(max(1, steps // 20)), "--report_to", "none"),
    ]
    return argv + (["--merge_lora"] if args.merge else [])


def summary(output_dir: Path, seconds: float) -> dict:
    """Held-out figures before the first step and after the last (from metrics.jsonl), time and size."""
    lines = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    evaluations = [line for line in lines if "eval/bits_per_token" in line]
    keys = ("bits_per_token", "identification_opening", "identification_middle", "identification_chance")
    before, after = ({k: e.get(f"eval/{k}") for k in keys} for e in (evaluations[0], evaluations[-1]))
    weights = list(output_dir.glob("*.safetensors"))
    return {
        "before": before,
        "after": after,
        "minutes": round(seconds / 60, 1),
        "weights_mb": round(sum(p.stat().st_size for p in weights) / 1e6, 2),
    }


def main(argv: list[str] | None = None) -> dict:
    started = time.monotonic()
    parser = CommandParser(Arguments)
    (args,) = parser.parse(argv)
    with parser.failures():
        model = resolve_model(args.model)[0]
        source, tokenizer = check(args, model)
        output_dir = Path(args.output_dir or f"outputs/finetune-{canonical_composer(args.name)}")
        steps, data = plan(args, source, tokenizer)
    print(
        f"fine-tuning {model} as {args.name!r} on {data['training pieces']} pieces ({data['training tokens']:,} "
        f"tokens) for {steps} steps; held out: {', '.join(data['held out'])}",
        file=sys.stderr,
    )
    argv = train_arguments(args, model, source, output_dir, steps, len(data["held out"]))
    train.main(argv + (["--debug"] if parser.debug else []))
    result = summary(output_dir, time.monotonic() - started)
    (output_dir / "finetune.json").write_text(json.dumps({"data": args.data, "name": args.name, **result}, indent=2))
    before, after = result["before"], result["after"]
    print(f"\n{output_dir}: {result['weights_mb']} MB of weights, {result['minutes']} min")
    print(f"held-out bits per token: {before['bits_per_token']:.3f} -> {after['bits_per_token']:.3f}")
    if after["identification_chance"] is not None:
        named = ", ".join(
            f"{position} {before[key]:.2f} -> {after[key]:.2f}"
            for position in ("opening", "middle")
            if after[key := f"identification_{position}"] is not None
        )
        print(f"{args.name!r} named by likelihood (chance {after['identification_chance']:.2f}): {named}")
    print(f'try: python scripts/generate.py --model {output_dir} --composers "{args.name}"')
    return result


if __name__ == "__main__":
    main()
