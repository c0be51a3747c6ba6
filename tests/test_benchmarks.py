"""The speed benchmarks run end to end on tiny settings (their figures are recorded, not asserted):
the package in this process, and the data benchmark through the command that writes the JSON."""

import json
import subprocess
import sys

import pytest

from benchmarks import models, pipeline
from conftest import ROOT


def test_the_models_benchmark_times_every_family_and_sLSTM_backend(tmp_path):
    args = models.Arguments(
        json=str(tmp_path / "models.json"), preset="tiny", references=False, train_lengths=[32], contexts=[16, 64],
        new_tokens=2, block_lengths=[24], train_batch=2,
    )  # fmt: skip
    output = models.run(args)
    results = output["results"]
    names = ["transformer_tiny", "mamba_tiny", "xlstm_tiny sLSTM vanilla", "xlstm_tiny sLSTM native"]
    assert [r["model"] for r in results] == names  # flashrnn: CUDA only
    assert all(r["training"][0]["batch"] == 2 for r in results)
    assert [(b["block"], b["length"]) for b in output["blocks"]] == [
        ("mLSTM", 24), ("sLSTM vanilla", 24), ("sLSTM native", 24)
    ]  # fmt: skip
    assert all(b["ms"] > 0 for b in output["blocks"])
    recurrent = [r for r in results if r["model"] != "transformer_tiny"]
    assert all(r["generation"][0]["cache_bytes"] == r["generation"][1]["cache_bytes"] > 0 for r in recurrent)
    assert results[0]["generation"][1]["cache_bytes"] > results[0]["generation"][0]["cache_bytes"]
    assert (tmp_path / "models.png").stat().st_size > 0


def test_the_data_benchmark_reads_the_same_pieces_from_midi_and_the_cache(tmp_path):
    data = tmp_path / "data.json"
    command = ["scripts/benchmark.py", "data", "--max_files", "4", "--workers", "0", "--repeats", "2"]
    result = subprocess.run(
        [sys.executable, *command, "--json", str(data)], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(data.read_text())
    midi, cached = report["token_block_stream"]["midi"][0], report["token_block_stream"]["cache"][0]
    assert midi["files"] == cached["files"] == report["miditok_datasetmidi"]["files"] == 4
    assert midi["tokens"] == cached["tokens"] > 0  # the same pieces, read two ways; counted in the last pass
    assert len(midi["passes"]) == len(cached["passes"]) == 2
    assert report["token_cache"]["bytes_on_disk"] > 0 and report["speedup_of_the_cache"]["0"] > 0


def test_the_pipeline_benchmark_runs_each_case_in_its_own_process_beside_a_baseline(tmp_path):
    """GPT-2 `tiny` (256 positions) with either cache, 300 new tokens, each case in a fresh process
    (about 5 s each to start: 4 cases, a folder linking to this checkout's packages standing in
    for a baseline; 25 s)."""
    baseline = tmp_path / "before"
    baseline.mkdir()
    for package in ("modeling", "tokenization"):
        (baseline / package).symlink_to(ROOT / package)
    args = pipeline.Arguments(
        json=str(tmp_path / "pipeline.json"), preset="tiny", families=["transformer"], batches=[1], lengths=[300],
        caches=["default", "static"], baseline=str(baseline), realtime_tokens=64,
    )  # fmt: skip
    report = pipeline.run(args)
    rows = report["results"]
    assert [(r["cache"], r["baseline"]) for r in rows] == [
        ("default", False), ("default", True), ("static", False), ("static", True)
    ]  # fmt: skip
    assert [r["code"] for r in rows] == [str(ROOT), str(baseline.resolve())] * 2  # each imported its own code
    for row in rows:
        assert row["tokens_per_s"] == pytest.approx(300 / row["seconds"]) and row["ms_per_step"] > 0
        assert row["user_s"] > 0 and row["system_s"] >= 0 and row["peak_mib"] >= row["start_mib"] > 0
        assert row["window_prefills"] == 1  # past 256 positions the window slides once, with either cache
    assert all(r["speedup_over_baseline"] > 0 for r in rows if not r["baseline"])
    # every bundled model at batch 1: the first note comes before the end, music comes out
    [bundled] = report["realtime"]
    assert bundled["model"] == "gpt2-small-classical" and 0 < bundled["first_note_s"] < bundled["seconds"]
    assert bundled["realtime_factor"] == bundled["music_seconds"] / bundled["seconds"] > 0
    music_per_token = bundled["music_seconds"] / bundled["new_tokens"]  # an untrained model's, at batch 1
    assert all(r["realtime_factor"] == pytest.approx(music_per_token * 1000 / r["ms_per_step"]) for r in rows)


def test_the_app_benchmark_serves_every_user_and_answers_every_bad_upload(tmp_path):
    """Three users for 10 s, 64 tokens each from the bundled model, then the bad uploads (the
    command starts in about 10 s: 26 s in all)."""
    from benchmarks import app

    args = app.Arguments(json=str(tmp_path / "app.json"), users=3, seconds=10, length=64, warmup=5)
    report = app.run(args)
    summary = report["summary"]
    assert summary["failed"] == 0 and min(summary["pieces_per_user"]) >= 1 and summary["latency_p95_s"] > 0
    assert summary["server_mib_peak"] >= summary["server_mib_after_warmup"] > 0
    answers = {name: result["answer"] for name, result in report["bad_uploads"].items()}
    assert answers["truncated"].startswith("the prompt is not a readable MIDI file")
    assert answers["twenty_thousand_notes"] == "the MIDI file to continue has 20,000 notes; the app takes 10,000"
    assert "exceeds the maximum file size" in answers["fifty_megabytes"] and "composed" not in answers.values()
