"""Train a composer classifier over music tokens: the judge of generated music (or of another
condition: `--condition genre` on MidiCaps).

    python scripts/train_classifier.py --sources ../shared/data/midi-classical-music \\
        --init_from modeling/pretrained/gpt2-small-classical --output_dir outputs/classifier
    accelerate launch --config_file accelerate_configs/cpu_2proc.yaml scripts/train_classifier.py \\
        --sources bundled --preset tiny --max_steps 50 --output_dir outputs/classifier-tiny

A sequence-classification head on GPT-2: on a trained language model (`--init_from`, whose
tokenizer it keeps) or on a fresh GPT-2 of a preset size (`--preset`, `--tokenizer`). It
learns from class-balanced random windows of the training split's pieces, checkpoints and
resumes like `train.py`, and ends with top-1 / top-3 accuracy per composer on windows of
the test split, the ceiling for generated music, beside chance. The output folder loads with
`AutoModelForSequenceClassification.from_pretrained` and holds the tokenizer and
`classifier_results.json`.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, get_scheduler

import modeling
from command_line import CommandParser
from evaluation.classification import (
    composers_by_files,
    evaluation_windows,
    labelled_pieces,
    rank_labels,
    training_batch,
)
from evaluation.metrics import topk_accuracy
from modeling.training import (
    list_checkpoints,
    load_checkpoint,
    remove_partial_checkpoints,
    resolve_checkpoint,
    save_checkpoint,
    weight_decay_groups,
)
from tokenization import (
    BlockCollator,
    MusicTokenizer,
    build_caches,
    condition_counts,
    open_pieces,
    skip_summary,
    tokenizer_for,
)
from tokenization.conditions import KINDS, canonical_value

logger = get_logger(__name__)
RESULTS_FILE = "classifier_results.json"


@dataclass
class Arguments:
    sources: list[str] = field(
        default_factory=lambda: ["bundled"], metadata={"help": "MIDI sources or token caches (train.py's)."}
    )
    token_cache: bool = field(
        default=True, metadata={"help": "Read pieces from the sources' token caches (--no_token_cache: MIDI)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where token caches live (train.py's)."})
    rebuild_token_cache: bool = field(
        default=False, metadata={"help": "Build the sources' token caches again, though they look whole and current."}
    )
    init_from: str | None = field(
        default=None, metadata={"help": "A trained GPT-2 model folder or repo id to put the head on."}
    )
    preset: str = field(default="tiny", metadata={"help": "GPT-2 size without --init_from: tiny, small or base."})
    tokenizer: str | None = field(
        default=None, metadata={"help": "Tokenizer without --init_from; left out: built from the sources."}
    )
    condition: str = field(
        default="composer", metadata={"help": "What the classes are: composer, or genre, tempo or mode (MidiCaps)."}
    )
    composers: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated classes (composers, or values of --condition); left out: those with "
            "--min_files training files."
        },
    )
    min_files: int = field(
        default=100,
        metadata={"help": "Training pieces (all sources together) a composer (or value) needs to be a class."},
    )
    max_pieces_per_composer: int = field(default=200, metadata={"help": "Training pieces read per composer."})
    window_tokens: int = field(default=256, metadata={"help": "Music tokens per classified window."})
    eval_windows_per_piece: int = field(default=4, metadata={"help": "Windows of each test piece evaluated."})
    per_device_train_batch_size: int = field(default=16)
    per_device_eval_batch_size: int = field(default=32)
    learning_rate: float = field(default=3e-4)
    weight_decay: float = field(default=0.01)
    warmup_steps: int = field(default=20)
    max_steps: int = field(default=300)
    logging_steps: int = field(default=10)
    save_steps: int = field(default=100, metadata={"help": "Checkpoint every N steps (0: only at the end)."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept (empty: all)."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "'latest' or a checkpoint folder."})
    output_dir: str = field(default="outputs/classifier")
    seed: int = field(default=42)


def class_names(args: Arguments, tokenizer: MusicTokenizer) -> list[str]:
    if args.composers:
        names = list(dict.fromkeys(canonical_value(args.condition, n) for n in args.composers.split(",") if n.strip()))
    else:
        options = {"cached": args.token_cache, "cache_dir": args.cache_dir}
        counts = condition_counts(args.sources, "train", tokenizer, [args.condition], **options)[args.condition]
        names = sorted(composers_by_files(counts, args.min_files))
    if len(names) < 2:
        raise ValueError(
            f"a classifier needs at least 2 {args.condition}s, got {names or 'none'}: lower --min_files "
            "or name them with --composers"
        )
    return names


def load_tokenizer(args: Arguments) -> MusicTokenizer:
    """The `--init_from` model's tokenizer, else `--tokenizer`, else the sources' (see `tokenizer_for`)."""
    return tokenizer_for(args.init_from or args.tokenizer, args.sources)


def load_backbone(args: Arguments, names: list[str], tokenizer: MusicTokenizer) -> torch.nn.Module:
    """The model with a fresh head over `names`."""
    labels = {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {n: i for i, n in enumerate(names)},
    }
    if args.init_from:
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                args.init_from, pad_token_id=tokenizer.pad_token_id, dtype=torch.float32, **labels
            )  # float32 whatever the checkpoint holds: accelerate's mixed precision handles the rest
        except ValueError as error:
            raise ValueError(
                f"{args.init_from} has no sequence-classification head in transformers "
                f"({str(error).splitlines()[0]}): start from a GPT-2 (transformer) model"
            ) from None
    else:  # positions for what it reads: a window framed as BOS, every condition Unknown, music
        frame = args.window_tokens + tokenizer.prefix_length
        config = modeling.build_config("transformer", args.preset, tokenizer, n_positions=frame, **labels)
        model = AutoModelForSequenceClassification.from_config(config)
    prefix = tokenizer.prefix_length
    if args.window_tokens + prefix > model.config.n_positions:
        raise ValueError(
            f"--window_tokens {args.window_tokens} and the {prefix} tokens framing a window exceed the model's "
            f"{model.config.n_positions} positions: give --window_tokens {model.config.n_positions - prefix} or less"
        )
    missing = [n for n in names if n not in tokenizer.values(args.condition)]
    if missing:
        logger.warning("the tokenizer has no condition token for %s (fine: windows carry none)", ", ".join(missing))
    model.config.window_tokens = args.window_tokens
    model.config.condition = args.condition
    return model


def read_pieces(args: Arguments, tokenizer: MusicTokenizer, names: list[str], split: str, limit: int | None):
    skipped: Counter = Counter()
    rows = open_pieces(args.sources, split, tokenizer, cached=args.token_cache, cache_dir=args.cache_dir, repeat=False)
    pieces = labelled_pieces(rows, tokenizer, set(names), skipped, limit, args.condition)
    logger.info(
        "%s: %d pieces of %d %s classes; %s", split, len(pieces), len(names), args.condition, skip_summary(skipped)
    )
    return pieces


def held_out_accuracy(model, tokenizer, pieces: list, args: Arguments) -> dict:
    """Top-1 / top-3 per class on test-split windows (the ceiling for generated music), and chance."""
    windows, labels = evaluation_windows(pieces, tokenizer, args.window_tokens, args.eval_windows_per_piece)
    ranked = rank_labels(model, windows, args.per_device_eval_batch_size)
    classes = len(model.config.id2label)
    chance = {"top1": 1 / classes, "top3": min(3 / classes, 1.0)}
    return topk_accuracy(labels, ranked) | {"pieces": len(pieces), "windows": len(windows), "chance": chance}


def main(argv: list[str] | None = None) -> dict:
    parser = CommandParser(Arguments)
    (args,) = parser.parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    set_seed(args.seed)  # before the head is initialised
    with parser.failures():
        counts = (args.window_tokens, args.max_steps, args.logging_steps, args.eval_windows_per_piece)
        if args.condition not in KINDS:
            raise ValueError(f"--condition {args.condition}: choose one of {', '.join(KINDS)}")
        if min(*counts, args.per_device_train_batch_size, args.per_device_eval_batch_size) < 1:
            raise ValueError(
                "--window_tokens, --max_steps, --logging_steps, --eval_windows_per_piece and the batch sizes "
                "must be positive"
            )
        if not args.resume_from_checkpoint and list_checkpoints(output_dir):
            raise ValueError(
                f"{output_dir} holds checkpoints: add --resume_from_checkpoint latest or change --output_dir"
            )
        with accelerator.main_process_first():  # the main process builds a missing token cache
            tokenizer = load_tokenizer(args)
            if args.token_cache and args.rebuild_token_cache and accelerator.is_main_process:
                build_caches(args.sources, tokenizer, args.cache_dir, rebuild=True)
            names = class_names(args, tokenizer)
        model = load_backbone(args, names, tokenizer)
    if accelerator.is_main_process:
        remove_partial_checkpoints(output_dir)  # left by a run killed while saving
    pieces = read_pieces(args, tokenizer, names, "train", args.max_pieces_per_composer)
    by_composer = {name: [p for p in pieces if p.label == name] for name in names}
    empty = [name for name, found in by_composer.items() if not found]
    if empty:
        parser.error(f"no usable training piece of {', '.join(empty)} in {', '.join(args.sources)}")
    test_pieces = read_pieces(args, tokenizer, names, "test", None)  # before training: fail early
    if not test_pieces:
        parser.error(f"the test split of {', '.join(args.sources)} has no piece of {', '.join(names)}")
    untested = sorted(set(names) - {p.label for p in test_pieces})
    if untested:
        logger.warning("no test piece of %s: the mean accuracy leaves them out", ", ".join(untested))

    optimizer = torch.optim.AdamW(weight_decay_groups(model, args.weight_decay), lr=args.learning_rate)
    scheduler = get_scheduler(
        "cosine", optimizer, num_warmup_steps=args.warmup_steps, num_training_steps=args.max_steps
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    state = {"step": 0, "classes": names}
    checkpoint = resolve_checkpoint(output_dir, args.resume_from_checkpoint) if args.resume_from_checkpoint else None
    if checkpoint is not None:
        state, _ = load_checkpoint(accelerator, checkpoint)
        if state["classes"] != names:
            parser.error(f"{checkpoint} was trained on {', '.join(state['classes'])}: resume with the same classes")
        logger.info("resumed from %s at step %d", checkpoint, state["step"])

    label2id = accelerator.unwrap_model(model).config.label2id
    collate = BlockCollator(tokenizer.pad_token_id)
    progress = tqdm(
        range(state["step"] + 1, args.max_steps + 1), desc="training", disable=not accelerator.is_main_process
    )
    model.train()
    correct, seen, losses = 0, 0, []
    for step in progress:
        # Batches depend only on (seed, rank, step): a resumed run draws exactly the same ones.
        rng = random.Random(f"{args.seed}-{accelerator.process_index}-{step}")
        windows, labels = training_batch(
            by_composer, tokenizer, args.window_tokens, args.per_device_train_batch_size, rng
        )
        batch = collate([{"input_ids": w} for w in windows]) | {
            "labels": torch.tensor([label2id[name] for name in labels])
        }
        output = model(**{k: v.to(accelerator.device) for k, v in batch.items()})
        accelerator.backward(output.loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        correct += (output.logits.argmax(-1).cpu() == batch["labels"]).sum().item()
        seen += len(labels)
        losses.append(output.loss.item())
        if step % args.logging_steps == 0:
            progress.set_postfix(loss=f"{sum(losses) / len(losses):.3f}", accuracy=f"{correct / seen:.2f}")
            correct, seen, losses = 0, 0, []
        state["step"] = step
        if (args.save_steps and step % args.save_steps == 0) or step == args.max_steps:
            save_checkpoint(
                accelerator, output_dir, step, state, {}, args.save_total_limit, save_extra=tokenizer.save_pretrained
            )

    results = {}
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(output_dir)
        tokenizer.save_pretrained(output_dir)
        results = {"test": held_out_accuracy(unwrapped, tokenizer, test_pieces, args), "arguments": asdict(args)}
        (output_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2))
        print_accuracy(results["test"], args.condition)
    accelerator.wait_for_everyone()
    return results


def print_accuracy(test: dict, condition: str) -> None:
    print(f"\n{condition:<16} {'windows':>7} {'top-1':>6} {'top-3':>6}")
    for name, row in test["per_class"].items():
        print(f"{name:<16} {row['count']:>7} {row['top1']:>6.3f} {row['top3']:>6.3f}")
    print(f"{'mean':<16} {test['windows']:>7} {test['mean']['top1']:>6.3f} {test['mean']['top3']:>6.3f}")
    print(f"{'chance':<16} {'':>7} {test['chance']['top1']:>6.3f} {test['chance']['top3']:>6.3f}")


if __name__ == "__main__":
    main()
