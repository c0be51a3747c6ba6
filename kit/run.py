"""The kit on the GPU machine: `bash gpu-kit/run.sh OUT_DIR [MINUTES]` installs the kit's wheels
(no index, no network) and runs `python -m kit.run OUT_DIR --minutes MINUTES`.

Within MINUTES of the start (default 9), in turn: the machine and the kernel each family runs
(`kit.environment`), the CUDA agreement tests, the GPU benchmark (`scripts/benchmark.py models`),
and the comparison (`scripts/compare.py` on the kit's token cache) with its training time set
from what is left. Each step runs in a process group of its own; one past its limit, or past the
run's end, or a SIGTERM to this process stops it with SIGTERM (a training run checkpoints and
exports first). After every step, OUT_DIR holds what has finished, at most `MAX_FILES` files of
at most `MAX_FILE_BYTES` each (as a machine that hands back few files wants them):

    run.log           everything printed (written by run.sh)
    summary.json      the kit, the machine, the kernels, each step's status and seconds
    benchmark.json    the GPU benchmark
    comparison.json   the comparison's runs, speeds and results; comparison.md its table
    reports.tar.xz    evaluation reports, training logs and metrics, test results, plots
    bundles.tar.gz.0  the compact copies of the trained models, in parts: `cat bundles.tar.gz.* | tar -xz`

Run again on the same machine, it continues: the cache stays unpacked, a benchmark and tests that
passed are not run again, and the comparison skips what it has and resumes its training runs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from modeling import FAMILIES

from . import KIT_FILE

MAX_FILES, MAX_FILE_BYTES = 8, 16 * 2**20
FIXED_FILES = ("run.log", "summary.json", "benchmark.json", "comparison.json", "comparison.md", "reports.tar.xz")
BUNDLES = "bundles.tar.gz"
STOP_GRACE = 60  # seconds a stopped step has to end (a training run saves a checkpoint and exports)
COLLECT = 30  # seconds kept at the end for packing the results

# What each kind of kit runs. The GPU figures are first guesses for one H200 and 9 minutes: every
# step's seconds are in summary.json, to size the next window.
MODES = {
    "gpu": {
        "device": "cuda",
        "preset": "small",
        "tests": ["tests/test_models.py", "tests/test_slstm.py", "-k", "cuda or flashrnn or triton"],
        "benchmark": [
            *("--device", "cuda", "--precision", "bf16", "--train_batch", "32", "--train_lengths", "1024"),
            *("--contexts", "256", "4096", "--block_lengths", "1024"),
        ],
        "compare": [
            *("--preset", "small", "--per_device_train_batch_size", "32", "--mixed_precision", "bf16"),
            *("--eval_steps", "200", "--save_steps", "100", "--classifier_preset", "small"),
            *("--classifier_steps", "600", "--num_samples", "2", "--length", "512", "--guidance_scales", "1", "2"),
            *("--eval_args", "--max_test_files 128"),
        ],
        "limits": {"environment": 180, "tests": 240, "benchmark": 180},
        "train_share": 0.55,  # of the time left when the comparison starts; evaluation and bundling take the rest
        "batch_tokens": 32 * 1024,  # 32 blocks of 1024: the budget, sized from the benchmark, in whole batches
    },
    "dry-run": {  # a rehearsal on a CPU: the compare test's sizes, one tiny family (that test trains all three)
        "device": "cpu",
        "preset": "tiny",
        "tests": ["tests/test_models.py", "tests/test_slstm.py", "-k", "cuda or flashrnn or triton"],
        "benchmark": [
            *("--device", "cpu", "--preset", "tiny", "--references", "false", "--train_lengths", "64"),
            *("--contexts", "32", "--new_tokens", "4", "--slstm_backends", "native", "--block_lengths", "64"),
        ],
        "compare": [
            *("--families", "transformer", "--preset", "tiny", "--max_train_tokens", "16384"),
            *("--per_device_train_batch_size", "8"),
            *("--warmup_steps", "2", "--eval_steps", "0", "--save_steps", "0", "--mixed_precision", "no"),
            *("--device", "cpu"),
            *("--classifier_preset", "tiny", "--classifier_steps", "4", "--classifier_batch_size", "4"),
            *("--classifier_args", "--min_files 4 --window_tokens 64", "--num_samples", "1", "--length", "24"),
            *("--guidance_scales", "1", "--eval_args", "--max_test_files 4 --identification_tokens 64 --batch_size 4"),
        ],
        "limits": {"environment": 120, "tests": 180, "benchmark": 120},
        "train_share": 0.5,
        "batch_tokens": 0,  # the fixed --max_train_tokens above, as the compare test's
    },
}


@dataclass
class Step:
    name: str
    command: Callable[[float], list[str]]  # from the seconds left when it starts
    limit: float | None = None  # seconds, at most; None: until the run's end
    once: bool = False  # once done, not run again on this machine
    status: str = "not started"
    seconds: float = 0.0


@dataclass
class Runner:
    """Runs steps in turn from the checkout `root`, in process groups of their own, each within
    its limit and the run's `end`; their files go to `work` (kept between runs on one machine)."""

    root: Path
    work: Path
    end: float  # time.time() by which every result must be packed
    current: subprocess.Popen | None = None
    signal: int = 0

    def marker(self, step: Step) -> Path:
        return self.work / f"{step.name.replace(' ', '-')}.done"

    def stop(self, number: int, frame) -> None:
        """SIGTERM/SIGINT: stop the step running now (it saves what it can), then pack and exit."""
        self.signal = number
        if self.current is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.current.pid, signal.SIGTERM)

    def run(self, step: Step) -> None:
        left = self.end - STOP_GRACE - COLLECT - time.time()
        if self.signal:
            step.status = "not started: stopped by a signal"
        elif step.once and self.marker(step).is_file():
            step.status = "done by an earlier run"
        elif left < 10:
            step.status = "not started: no time left"
        else:
            self.start(step, min(left, step.limit or left))
        print(f"== {step.name}: {step.status}" + (f" after {step.seconds:.0f} s" if step.seconds else ""), flush=True)

    def start(self, step: Step, limit: float) -> None:
        command = step.command(limit)
        print(f"\n== {step.name} (at most {limit:.0f} s): {' '.join(command)}", flush=True)
        started = time.monotonic()
        self.current = subprocess.Popen(command, cwd=self.root, start_new_session=True)
        step.status = self.wait(self.current, limit)
        self.current = None
        step.seconds = round(time.monotonic() - started, 1)
        if step.once and step.status == "done":
            self.marker(step).touch()

    def wait(self, process: subprocess.Popen, limit: float) -> str:
        """How the step ended: by itself, at its limit (SIGTERM, then SIGKILL after the grace), or
        stopped by a signal to this runner."""
        try:
            code = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                code = process.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                code = process.wait()
            return f"stopped at its limit of {limit:.0f} s (exit status {code})"
        if self.signal:
            return f"stopped by {signal.Signals(self.signal).name} (exit status {code})"
        return "done" if code == 0 else f"failed (exit status {code})"


