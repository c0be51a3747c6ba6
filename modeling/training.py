"""What a training script needs beyond `Accelerator`: the parallelism the launch asked for
(FSDP on CPUs too), checkpoints that resume exactly and survive a kill while they are
written, a clean stop on a signal or at a time limit, DataLoader workers that die with their
process, and the optimizer's parameter groups. (Held-out likelihood lives in `evaluation`.)

A checkpoint is `accelerator.save_state` (model, optimizer, registered objects such as the
scheduler, every rank's random state) plus one data-position file per rank (each rank
reads its own share of the files, so accelerate's main-process-only custom state cannot
hold it) and `trainer_state.json` (step, tokens, world size, and the size of every file
written before it). It is written to a hidden `.checkpoint-N.tmp` folder and renamed to
`checkpoint-N` only when every rank is done: a kill at any moment leaves the previous
checkpoint whole. A checkpoint whose files no longer have the recorded sizes (a copy cut short,
a full disk) is never resumed from: `latest` takes the newest whole one and says which it
skipped.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import multiprocessing
import os
import re
import shutil
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, parse_flag_from_env
from huggingface_hub import HfApi
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

logger = logging.getLogger(__name__)

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"
PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h): the signal a process gets when its parent dies


def build_accelerator(**kwargs) -> Accelerator:
    """An `Accelerator` that runs the strategy the launch asked for, or stops saying why not.

    accelerate turns a multi-process launch into FSDP only on accelerators (GPU, NPU, ...): on
    CPU an FSDP config silently becomes plain data parallelism (MULTI_CPU), without sharding.
    PyTorch's FSDP2 runs on CPU over gloo, so a CPU run that asked for FSDP gets accelerate's
    own plugin (read from the launch config, as accelerate reads it on GPUs) and its FSDP type;
    everything after (prepare, save_state, get_state_dict) is accelerate's.
    """
    accelerator = Accelerator(**kwargs)
    if not parse_flag_from_env("ACCELERATE_USE_FSDP"):
        return accelerator
    if accelerator.distributed_type == DistributedType.MULTI_CPU:
        plugin = FullyShardedDataParallelPlugin()
        if accelerator.mixed_precision != "no":
            plugin.set_mixed_precision(accelerator.mixed_precision)
        accelerator.state.fsdp_plugin = plugin
        # Both: a later AcceleratorState() copies the type back from PartialState.
        accelerator.state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    if accelerator.distributed_type != DistributedType.FSDP:
        raise ValueError(
            f"FSDP was asked for (ACCELERATE_USE_FSDP), but this run is {accelerator.distributed_type.value} "
            f"with {accelerator.num_processes} process(es) and cannot shard: start it with accelerate launch "
            "(--num_processes 2 or more splits the model), or without FSDP"
        )
    return accelerator


def describe_strategy(accelerator: Accelerator, model: torch.nn.Module) -> str:
    """Which parallelism a prepared model runs under and how many parameters this rank holds:
    the log line that shows FSDP shards (and which blocks it sharded one by one)."""
    total = held = 0
    for parameter in model.parameters():
        total += parameter.numel()
        held += parameter.to_local().numel() if isinstance(parameter, DTensor) else parameter.numel()
    strategy = accelerator.distributed_type.value
    if accelerator.distributed_type == DistributedType.FSDP:
        units = Counter(type(m).__name__.removeprefix("FSDP") for m in model.modules() if isinstance(m, FSDPModule))
        strategy = f"FSDP{accelerator.state.fsdp_plugin.fsdp_version} over " + ", ".join(
            f"{count} {name}" for name, count in units.items()
        )
    return f"rank {accelerator.process_index}: {strategy}; holds {held:,} of {total:,} parameters"


def model_kernels(model: torch.nn.Module, device_type: str) -> dict[str, str]:
    """The kernel each part of `model` runs on `device_type`: the custom families' own report
    (which scan, which sLSTM backend), GPT-2's attention implementation."""
    if hasattr(model, "kernels"):
        return model.kernels(device_type)
    return {"attention": model.config._attn_implementation}


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if CHECKPOINT.match(p.name) and (p / TRAINER_STATE).is_file()]
    return sorted(found, key=lambda p: int(CHECKPOINT.match(p.name).group(1)))


