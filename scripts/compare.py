"""Train the three families on the same tokens, judge them with one independent classifier, and
bundle them: the comparison behind the README's table and the bundled models, in one command.

    python scripts/compare.py --sources drengskapur/midi-classical-music \\
        --tokenizer modeling/pretrained/gpt2-small-classical --bundle_dir modeling/pretrained
    python scripts/compare.py --sources bundled --tokenizer modeling/pretrained/gpt2-small-classical \\
        --preset tiny --max_train_tokens 16384 --per_device_train_batch_size 8 --mixed_precision no \\
        --classifier_preset tiny --classifier_steps 4 --classifier_args "--min_files 4" --num_samples 1 \\
        --length 24 --output_dir outputs/compare-dry-run      # a CPU dry run, as the tests do

Each step runs the project's own script as a subprocess, its log in `<output_dir>/logs/`:
1. the judge: `train_classifier.py` on a fresh GPT-2 of `--classifier_preset` (from scratch, so
   it shares weights with none of the models it judges), and the baselines: `train_ngram.py`
   4-grams on the whole training split and on as many tokens as the models see;
2. the models: `accelerate launch scripts/train.py scripts/configs/<family>-<preset>.yaml` per
   family with the same sources, tokenizer, seed, batch and token budget, so every family sees
   the same blocks in the same order (the condition on every block); all at once on the one
   device (`--parallel`, the default) or one after another; each stops at `--time_limit` with
   a checkpoint and an export;
3. `evaluate.py` on the test split for every model and baseline: bits per token and per note,
   likelihood identification, samples judged at each of `--guidance_scales`, statistics;
4. `comparison.md` (the table) and `comparison.json` (tokens, speed, GPU use, results), and with
   `--bundle_dir` a compact copy of each model (`modeling.compact`: FP8 weights) whose cost in
   bits per token is measured on the same test pieces.
A step whose result exists is skipped and training resumes from its checkpoints, so after a
pre-emption (SIGTERM or SIGINT: every run checkpoints, the command exits 128 + the signal's
number) the same command carries on.
"""

from __future__ import annotations

import json
import shlex
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import modeling
from command_line import CommandParser
from evaluation import comparison
from evaluation.report import comparison_table
from modeling.compact import save_compact
from modeling.ngram import CONFIG_NAME as NGRAM_CONFIG
from tokenization import split_names
from tokenization.cache import is_token_cache

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Arguments:
    sources: list[str] = field(
        default_factory=lambda: ["drengskapur/midi-classical-music"],
        metadata={"help": "MIDI sources or their token-cache folders."},
    )
    source_weights: list[float] | None = field(
        default=None, metadata={"help": "How often training draws from each source (train.py's)."}
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "Tokenizer folder or repo id (needed unless --sources are token caches)."}
    )
    families: list[str] = field(default_factory=lambda: list(modeling.FAMILIES))
    preset: str = field(default="small", metadata={"help": "Model size of every family: tiny, small or base."})
    max_train_tokens: int = field(default=61_440_000, metadata={"help": "Training tokens of each family."})
    time_limit: float = field(
        default=420.0,
        metadata={"help": "Seconds of training: each run's limit side by side, shared in turn one after another."},
    )
    parallel: bool = field(default=True, metadata={"help": "Train the families at once on one device."})
    per_device_train_batch_size: int = field(default=32)
    warmup_steps: int = field(default=100)
    eval_steps: int = field(default=500, metadata={"help": "Validation every N steps during training."})
    save_steps: int = field(default=250)
    seed: int = field(default=42)
    train_args: str = field(default="", metadata={"help": "More train.py flags for every family, as one string."})
    accelerate_config: str = field(default="accelerate_configs/single_gpu.yaml")
    mixed_precision: str = field(default="bf16", metadata={"help": "accelerate launch's: bf16, fp16 or no."})
    classifier_preset: str = field(default="small", metadata={"help": "Size of the judge, trained from scratch."})
    classifier_steps: int = field(default=2000)
    classifier_batch_size: int = field(default=64, metadata={"help": "Windows per step of the judge."})
    classifier_args: str = field(default="", metadata={"help": "More train_classifier.py flags, as one string."})
    ngram_order: int = field(default=4)
    num_samples: int = field(default=8, metadata={"help": "Samples per composer and guidance scale."})
    length: int = field(default=512, metadata={"help": "Tokens per sample."})
    guidance_scales: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0])
    eval_args: str = field(default="", metadata={"help": "More evaluate.py flags, as one string."})
    device: str | None = field(default=None, metadata={"help": "Device of the evaluations; left out: cuda if any."})
    output_dir: str = field(default="outputs/compare-small")
    bundle_dir: str | None = field(
        default=None, metadata={"help": "Write compact copies here, e.g. modeling/pretrained; left out: none."}
    )
    bundle_name: str = field(default="{family}-{preset}-classical", metadata={"help": "Folder name of a copy."})