def unpack_cache(kit_dir: Path, cache: dict, work: Path) -> Path:
    """One of the kit's token caches, unpacked once into `work` (moved in place when whole)."""
    folder = work / "cache" / cache["folder"]
    if not (folder / "token_cache.json").is_file():
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        with tarfile.open(kit_dir / cache["file"]) as archive:
            archive.extractall(partial, filter="data")
        os.replace(partial / folder.name, folder)
        shutil.rmtree(partial)
    return folder


def token_budget(benchmark: Path, preset: str, seconds: float, batch_tokens: int) -> int | None:
    """Training tokens each family can reach in `seconds` when all train side by side on the one
    device: the slowest family's benchmarked speed (its fastest variant, e.g. the sLSTM backend
    `auto` picks) shared among them, less a fifth for starting, evaluating and saving, in whole
    batches. So every family sees the same tokens and its schedule ends, rather than the time
    limit cutting each where its speed took it. None without a benchmark of every family."""
    if not benchmark.is_file():
        return None
    speeds = {}
    for result in json.loads(benchmark.read_text())["results"]:
        family, _, variant = result["model"].partition(f"_{preset}")
        if result["training"] and family in FAMILIES and (not variant or variant.startswith(" sLSTM")):
            speeds[family] = max(speeds.get(family, 0.0), result["training"][0]["tokens_per_s"])
    if set(speeds) != set(FAMILIES):
        return None
    tokens = min(speeds.values()) / len(FAMILIES) * seconds * 0.8
    return int(tokens // batch_tokens) * batch_tokens or None


def plan(mode: dict, caches: list[Path], work: Path) -> list[Step]:
    """The steps of a run, in order."""
    python = sys.executable

    def compare(seconds: float) -> list[str]:
        training = max(30.0, seconds * mode["train_share"])
        batch = mode["batch_tokens"]
        budget = batch and token_budget(work / "benchmark.json", mode["preset"], training, batch)
        return [
            *(python, "scripts/compare.py", "--sources", *map(str, caches), "--time_limit", f"{training:.0f}"),
            *(["--max_train_tokens", str(budget)] if budget else []),
            *("--output_dir", str(work / "compare"), "--bundle_dir", str(work / "bundles"), *mode["compare"]),
        ]

    environment = [python, "-m", "kit.environment", "--device", mode["device"], "--preset", mode["preset"]]
    tests = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml", str(work / "tests.xml")]
    benchmark = [python, "scripts/benchmark.py", "models", "--json", str(work / "benchmark.json")]
    limits = mode["limits"]
    return [
        Step("environment", lambda s: [*environment, "--json", str(work / "environment.json")], limits["environment"]),
        Step("CUDA agreement tests", lambda s: [*tests, *mode["tests"]], limits["tests"], once=True),
        Step("benchmark", lambda s: [*benchmark, *mode["benchmark"]], limits["benchmark"], once=True),
        Step("comparison", compare),
    ]


def write(path: Path, data: bytes) -> None:
    """Whole or not at all: a run killed while writing leaves the previous file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def archive(members: dict[str, Path], compression: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=f"w:{compression}") as tar:
        for name, path in members.items():
            tar.add(path, arcname=name)
    return buffer.getvalue()


def reports(work: Path) -> dict[str, Path]:
    """What the report archive holds: evaluation reports and plots, every log, training metrics
    and model cards, the judge's results, the tests' results, the benchmark's plot."""
    compare = work / "compare"
    patterns = ["eval/*", "logs/*", "*/metrics.jsonl", "*/README.md", "judge/classifier_results.json"]
    found = {f"compare/{p.relative_to(compare)}": p for pattern in patterns for p in compare.glob(pattern)}
    found |= {p.name: p for p in (work / "tests.xml", work / "benchmark.png", work / "environment.json")}
    return {name: path for name, path in sorted(found.items()) if path.is_file()}


def bundle_parts(work: Path, out: Path) -> list[str]:
    """The compact copies as one .tar.gz cut into as many parts as the file limit leaves; a copy
    that does not fit is left out, and said. Returns the copies packed."""
    for old in out.glob(f"{BUNDLES}.*"):
        old.unlink()
    folders = sorted(p for p in (work / "bundles").glob("*") if (p / "config.json").is_file())
    room = (MAX_FILES - len(FIXED_FILES)) * MAX_FILE_BYTES
    while folders:
        data = archive({folder.name: folder for folder in folders}, "gz")
        if len(data) <= room:
            break
        print(f"bundles: {len(data) / 2**20:.1f} MiB, over {room / 2**20:.0f} MiB: {folders[-1].name} left out")
        folders.pop()
    for number, start in enumerate(range(0, len(data) if folders else 0, MAX_FILE_BYTES)):
        write(out / f"{BUNDLES}.{number}", data[start : start + MAX_FILE_BYTES])
    return [folder.name for folder in folders]


def collect(out: Path, work: Path, summary: dict, final: bool) -> None:
    """Copy what has finished into `out` with `summary`; with `final`, the report archive and the
    bundles too."""
    for name in ("benchmark.json", "compare/comparison.json", "compare/comparison.md"):
        if (work / name).is_file():
            write(out / Path(name).name, (work / name).read_bytes())
    if (work / "environment.json").is_file():
        summary["environment"] = json.loads((work / "environment.json").read_text())
    if final:
        write(out / "reports.tar.xz", archive(reports(work), "xz"))
        copies = bundle_parts(work, out)
        summary["bundles"] = {"copies": copies, "join": f"cat {BUNDLES}.* | tar -xz"} if copies else None
    write(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the GPU kit (see gpu-kit/run.sh).")
    parser.add_argument("out", type=Path, help="Where the results go (at most 8 files).")
    parser.add_argument("--minutes", type=float, default=9.0, help="Everything ends within this many minutes.")
    parser.add_argument("--started", type=float, default=None, help="When run.sh started (seconds since the epoch).")
    parser.add_argument("--kit", type=Path, default=Path("gpu-kit"), help="The kit's folder, in the checkout's root.")
    args = parser.parse_args(argv)
    kit_dir = args.kit.resolve()
    kit = json.loads((kit_dir / KIT_FILE).read_text())
    mode = MODES[kit["mode"]]
    if mode["device"] == "cuda" and not torch.cuda.is_available():
        sys.exit("error: no CUDA device here: this kit is for a GPU (build one with --dry_run to rehearse on a CPU)")
    root = kit_dir.parent
    runner = Runner(root, root / "outputs" / "gpu-kit", (args.started or time.time()) + args.minutes * 60)
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, runner.stop)
    runner.work.mkdir(parents=True, exist_ok=True)
    steps = plan(mode, [unpack_cache(kit_dir, cache, runner.work) for cache in kit["caches"]], runner.work)
    summary = {"kit": kit, "minutes": args.minutes, "steps": []}
    for step in steps:
        runner.run(step)
        summary["steps"] = [{"name": s.name, "status": s.status, "seconds": s.seconds} for s in steps]
        collect(args.out, runner.work, summary, final=step is steps[-1] or bool(runner.signal))
        if runner.signal:
            return 128 + runner.signal
    return 0


if __name__ == "__main__":
    sys.exit(main())