def remove_partial_checkpoints(output_dir: str | Path) -> None:
    """Delete what a run killed while saving left behind (never a complete checkpoint)."""
    for partial in Path(output_dir).glob(".checkpoint-*.tmp"):
        shutil.rmtree(partial)


def checkpoint_files(folder: Path) -> dict[str, int]:
    """Every file of a checkpoint but its `trainer_state.json`, by path inside it: bytes."""
    return {
        str(p.relative_to(folder)): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != TRAINER_STATE
    }


def checkpoint_damage(folder: Path) -> str | None:
    """What is wrong with a checkpoint's files (None: they are as written; a checkpoint made
    before sizes were recorded is taken as it is)."""
    try:
        recorded = read_trainer_state(folder).get("files", {})
    except (OSError, ValueError):
        return f"{TRAINER_STATE} cannot be read"
    found = checkpoint_files(folder)
    for name, size in recorded.items():
        if found.get(name) != size:
            now = f"{found[name]:,} bytes" if name in found else "missing"
            return f"{name} is {now}, {size:,} were written"
    return None


def resolve_checkpoint(output_dir: str | Path, name: str) -> Path | None:
    """`latest` -> the newest whole checkpoint in `output_dir`, damaged newer ones skipped with a
    line each (None if there is none yet); a path -> that checkpoint, which must be whole."""
    if name == "latest":
        found = list_checkpoints(output_dir)
        for checkpoint in reversed(found):
            damage = checkpoint_damage(checkpoint)
            if damage is None:
                return checkpoint
            logger.warning("skipped %s: %s", checkpoint, damage)
        if found:
            raise ValueError(f"every checkpoint in {output_dir} is damaged: move them away to start again")
        return None
    path = Path(name)
    if not (path / TRAINER_STATE).is_file():
        raise FileNotFoundError(
            f"{name!r} is not a complete checkpoint (no {TRAINER_STATE}): give a checkpoint-N folder or 'latest'"
        )
    if damage := checkpoint_damage(path):
        raise ValueError(f"the checkpoint {name} is damaged: {damage}; give another, or 'latest'")
    return path


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | Path,
    step: int,
    state: dict,
    rank_state: dict,
    keep: int | None,
    save_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write `checkpoint-<step>` (all ranks call this), then keep only the newest `keep`.

    `state` is shared (written once), `rank_state` is this rank's (its data position);
    `save_extra(folder)` writes more files (the tokenizer) from the main process.
    """
    final = Path(output_dir) / f"checkpoint-{step}"
    partial = Path(output_dir) / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)  # left by a run killed while saving
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    torch.save(rank_state, partial / f"rank_state_{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {**state, "step": step, "world_size": accelerator.num_processes}
        if save_extra is not None:
            save_extra(partial)
        state["files"] = checkpoint_files(partial)
        (partial / TRAINER_STATE).write_text(json.dumps(state, indent=2))  # last: the checkpoint is whole
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        if keep:
            for old in list_checkpoints(output_dir)[:-keep]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def push_folder(output_dir: str | Path, repo_id: str, private: bool, message: str):
    """Start uploading a run's folder to the Hub in the background, checkpoints left out; returns
    the upload's future, which the run waits for before it exits."""
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=output_dir,
        commit_message=message,
        ignore_patterns=["checkpoint-*", ".checkpoint-*"],
        run_as_future=True,
    )


def read_trainer_state(path: str | Path) -> dict:
    """The shared state a checkpoint was saved with (step, tokens, world size, ...)."""
    return json.loads((Path(path) / TRAINER_STATE).read_text())


def training_speed(output_dir: str | Path) -> float | None:
    """Median training tokens/s that a run logged in its `metrics.jsonl` (None without one)."""
    path = Path(output_dir) / "metrics.jsonl"
    if not path.is_file():
        return None
    lines = map(json.loads, path.read_text().splitlines())
    speeds = [line["train/tokens_per_second"] for line in lines if "train/tokens_per_second" in line]
    return statistics.median(speeds) if speeds else None


