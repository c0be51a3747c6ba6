"""The offline GPU kit on a CPU: built for this machine's Python against a Python that has only
what the GPU machine has, installed there with no index and no Hub, run in its dry-run mode on the
bundled corpus (OUT_DIR gets every file it promises), and run again (it continues).

The kit's fixture takes about 2.5 minutes: pip resolves and fetches the kit's wheels from the
package index (its cache makes that seconds), and the run is a comparison's CPU dry run (one tiny
family, the judge, the n-grams, evaluations, a compact copy) in the kit's Python, after the
environment report (all three families), the CUDA tests (skipped here) and a tiny benchmark."""

import io
import json
import os
import platform
import signal
import subprocess
import sys
import sysconfig
import tarfile
import threading
import venv
from importlib.metadata import distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from transformers import AutoModelForCausalLM

from conftest import ROOT
from kit.build import DEFAULT_TARGET, Target, missing_packages, needed, project_requirements, read_packages
from kit.run import FIXED_FILES, MAX_FILE_BYTES, MAX_FILES, Runner, Step, collect, token_budget
from modeling import FAMILIES

CODE = ("modeling", "tokenization", "evaluation", "model_cards", "scripts", "accelerate_configs", "kit", "benchmarks",
        "tests")  # fmt: skip
STEPS = ["environment", "CUDA agreement tests", "benchmark", "comparison"]


def like_the_gpu_machine(folder: Path) -> tuple[Path, Path]:
    """A fresh Python that sees, of this environment's packages, only those the GPU machine has
    (and what they need), linked in; and its `pip freeze` lines."""
    here = Path(sysconfig.get_paths()["purelib"])
    installed = {canonicalize_name(d.metadata["Name"]): d for d in distributions(path=[str(here)])}
    chosen, todo = set(), [name for name in read_packages(DEFAULT_TARGET) if name in installed]
    while todo:
        name = todo.pop()
        if name in chosen or name not in installed:
            continue
        chosen.add(name)
        requirements = (Requirement(line) for line in installed[name].requires or [])
        todo += [
            canonicalize_name(r.name) for r in requirements if r.marker is None or r.marker.evaluate({"extra": ""})
        ]
    site = folder / "site"
    site.mkdir(parents=True)
    for name in chosen:
        for top in {Path(f).parts[0] for f in installed[name].files or [] if not str(f).startswith("..")}:
            if (here / top).exists() and not (site / top).exists():
                (site / top).symlink_to(here / top)
    venv.create(folder / "python", with_pip=False)
    purelib = sysconfig.get_path("purelib", vars={"base": str(folder / "python"), "platbase": str(folder / "python")})
    (Path(purelib) / "gpu_machine.pth").write_text(f"{site}\n")
    freeze = folder / "freeze.txt"  # with triton as a GPU machine has it (torch's CUDA build brings it), not here
    freeze.write_text("".join(f"{name}=={installed[name].version}\n" for name in sorted(chosen)) + "triton\n")
    return folder / "python" / "bin" / "python", freeze


def build(checkout: Path, freeze: Path, tokenizer: Path, *extra: str) -> subprocess.CompletedProcess:
    glibc = os.confstr("CS_GNU_LIBC_VERSION").split()[1]
    command = [sys.executable, "scripts/gpu_kit.py", "--output_dir", str(checkout / "gpu-kit"), "--sources", "bundled"]
    command += ["--tokenizer", str(tokenizer), "--target_packages", str(freeze), "--dry_run"]
    command += ["--python_version", ".".join(platform.python_version_tuple()[:2]), "--glibc", glibc]
    command += ["--arch", platform.machine(), *extra]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)


def run_kit(checkout: Path, python: Path, out: Path, minutes: str = "12") -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    command = ["bash", str(checkout / "gpu-kit" / "run.sh"), str(out), minutes]
    return subprocess.run(command, env={**env, "PYTHON": str(python)}, capture_output=True, text=True, timeout=1500)


