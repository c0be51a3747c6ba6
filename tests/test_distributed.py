"""scripts/train.py under the shipped accelerate configs with two CPU processes (gloo): data
parallelism (DDP) and fully sharded data parallelism (FSDP2) for every family, sharded
checkpoints that resume exactly after SIGKILL, pre-emption by SIGTERM, and DataLoader
workers that never outlive their main process."""

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import QUIET, ROOT, eval_metrics, train, train_losses
from evaluation.likelihood import evaluate
from modeling.training import build_accelerator, resolve_checkpoint
from tokenization import BlockCollator, MusicTokenizer, evaluation_blocks, open_pieces

LAUNCH = (sys.executable, "-m", "accelerate.commands.launch", "--config_file")
LAUNCHERS = {
    "ddp": (*LAUNCH, "accelerate_configs/cpu_2proc.yaml"),
    # The shipped 8-GPU bf16 config, narrowed to this machine as a user would on the command line.
    "fsdp": (*LAUNCH, "accelerate_configs/fsdp.yaml", "--num_processes", "2", "--mixed_precision", "no"),
}
STRATEGY = re.compile(r"rank (\d): (.+); holds ([\d,]+) of ([\d,]+) parameters")
EVAL_FILES = 4
# Every run of a family and strategy: 12 steps, a sharded checkpoint every 4, evaluated at the end.
RUN = ["--max_steps", "12", "--save_steps", "4", "--eval_steps", "0", "--block_size", "64"]
RUN += ["--per_device_train_batch_size", "2", "--num_workers", "1", "--eval_max_files", str(EVAL_FILES)]
RUN += ["--identification_min_files", "100000", "--warmup_steps", "2"]  # identification is test_train's

straight_runs: dict[tuple[str, str], tuple[Path, str]] = {}


def arguments(family: str, output_dir: Path) -> list[str]:
    return [f"scripts/configs/{family}-tiny.yaml", *RUN, "--output_dir", str(output_dir)]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """`straight(family, strategy)`: (output_dir, log) of an uninterrupted run, made once."""

    def run(family: str, strategy: str) -> tuple[Path, str]:
        if (family, strategy) not in straight_runs:
            output_dir = tmp_path_factory.mktemp(f"{family}-{strategy}")
            result = train(*arguments(family, output_dir), launcher=LAUNCHERS[strategy])
            straight_runs[family, strategy] = output_dir, result.stderr
        return straight_runs[family, strategy]

    return run


def start(family: str, strategy: str, output_dir: Path, log: Path) -> subprocess.Popen:
    """A run in its own process group (launcher, both ranks and their workers), as a job scheduler starts it."""
    command = [*LAUNCHERS[strategy], "scripts/train.py", *arguments(family, output_dir), *QUIET]
    with open(log, "w") as output:
        return subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=output, start_new_session=True)


def wait_for(condition, process: subprocess.Popen, log: Path, what: str) -> None:
    deadline = time.monotonic() + 600
    while not condition():
        assert process.poll() is None, f"the run ended before {what}: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} after 10 minutes"
        time.sleep(0.02)


def validation_loss(model: torch.nn.Module, tokenizer: MusicTokenizer) -> float:
    """The loss train.py's final evaluation measures, on one process."""
    pieces = open_pieces(["bundled"], "validation", tokenizer, repeat=False)
    blocks, notes, _ = evaluation_blocks(pieces, tokenizer, 64, max_files=EVAL_FILES)
    return evaluate(model, BlockCollator(tokenizer.pad_token_id).batches(blocks, 8), None, notes)["loss"]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
