"""Pipeline benchmark: end-to-end sampling through `pipeline("midi-generation")` (untrained models at
one preset, several samples in one batch, grammar on), ms per step (one new token for each sample)
at several lengths, with and without classifier-free guidance, beside the bare model loop at the
same batch and length (forward through the same cache, argmax): the difference is the pipeline's own
cost. GPT-2 runs with the pipeline's preallocated cache and with the static one, and keeps its
preset's `n_positions`, so past it the pipeline's sliding window prefills again: the count and
cost of those prefills are in the figures. Then each bundled model at batch 1 through a
`NoteStreamer`: the time to the first note and the real-time factor (seconds of music per second of wall time)."""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from modeling import FAMILIES, build_config
from modeling.catalog import bundled_models

from . import synchronize


@dataclass
class Arguments:
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
def bare_ms_per_step(model, rows: int, length: int, vocab_size: int, cache, device: torch.device) -> float:
    """The model alone, as the pipeline steps it: a 2-token prefill, then one token per row per step,
    in the cache the pipeline gives it (None: the model's own)."""
    step = torch.randint(3, vocab_size, (rows, 2), device=device)
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


def run(args: Arguments) -> dict:
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
            caches = ["preallocated", "static"] if window else ["own"]
            for length, scale, cache in itertools.product(args.lengths, args.guidance_scales, caches):
                batch = args.rows * (2 if scale != 1.0 else 1)
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
                    bare_cache = generator._cache(min(length + 2, window or 0), cache == "static")
                    bare.append(bare_ms_per_step(model, batch, steps, len(tokenizer), bare_cache, device))
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
