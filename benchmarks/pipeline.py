"""Pipeline benchmark: sampling through `pipeline("midi-generation")` end to end, per family (untrained
models at one preset, the grammar on), at each batch size and number of new tokens: ms per step
(one new token for every sample), tokens/s, user and system CPU time, peak memory and, at batch 1,
the real-time factor. Each case runs in a process of its own (`generation_case.py`), so its CPU
time and memory are its own; with `--baseline`, each case runs right after with another
checkout's code too (the same machine, the same minute: a before and after). GPT-2 keeps its
preset's `n_positions`, so past it the pipeline's sliding window prefills again: the count is in
the figures. Then each bundled model at batch 1 through a `NoteStreamer`: the time to the first
note and the real-time factor (seconds of music per second of wall time). An untrained model's
music says nothing, so its real-time factor is taken at the bundled model's seconds of music per
token."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import AutoModelForCausalLM

from modeling import FAMILIES
from modeling.catalog import bundled_models

CASE_SCRIPT = Path(__file__).with_name("generation_case.py")


@dataclass
class Arguments:
    json: str = field(default="outputs/bench_pipeline.json", metadata={"help": "Where to write the results."})
    preset: str = "small"
    families: list[str] = field(default_factory=lambda: list(FAMILIES))
    device: str = "cpu"
    threads: int = field(default=2, metadata={"help": "torch threads (CPU)."})
    batches: list[int] = field(default_factory=lambda: [1, 28], metadata={"help": "Samples generated together."})
    lengths: list[int] = field(default_factory=lambda: [256, 768], metadata={"help": "New tokens per sample."})
    guidance_scales: list[float] = field(default_factory=lambda: [1.0])
    caches: list[str] = field(
        default_factory=lambda: ["default"],
        metadata={"help": "GPT-2's cache: default (the pipeline's own; a baseline's may differ) and/or static."},
    )
    baseline: str | None = field(
        default=None,
        metadata={
            "help": "A checkout of another version of this project (e.g. `git worktree add ../before <commit>`): "
            "every case runs with its code too, right after this checkout's."
        },
    )
    realtime_tokens: int = field(default=1024, metadata={"help": "Tokens per bundled model's real-time run."})


def realtime(folder: Path, tokens: int, device: str) -> dict:
    """A bundled model at batch 1 through a streamer that looks every 0.1 s, read on another
    thread while this one samples (as `generate.py --stream`): time to the first note, real-time factor."""
    from modeling import MidiGenerationPipeline, NoteStreamer

    generator = MidiGenerationPipeline(model=AutoModelForCausalLM.from_pretrained(folder), device=device)
    streamer = NoteStreamer(generator)
    with ThreadPoolExecutor(1) as pool:
        start = time.perf_counter()
        first_note = pool.submit(first_note_after, streamer, start)
        [piece] = generator("bach", max_new_tokens=tokens, top_p=0.95, seed=0, streamer=streamer)
        seconds = time.perf_counter() - start
    return {
        "model": folder.name,
        "tokens": tokens,
        "new_tokens": piece["new_tokens"],
        "first_note_s": first_note.result(),
        "seconds": seconds,
        "music_seconds": piece["seconds"],
        "realtime_factor": piece["seconds"] / seconds,
        "ms_per_token": 1000 * seconds / piece["new_tokens"],
    }


def first_note_after(streamer, start: float) -> float | None:
    """Seconds from `start` to the streamer's first notes; the stream is read to its end."""
    first = None
    for item in streamer:
        if first is None and item["notes"]:
            first = time.perf_counter() - start
    return first


def run_case(case: dict, code: Path) -> dict:
    """`case` in a fresh interpreter that imports `modeling` from `code`."""
    result = subprocess.run(
        [sys.executable, str(CASE_SCRIPT), json.dumps(case)],
        cwd=code,
        env={**os.environ, "PYTHONPATH": str(code)},
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"the case {case} failed with the code in {code}:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def describe(row: dict) -> str:
    return (
        f"{row['model']} {'baseline' if row['baseline'] else 'this checkout'}: batch {row['batch']} x "
        f"{row['length']} tokens, guidance {row['guidance_scale']}, {row['cache']} cache: "
        f"{row['ms_per_step']:.2f} ms/step, {row['tokens_per_s']:.0f} tokens/s, user {row['user_s']:.1f} s, "
        f"system {row['system_s']:.2f} s ({row['system_share']:.1%}), peak {row['peak_mib']:.0f} MiB, "
        f"{row['window_prefills']} window prefills"
    )


def run(args: Arguments) -> dict:
    here = Path(__file__).resolve().parents[1]
    codes = [here] + ([Path(args.baseline).resolve()] if args.baseline else [])
    results = []
    for family in args.families:
        caches = args.caches if family == "transformer" else ["own"]
        for batch, length, scale, cache in itertools.product(args.batches, args.lengths, args.guidance_scales, caches):
            case = {
                "family": family, "preset": args.preset, "device": args.device, "threads": args.threads,
                "batch": batch, "length": length, "guidance_scale": scale, "cache": cache,
            }  # fmt: skip
            rows = []
            for index, code in enumerate(codes):  # back to back: a slow spell of the machine hits both alike
                row = {"model": f"{family}_{args.preset}", "baseline": index > 0, **run_case(case, code)}
                rows.append(row)
                print(describe(row), flush=True)
            if len(rows) == 2:
                rows[0]["speedup_over_baseline"] = rows[1]["seconds"] / rows[0]["seconds"]
            results.extend(rows)
    realtime_runs = [realtime(folder, args.realtime_tokens, args.device) for folder in bundled_models().values()]
    for streamed in realtime_runs:
        print(
            f"{streamed['model']}: first note after {streamed['first_note_s']:.2f} s, {streamed['music_seconds']:.1f} "
            f"s of music in {streamed['seconds']:.1f} s: real-time factor {streamed['realtime_factor']:.2f}",
            flush=True,
        )
    if realtime_runs:  # an untrained model's real time, at the bundled model's music per token
        music_per_token = realtime_runs[0]["music_seconds"] / realtime_runs[0]["new_tokens"]
        for row in results:
            if row["batch"] == 1:
                row["realtime_factor"] = music_per_token / (row["ms_per_step"] / 1000)
    return {
        "benchmark": "pipeline",
        "arguments": asdict(args),
        "torch_threads": args.threads,
        "results": results,
        "realtime": realtime_runs,
    }
