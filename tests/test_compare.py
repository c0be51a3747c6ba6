"""scripts/compare.py's CPU dry run: the three tiny families trained on the same tokens beside a
judge trained from scratch and the n-grams, evaluated, tabled and bundled as compact copies."""

import json
import os
import re
import subprocess
import sys

import pytest
from transformers import AutoModelForCausalLM, pipeline

from conftest import ROOT, load_script
from evaluation.comparison import GpuSampler
from modeling import FAMILIES

DIGEST = re.compile(r"rank 0: .*; data digest (\w+);")
STARTED = re.compile(r"^\d\d:\d\d:\d\d ([\w-]+): \S+python", re.MULTILINE)  # a job's command line


def compare(out, tokenizer) -> subprocess.CompletedProcess:
    """The CPU dry run: tiny presets, 8 steps of 8 blocks of 256 tokens per family."""
    command = [sys.executable, "scripts/compare.py", "--sources", "bundled", "--tokenizer", str(tokenizer)]
    command += ["--preset", "tiny", "--max_train_tokens", "16384", "--per_device_train_batch_size", "8"]
    command += ["--time_limit", "300", "--warmup_steps", "2", "--eval_steps", "0", "--save_steps", "0"]
    command += ["--mixed_precision", "no", "--classifier_preset", "tiny", "--classifier_steps", "4"]
    command += ["--classifier_batch_size", "4", "--classifier_args", "--min_files 4 --window_tokens 64"]
    command += ["--num_samples", "1", "--length", "24", "--guidance_scales", "1", "2"]
    command += ["--eval_args", "--max_test_files 4 --identification_tokens 64 --batch_size 4"]
    command += ["--output_dir", str(out / "run"), "--bundle_dir", str(out / "bundle")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory, tokenizer):
    out = tmp_path_factory.mktemp("compare")
    tokenizer.save_pretrained(out / "tokenizer")
    result = compare(out, out / "tokenizer")
    return out, json.loads((out / "run" / "comparison.json").read_text()), result.stdout


def test_every_family_trains_on_the_same_tokens_in_the_same_order(dry_run):
    out, summary, _ = dry_run
    runs = summary["runs"]
    assert sorted(runs) == sorted(FAMILIES)
    assert {(run["tokens"], run["steps"], run["stopped_by"]) for run in runs.values()} == {(16384, 8, None)}
    digests = {f: DIGEST.findall((out / "run" / "logs" / f"{f}.log").read_text()) for f in FAMILIES}
    assert all(len(found) == 1 for found in digests.values()) and len({d[0] for d in digests.values()}) == 1


def test_the_judge_learns_from_scratch_and_judges_every_model_and_baseline(dry_run):
    out, summary, stdout = dry_run
    judge = json.loads((out / "run" / "judge" / "classifier_results.json").read_text())
    assert judge["arguments"]["init_from"] is None and judge["arguments"]["preset"] == "tiny"
    assert summary["judge"]["windows"] > 0
    for name in [*FAMILIES, "ngram-budget", "ngram-full"]:
        result = json.loads((out / "run" / "eval" / f"{name}.json").read_text())
        assert result["classifier"] == str(out / "run" / "judge") and result["runs"]
        assert (result["identification"] is None) == name.startswith("ngram")
        assert f"| {name} (" in (out / "run" / "comparison.md").read_text()
    assert "ms/token" in stdout  # the table is printed too


def test_compact_copies_are_bundled_with_their_measured_cost(dry_run):
    out, summary, stdout = dry_run
    for family in FAMILIES:
        copy = summary["bundled"][family]
        folder = out / "bundle" / f"{family}-tiny-classical"
        assert copy["folder"] == str(folder) and copy["bytes_after"] < copy["bytes_before"] / 2
        full = summary["likelihood"][family]["bits_per_token"]
        assert summary["likelihood"][f"{family}-compact"]["bits_per_token"] == pytest.approx(
            full + copy["bits_per_token_cost"]
        )
        assert abs(copy["bits_per_token_cost"]) < 0.01 * full
        assert f"compact copy {folder}" in stdout
        assert f"{full:.4f} bits per token before" in (folder / "README.md").read_text()
        model = AutoModelForCausalLM.from_pretrained(folder)
        assert model.config.model_type == json.loads((out / "run" / family / "config.json").read_text())["model_type"]
        [piece] = pipeline("midi-generation", model=str(folder), trust_remote_code=True)(
            "Bach", max_new_tokens=8, min_new_tokens=8
        )
        assert len(piece["tokens"]) == 10


def test_running_the_command_again_redoes_only_what_changed(dry_run):
    out, summary, _ = dry_run
    os.utime(out / "run" / "mamba" / "config.json")  # now, after its results: as a resumed run exports again
    again = compare(out, out / "tokenizer")
    assert STARTED.findall(again.stdout) == ["evaluate-mamba", "likelihood-mamba-compact"]  # nothing else
    assert json.loads((out / "run" / "comparison.json").read_text())["runs"] == summary["runs"]


BUNDLED_TOKENIZER = ["--tokenizer", "modeling/pretrained/gpt2-small-classical"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--families", "transformer", "rnn"], "unknown famil(ies) rnn: choose among transformer, mamba, xlstm"),
        (["--preset", "huge"], "unknown preset 'huge'"),
        (["--accelerate_config", "nowhere.yaml"], "accelerate config nowhere.yaml not found"),
        (["--sources", "/nowhere/midi"], "no MIDI source '/nowhere/midi': no such folder here"),
        (["--sources", "bundled:lakh"], "bundled:lakh: no test, validation split"),
        (["--time_limit", "0"], "give > 0"),
    ],
)
def test_bad_arguments_fail_at_start_with_a_clear_message(argv, message, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_info:
        load_script("compare").main([*BUNDLED_TOKENIZER, *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_without_a_tokenizer_the_families_could_read_different_tokens(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit):
        load_script("compare").main(["--sources", "bundled"])
    assert (
        "give --tokenizer (the bundled models': modeling/pretrained/gpt2-small-classical)" in capsys.readouterr().err
    )


def test_the_gpu_sampler_reports_why_it_has_no_figures_instead_of_failing():
    sampler = GpuSampler()
    sampler.start()
    sampler.finished.wait(1.5)
    summary = sampler.summary()
    assert ("utilisation_percent_mean" in summary) == ("error" not in summary)
    if "error" in summary:  # a CPU machine, or no NVML
        assert summary["error"]
