"""Speed benchmarks, written as JSON.

    python scripts/benchmark.py data --source ../shared/data/midi-classical-music --json outputs/bench_data.json

    python scripts/benchmark.py models --json outputs/bench_models.json
    python scripts/benchmark.py models --device cuda --precision bf16 --json outputs/bench_models_gpu.json

    python scripts/benchmark.py pipeline --lengths 1024 3072 --json outputs/bench_pipeline.json

`data`: throughput of `TokenBlockStream` through a DataLoader with 0 (in the main process),
1 and 2 workers, reading the same pieces from the source's token cache and from MIDI
tokenized on the fly, beside miditok's own `DatasetMIDI` read in one process, with the same
tokenizer; and the time to build (or open) the token cache and its size on disk.

`models`: per family at one preset, training tokens/s (forward + backward, batch 1 unless told) at
several lengths, and generation ms/token and memory after a prefill of several context
lengths, beside transformers' own `Mamba2ForCausalLM` and `xLSTMForCausalLM` at matched
sizes; JSON plus a PNG plot. MusicXLSTM is timed once per sLSTM backend that runs on the
device (`--slstm_backends`), and one sLSTM block per backend against one mLSTM block.
GPT-2 gets `n_positions` large enough for the longest context. Memory is the size of the
cache and, on CUDA, the allocator's peak above its level before the prefill (on CPU the
resident size says nothing once training has grown the allocator's pool, so none is
reported).

`pipeline`: end-to-end sampling through `pipeline("midi-generation")` (untrained models at
one preset, several samples in one batch, grammar on), ms per step (one new token for each
sample) at several lengths, with and without classifier-free guidance, beside the bare model
loop at the same batch and length (forward through the same cache, argmax): the difference is
the pipeline's own cost. GPT-2 runs with the dynamic and the static cache, and keeps its
preset's `n_positions`, so past it the pipeline's sliding window prefills again: the count
and cost of those prefills are in the figures. Then each bundled model at batch 1 through a
`NoteStreamer`: the time to the first note and the real-time factor (seconds of music per
second of wall time).

Each benchmark imports only what it measures, so `models` runs where the data libraries
are not installed (a bare GPU machine).
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    HfArgumentParser,
    Mamba2Config,
    Mamba2ForCausalLM,
    xLSTMConfig,
    xLSTMForCausalLM,
)

from modeling import FAMILIES, build_config, modeling_music_xlstm
from modeling.catalog import bundled_models


@dataclass
class DataArguments:
    source: str = field(default="bundled", metadata={"help": "A local MIDI source (DatasetMIDI reads paths)."})
    json: str = field(default="outputs/bench_data.json", metadata={"help": "Where to write the results."})
    tokenizer: str | None = field(default=None, metadata={"help": "A saved tokenizer; left out: REMI without BPE."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where token caches live (train.py's)."})
    num_proc: int | None = field(default=None, metadata={"help": "Processes building the cache; left out: cores."})
    max_files: int = field(default=300, metadata={"help": "Files in the sample (fixed by path hash)."})
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


def time_stream(args: DataArguments, tokenizer, open_source, num_workers: int) -> dict:
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


def time_miditok(args: DataArguments, tokenizer) -> dict:
    from miditok.pytorch_data import DatasetMIDI

    from tokenization import list_midi_files

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
    from tokenization import MusicTokenizer, TokenCache, load_source

    tokenizer = MusicTokenizer.from_pretrained(args.tokenizer) if args.tokenizer else MusicTokenizer()
    start = time.perf_counter()
    cache = TokenCache.for_source(args.source, tokenizer, args.cache_dir, args.num_proc)
    cache_result = {
        "seconds_to_build_or_open": time.perf_counter() - start,
        "folder": str(cache.folder),
        "pieces": cache.info["pieces"],
        "tokens": cache.info["tokens"],
        "bytes_on_disk": sum(p.stat().st_size for p in cache.folder.iterdir()),
    }
    print(f"token cache: {cache_result['seconds_to_build_or_open']:.1f} s to build or open, {cache.folder}")
    miditok_result = with_rates(time_miditok(args, tokenizer))
    print(f"miditok DatasetMIDI, 1 process: {miditok_result['tokens_per_s']:.0f} tokens/s")
    streams = {"midi": [], "cache": []}
    sources = {
        "midi": lambda: load_source(args.source, max_files=args.max_files),
        "cache": lambda: cache.pieces(max_files=args.max_files),
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


@dataclass
class ModelArguments:
    json: str = field(default="outputs/bench_models.json", metadata={"help": "Where to write the results (and .png)."})
    preset: str = "small"
    families: list[str] = field(default_factory=lambda: list(FAMILIES))
    references: bool = field(default=True, metadata={"help": "Also time transformers' Mamba2 and xLSTM."})
    device: str = "cpu"
    precision: str = field(
        default="fp32", metadata={"help": "fp32, or bf16 (autocast, as accelerate's mixed precision)."}
    )
    threads: int = field(default=2, metadata={"help": "torch threads (CPU)."})
    vocab_size: int = 1024
    train_lengths: list[int] = field(default_factory=lambda: [1024, 4096])
    train_batch: int = field(default=1, metadata={"help": "Sequences per training step (e.g. 32 on a GPU)."})
    contexts: list[int] = field(default_factory=lambda: [256, 1024, 4096, 16384])
    new_tokens: int = field(default=32, metadata={"help": "Tokens generated after each prefill."})
    slstm_backends: list[str] = field(
        default_factory=lambda: ["vanilla", "native", "flashrnn"],
        metadata={"help": "MusicXLSTM's sLSTM backends to time (flashrnn: CUDA with the [cuda] extra only)."},
    )
    block_lengths: list[int] = field(
        default_factory=lambda: [1024, 4096], metadata={"help": "Lengths of the per-block (sLSTM vs mLSTM) timing."}
    )


class Vocabulary:
    """Token ids for `build_config` without a tokenizer."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


