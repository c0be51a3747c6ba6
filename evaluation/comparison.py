"""The comparison's bookkeeping (scripts/compare.py): jobs run as subprocesses in process
groups of their own, the GPU sampled while they train, what each training run did, and whether
an evaluation is up to date with the model it measured."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import statistics
import subprocess
import threading
import time
from pathlib import Path

import torch

from modeling.ngram import CONFIG_NAME as NGRAM_CONFIG
from modeling.training import read_trainer_state, resolve_checkpoint, training_speed

CARD_NOTE = """
## Weights

Stored compactly: every weight matrix as float8 (e4m3) with a float32 scale per 64 weights of a
row, which transformers multiplies back in at load (`quantization_config` in `config.json`), the
rest in float16. On the test split of `{source}`: {before:.4f} bits per token before, {after:.4f}
after.
"""


class Jobs:
    """Subprocesses, each in a process group of its own, logged to files. A SIGTERM or SIGINT to
    this script goes to each group once (a training run then checkpoints and exports), and a
    job counts as done when its whole group has ended, launcher and trainer alike."""

    def __init__(self, logs: Path, cwd: Path) -> None:
        self.logs, self.cwd, self.running, self.signal = logs, cwd, [], 0
        logs.mkdir(parents=True, exist_ok=True)
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, self._forward)

    def _forward(self, number: int, frame) -> None:
        self.signal = number
        for process in self.running:
            with contextlib.suppress(ProcessLookupError):  # the group has just ended
                os.killpg(process.pid, signal.SIGTERM)

    def start(self, name: str, command: list[str]) -> subprocess.Popen:
        print(f"{time.strftime('%H:%M:%S')} {name}: {shlex.join(command)}", flush=True)
        with open(self.logs / f"{name}.log", "w") as log:
            process = subprocess.Popen(
                command, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.running.append(process)
        return process

    def wait(self, started: dict[str, subprocess.Popen]) -> None:
        """Until every process of every group has ended; says how each job (its launcher) ended."""
        for name, process in started.items():
            code = process.wait()
            while group_alive(process.pid):
                time.sleep(0.5)
            self.running.remove(process)
            state = "done" if code == 0 else f"failed (exit status {code}, see logs/{name}.log)"
            print(f"{time.strftime('%H:%M:%S')} {name}: {state}", flush=True)

    def run(self, commands: dict[str, list[str]], parallel: bool) -> None:
        if parallel:
            self.wait({name: self.start(name, command) for name, command in commands.items()})
            return
        for name, command in commands.items():
            if not self.signal:
                self.wait({name: self.start(name, command)})


def group_alive(group: int) -> bool:
    """Whether a process of the group still runs. A trainer whose launcher died is reaped by
    init, or by nobody where this script is process 1 (a container): zombies do not count."""
    if not Path("/proc").is_dir():
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):  # the process ended while we read
            state, _, process_group = stat.read_text().rpartition(")")[2].split()[:3]
            if int(process_group) == group and state != "Z":
                return True
    return False


class GpuSampler(threading.Thread):
    """Samples the GPU's utilisation and memory in use every second while training runs."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.utilisation, self.memory, self.finished = [], [], threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        while not self.finished.wait(1.0):
            try:
                busy, used = torch.cuda.utilization(), torch.cuda.device_memory_used() / 2**30
            except Exception as error:  # no NVML (or an older torch): no figures, and no failure
                self.error = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                return
            self.utilisation.append(busy)
            self.memory.append(used)

    def summary(self) -> dict:
        self.finished.set()
        self.join()
        if not self.utilisation:
            return {"error": self.error or "no sample"}
        return {
            "device": torch.cuda.get_device_name(),
            "utilisation_percent_mean": statistics.mean(self.utilisation),
            "memory_gib_max": max(self.memory),
            "samples": len(self.utilisation),
        }


def last_state(folder: Path) -> dict:
    """The trainer state of a run's newest checkpoint (empty before its first)."""
    checkpoint = resolve_checkpoint(folder, "latest")
    return read_trainer_state(checkpoint) if checkpoint else {}


