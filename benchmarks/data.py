"""Data benchmark: throughput of `TokenBlockStream` through a DataLoader with 0 (in the main process),
1 and 2 workers, reading the same pieces from the sources' token caches and from MIDI tokenized on
the fly, beside miditok's own `DatasetMIDI` read in one process, with the same tokenizer; and the
time to build (or open) the token caches and their size on disk."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path

import torch


@dataclass
class Arguments:
    sources: list[str] = field(
        default_factory=lambda: ["bundled"], metadata={"help": "Local MIDI sources (DatasetMIDI reads paths)."}
    )
    json: str = field(default="outputs/bench_data.json", metadata={"help": "Where to write the results."})
    tokenizer: str | None = field(default=None, metadata={"help": "A saved tokenizer; left out: REMI without BPE."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where token caches live (train.py's)."})
    rebuild_token_cache: bool = field(
        default=False, metadata={"help": "Build the sources' token caches again, though they look whole and current."}
    )
    num_proc: int | None = field(default=None, metadata={"help": "Processes building the cache; left out: cores."})
    max_files: int = field(default=300, metadata={"help": "Files of each source in the sample (fixed by path hash)."})
    block_size: int = 1024
    batch_size: int = 8
    workers: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "DataLoader worker counts."})
    repeats: int = field(
        default=3, metadata={"help": "Timed passes over each stream; the median counts (single passes drift)."}
    )
    prefetch_factor: int = field(
        default=32,
        metadata={
            "help": "Batches each worker may prepare ahead. The loader takes batches from the workers in turn, "
            "so a deep queue keeps a worker busy while the other one is on a long piece; blocks are small."
        },
    )


def time_stream(args: Arguments, tokenizer, open_source, num_workers: int) -> dict:
    """Median time of `args.repeats` passes, each over a fresh stream (a finished stream resumes at its end)."""
    from tokenization import BlockCollator, TokenBlockStream

    passes = []
    for _ in range(args.repeats):
        loader = torch.utils.data.DataLoader(
            TokenBlockStream(open_source(), tokenizer, args.block_size),
            batch_size=args.batch_size,
            num_workers=num_workers,
            prefetch_factor=args.prefetch_factor if num_workers else None,
            collate_fn=BlockCollator(tokenizer.pad_token_id),
        )
        files = tokens = 0
        start = time.perf_counter()
        for batch in loader:
            targets = batch["labels"][batch["labels"] != -100]
            files += int((targets == tokenizer.eos_token_id).sum())
            tokens += len(targets)
        passes.append(time.perf_counter() - start)
    seconds = statistics.median(passes)
    return {"num_workers": num_workers, "seconds": seconds, "passes": passes, "files": files, "tokens": tokens}


def time_miditok(args: Arguments, tokenizer) -> dict:
    from miditok.pytorch_data import DatasetMIDI

    from tokenization import list_midi_files

    paths = [Path(f.url) for source in args.sources for f in list_midi_files(source, max_files=args.max_files)]
    dataset = DatasetMIDI(
        paths,
        tokenizer.base,
        max_seq_len=sys.maxsize,  # no truncation: count every token, as the stream does
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    start = time.perf_counter()
    lengths = [len(item["input_ids"]) if item["input_ids"] is not None else 0 for item in dataset]
    seconds = time.perf_counter() - start
    return {"num_workers": 0, "seconds": seconds, "files": sum(n > 0 for n in lengths), "tokens": sum(lengths)}


def with_rates(result: dict) -> dict:
    return result | {
        "files_per_s": result["files"] / result["seconds"],
        "tokens_per_s": result["tokens"] / result["seconds"],
    }


def run(args: Arguments) -> dict:
    from tokenization import MusicTokenizer, build_caches, load_source
    from tokenization.sources import interleave

    tokenizer = MusicTokenizer.from_pretrained(args.tokenizer) if args.tokenizer else MusicTokenizer()
    start = time.perf_counter()
    caches = build_caches(args.sources, tokenizer, args.cache_dir, args.num_proc, args.rebuild_token_cache)
    cache_result = {
        "seconds_to_build_or_open": time.perf_counter() - start,
        "folders": [str(cache.folder) for cache in caches],
        "pieces": sum(cache.info["pieces"] for cache in caches),
        "tokens": sum(cache.info["tokens"] for cache in caches),
        "bytes_on_disk": sum(p.stat().st_size for cache in caches for p in cache.folder.iterdir()),
    }
    print(f"token caches: {cache_result['seconds_to_build_or_open']:.1f} s to build or open")
    miditok_result = with_rates(time_miditok(args, tokenizer))
    print(f"miditok DatasetMIDI, 1 process: {miditok_result['tokens_per_s']:.0f} tokens/s")
    streams = {"midi": [], "cache": []}
    sources = {
        "midi": lambda: interleave([load_source(s, max_files=args.max_files) for s in args.sources], repeat=False),
        "cache": lambda: interleave([cache.pieces(max_files=args.max_files) for cache in caches], repeat=False),
    }
    for num_workers in args.workers:
        for kind, open_source in sources.items():
            streams[kind].append(with_rates(time_stream(args, tokenizer, open_source, num_workers)))
            print(f"TokenBlockStream, {kind}, {num_workers} workers: {streams[kind][-1]['tokens_per_s']:.0f} tokens/s")
    return {
        "benchmark": "data",
        "arguments": asdict(args),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
        },
        "versions": {name: version(name) for name in ("miditok", "symusic", "datasets", "torch")},
        "token_cache": cache_result,
        "miditok_datasetmidi": miditok_result,
        "token_block_stream": streams,
        "speedup_of_the_cache": {
            str(m["num_workers"]): c["tokens_per_s"] / m["tokens_per_s"]
            for m, c in zip(streams["midi"], streams["cache"], strict=True)
        },
        "speedup_vs_miditok": {
            f"{kind} {s['num_workers']}": s["tokens_per_s"] / miditok_result["tokens_per_s"]
            for kind, runs in streams.items()
            for s in runs
        },
    }
