"""Evaluate a MIDI language model against real music: likelihood, a composer classifier, statistics.

    python scripts/evaluate.py outputs/compare/mamba --classifier outputs/classifier \\
        --source ../shared/data/midi-classical-music --json outputs/eval/mamba.json --guidance_scales 1 3
    python scripts/evaluate.py outputs/ngram-classical --classifier outputs/classifier \\
        --source ../shared/data/midi-classical-music --json outputs/eval/ngram.json
    python scripts/evaluate.py --table outputs/eval/*.json

MODEL is a model folder or Hub repo id (any of the three families), or an n-gram folder from
`train_ngram.py`. On the source's test split (read from its token cache, so twins of
training pieces are out) it measures bits per token and per note (notes make models with
different vocabularies comparable) in blocks framed as in training, and likelihood
identification: how often the model's own likelihood names the composer of the opening and
the middle window of each test piece, with the condition gain in bits, beside the
classifier's accuracy on the same windows. For each guidance scale it samples
`--num_samples` pieces of `--length` tokens per composer and reports how often the
classifier names the requested composer (top-1, top-3; the same on the opening window of
real test pieces is the ceiling), and how far generated statistics are from real ones
(pitch-class histogram, pitch range, polyphony, note density, inter-onset intervals:
overlapping area, 1 = same, and KL divergence, 0 = same), per composer. Real excerpts are
cut to the same number of tokens as the samples, since range and density grow with length.
The JSON holds everything; a markdown report with plots and the samples (`<json
stem>_samples/guidance<g>/<composer>/sample_<i>.mid`) go beside it. `--table` prints the
README's comparison table from several JSON files.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import symusic
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    HfArgumentParser,
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    TopPLogitsWarper,
    pipeline,
)

import modeling
from evaluation import POSITIONS, bootstrap_interval, identification, identification_windows, window_tokens
from evaluation.classification import frame, labelled_pieces, music_ids, rank_labels, same_vocabulary
from evaluation.likelihood import evaluate, nll_summary
from evaluation.metrics import BINS, FEATURES, set_distances, set_histograms, topk_accuracy
from modeling.ngram import CONFIG_NAME as NGRAM_CONFIG
from modeling.ngram import NGramModel
from modeling.pipeline_midi_generation import GrammarLogitsProcessor
from modeling.training import training_speed
from tokenization import (
    BlockCollator,
    MusicTokenizer,
    evaluation_blocks,
    open_pieces,
    pieces_of,
    skip_summary,
)
from tokenization.composers import canonical_composer
from tokenization.sources import sample_paths


@dataclass
class Arguments:
    model: str | None = field(default=None, metadata={"help": "Model folder or repo id, or an n-gram folder."})
    classifier: str | None = field(default=None, metadata={"help": "Folder of train_classifier.py's output."})
    source: str | None = field(default=None, metadata={"help": "MIDI source whose test split is the reference."})
    json: str | None = field(default=None, metadata={"help": "Results file; the report goes beside it (.md)."})
    composers: str | None = field(default=None, metadata={"help": "Comma-separated; left out: the classifier's."})
    num_samples: int = field(default=8, metadata={"help": "Generated pieces per composer and guidance scale."})
    length: int = field(default=512, metadata={"help": "Tokens per generated piece (and per real excerpt)."})
    guidance_scales: list[float] = field(default_factory=lambda: [1.0], metadata={"help": "1 = no guidance."})
    top_p: float = field(default=0.95)
    seed: int = field(default=0)
    max_test_files: int | None = field(
        default=None, metadata={"help": "Test pieces for the likelihood; left out: all; the rest always uses all."}
    )
    block_size: int = field(default=1024, metadata={"help": "Tokens per likelihood block (GPT-2: its positions)."})
    identification_tokens: int = field(default=512, metadata={"help": "Music tokens per identification window."})
    batch_size: int = field(default=8)
    token_cache: bool = field(
        default=True, metadata={"help": "Read the test split from the source's token cache (--no_token_cache: MIDI)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where token caches live (train.py's)."})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, ...; left out: cuda if available."})
    table: list[str] | None = field(default=None, metadata={"help": "Print a comparison table of these JSONs."})
    likelihood_only: bool = field(
        default=False,
        metadata={"help": "Only bits per token and per note (no classifier, no samples), e.g. for a compact copy."},
    )


def parse_arguments(argv: list[str]) -> tuple[HfArgumentParser, Arguments]:
    """MODEL may come first without `--model`, as in `evaluate.py MODEL --classifier ...`."""
    parser = HfArgumentParser(
        Arguments,
        usage="%(prog)s MODEL --classifier CLS --source URI --json OUT [--key value ...]\n"
        "       %(prog)s MODEL --likelihood_only --source URI --json OUT\n"
        "       %(prog)s --table RESULTS.json [RESULTS.json ...]",
    )
    if argv and not argv[0].startswith("-"):
        argv = ["--model", *argv]
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    if args.table:
        missing = [path for path in args.table if not Path(path).is_file()]
        if missing:
            parser.error(f"--table: no results file {', '.join(missing)}: give evaluate.py's --json outputs")
        return parser, args
    needed = ("model", "source", "json") if args.likelihood_only else ("model", "classifier", "source", "json")
    missing = [name for name in needed if getattr(args, name) is None]
    if missing:
        parser.error(
            f"missing {', '.join('--' + m for m in missing)}: "
            "evaluate.py MODEL --classifier CLS --source URI --json OUT"
        )
    if not 0 < args.top_p <= 1:
        parser.error(f"--top_p is a probability mass in (0, 1], got {args.top_p}")
    if min(args.num_samples, args.length, args.batch_size, args.identification_tokens) < 1 or args.block_size < 3:
        parser.error(
            "--num_samples, --length, --batch_size and --identification_tokens must be positive; --block_size >= 3"
        )
    return parser, args


class Evaluated:
    """The model under evaluation: a transformer-family model or an n-gram, with its tokenizer."""

    def __init__(self, name: str, device: str) -> None:
        self.name, self.device = name, device
        self.tokenizer = MusicTokenizer.from_pretrained(name)  # first: a folder without one fails clearly
        if (Path(name) / NGRAM_CONFIG).is_file():
            self.kind, self.ngram = "ngram", NGramModel.from_pretrained(name)
            self.parameters = None
        else:
            self.kind = "neural"
            self.model = AutoModelForCausalLM.from_pretrained(name).to(device).float()
            self.parameters = sum(p.numel() for p in self.model.parameters())

    @property
    def family(self) -> str:
        return "ngram" if self.kind == "ngram" else self.model.config.model_type

    def likelihood(self, rows: list[dict], args: Arguments) -> dict:
        """Bits per token and per note over the test pieces, in blocks as `train.py` evaluates."""
        size = (
            min(args.block_size, getattr(self.model.config, "n_positions", args.block_size))
            if self.kind == "neural"
            else args.block_size
        )
        blocks, notes, skipped = evaluation_blocks(rows, self.tokenizer, size)
        if not blocks:
            raise ValueError(f"no usable test piece in {args.source} ({skip_summary(skipped)})")
        if self.kind == "ngram":
            scored = (self.ngram.sequence_nll(b["input_ids"], b["labels"]) for b in blocks)
            nll, count = map(sum, zip(*scored, strict=True))
            return nll_summary(nll, count, notes) | {"notes": notes}
        collate = BlockCollator(self.tokenizer.pad_token_id)
        batches = [collate(blocks[i : i + args.batch_size]) for i in range(0, len(blocks), args.batch_size)]
        return evaluate(self.model, batches, None, notes) | {"notes": notes}

    def identification(self, pieces: list[dict], composers: list[str], judge: Judge, args: Arguments) -> dict | None:
        """Likelihood identification on the opening and middle windows of the test pieces, with
        bootstrap intervals and the classifier's accuracy on the same windows (on their first
        `window_tokens`, the length it was trained on; only when it shares the model's
        vocabulary). None for an n-gram: it sees the condition only in its first steps."""
        if self.kind == "ngram":
            return None
        length = window_tokens(self.model.config, args.identification_tokens)
        windows = identification_windows(pieces, composers, length)
        found = identification(self.model, self.tokenizer, windows, composers, args.batch_size)
        ranked = judge.rank([w.music for w in windows]) if judge.shared else None
        for position in POSITIONS:
            if position not in found:
                continue
            result = found[position]
            result["interval"] = bootstrap_interval(result["truth"], result["named"])
            if ranked is not None:
                named = [r for r, w in zip(ranked, windows, strict=True) if w.position == position]
                result["classifier"] = topk_accuracy(result["truth"], named)["mean"]["top1"]
        return found

    def generate(self, composers: list[str], args: Arguments, guidance_scale: float) -> list[list[int]]:
        """`num_samples` token sequences per composer (composer-major order), each `length` new tokens."""
        if self.kind == "neural":
            generator = pipeline(
                "midi-generation",
                model=self.model,
                music_tokenizer=self.name,
                pipeline_class=modeling.MidiGenerationPipeline,
                device=self.device,
            )
            results = generator(
                composer=composers,
                num_return_sequences=args.num_samples,
                max_new_tokens=args.length,
                min_new_tokens=args.length,
                top_p=args.top_p,
                guidance_scale=guidance_scale,
                seed=args.seed,
                progress_bar=True,
            )
            return [r["tokens"] for r in results]
        prompts = [
            [self.tokenizer.bos_token_id, self.tokenizer.composer_token_id(c)]
            for c in composers
            for _ in range(args.num_samples)
        ]
        processors = LogitsProcessorList(
            [
                MinNewTokensLengthLogitsProcessor(2, args.length, self.tokenizer.eos_token_id),
                GrammarLogitsProcessor(self.tokenizer.grammar().to_dict()),
                TopPLogitsWarper(args.top_p),
            ]
        )
        generator = torch.Generator().manual_seed(args.seed)
        return self.ngram.generate(prompts, args.length, self.tokenizer.eos_token_id, processors, generator)


class Judge:
    """The composer classifier, which reads music with its own tokenizer."""

    def __init__(self, folder: str, device: str, model_tokenizer: MusicTokenizer) -> None:
        self.model = AutoModelForSequenceClassification.from_pretrained(folder).to(device)
        self.tokenizer = MusicTokenizer.from_pretrained(folder)
        self.window = getattr(self.model.config, "window_tokens", None)
        if self.window is None:
            raise ValueError(f"{folder} has no window_tokens in its config: give a train_classifier.py output folder")
        self.labels = list(self.model.config.label2id)
        self.shared = same_vocabulary(self.tokenizer, model_tokenizer)

    def read(self, samples: list[list[int]], scores: list[symusic.Score]) -> list[list[int]]:
        """The music tokens of generated samples in the classifier's vocabulary: the model's own ids
        when the vocabularies agree (they decode to the same music; encoding a generated score
        again can fail in miditok), else the score encoded again (no tokens where miditok cannot
        encode it: the classifier then misses that sample)."""
        if self.shared:
            special = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
            return [[i for i in ids[2:] if i not in special] for ids in samples]
        musics = []
        for score in scores:
            try:
                musics.append(music_ids(self.tokenizer, score))
            except Exception:  # miditok fails on some odd scores (durations after a metre change)
                musics.append([])
        return musics

    def rank(self, musics: list[list[int]]) -> list[list[str]]:
        """Labels, best first, for the opening window of each piece; none for a piece without tokens."""
        readable = [music for music in musics if music]
        ranked = iter(rank_labels(self.model, [frame(self.tokenizer, m[: self.window]) for m in readable]))
        return [next(ranked) if music else [] for music in musics]


def run_generation(
    evaluated: Evaluated,
    args: Arguments,
    scale: float,
    composers: list[str],
    judge: Judge,
    real_histograms: dict,
    folder: Path,
) -> tuple[dict, dict]:
    """Sample, judge and measure at one guidance scale; the samples go to `folder/<composer>/`."""
    started = time.perf_counter()
    samples = evaluated.generate(composers, args, scale)
    seconds = time.perf_counter() - started
    scores = [evaluated.tokenizer.decode(ids) for ids in samples]
    requested = [c for c in composers for _ in range(args.num_samples)]
    for i, (score, composer) in enumerate(zip(scores, requested, strict=True)):
        (folder / composer).mkdir(parents=True, exist_ok=True)
        score.dump_midi(str(folder / composer / f"sample_{i % args.num_samples}.mid"))
    musics = judge.read(samples, scores)
    ranked = judge.rank(musics)
    accuracy = topk_accuracy(requested, ranked) | {
        "interval": bootstrap_interval(requested, [r[0] if r else "" for r in ranked]),
        "unreadable": sum(not m for m in musics),
        # what the classifier named, per requested composer: shows a bias towards one class
        "named": {
            c: dict(Counter(r[0] for r, q in zip(ranked, requested, strict=True) if r and q == c)) for c in composers
        },
    }
    histograms = {c: set_histograms(s for s, r in zip(scores, requested, strict=True) if r == c) for c in composers}
    distances = {c: set_distances(real_histograms[c], histograms[c]) for c in composers}
    new_tokens = sum(len(ids) - 2 for ids in samples)
    run = {
        "guidance_scale": scale,
        "classifier": accuracy,
        "distances": distances,
        "mean_distances": mean_distances(distances),
        "notes_per_sample": float(np.mean([s.note_num() for s in scores])),
        "empty_samples": sum(s.note_num() == 0 for s in scores),
        "generation": {
            "seconds": seconds,
            "batch": len(samples),
            "new_tokens": new_tokens,
            "ms_per_token": 1000 * seconds / new_tokens,
            "ms_per_step": 1000 * seconds / args.length,
        },
    }
    return run, histograms


def mean_distances(distances: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per feature, overlap and KL averaged over composers (those with values)."""
    means = {}
    for feature in FEATURES:
        values = [d[feature] for d in distances.values()]
        means[feature] = {
            key: float(np.nanmean([v[key] for v in values]))
            if any(not np.isnan(v[key]) for v in values)
            else float("nan")
            for key in ("overlap", "kl")
        }
    return means