@pytest.mark.parametrize("family", ["transformer", "mamba", "xlstm"])
def test_every_family_trains_under_ddp_and_fsdp(family, strategy, straight):
    output_dir, log = straight(family, strategy)
    ranks = {
        int(rank): (how, int(held.replace(",", "")), int(total.replace(",", "")))
        for rank, how, held, total in STRATEGY.findall(log)
    }
    assert sorted(ranks) == [0, 1], log[-3000:]
    total = ranks[0][2]
    if strategy == "ddp":
        assert all(how == "MULTI_CPU" and held == total for how, held, _ in ranks.values())
    else:  # each rank holds its own half of the parameters
        assert ranks[0][1] + ranks[1][1] == total and 0.4 * total < ranks[0][1] < 0.6 * total
        checkpoint = output_dir / "checkpoint-12" / "pytorch_model_fsdp_0"
        assert sorted(p.name for p in checkpoint.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    losses = train_losses(output_dir)
    assert sorted(losses) == list(range(1, 13)) and losses[12] < losses[1]
    # The export gathers one safetensors file that computes what the trained (sharded) model computed.
    model = AutoModelForCausalLM.from_pretrained(output_dir)
    assert sum(p.numel() for p in model.parameters()) == total
    if family != "transformer":  # with its code, as Hub remote code
        assert (output_dir / f"modeling_music_{family}.py").is_file() and not list(output_dir.glob("_fsdp*"))
        assert model.config.auto_map["AutoModelForCausalLM"] == f"modeling_music_{family}.{type(model).__name__}"
    if strategy == "fsdp":  # sharded block by block, as the model's `_no_split_modules` says, and at the root
        blocks = Counter(type(m).__name__ for m in model.modules() if type(m).__name__ in model._no_split_modules)
        assert blocks and all(f"{count} {name}" in ranks[0][0] for name, count in blocks.items())
        assert ranks[0][0].startswith(f"FSDP2 over 1 {type(model).__name__}")
    final = eval_metrics(output_dir)[-1]
    assert validation_loss(model, MusicTokenizer.from_pretrained(output_dir)) == pytest.approx(
        final["eval/loss"], rel=1e-5
    )


@pytest.mark.parametrize("family", ["transformer", "mamba", "xlstm"])
def test_a_sharded_checkpoint_resumes_exactly_after_sigkill(family, straight, tmp_path):
    """Kill an FSDP run (launcher, ranks, workers) after its step-4 checkpoint; resumed with two
    processes again, it logs the losses and evaluation of the run that was never killed: model,
    optimizer, scheduler, random states and each rank's data position (its worker's too)."""
    reference, _ = straight(family, "fsdp")
    killed, log = tmp_path / "killed", tmp_path / "killed.log"
    process = start(family, "fsdp", killed, log)
    wait_for(lambda: (killed / "checkpoint-4").is_dir(), process, log, "a step-4 checkpoint")
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert resolve_checkpoint(killed, "latest").name in ("checkpoint-4", "checkpoint-8")

    result = train(*arguments(family, killed), "--resume_from_checkpoint", "latest", launcher=LAUNCHERS["fsdp"])
    assert "resumed from" in result.stderr and "FSDP2 over" in result.stderr
    # Threaded reductions on a CPU make two identical runs differ by about 1e-7.
    assert train_losses(killed) == pytest.approx(train_losses(reference), rel=1e-6, abs=0)
    assert eval_metrics(killed)[-1]["eval/loss"] == pytest.approx(eval_metrics(reference)[-1]["eval/loss"], rel=1e-6)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_sigterm_checkpoints_exports_and_resumes_to_the_same_losses(strategy, straight, tmp_path):
    """A pre-empted job (SIGTERM to its process group: the launcher, both ranks and their
    DataLoader workers, as a scheduler sends it) finishes its step, writes a checkpoint and the
    export, and exits with a failure; resumed, it logs the losses of a run never stopped."""
    reference, _ = straight("transformer", strategy)
    stopped, log = tmp_path / "stopped", tmp_path / "stopped.log"
    process = start("transformer", strategy, stopped, log)
    wait_for(lambda: (stopped / "metrics.jsonl").is_file() and train_losses(stopped), process, log, "a first step")
    os.killpg(process.pid, signal.SIGTERM)
    assert process.wait(timeout=300) != 0, log.read_text()[-3000:]
    text = log.read_text()
    step = int(resolve_checkpoint(stopped, "latest").name.removeprefix("checkpoint-"))
    assert 1 <= step < 12 and f"stopped by SIGTERM after step {step} of 12" in text, text[-3000:]
    assert eval_metrics(stopped) == []  # a pre-empted job has seconds left: no evaluation
    assert f"| stopped by | SIGTERM at step {step} of 12 |" in (stopped / "README.md").read_text()
    assert AutoModelForCausalLM.from_pretrained(stopped).config.n_layer == 2

    result = train(
        *arguments("transformer", stopped), "--resume_from_checkpoint", "latest", launcher=LAUNCHERS[strategy]
    )
    assert f"resumed from {stopped / f'checkpoint-{step}'}" in result.stderr
    assert train_losses(stopped) == pytest.approx(train_losses(reference), rel=1e-6, abs=0)
    assert "| stopped by |" not in (stopped / "README.md").read_text()


def test_dataloader_workers_end_when_their_main_process_is_killed(tmp_path):
    """SIGKILL to the training process alone (not its group): its DataLoader workers go too."""
    log = tmp_path / "run.log"
    command = [sys.executable, "scripts/train.py", *arguments("transformer", tmp_path / "run"), *QUIET]
    command += ["--max_steps", "100000", "--num_workers", "2"]
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=output, start_new_session=True)
    try:
        wait_for(lambda: (tmp_path / "run" / "metrics.jsonl").is_file(), process, log, "a first step")
        workers = psutil.Process(process.pid).children(recursive=True)
        assert len(workers) == 2
        process.kill()
        process.wait()
        gone, alive = psutil.wait_procs(workers, timeout=20)
        assert not alive, f"workers {[p.pid for p in alive]} outlived their main process"
    finally:
        with contextlib.suppress(ProcessLookupError):  # nothing left of the run: the test passed
            os.killpg(process.pid, signal.SIGKILL)


def test_a_run_that_asks_for_fsdp_gets_it_or_stops(monkeypatch, tmp_path):
    """Without a process group nothing can be sharded: the FSDP request stops the run instead of
    falling back (accelerate launch with one process gets FSDP over one rank, as on one GPU)."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match=r"this run is NO with 1 process\(es\) and cannot shard: start it with"):
        build_accelerator(cpu=True)
    command = [sys.executable, "scripts/train.py", *arguments("transformer", tmp_path), *QUIET]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)  # the environment set above
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: FSDP was asked for (ACCELERATE_USE_FSDP)")