def check(args: Arguments) -> None:
    """Fail before any work on what would fail later."""
    unknown = [f for f in args.families if f not in modeling.FAMILIES]
    if unknown or not args.families:
        raise ValueError(f"unknown famil(ies) {', '.join(unknown)}: choose among {', '.join(modeling.FAMILIES)}")
    if args.preset not in modeling.PRESETS["transformer"]:
        raise ValueError(f"unknown preset {args.preset!r}: choose one of {', '.join(modeling.PRESETS['transformer'])}")
    if not (ROOT / args.accelerate_config).is_file():
        raise ValueError(f"accelerate config {args.accelerate_config} not found: see accelerate_configs/")
    if min(args.max_train_tokens, args.time_limit, args.classifier_steps, args.num_samples, args.length) <= 0:
        raise ValueError("--max_train_tokens, --time_limit, --classifier_steps, --num_samples, --length: give > 0")
    if args.tokenizer is None and not all(is_token_cache(source) for source in args.sources):
        raise ValueError(
            "give --tokenizer (the bundled models': modeling/pretrained/gpt2-small-classical), or a token-cache "
            "folders as --sources: every family must read the same tokens"
        )
    found = set().union(*(split_names(source) for source in args.sources))  # raises when a source is absent
    missing = {"train", "validation", "test"} - found
    if missing:
        raise ValueError(f"{', '.join(args.sources)}: no {', '.join(sorted(missing))} split: give a larger source")


def launch(args: Arguments, script: str, *flags: str) -> list[str]:
    return [
        *(sys.executable, "-m", "accelerate.commands.launch", "--config_file", args.accelerate_config),
        *("--mixed_precision", args.mixed_precision, script, *flags),
    ]


def data_flags(args: Arguments) -> list[str]:
    return ["--sources", *args.sources, *(["--tokenizer", args.tokenizer] if args.tokenizer else [])]