def load_checkpoint(accelerator: Accelerator, path: str | Path) -> tuple[dict, dict]:
    """Restore what `save_checkpoint` wrote; return (shared state, this rank's state)."""
    path = Path(path)
    state = read_trainer_state(path)
    state.pop("files", None)  # what this checkpoint holds, not the run's state
    if state["world_size"] != accelerator.num_processes:
        raise ValueError(
            f"{path} was written by {state['world_size']} processes and this run has {accelerator.num_processes}: "
            "each process resumes its own share of the data, so launch the same number of processes"
        )
    accelerator.load_state(str(path))
    rank_state = torch.load(path / f"rank_state_{accelerator.process_index}.pt", weights_only=True)
    return state, rank_state


class StopRequest:
    """Whether a run should end before its last step: on SIGTERM (how clusters pre-empt a job and
    how `timeout` ends one), on SIGINT (Ctrl-C), or at a time limit.

    A signal only sets a flag, so the step in flight finishes and the caller can checkpoint and
    export. A second SIGTERM changes nothing (a launcher such as torchrun forwards the one its
    process group received, so workers get it twice); a second Ctrl-C interrupts at once, as
    without the handler. Every process must stop at the same step, since they meet in
    collectives: with several processes `cause()` agrees through one all-reduce (the strongest
    cause wins: a signal over the time limit). DataLoader workers must outlive the signal too:
    start them with `prepare_worker`.
    """

    TIME_LIMIT = 1  # below every signal number

    def __init__(self, accelerator: Accelerator, seconds: float | None, started: float) -> None:
        self.accelerator = accelerator
        self.deadline = started + seconds if seconds else None
        self.signal = 0
        self.previous = {number: signal.signal(number, self._received) for number in (signal.SIGTERM, signal.SIGINT)}

    def _received(self, number: int, frame) -> None:
        self.signal = max(self.signal, number)
        if number == signal.SIGINT:
            signal.signal(number, signal.default_int_handler)

    def cause(self) -> int:
        """0 (go on), `TIME_LIMIT`, or the number of the signal received, agreed by all processes."""
        cause = self.signal or (self.TIME_LIMIT if self.deadline and time.monotonic() >= self.deadline else 0)
        if self.accelerator.num_processes > 1:
            cause = int(self.accelerator.reduce(torch.tensor(cause, device=self.accelerator.device), "max").item())
        return cause

    def close(self) -> None:
        """Give the signals back to the handlers they had before."""
        for number, handler in self.previous.items():
            signal.signal(number, handler)

    @classmethod
    def describe(cls, cause: int) -> str:
        return "the time limit" if cause == cls.TIME_LIMIT else signal.Signals(cause).name


def prepare_worker(worker_id: int) -> None:
    """A DataLoader worker's `worker_init_fn`: outlive stop signals, never the main process.

    torch's workers die on a SIGTERM that their parent did not send and on Ctrl-C, and both
    reach every process of a job (a scheduler signals the process group; a terminal does the
    same): the main process would then lose its worker in the middle of the step that
    `StopRequest` lets finish. So the worker ignores both; the main process ends it when done.

    The other way round, a worker must not outlive a main process that dies without ending it
    (SIGKILL, the out-of-memory killer): torch's own check of the parent misses it (a worker was
    seen running on, holding its memory, after its main process was killed). On Linux the
    kernel kills the worker when its parent dies (`PR_SET_PDEATHSIG`); elsewhere torch's check
    is all there is.
    """
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, signal.SIG_IGN)
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        parent = multiprocessing.parent_process()
        if parent is not None and os.getppid() != parent.pid:  # it died before the line above
            os._exit(1)


def weight_decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Optimizer parameter groups of every trainer: weight decay on matrices only, not on norms,
    biases or per-channel vectors (decaying those only pulls scales and offsets towards 0)."""
    trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]  # LoRA freezes the rest
    decay = [p for name, p in trained if p.ndim >= 2 and "norm" not in name.lower()]
    chosen = {id(p) for p in decay}
    rest = [p for _, p in trained if id(p) not in chosen]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def parameter_digest(model: torch.nn.Module) -> str:
    """A short hash of every parameter's bytes: equal on all ranks when gradients are synchronised."""
    digest = hashlib.sha1()
    for name, parameter in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(parameter.detach().cpu().float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]