@pytest.fixture(scope="module")
def kit(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("gpu-kit")
    python, freeze = like_the_gpu_machine(folder / "machine")
    checkout = folder / "checkout"  # the code linked in: the kit and the run's outputs land here
    checkout.mkdir()
    for name in CODE:
        (checkout / name).symlink_to(ROOT / name)
    tokenizer.save_pretrained(folder / "tokenizer")
    refused = build(checkout, freeze, folder / "tokenizer", "--max_mib", "1")
    built = build(checkout, freeze, folder / "tokenizer")
    assert built.returncode == 0, built.stderr[-3000:]
    first = run_kit(checkout, python, folder / "out")
    assert first.returncode == 0, first.stdout[-5000:] + first.stderr[-3000:]
    return {"folder": folder, "checkout": checkout, "python": python, "refused": refused, "built": built}


def test_the_kit_holds_what_the_machine_lacks_and_refuses_to_grow_past_its_limit(kit):
    refused = kit["refused"].stderr.strip().splitlines()[-1]
    assert kit["refused"].returncode == 2 and "over 1:" in refused and "give smaller sources" in refused
    described = json.loads((kit["checkout"] / "gpu-kit" / "kit.json").read_text())
    wheels = {name.split("-")[0].lower() for name in described["wheels"]}
    assert {
        "datasets",
        "miditok",
        "symusic",
        "xlstm",
        "mlstm_kernels",
        "flashrnn",
        "mamba_ssm",
        "causal_conv1d",
    } <= wheels
    assert not wheels & {"torch", "transformers", "accelerate", "numpy", "pyarrow"}  # the machine has them
    assert any(name.startswith("mamba_ssm-") and name.endswith("-py3-none-any.whl") for name in described["wheels"])
    assert described["mode"] == "dry-run" and [cache["tokens"] > 0 for cache in described["caches"]] == [True]
    assert "on the GPU machine, from the checkout's root: bash" in kit["built"].stdout


def test_the_run_leaves_every_promised_file_within_the_limits(kit):
    out = kit["folder"] / "out"
    files = {path.name: path.stat().st_size for path in out.iterdir()}
    assert set(FIXED_FILES) <= set(files) and "bundles.tar.gz.0" in files
    assert len(files) <= MAX_FILES and max(files.values()) <= MAX_FILE_BYTES
    summary = json.loads((out / "summary.json").read_text())
    assert [(step["name"], step["status"]) for step in summary["steps"]] == [(name, "done") for name in STEPS]
    with tarfile.open(out / "reports.tar.xz") as reports:
        names = set(reports.getnames())
    assert {"compare/eval/transformer.json", "compare/eval/ngram-full.json", "tests.xml"} <= names
    tests = (kit["checkout"] / "outputs" / "gpu-kit" / "tests.xml").read_text()
    assert 'failures="0"' in tests and 'errors="0"' in tests and 'skipped="0"' not in tests  # CUDA tests skip here
    assert set(json.loads((out / "comparison.json").read_text())["runs"]) == {"transformer"}  # the dry run's one
    assert {row["model"] for row in json.loads((out / "benchmark.json").read_text())["results"]} >= {
        f"{family}_tiny" for family in ("transformer", "mamba")
    }


def test_the_kit_python_installs_from_the_kit_and_reports_each_family_kernels(kit):
    environment = json.loads((kit["folder"] / "out" / "summary.json").read_text())["environment"]
    site = kit["checkout"] / "gpu-kit" / "site"
    assert environment["versions"]["datasets"] and (site / "datasets").is_dir()
    assert not any(line.startswith("gradio==") for line in environment["packages"])  # the venv stays out
    for family in FAMILIES:
        assert "error" not in environment["families"][family], environment["families"][family]
    assert environment["families"]["mamba"]["kernels"] == {"scan": "torch", "step": "torch"}
    probe = "from modeling.modeling_music_mamba import TRITON_SCAN_MISSING as m; print(m)"
    result = subprocess.run(
        [str(kit["python"]), "-c", probe],
        env={"PYTHONPATH": f"{site}:{kit['checkout']}"},
        capture_output=True,
        text=True,
    )
    # the kit's mamba_ssm imports past its missing compiled extension, up to the Triton the CPU lacks
    assert result.stdout.strip() == "triton is not installed", result.stderr[-2000:]


def test_bundles_join_into_models_that_load(kit, tmp_path):
    out = kit["folder"] / "out"
    joined = b"".join(path.read_bytes() for path in sorted(out.glob("bundles.tar.gz.*")))
    with tarfile.open(fileobj=io.BytesIO(joined)) as bundles:
        bundles.extractall(tmp_path, filter="data")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bundles"]["join"] == "cat bundles.tar.gz.* | tar -xz"
    assert summary["bundles"]["copies"] == ["transformer-tiny-classical"]
    for copy in summary["bundles"]["copies"]:
        assert AutoModelForCausalLM.from_pretrained(tmp_path / copy).num_parameters() > 0


def test_the_same_command_again_continues(kit):
    again = run_kit(kit["checkout"], kit["python"], kit["folder"] / "again")
    assert again.returncode == 0, again.stdout[-3000:]
    summary = json.loads((kit["folder"] / "again" / "summary.json").read_text())
    statuses = {step["name"]: step["status"] for step in summary["steps"]}
    assert statuses["CUDA agreement tests"] == statuses["benchmark"] == "done by an earlier run"
    assert "installing" not in again.stdout  # the wheels stay installed
    assert "evaluate-" not in again.stdout and " train.py " not in again.stdout  # the comparison has it all


def test_a_step_past_its_limit_or_a_signal_stops_it_and_the_results_are_packed(tmp_path):
    runner = Runner(tmp_path, tmp_path / "work", end=float("inf"))
    (tmp_path / "work").mkdir()
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    slow, stopped = Step("slow", lambda s: sleep, limit=1), Step("stopped", lambda s: sleep)
    runner.run(slow)
    assert slow.status.startswith("stopped at its limit of 1 s") and slow.seconds < 30
    threading.Timer(1.0, runner.stop, (signal.SIGTERM, None)).start()
    runner.run(stopped)
    assert stopped.status == f"stopped by SIGTERM (exit status -{signal.SIGTERM})"
    out = tmp_path / "out"
    out.mkdir()
    collect(out, runner.work, {"steps": []}, final=True)
    assert sorted(p.name for p in out.iterdir()) == ["reports.tar.xz", "summary.json"]


def test_the_h200_machine_gets_what_it_lacks_or_has_too_old_and_nothing_it_has():
    wheels, sources = project_requirements()
    missing = missing_packages(wheels, Target())  # pip resolves against the machine's list (the index is asked)
    assert Version(missing["transformers"]) >= Version("5.24")  # it has 5.17: too old for this project
    assert {"datasets", "miditok", "symusic", "xlstm", "flashrnn"} <= set(missing)
    assert not set(missing) & {"torch", "numpy", "pandas", "pyarrow", "triton", "scipy", "accelerate"}
    assert [Requirement(line).name for line in sources] == ["mamba-ssm", "causal-conv1d"]


def test_pruning_keeps_what_only_the_kit_provides():
    planned = [
        {"requested": True, "metadata": {"name": "Miditok", "version": "3.1", "requires_dist": ["symusic>=0.5"]}},
        {"metadata": {"name": "symusic", "version": "0.5.9", "requires_dist": ["pySmartDL", "numpy"]}},
        {"metadata": {"name": "pysmartdl", "version": "1.3.4"}},
        {"requested": True, "metadata": {"name": "pandas", "version": "3.1", "requires_dist": ["tzdata"]}},
        {"metadata": {"name": "tzdata", "version": "2026.6"}},
        {"metadata": {"name": "numpy", "version": "2.4"}},
    ]
    # the machine has pandas and numpy in versions not known: nothing only they need comes in
    assert needed(planned, trusted={"pandas", "numpy"}) == {"miditok": "3.1", "pysmartdl": "1.3.4", "symusic": "0.5.9"}


def test_the_token_budget_is_what_the_slowest_family_reaches_beside_the_others(tmp_path):
    results = [
        {"model": "transformer_small", "training": [{"tokens_per_s": 900_000.0}]},
        {"model": "mamba_small", "training": [{"tokens_per_s": 600_000.0}]},
        {"model": "xlstm_small sLSTM native", "training": [{"tokens_per_s": 150_000.0}]},
        {"model": "xlstm_small sLSTM flashrnn", "training": [{"tokens_per_s": 300_000.0}]},
        {"model": "transformers_mamba2", "training": [{"tokens_per_s": 10.0}]},  # a reference, not ours
    ]
    benchmark = tmp_path / "benchmark.json"
    benchmark.write_text(json.dumps({"results": results}))
    # xLSTM's fastest variant, shared by three families, for 100 s, less a fifth: 8M tokens, in whole batches
    assert token_budget(benchmark, "small", 100.0, 32 * 1024) == 7_995_392
    benchmark.write_text(json.dumps({"results": results[:2]}))
    assert token_budget(benchmark, "small", 100.0, 32 * 1024) is None  # not every family was timed
    assert token_budget(tmp_path / "none.json", "small", 100.0, 32 * 1024) is None