def reference_models(preset: str, vocab_size: int) -> dict:
    """transformers' own Mamba-2 and xLSTM, sized from our presets.

    The Mamba-2 copies our Mamba preset. transformers' xLSTM has mLSTM blocks only: with
    12 of them it matches the parameter count of our 14 mixed blocks (mLSTM + sLSTM).
    """
    vocabulary = Vocabulary(vocab_size)
    mamba, xlstm = build_config("mamba", preset, vocabulary), build_config("xlstm", preset, vocabulary)
    mamba = Mamba2Config(
        vocab_size=vocab_size, hidden_size=mamba.n_embd, num_hidden_layers=mamba.n_layer, state_size=mamba.d_state,
        head_dim=mamba.headdim, num_heads=mamba.nheads, n_groups=mamba.ngroups, expand=mamba.expand,
        chunk_size=mamba.chunk_size, tie_word_embeddings=True,
    )  # fmt: skip
    xlstm = xLSTMConfig(
        vocab_size=vocab_size, hidden_size=xlstm.n_embd, num_blocks=xlstm.n_layer - 2,
        num_heads=xlstm.num_heads, chunk_size=xlstm.chunk_size, tie_word_embeddings=True,
    )  # fmt: skip
    return {"transformers_mamba2": (Mamba2ForCausalLM, mamba), "transformers_xlstm": (xLSTMForCausalLM, xlstm)}


def installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def usable_backends(backends: list[str], device: torch.device) -> list[str]:
    """The sLSTM backends that run here: flashrnn's kernel needs CUDA and the package."""
    fused = device.type == "cuda" and modeling_music_xlstm.flashrnn is not None
    return [backend for backend in backends if backend != "flashrnn" or fused]


def time_blocks(config, lengths: list[int], backends: list[str], device: torch.device, reps: int = 3) -> list[dict]:
    """Forward + backward of one mLSTM block and one sLSTM block per backend (batch 1): the
    fastest of `reps` runs in ms (single runs drift with the garbage collector and the machine)."""
    torch.manual_seed(0)
    blocks = {"mLSTM": modeling_music_xlstm.MusicXLSTMMLSTMBlock(config)}
    slstm = modeling_music_xlstm.MusicXLSTMSLSTMBlock(config, config.slstm_at[0])
    blocks |= {f"sLSTM {backend}": slstm for backend in backends}
    rows = []
    for length in lengths:
        x = torch.randn(1, length, config.n_embd, device=device, requires_grad=True)
        for name, block in blocks.items():
            if name.startswith("sLSTM "):
                config.slstm_backend = name.removeprefix("sLSTM ")
            block.to(device)
            block(x, None)[0].sum().backward()  # warm-up
            times = []
            for _ in range(reps):
                synchronize(device)
                start = time.perf_counter()
                block(x, None)[0].sum().backward()
                synchronize(device)
                times.append(time.perf_counter() - start)
            ms = 1000 * min(times)
            rows.append({"block": name, "length": length, "ms": ms})
            print(f"{name} block: {length} tokens: {ms:.0f} ms forward + backward", flush=True)
    return rows


