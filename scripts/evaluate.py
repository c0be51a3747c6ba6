"""Evaluate a MIDI language model against real music: likelihood, a composer classifier, statistics.

    python scripts/evaluate.py outputs/compare/mamba --classifier outputs/classifier \\
        --sources ../shared/data/midi-classical-music --json outputs/eval/mamba.json --guidance_scales 1 3
    python scripts/evaluate.py outputs/ngram-classical --classifier outputs/classifier \\
        --sources ../shared/data/midi-classical-music --json outputs/eval/ngram.json
    python scripts/evaluate.py --table outputs/eval/*.json

MODEL is a model folder or Hub repo id (any of the three families), or an n-gram folder from
`train_ngram.py`. On the sources' test split (read from their token caches, so twins of
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
`--identify genre` adds likelihood identification of the genre (any condition a MidiCaps-trained
model has), with its chance level, also beside `--likelihood_only`.
The JSON holds everything; a markdown report with plots and the samples (`<json
stem>_samples/guidance<g>/<composer>/sample_<i>.mid`) go beside it. `--table` prints the
README's comparison table from several JSON files.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from command_line import CommandParser
from evaluation.classification import Judge, labelled_pieces
from evaluation.evaluated import load_evaluated, sample_and_judge
from evaluation.identification import POSITIONS, condition_candidates
from evaluation.metrics import set_histograms, topk_accuracy
from evaluation.report import comparison_table, plot_histograms, report
from modeling.training import training_speed
from tokenization import build_caches, open_pieces, pieces_of
from tokenization.composers import canonical_composer
from tokenization.hub import looks_local
from tokenization.sources import sample_paths


@dataclass
class Arguments:
    model: str | None = field(default=None, metadata={"help": "Model folder or repo id, or an n-gram folder."})
    classifier: str | None = field(default=None, metadata={"help": "Folder of train_classifier.py's output."})
    sources: list[str] | None = field(
        default=None, metadata={"help": "MIDI sources or token caches whose test split is the reference."}
    )
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
        default=True, metadata={"help": "Read the test split from the token caches (--no_token_cache: MIDI)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where token caches live (train.py's)."})
    rebuild_token_cache: bool = field(
        default=False, metadata={"help": "Build the sources' token caches again, though they look whole and current."}
    )
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, ...; left out: cuda if available."})
    table: list[str] | None = field(default=None, metadata={"help": "Print a comparison table of these JSONs."})
    likelihood_only: bool = field(
        default=False,
        metadata={"help": "Only bits per token and per note (no classifier, no samples), e.g. for a compact copy."},
    )
    condition_classifier: str | None = field(
        default=None,
        metadata={
            "help": "A classifier of one of the --identify conditions (train_classifier.py --condition genre): "
            "its accuracy on the same windows, beside the likelihood's."
        },
    )
    identify: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated conditions (genre, tempo, mode) to identify by likelihood too, "
            "with --likelihood_only as well; the composer always is, with the classifier."
        },
    )


USAGE = "evaluate.py MODEL --classifier CLS --sources URI [URI ...] --json OUT"


def parse_arguments(argv: list[str] | None) -> tuple[CommandParser, Arguments]:
    """MODEL may come first without `--model`, as in `evaluate.py MODEL --classifier ...`."""
    parser = CommandParser(
        Arguments,
        usage=f"{USAGE} [--key value ...]\n"
        "       %(prog)s MODEL --likelihood_only --sources URI --json OUT\n"
        "       %(prog)s --table RESULTS.json [RESULTS.json ...]",
    )
    argv = sys.argv[1:] if argv is None else argv
    if argv and not argv[0].startswith("-"):
        argv = ["--model", *argv]
    (args,) = parser.parse(argv)
    if args.table:
        missing = [path for path in args.table if not Path(path).is_file()]
        if missing:
            parser.error(f"--table: no results file {', '.join(missing)}: give evaluate.py's --json outputs")
        return parser, args
    if args.model and not Path(args.model).is_dir() and looks_local(args.model):
        parser.error(
            f"no model folder {args.model}: give train.py's or train_ngram.py's --output_dir, or a Hub repo id"
        )
    if args.classifier and not Path(args.classifier).is_dir():
        parser.error(f"no classifier folder {args.classifier}: give train_classifier.py's --output_dir")
    needed = ("model", "sources", "json") if args.likelihood_only else ("model", "classifier", "sources", "json")
    missing = [name for name in needed if getattr(args, name) is None]
    if missing:
        parser.error(f"missing {', '.join('--' + m for m in missing)}: {USAGE}")
    if not 0 < args.top_p <= 1:
        parser.error(f"--top_p is a probability mass in (0, 1], got {args.top_p}")
    if min(args.num_samples, args.length, args.batch_size, args.identification_tokens) < 1 or args.block_size < 3:
        parser.error(
            "--num_samples, --length, --batch_size and --identification_tokens must be positive; --block_size >= 3"
        )
    return parser, args


def identify_kinds(args: Arguments) -> list[str]:
    kinds = [kind.strip() for kind in (args.identify or "").split(",") if kind.strip()]
    return [kind for kind in dict.fromkeys(kinds) if kind != "composer" or args.likelihood_only]


def condition_classifier(args: Arguments, tokenizer, device: str) -> Judge | None:
    """The --condition_classifier, which must judge one of the --identify conditions."""
    if not args.condition_classifier:
        return None
    judge = Judge(args.condition_classifier, device, tokenizer)
    if judge.condition not in identify_kinds(args):
        raise ValueError(
            f"{args.condition_classifier} classifies the {judge.condition}: add --identify {judge.condition}"
        )
    return judge


def identification_line(kind: str, found: dict | None) -> str:
    """One line of a condition's identification: accuracy per window position, and chance."""
    if found is None:
        return f"{kind} identification: none (an n-gram model sees its condition only at the start)"
    positions = ", ".join(
        f"{p} {found[p]['accuracy']:.3f} ({found[p]['windows']} windows"
        + (f"; classifier {found[p]['classifier']:.3f})" if found[p].get("classifier") is not None else ")")
        for p in POSITIONS
        if p in found
    )
    return (
        f"{kind} identification over {len(found['composers'])} values: {positions or 'no window long enough'}; "
        f"chance {found['chance']:.3f}"
    )