def main(argv: list[str] | None = None) -> dict | None:
    parser, args = parse_arguments(sys.argv[1:] if argv is None else argv)
    if args.table:
        print(comparison_table({Path(p).stem: json.loads(Path(p).read_text()) for p in args.table}))
        return None
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        evaluated = Evaluated(args.model, device)
        if not args.likelihood_only:
            judge = Judge(args.classifier, device, evaluated.tokenizer)
            composers = (
                [canonical_composer(n) for n in args.composers.split(",") if n.strip()]
                if args.composers
                else judge.labels
            )
            unknown = [c for c in composers if c not in judge.labels or c not in evaluated.tokenizer.composers]
            if unknown:
                raise ValueError(
                    f"composer(s) {', '.join(unknown)} unknown to the model or the classifier "
                    f"({', '.join(judge.labels)})"
                )
        source = open_pieces(
            [args.source], "test", evaluated.tokenizer, cached=args.token_cache, cache_dir=args.cache_dir
        )
        rows = list(pieces_of(source, evaluated.tokenizer, Counter()))
        # the likelihood may take a fixed sample of the split, as train.py's --eval_max_files does
        paths = [row["path"] for row in rows]
        sample = sample_paths(paths, args.max_test_files) if args.max_test_files else set(paths)
        scored = [row for row in rows if row["path"] in sample]
    except (ValueError, OSError) as error:
        parser.error(str(error).splitlines()[0])
    output = Path(args.json)
    output.parent.mkdir(parents=True, exist_ok=True)
    results = {
        "model": args.model,
        "family": evaluated.family,
        "parameters": evaluated.parameters,
        "source": args.source,
        "arguments": asdict(args),
        "likelihood": evaluated.likelihood(scored, args),
    }
    if args.likelihood_only:
        output.write_text(json.dumps(results, indent=2))
        nll = results["likelihood"]
        print(f"{args.model}: {nll['bits_per_token']:.4f} bits/token, {nll['bits_per_note']:.3f} bits/note")
        return results
    pieces = labelled_pieces(rows, evaluated.tokenizer, set(composers), Counter())
    missing = sorted(set(composers) - {piece.composer for piece in pieces})
    if missing:
        parser.error(
            f"the test split of {args.source} has no piece of {', '.join(missing)}: "
            "choose --composers among the others"
        )
    results |= {
        "training_tokens_per_second": training_speed(args.model),
        "classifier": args.classifier,
        "identification": evaluated.identification(rows, composers, judge, args),
    }
    # Real excerpts as long as the samples: range and density grow with length.
    excerpts = {
        c: [evaluated.tokenizer.decode(p.music[: args.length]) for p in pieces if p.composer == c] for c in composers
    }
    judged = pieces
    if not judge.shared:
        own = open_pieces([args.source], "test", judge.tokenizer, cached=args.token_cache, cache_dir=args.cache_dir)
        judged = labelled_pieces(own, judge.tokenizer, set(composers), Counter())
    results["real"] = {
        "pieces": {c: len(excerpts[c]) for c in composers},
        "chance": {"top1": 1 / len(judge.labels), "top3": min(3 / len(judge.labels), 1.0)},
        "classifier": topk_accuracy([p.composer for p in judged], judge.rank([p.music for p in judged])),
    }
    real_histograms = {c: set_histograms(excerpts[c]) for c in composers}
    results["runs"], plots = [], []
    for scale in args.guidance_scales:
        if evaluated.kind == "ngram" and scale != 1.0:
            continue  # an n-gram has no unconditional branch to guide with
        samples = output.with_name(f"{output.stem}_samples") / f"guidance{scale:g}"
        run, histograms = run_generation(evaluated, args, scale, composers, judge, real_histograms, samples)
        results["runs"].append(run)
        plots.append(
            plot_histograms(
                real_histograms,
                histograms,
                output.with_name(f"{output.stem}_guidance{scale:g}.png"),
                f"{Path(args.model).name}, guidance {scale:g}",
            )
        )
    output.write_text(json.dumps(results, indent=2))
    output.with_suffix(".md").write_text(report(results, plots))
    print(report(results, plots))
    return results


