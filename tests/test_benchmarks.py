"""The speed benchmarks run end to end on tiny settings (their figures are recorded, not asserted):
the package in this process, and the data benchmark through the command that writes the JSON."""

import json
import subprocess
import sys

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


def test_the_pipeline_benchmark_counts_window_prefills_and_times_real_time(tmp_path):
    args = pipeline.Arguments(
        json=str(tmp_path / "pipeline.json"), preset="tiny", rows=2, lengths=[8, 300], guidance_scales=[1, 2],
        realtime_tokens=64, repeats=1,
    )  # fmt: skip
    report = pipeline.run(args)
    rows = report["results"]
    assert len(rows) == 16 and all(r["ms_per_step"] > 0 and r["bare_ms_per_step"] > 0 for r in rows)
    # only GPT-2 (tiny: 256 positions) slides its window, once past 256 tokens, with either cache
    assert {(r["model"], r["cache"], r["length"]): r["window_prefills"] for r in rows if r["guidance_scale"] == 1} == {
        ("transformer_tiny", "preallocated", 8): 0, ("transformer_tiny", "preallocated", 300): 1,
        ("transformer_tiny", "static", 8): 0, ("transformer_tiny", "static", 300): 1,
        ("mamba_tiny", "own", 8): 0, ("mamba_tiny", "own", 300): 0,
        ("xlstm_tiny", "own", 8): 0, ("xlstm_tiny", "own", 300): 0,
    }  # fmt: skip
    # every bundled model at batch 1: the first note comes before the end, music comes out
    [bundled] = report["realtime"]
    assert bundled["model"] == "gpt2-small-classical" and 0 < bundled["first_note_s"] < bundled["seconds"]
    assert bundled["realtime_factor"] == bundled["music_seconds"] / bundled["seconds"] > 0


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
