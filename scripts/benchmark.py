"""Speed benchmarks, written as JSON.

    python scripts/benchmark.py data --source ../shared/data/midi-classical-music --json outputs/bench_data.json

`data`: tokenization and packing throughput of `TokenBlockStream` through a DataLoader
with 0 (in the main process), 1 and 2 workers, beside miditok's own `DatasetMIDI` read in
one process, on the same files and tokenizer.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path

import torch
from miditok.pytorch_data import DatasetMIDI
from transformers import HfArgumentParser

from tokenization import BlockCollator, MusicTokenizer, TokenBlockStream, list_midi_files, load_source


@dataclass
class DataArguments:
    source: str = field(default="bundled", metadata={"help": "A local MIDI source (DatasetMIDI reads paths)."})
    json: str = field(default="outputs/bench_data.json", metadata={"help": "Where to write the results."})
    tokenizer: str | None = field(default=None, metadata={"help": "A saved tokenizer (default: REMI without BPE)."})
    max_files: int = field(default=300, metadata={"help": "Files in the sample (fixed by path hash)."})
    block_size: int = 1024
    batch_size: int = 8
    workers: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "DataLoader worker counts."})
    prefetch_factor: int = field(
        default=32,
        metadata={
            "help": "Batches each worker may prepare ahead. The loader takes batches from the workers in turn, "
            "so a deep queue keeps a worker busy while the other one is on a long piece; blocks are small."
        },
    )


def time_stream(args: DataArguments, tokenizer: MusicTokenizer, num_workers: int) -> dict:
    stream = TokenBlockStream(load_source(args.source, max_files=args.max_files), tokenizer, args.block_size)
    loader = torch.utils.data.DataLoader(
        stream,
        batch_size=args.batch_size,
        num_workers=num_workers,
        prefetch_factor=args.prefetch_factor if num_workers else None,
        collate_fn=BlockCollator(tokenizer.pad_token_id),
    )
    files = tokens = 0
    start = time.perf_counter()
    for batch in loader:
        files += int((batch["input_ids"] == tokenizer.bos_token_id).sum())  # one BOS per tokenized file
        tokens += int(batch["attention_mask"].sum())
    return {"num_workers": num_workers, "seconds": time.perf_counter() - start, "files": files, "tokens": tokens}


def time_miditok(args: DataArguments, tokenizer: MusicTokenizer) -> dict:
    paths = [Path(f.url) for f in list_midi_files(args.source, max_files=args.max_files)]
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


def benchmark_data(args: DataArguments) -> dict:
    tokenizer = MusicTokenizer.from_pretrained(args.tokenizer) if args.tokenizer else MusicTokenizer()
    miditok_result = with_rates(time_miditok(args, tokenizer))
    print(f"miditok DatasetMIDI, 1 process: {miditok_result['files_per_s']:.1f} files/s")
    streams = []
    for num_workers in args.workers:
        streams.append(with_rates(time_stream(args, tokenizer, num_workers)))
        print(f"TokenBlockStream, {num_workers} workers: {streams[-1]['files_per_s']:.1f} files/s")
    return {
        "benchmark": "data",
        "arguments": asdict(args),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
        },
        "versions": {name: version(name) for name in ("miditok", "symusic", "datasets", "torch")},
        "miditok_datasetmidi": miditok_result,
        "token_block_stream": streams,
        "speedup_vs_miditok": {
            str(s["num_workers"]): s["files_per_s"] / miditok_result["files_per_s"] for s in streams
        },
    }


def main() -> None:
    benchmarks = {"data": (DataArguments, benchmark_data)}
    if len(sys.argv) < 2 or sys.argv[1] not in benchmarks:
        sys.exit(f"usage: benchmark.py {{{'|'.join(benchmarks)}}} [--option value ...]")
    arguments_class, run = benchmarks[sys.argv[1]]
    (args,) = HfArgumentParser(arguments_class).parse_args_into_dataclasses(args=sys.argv[2:])
    results = run(args)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