def plot_histograms(real: dict, generated: dict, path: Path, title: str) -> Path:
    """One row per composer, one column per feature: real and generated histograms overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(real), len(FEATURES), figsize=(3 * len(FEATURES), 1.8 * len(real)), squeeze=False)
    for row, composer in enumerate(real):
        for column, feature in enumerate(FEATURES):
            ax = axes[row][column]
            x = np.arange(len(BINS[feature]) - 1)
            ax.bar(x, real[composer][feature], width=1.0, alpha=0.5, label="real")
            ax.bar(x, generated[composer][feature], width=1.0, alpha=0.5, label="generated")
            ax.set_xticks([])
            if row == 0:
                ax.set_title(feature.replace("_", " "))
            if column == 0:
                ax.set_ylabel(composer)
    axes[0][0].legend(fontsize="small")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def report(results: dict, plots: list[Path]) -> str:
    nll = results["likelihood"]
    lines = [
        f"# Evaluation of {results['model']} ({results['family']})",
        "",
        f"Test split of {results['source']}: {nll['tokens']} tokens, {nll['notes']} notes: "
        f"**{nll['bits_per_token']:.3f} bits/token, {nll['bits_per_note']:.2f} bits/note**.",
        "",
        *identification_report(results["identification"]),
        "## Composer classifier (top-1 / top-3 of the requested composer)",
        "",
        "| composer | real | " + " | ".join(f"guidance {r['guidance_scale']:g}" for r in results["runs"]) + " |",
        "|---|---|" + "---|" * len(results["runs"]),
    ]
    real = results["real"]["classifier"]
    for name in [*real["per_class"], "mean"]:
        cells = [real["per_class"][name] if name != "mean" else real["mean"]] + [
            r["classifier"]["per_class"].get(name) if name != "mean" else r["classifier"]["mean"]
            for r in results["runs"]
        ]
        lines.append(
            f"| {name} | " + " | ".join(f"{c['top1']:.3f} / {c['top3']:.3f}" if c else "-" for c in cells) + " |"
        )
    lines += ["", "## Statistics: overlap with real music (1 = same) / KL (0 = same), mean over composers", ""]
    lines += ["| guidance | " + " | ".join(FEATURES) + " | ms/token |", "|---|" + "---|" * (len(FEATURES) + 1)]
    for run in results["runs"]:
        cells = [f"{run['mean_distances'][f]['overlap']:.3f} / {run['mean_distances'][f]['kl']:.3f}" for f in FEATURES]
        lines.append(
            f"| {run['guidance_scale']:g} | " + " | ".join(cells) + f" | {run['generation']['ms_per_token']:.2f} |"
        )
    lines += ["", *(f"![{p.stem}]({p.name})" for p in plots), ""]
    return "\n".join(lines)


def identification_report(found: dict | None) -> list[str]:
    """The markdown section of likelihood identification (none for an n-gram)."""
    if found is None:
        return []
    lines = [
        f"## Likelihood identification (mean per composer over {len(found['composers'])} composers; "
        f"chance {found['chance']:.3f})",
        "",
        "| window | accuracy | 95 % interval | classifier, same windows | gain over Unknown | gain over wrong "
        "| windows |",
        "|---|---|---|---|---|---|---|",
    ]
    for position in POSITIONS:
        if position in found:
            row = found[position]
            classifier = f"{row['classifier']:.3f}" if row.get("classifier") is not None else "-"
            lines.append(
                f"| {position} | {row['accuracy']:.3f} | {row['interval'][0]:.3f}-{row['interval'][1]:.3f} "
                f"| {classifier} | {row['gain_over_unknown']['bits_per_window']:.2f} bits "
                f"| {row['gain_over_wrong']['bits_per_window']:.2f} bits | {row['windows']} |"
            )
    return [*lines, ""]


def identification_cells(found: dict | None) -> list[str]:
    """The table's cells: accuracy at the opening / middle, gains (bits per window) at the opening."""
    if found is None or "opening" not in found:
        return ["-", "-"]
    accuracy = " / ".join(f"{found[p]['accuracy']:.3f}" if p in found else "-" for p in POSITIONS)
    opening = found["opening"]
    gains = (
        f"{opening['gain_over_unknown']['bits_per_window']:.1f} / {opening['gain_over_wrong']['bits_per_window']:.1f}"
    )
    return [accuracy, gains]