def baseline_commands(args: Arguments, out: Path) -> dict[str, list[str]]:
    """The judge and the two n-grams that are not there yet."""
    commands = {}
    if not (out / "judge" / "classifier_results.json").is_file():
        commands["judge"] = launch(
            args,
            "scripts/train_classifier.py",
            *data_flags(args),
            *("--preset", args.classifier_preset, "--max_steps", str(args.classifier_steps)),
            *("--per_device_train_batch_size", str(args.classifier_batch_size)),
            *("--warmup_steps", str(max(1, args.classifier_steps // 20)), "--save_steps", "200"),
            *("--output_dir", str(out / "judge"), "--resume_from_checkpoint", "latest", "--seed", str(args.seed)),
            *shlex.split(args.classifier_args),
        )
    for name, budget in (("ngram-full", []), ("ngram-budget", ["--max_train_tokens", str(args.max_train_tokens)])):
        if not (out / name / NGRAM_CONFIG).is_file():
            commands[name] = [
                *(sys.executable, "scripts/train_ngram.py", *data_flags(args), "--order", str(args.ngram_order)),
                *budget,
                *("--output_dir", str(out / name), "--seed", str(args.seed)),
            ]
    return commands


def train_command(args: Arguments, out: Path, family: str, seconds: float) -> list[str]:
    return launch(
        args,
        "scripts/train.py",
        f"scripts/configs/{family}-{args.preset}.yaml",
        *data_flags(args),
        *(["--source_weights", *(f"{w:g}" for w in args.source_weights)] if args.source_weights else []),
        *("--max_train_tokens", str(args.max_train_tokens), "--time_limit", f"{seconds:.0f}"),
        *("--per_device_train_batch_size", str(args.per_device_train_batch_size)),
        *("--warmup_steps", str(args.warmup_steps), "--seed", str(args.seed), "--report_to", "none"),
        *("--eval_steps", str(args.eval_steps), "--save_steps", str(args.save_steps)),
        *("--output_dir", str(out / family), "--resume_from_checkpoint", "latest"),
        *shlex.split(args.train_args),
    )


def train(args: Arguments, jobs: comparison.Jobs, out: Path) -> dict[str, float]:
    """Train every family not trained yet (resuming what a cut-off run left); wall seconds per family."""
    families = [f for f in args.families if not comparison.complete(out / f)]
    seconds, deadline = {}, time.monotonic() + args.time_limit
    if args.parallel:
        commands = {f: train_command(args, out, f, args.time_limit) for f in families}
        started = time.monotonic()
        jobs.run(commands, parallel=True)
        return dict.fromkeys(families, time.monotonic() - started)
    for done, family in enumerate(families):
        share = max(1.0, (deadline - time.monotonic()) / (len(families) - done))
        started = time.monotonic()
        jobs.run({family: train_command(args, out, family, share)}, parallel=False)
        seconds[family] = time.monotonic() - started
    return seconds


def evaluate_command(args: Arguments, model: Path, result: Path, *flags: str) -> list[str]:
    """evaluate.py on the sources' test split, its results in `result`."""
    device = ["--device", args.device] if args.device else []
    command = [sys.executable, "scripts/evaluate.py", str(model), "--sources", *args.sources, "--json", str(result)]
    return [*command, *flags, *device, *shlex.split(args.eval_args)]


def evaluate_commands(args: Arguments, out: Path, names: list[str]) -> dict[str, list[str]]:
    """The full evaluation of each trained model or baseline folder whose results are not there yet."""
    flags = ["--classifier", str(out / "judge"), "--seed", str(args.seed), "--num_samples", str(args.num_samples)]
    flags += ["--length", str(args.length), "--guidance_scales", *(f"{s:g}" for s in args.guidance_scales)]
    return {
        f"evaluate-{name}": evaluate_command(args, out / name, out / "eval" / f"{name}.json", *flags)
        for name in names
        if comparison.model_file(out / name) and not comparison.up_to_date(out / "eval" / f"{name}.json", out / name)
    }


def bundle(args: Arguments, jobs: comparison.Jobs, out: Path, families: list[str]) -> dict[str, dict]:
    """Compact copies in `bundle_dir`, each with its cost in bits per token on the test pieces."""
    copies = {f: Path(args.bundle_dir) / args.bundle_name.format(family=f, preset=args.preset) for f in families}
    sizes = {f: save_compact(out / f, copy) for f, copy in copies.items()}
    jobs.run(
        {
            f"likelihood-{f}-compact": evaluate_command(
                args, copy, out / "eval" / f"{f}-compact.json", "--likelihood_only"
            )
            for f, copy in copies.items()
            if not comparison.up_to_date(out / "eval" / f"{f}-compact.json", out / f)
        },
        args.parallel,
    )
    bundled = {}
    for family, copy in copies.items():
        full, compact = (comparison.read_json(out / "eval" / f"{name}.json") for name in (family, f"{family}-compact"))
        cost = comparison.note_compact_cost(copy, ", ".join(args.sources), full, compact)
        bundled[family] = {"folder": str(copy), **sizes[family], **cost}
    return bundled


def report(summary: dict, out: Path) -> None:
    """The table (comparison.md) and a line per run, per compact copy and for the GPU."""
    results = {name: comparison.read_json(out / "eval" / f"{name}.json") for name in summary["likelihood"]}
    results = {name: result for name, result in results.items() if result and not name.endswith("-compact")}
    if results:
        table = comparison_table(results)
        (out / "comparison.md").write_text(table + "\n")
        print(table)
    print("\n".join(comparison.summary_lines(summary)))


def main(argv: list[str] | None = None) -> dict:
    parser = CommandParser(Arguments)
    (args,) = parser.parse(argv)
    with parser.failures():
        check(args)
    out = Path(args.output_dir)
    jobs = comparison.Jobs(out / "logs", cwd=ROOT)
    # The judge and the n-grams (CPU) run beside the models; in turn, they go first.
    baselines, commands = {}, baseline_commands(args, out)
    if args.parallel:
        baselines = {name: jobs.start(name, command) for name, command in commands.items()}
    else:
        jobs.run(commands, parallel=False)
    sampler = comparison.GpuSampler() if torch.cuda.is_available() else None
    if sampler:
        sampler.start()
    seconds = train(args, jobs, out)
    gpu = sampler.summary() if sampler else {}
    jobs.wait(baselines)
    trained = [f for f in args.families if (out / f / "config.json").is_file()]
    judged = (out / "judge" / "classifier_results.json").is_file()
    if judged and not jobs.signal:
        jobs.run(evaluate_commands(args, out, [*trained, "ngram-budget", "ngram-full"]), args.parallel)
    copies = bundle(args, jobs, out, trained) if args.bundle_dir and trained and not jobs.signal else {}
    summary = comparison.summarise(out, asdict(args), trained, seconds, gpu, copies)
    (out / "comparison.json").write_text(json.dumps(summary, indent=2))
    report(summary, out)
    if jobs.signal:
        print(f"stopped by {signal.Signals(jobs.signal).name}: the runs saved checkpoints; run the same command again")
        sys.exit(128 + jobs.signal)
    failed = [f for f in args.families if f not in trained] + ([] if judged else ["judge"])
    if failed:
        sys.exit(f"no {', '.join(failed)}: see the logs in {out / 'logs'}")
    return summary


if __name__ == "__main__":
    main()
