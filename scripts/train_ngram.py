"""Fit the n-gram baseline (interpolated Kneser-Ney) on the training split of MIDI sources.

    python scripts/train_ngram.py --sources ../shared/data/midi-classical-music \\
        --tokenizer outputs/tokenizer-classical-4096 --order 4 --output_dir outputs/ngram-classical

It counts the same token ids the neural models train on (`BOS, Composer_x, music, EOS` per
piece), so `scripts/evaluate.py` scores it like them: what a model learns beyond the last
`order - 1` tokens shows as the gap between the two. The folder holds the counts, the
tokenizer and `metrics.jsonl` (tokens and tokens/s, as `train.py` logs them).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from command_line import CommandParser
from modeling.ngram import NGramModel
from tokenization import build_caches, open_pieces, pieces_of, skip_summary, tokenizer_for

logger = logging.getLogger(__name__)


@dataclass
class Arguments:
    sources: list[str] = field(
        default_factory=lambda: ["bundled"], metadata={"help": "MIDI sources or token caches (train.py's)."}
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "Tokenizer folder or repo id; left out: a token cache's, or built."}
    )
    token_cache: bool = field(
        default=True, metadata={"help": "Read pieces from the sources' token caches (--no_token_cache: MIDI)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where token caches live (train.py's)."})
    rebuild_token_cache: bool = field(
        default=False, metadata={"help": "Build the sources' token caches again, though they look whole and current."}
    )
    order: int = field(default=4, metadata={"help": "n: the model sees the last n-1 tokens."})
    max_train_tokens: int | None = field(default=None, metadata={"help": "Stop reading after this many tokens."})
    output_dir: str = field(default="outputs/ngram")
    seed: int = field(default=42)


def main(argv: list[str] | None = None) -> NGramModel:
    parser = CommandParser(Arguments)
    (args,) = parser.parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.order < 1:
        parser.error(f"--order must be at least 1, got {args.order}")
    with parser.failures():
        tokenizer = tokenizer_for(args.tokenizer, args.sources)
        if args.token_cache and args.rebuild_token_cache:
            build_caches(args.sources, tokenizer, args.cache_dir, rebuild=True)
        rows = open_pieces(
            args.sources, "train", tokenizer, cached=args.token_cache, cache_dir=args.cache_dir, repeat=False
        )
    # Pieces in random order (each piece is a shard), so that --max_train_tokens samples every
    # composer rather than the first ones by name.
    rows = rows.shuffle(seed=args.seed, buffer_size=1)
    sequences, tokens, skipped = [], 0, Counter()
    for piece in pieces_of(tqdm(rows, desc="reading", unit="piece"), tokenizer, skipped):
        sequences.append(piece["ids"])
        tokens += len(piece["ids"])
        if args.max_train_tokens and tokens >= args.max_train_tokens:
            break
    if not sequences:
        parser.error(f"no usable training piece in {', '.join(args.sources)} ({skip_summary(skipped)})")
    logger.info("%d pieces, %d tokens; %s", len(sequences), tokens, skip_summary(skipped))
    started = time.perf_counter()
    model = NGramModel.fit(sequences, len(tokenizer), order=args.order)
    seconds = time.perf_counter() - started
    output_dir = Path(args.output_dir)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    line = {"step": 1, "train/tokens": tokens, "train/tokens_per_second": tokens / seconds}
    (output_dir / "metrics.jsonl").write_text(json.dumps(line) + "\n")
    logger.info(
        "%d-gram counted in %.1f s (%.0f tokens/s), saved to %s", args.order, seconds, tokens / seconds, output_dir
    )
    return model


if __name__ == "__main__":
    main()