def main(argv: list[str] | None = None) -> dict | None:
    parser, args = parse_arguments(argv)
    if args.table:
        print(comparison_table({Path(p).stem: json.loads(Path(p).read_text()) for p in args.table}))
        return None
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    with parser.failures():
        evaluated = load_evaluated(args.model, device)
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
        if args.token_cache and args.rebuild_token_cache:
            tokenizers = [evaluated.tokenizer, *([] if args.likelihood_only else [judge.tokenizer])]
            for tokenizer in {t.fingerprint(): t for t in tokenizers}.values():  # one rebuild per cache
                build_caches(args.sources, tokenizer, args.cache_dir, rebuild=True)
        source = open_pieces(
            args.sources, "test", evaluated.tokenizer, cached=args.token_cache, cache_dir=args.cache_dir, repeat=False
        )
        rows = list(pieces_of(source, evaluated.tokenizer, Counter()))
        # the likelihood may take a fixed sample of the split, as train.py's --eval_max_files does
        paths = [row["path"] for row in rows]
        sample = sample_paths(paths, args.max_test_files) if args.max_test_files else set(paths)
        likelihood = evaluated.likelihood(
            [row for row in rows if row["path"] in sample], args.block_size, args.batch_size
        )
        condition_judge = condition_classifier(args, evaluated.tokenizer, device)
        identified = {
            kind: evaluated.identification(
                rows,
                condition_candidates(rows, evaluated.tokenizer, kind),
                condition_judge if condition_judge is not None and condition_judge.condition == kind else None,
                args.identification_tokens,
                args.batch_size,
                kind,
            )
            for kind in identify_kinds(args)
        }
    output = Path(args.json)
    output.parent.mkdir(parents=True, exist_ok=True)
    results = {
        "model": args.model,
        "family": evaluated.family,
        "parameters": evaluated.parameters,
        "sources": args.sources,
        "arguments": asdict(args),
        "likelihood": likelihood,
        "identification_of": identified,
    }
    if args.likelihood_only:
        output.write_text(json.dumps(results, indent=2))
        print(
            f"{args.model}: {likelihood['bits_per_token']:.4f} bits/token, {likelihood['bits_per_note']:.3f} bits/note"
        )
        for kind, found in identified.items():
            print(identification_line(kind, found))
        return results
    pieces = labelled_pieces(rows, evaluated.tokenizer, set(composers), Counter())
    missing = sorted(set(composers) - {piece.label for piece in pieces})
    if missing:
        parser.error(
            f"the test split of {', '.join(args.sources)} has no piece of {', '.join(missing)}: "
            "choose --composers among the others"
        )
    results |= {
        "training_tokens_per_second": training_speed(args.model),
        "classifier": args.classifier,
        "identification": evaluated.identification(
            rows, composers, judge, args.identification_tokens, args.batch_size
        ),
    }
    # Real excerpts as long as the samples: range and density grow with length.
    excerpts = {
        c: [evaluated.tokenizer.decode(p.music[: args.length]) for p in pieces if p.label == c] for c in composers
    }
    judged = pieces
    if not judge.shared:
        own = open_pieces(
            args.sources, "test", judge.tokenizer, cached=args.token_cache, cache_dir=args.cache_dir, repeat=False
        )
        judged = labelled_pieces(own, judge.tokenizer, set(composers), Counter())
    results["real"] = {
        "pieces": {c: len(excerpts[c]) for c in composers},
        "chance": {"top1": 1 / len(judge.labels), "top3": min(3 / len(judge.labels), 1.0)},
        "classifier": topk_accuracy([p.label for p in judged], judge.rank([p.music for p in judged])),
    }
    real_histograms = {c: set_histograms(excerpts[c]) for c in composers}
    results["runs"], plots = [], []
    # An n-gram has no unconditional branch to guide with.
    for scale in args.guidance_scales if evaluated.guidable else [s for s in args.guidance_scales if s == 1.0]:
        run, histograms = sample_and_judge(
            evaluated,
            judge,
            composers,
            real_histograms,
            output.with_name(f"{output.stem}_samples") / f"guidance{scale:g}",
            guidance_scale=scale,
            num_samples=args.num_samples,
            length=args.length,
            top_p=args.top_p,
            seed=args.seed,
        )
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
    text = report(results, plots)
    output.with_suffix(".md").write_text(text)
    print(text)
    return results


if __name__ == "__main__":
    main()