def complete(folder: Path) -> bool:
    """Whether a training run reached its last step (and so exported its model)."""
    state = last_state(folder)
    return "max_steps" in state and state["step"] >= state["max_steps"]


def model_file(folder: Path) -> Path | None:
    """The config of a trained model (or n-gram) in `folder`, written with each export."""
    return next((folder / name for name in ("config.json", NGRAM_CONFIG) if (folder / name).is_file()), None)


def up_to_date(result: Path, folder: Path) -> bool:
    """Whether `result` was measured on the model now in `folder` (a resumed run exports again)."""
    return result.is_file() and result.stat().st_mtime >= model_file(folder).stat().st_mtime


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def run_summary(folder: Path) -> dict:
    """What a training run did: tokens, steps, why it stopped, its median speed."""
    state = last_state(folder)
    return {
        "tokens": state.get("tokens"),
        "steps": state.get("step"),
        "max_steps": state.get("max_steps"),
        "stopped_by": state.get("stopped_by"),
        "tokens_per_second_median": training_speed(folder),
    }


def summarise(out: Path, arguments: dict, trained: list[str], seconds: dict, gpu: dict, copies: dict) -> dict:
    """comparison.json: what this command (or, for what it skipped, an earlier one) measured.

    `arguments`: the command's; `trained`: the families with a model; `seconds`: wall seconds of
    the runs trained now; `gpu`: the sampler's summary; `copies`: the compact copies made.
    """
    previous = read_json(out / "comparison.json") or {}
    runs = {}
    for family in trained:
        earlier = previous.get("runs", {}).get(family, {}).get("wall_seconds")
        runs[family] = run_summary(out / family) | {"wall_seconds": seconds.get(family, earlier)}
    likelihoods = {
        name: (read_json(out / "eval" / f"{name}.json") or {}).get("likelihood")
        for name in [*trained, "ngram-budget", "ngram-full", *(f"{f}-compact" for f in copies)]
    }
    return {
        "arguments": arguments,
        "mode": "parallel" if arguments["parallel"] else "sequential",
        "gpu": gpu if seconds else previous.get("gpu", {}),
        "judge": (read_json(out / "judge" / "classifier_results.json") or {}).get("test"),
        "runs": runs,
        "bundled": copies,
        "likelihood": likelihoods,
    }


def summary_lines(summary: dict) -> list[str]:
    """A line per training run, per compact copy and for the GPU, from comparison.json's summary."""
    lines = []
    for family, run in summary["runs"].items():
        wall, speed, stopped = run["wall_seconds"], run["tokens_per_second_median"], run["stopped_by"]
        lines.append(
            f"{family}: {run['tokens'] or 0:,} tokens"
            + (f" in {wall:.0f} s" if wall else "")
            + (f", {speed:,.0f} tokens/s" if speed else "")
            + (f", stopped by {stopped}" if stopped else "")
        )
    for family, copy in summary["bundled"].items():
        cost = copy.get("bits_per_token_cost")
        lines.append(
            f"{family}: compact copy {copy['folder']}, {copy['bytes_before'] / 1e6:.1f} -> "
            f"{copy['bytes_after'] / 1e6:.1f} MB of weights, "
            + (f"{cost:+.4f} bits/token" if cost is not None else "cost not measured")
        )
    gpu = summary["gpu"]
    if "utilisation_percent_mean" in gpu:
        lines.append(
            f"GPU: {gpu['utilisation_percent_mean']:.0f} % busy on average, {gpu['memory_gib_max']:.1f} GiB at most"
        )
    return lines


def note_compact_cost(copy: Path, source: str, full: dict | None, compact: dict | None) -> dict:
    """`{"bits_per_token_cost": ...}` of a compact copy, also written into its model card, from the
    likelihoods of the full model and the copy on the same test pieces (empty while one is missing)."""
    if not (full and compact):
        return {}
    before, after = full["likelihood"]["bits_per_token"], compact["likelihood"]["bits_per_token"]
    with open(copy / "README.md", "a") as card:
        card.write(CARD_NOTE.format(source=source, before=before, after=after))
    return {"bits_per_token_cost": after - before}