def comparison_table(results: dict[str, dict]) -> str:
    """The README's table: one row per results file (named by its stem) and guidance scale."""
    header = (
        "| model | params | train tok/s | bits/token | bits/note | identification opening / middle "
        "| opening gain over Unknown / wrong (bits) | guidance | classifier top-1 / top-3 | "
        + " | ".join(f"{f} overlap" for f in FEATURES)
        + " | ms/token |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for name, result in results.items():
        nll, speed = result["likelihood"], result["training_tokens_per_second"]
        params = f"{result['parameters'] / 1e6:.1f}M" if result["parameters"] else "-"
        for run in result["runs"]:
            accuracy = run["classifier"]["mean"]
            overlaps = " | ".join(f"{run['mean_distances'][f]['overlap']:.2f}" for f in FEATURES)
            cells = [
                f"{name} ({result['family']})",
                params,
                f"{speed:.0f}" if speed else "-",
                f"{nll['bits_per_token']:.3f}",
                f"{nll['bits_per_note']:.2f}",
                *identification_cells(result.get("identification")),
                f"{run['guidance_scale']:g}",
                f"{accuracy['top1']:.3f} / {accuracy['top3']:.3f}",
                overlaps,
                f"{run['generation']['ms_per_token']:.2f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    if results:
        first = next(iter(results.values()))
        real, chance = first["real"]["classifier"]["mean"], first["real"]["chance"]
        found = next((r["identification"] for r in results.values() if r.get("identification")), None)
        guess = f"{found['chance']:.3f} / {found['chance']:.3f}" if found else ""
        for name, accuracy, identified in (("real test music (opening windows)", real, ""), ("chance", chance, guess)):
            cells = [name, *[""] * 4, identified, "", "", f"{accuracy['top1']:.3f} / {accuracy['top3']:.3f}"]
            lines.append("| " + " | ".join(cells + [""] * (len(FEATURES) + 1)) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