def time_training(model, length: int, batch: int, vocab_size: int, device: torch.device, reps: int = 2) -> float:
    """Tokens per second of forward + backward on `batch` sequences of `length` tokens."""
    ids = torch.randint(3, vocab_size, (batch, length), device=device)
    model.train()
    model(ids, labels=ids, use_cache=False).loss.backward()  # warm-up (kernel compilation, allocator)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(reps):
        model.zero_grad(set_to_none=True)
        model(ids, labels=ids, use_cache=False).loss.backward()
    synchronize(device)
    model.zero_grad(set_to_none=True)
    return ids.numel() * reps / (time.perf_counter() - start)


def cache_bytes(cache) -> int:
    """Bytes held by any cache object: the tensors reachable from its attributes."""
    seen, total, stack = set(), 0, [cache]
    while stack:
        item = stack.pop()
        key = item.data_ptr() if isinstance(item, torch.Tensor) else id(item)
        if key in seen:
            continue
        seen.add(key)
        if isinstance(item, torch.Tensor):
            total += item.numel() * item.element_size()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif hasattr(item, "__dict__"):
            stack.extend(vars(item).values())
    return total


@torch.no_grad()
def time_generation(model, context: int, new_tokens: int, vocab_size: int, device: torch.device) -> dict:
    """Prefill `context` tokens, then `new_tokens` single-token steps through the cache."""
    model.eval()
    ids = torch.randint(3, vocab_size, (1, context), device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    out = model(ids, use_cache=True)
    synchronize(device)
    prefill = time.perf_counter() - start
    step = out.logits[:, -1:].argmax(-1)
    start = time.perf_counter()
    for _ in range(new_tokens):
        out = model(step, cache=out.cache, use_cache=True)
        step = out.logits[:, -1:].argmax(-1)
    synchronize(device)
    stepping = time.perf_counter() - start
    return {
        "context": context,
        "prefill_s": prefill,
        "ms_per_token": 1000 * stepping / new_tokens,
        "cache_bytes": cache_bytes(out.cache),
        "peak_memory_bytes": torch.cuda.max_memory_allocated() - base if device.type == "cuda" else None,
    }


def measure(name: str, model, args: ModelArguments, device: torch.device) -> dict:
    result = {
        "model": name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "training": [],
        "generation": [],
    }
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
        for length in args.train_lengths:
            tokens_per_s = time_training(model, length, args.train_batch, args.vocab_size, device)
            result["training"].append({"length": length, "batch": args.train_batch, "tokens_per_s": tokens_per_s})
            print(f"{name}: train {length} tokens: {tokens_per_s:.0f} tokens/s", flush=True)
        for context in args.contexts:
            row = time_generation(model, context, args.new_tokens, args.vocab_size, device)
            result["generation"].append(row)
            cache_mib = row["cache_bytes"] / 2**20
            print(
                f"{name}: context {context}: {row['ms_per_token']:.1f} ms/token, cache {cache_mib:.1f} MiB", flush=True
            )
    return result


def plot_models(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (train, generate, memory) = plt.subplots(1, 3, figsize=(15, 4.5))
    for result in results:
        train.plot([r["length"] for r in result["training"]], [r["tokens_per_s"] for r in result["training"]], "o-")
        contexts = [r["context"] for r in result["generation"]]
        generate.plot(contexts, [r["ms_per_token"] for r in result["generation"]], "o-", label=result["model"])
        memory.plot(contexts, [r["cache_bytes"] / 2**20 for r in result["generation"]], "o-")
    for axis, title in zip(
        (train, generate, memory),
        ("training tokens/s (fwd+bwd)", "generation ms/token", "cache MiB"),
        strict=True,
    ):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("tokens" if axis is train else "context tokens")
        axis.set_title(title)
    memory.set_yscale("log")
    generate.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def benchmark_models(args: ModelArguments) -> dict:
    if args.precision not in ("fp32", "bf16"):
        raise ValueError(f"unknown precision {args.precision!r}: use fp32 or bf16")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    candidates = {}
    longest = max(*args.train_lengths, max(args.contexts) + args.new_tokens)
    backends = usable_backends(args.slstm_backends, device)
    for family in args.families:
        extra = {"n_positions": longest} if family == "transformer" else {}
        variants = {f" sLSTM {b}": {"slstm_backend": b} for b in backends} if family == "xlstm" else {"": {}}
        for suffix, overrides in variants.items():
            config = build_config(family, args.preset, Vocabulary(args.vocab_size), **extra, **overrides)
            candidates[f"{family}_{args.preset}{suffix}"] = (AutoModelForCausalLM.from_config, config)
    if args.references:
        candidates |= reference_models(args.preset, args.vocab_size)
    results = []
    for name, (make, config) in candidates.items():
        torch.manual_seed(0)
        try:
            results.append(measure(name, make(config).to(device), args, device))
        except Exception as error:  # a reference without its kernels must not cost the other figures
            print(f"{name}: failed: {type(error).__name__}: {error}", flush=True)
            results.append(
                {"model": name, "error": f"{type(error).__name__}: {error}", "training": [], "generation": []}
            )
    blocks = []
    if "xlstm" in args.families:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            xlstm_config = build_config("xlstm", args.preset, Vocabulary(args.vocab_size))
            blocks = time_blocks(xlstm_config, args.block_lengths, backends, device)
    output = {
        "benchmark": "models",
        "arguments": asdict(args),
        "machine": {
            "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "versions": {
            name: installed(name) for name in ("torch", "transformers", "xlstm", "mlstm_kernels", "flashrnn")
        },
        "results": results,
        "blocks": blocks,
    }
    plot_models(results, Path(args.json).with_suffix(".png"))
    return output


@dataclass
class PipelineArguments:
    json: str = field(default="outputs/bench_pipeline.json", metadata={"help": "Where to write the results."})
    preset: str = "small"
    families: list[str] = field(default_factory=lambda: list(FAMILIES))
    device: str = "cpu"
    threads: int = field(default=2, metadata={"help": "torch threads (CPU)."})
    rows: int = field(default=4, metadata={"help": "Samples generated together (one batch)."})
    lengths: list[int] = field(default_factory=lambda: [1024, 3072], metadata={"help": "New tokens per sample."})
    guidance_scales: list[float] = field(default_factory=lambda: [1.0, 2.0])
    realtime_tokens: int = field(default=1024, metadata={"help": "Tokens per bundled model's real-time run."})
    repeats: int = field(
        default=3, metadata={"help": "Runs of each pipeline call and bare loop, interleaved; the fastest counts."}
    )


@torch.no_grad()
def bare_ms_per_step(model, rows: int, length: int, vocab_size: int, cache_size: int, device: torch.device) -> float:
    """The model alone, as the pipeline steps it: a 2-token prefill, then one token per row per step."""
    from transformers import StaticCache

    step = torch.randint(3, vocab_size, (rows, 2), device=device)
    cache = StaticCache(config=model.config, max_cache_len=cache_size) if cache_size else None
    synchronize(device)
    start = time.perf_counter()
    for _ in range(length):
        out = model(input_ids=step, cache=cache, use_cache=True, logits_to_keep=1)
        cache, step = out.cache, out.logits[:, -1:].argmax(-1)
    synchronize(device)
    return 1000 * (time.perf_counter() - start) / length


def realtime(folder: Path, tokens: int, device: str) -> dict:
    """A bundled model at batch 1 through a streamer that looks every 0.1 s (as `generate.py --stream`):
    time to the first note, real-time factor."""
    from concurrent.futures import ThreadPoolExecutor

    from modeling import MidiGenerationPipeline, NoteStreamer

    generator = MidiGenerationPipeline(model=AutoModelForCausalLM.from_pretrained(folder), device=device)
    streamer = NoteStreamer(generator)
    with ThreadPoolExecutor(1) as pool:
        start = time.perf_counter()
        call = pool.submit(generator, "bach", max_new_tokens=tokens, top_p=0.95, seed=0, streamer=streamer)
        next((item for item in streamer if item["notes"]), None)
        first_note = time.perf_counter() - start
        [piece] = call.result()
        for _ in streamer:  # the rest of the stream
            pass
    seconds = time.perf_counter() - start
    return {
        "model": folder.name,
        "tokens": tokens,
        "first_note_s": first_note,
        "seconds": seconds,
        "music_seconds": piece["seconds"],
        "realtime_factor": piece["seconds"] / seconds,
        "ms_per_token": 1000 * seconds / piece["new_tokens"],
    }


def benchmark_pipeline(args: PipelineArguments) -> dict:
    import tempfile

    from modeling import MidiGenerationPipeline
    from tokenization import MusicTokenizer

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tokenizer = MusicTokenizer(composers=["bach"])
    results, prefills = [], []  # prefills: forwards of more than one token (the first, and window slides)

    def count_prefills(module, inputs, kwargs) -> None:
        if kwargs["input_ids"].shape[1] > 1:
            prefills.append(kwargs["input_ids"].shape[1])

    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        for family in args.families:
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(build_config(family, args.preset, tokenizer)).eval()
            hook = model.register_forward_pre_hook(count_prefills, with_kwargs=True)
            generator = MidiGenerationPipeline(model=model, music_tokenizer=folder, device=args.device)
            window = getattr(model.config, "n_positions", None)
            caches = ["dynamic", "static"] if window else ["own"]
            for length, scale, cache in itertools.product(args.lengths, args.guidance_scales, caches):
                batch = args.rows * (2 if scale != 1.0 else 1)
                cache_size = min(length + 2, window) if cache == "static" else 0
                steps = min(length, window - 2) if window else length  # the bare loop has no sliding window
                seconds, bare = [], []
                for _ in range(args.repeats):  # interleaved: a slow spell of the machine hits both alike
                    prefills.clear()
                    synchronize(device)
                    start = time.perf_counter()
                    generator(
                        ["bach"] * args.rows,
                        max_new_tokens=length,
                        min_new_tokens=length,
                        guidance_scale=scale,
                        static_cache=cache == "static",
                    )
                    synchronize(device)
                    seconds.append(time.perf_counter() - start)
                    hook.remove()  # the bare loop's forwards are not the pipeline's prefills
                    bare.append(bare_ms_per_step(model, batch, steps, len(tokenizer), cache_size, device))
                    hook = model.register_forward_pre_hook(count_prefills, with_kwargs=True)
                row = {
                    "model": f"{family}_{args.preset}",
                    "length": length,
                    "guidance_scale": scale,
                    "rows": args.rows,
                    "cache": cache,
                    "seconds": min(seconds),
                    "ms_per_step": 1000 * min(seconds) / length,
                    "bare_ms_per_step": min(bare),
                    "overhead": 1000 * min(seconds) / length / min(bare) - 1,
                    "all_ms_per_step": [1000 * s / length for s in seconds],
                    "all_bare_ms_per_step": bare,
                    "window_prefills": len(prefills) - 1,
                }
                results.append(row)
                print(
                    f"{row['model']}: {length} tokens x {args.rows} rows, guidance {scale}, {cache} cache: "
                    f"{row['ms_per_step']:.2f} ms/step, the model alone {row['bare_ms_per_step']:.2f} "
                    f"({row['overhead']:+.0%}), {row['window_prefills']} window prefills",
                    flush=True,
                )
    realtime_runs = [realtime(folder, args.realtime_tokens, args.device) for folder in bundled_models().values()]
    for run in realtime_runs:
        print(
            f"{run['model']}: first note after {run['first_note_s']:.2f} s, {run['music_seconds']:.1f} s of music in "
            f"{run['seconds']:.1f} s: real-time factor {run['realtime_factor']:.2f}",
            flush=True,
        )
    return {
        "benchmark": "pipeline",
        "arguments": asdict(args),
        "torch_threads": args.threads,
        "results": results,
        "realtime": realtime_runs,
    }


def main() -> None:
    benchmarks = {
        "data": (DataArguments, benchmark_data),
        "models": (ModelArguments, benchmark_models),
        "pipeline": (PipelineArguments, benchmark_pipeline),
    }
    if len(sys.argv) < 2 or sys.argv[1] not in benchmarks:
        sys.exit(f"usage: benchmark.py {{{'|'.join(benchmarks)}}} [--option value ...]")
    arguments_class, run = benchmarks[sys.argv[1]]
    (args,) = HfArgumentParser(arguments_class).parse_args_into_dataclasses(args=sys.argv[2:])
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    results = run(args)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
