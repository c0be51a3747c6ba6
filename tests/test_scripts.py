import json
import subprocess
import sys
from pathlib import Path

from tokenization import MusicTokenizer

ROOT = Path(__file__).resolve().parents[1]


def test_build_tokenizer_prints_the_corpus_table(tmp_path):
    result = subprocess.run(
        [sys.executable, "scripts/build_tokenizer.py", "--bpe_vocab_size", "700", "--output_dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("composer"))
    assert header.split() == ["composer", "files", "notes", "tokens", "tok/note", "round", "trip"]
    rows = {
        line.split()[0]: line.split()
        for line in lines
        if line.split() and line.split()[0] in ("bach", "handel", "total")
    }
    assert rows["handel"][1] == "6" and rows["total"][1] == "61"
    assert float(rows["total"][-1].rstrip("%")) >= 99.0
    assert lines[-1] == "skipped 1 files: 1 unreadable"
    tokenizer = MusicTokenizer.from_pretrained(tmp_path)
    assert tokenizer.base_vocab_size == 700 and "rimsky-korsakov" in tokenizer.composers


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_build_tokenizer_pushes_like_train_does(tmp_path):
    result = run_script("scripts/build_tokenizer.py", "--push_to_hub", "--output_dir", str(tmp_path))
    assert result.returncode == 2 and "--push_to_hub needs --hub_model_id <user>/<name>" in result.stderr


def test_usage_lines_show_the_positional_arguments():
    assert run_script("scripts/train.py", "--help").stdout.startswith("usage: train.py [PRESET.yaml] [--key value")
    usage = run_script("scripts/evaluate.py", "--help").stdout
    assert (
        usage.startswith("usage: evaluate.py MODEL --classifier CLS") and "evaluate.py --table RESULTS.json" in usage
    )


def test_benchmarks_write_their_json(tmp_path):
    """The benchmark scripts run end to end (their figures are recorded, not asserted)."""
    models = tmp_path / "models.json"
    result = run_script(
        "scripts/benchmark.py", "models", "--preset", "tiny", "--references", "false", "--train_lengths", "32",
        "--contexts", "16", "64", "--new_tokens", "2", "--block_lengths", "24", "--train_batch", "2",
        "--json", str(models),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    output = json.loads(models.read_text())
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
    assert models.with_suffix(".png").stat().st_size > 0

    data = tmp_path / "data.json"
    result = run_script(
        "scripts/benchmark.py", "data", "--max_files", "4", "--workers", "0", "--repeats", "2", "--json", str(data)
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(data.read_text())
    midi, cached = report["token_block_stream"]["midi"][0], report["token_block_stream"]["cache"][0]
    assert midi["files"] == cached["files"] == report["miditok_datasetmidi"]["files"] == 4
    assert midi["tokens"] == cached["tokens"] > 0  # the same pieces, read two ways; counted in the last pass
    assert len(midi["passes"]) == len(cached["passes"]) == 2
    assert report["token_cache"]["bytes_on_disk"] > 0 and report["speedup_of_the_cache"]["0"] > 0

    sampling = tmp_path / "pipeline.json"
    result = run_script(
        "scripts/benchmark.py", "pipeline", "--preset", "tiny", "--rows", "2", "--lengths", "8", "300",
        "--guidance_scales", "1", "2", "--realtime_tokens", "64", "--repeats", "1", "--json", str(sampling),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(sampling.read_text())
    rows = report["results"]
    assert len(rows) == 16 and all(r["ms_per_step"] > 0 and r["bare_ms_per_step"] > 0 for r in rows)
    # only GPT-2 (tiny: 256 positions) slides its window, once past 256 tokens, with either cache
    assert {(r["model"], r["cache"], r["length"]): r["window_prefills"] for r in rows if r["guidance_scale"] == 1} == {
        ("transformer_tiny", "dynamic", 8): 0, ("transformer_tiny", "dynamic", 300): 1,
        ("transformer_tiny", "static", 8): 0, ("transformer_tiny", "static", 300): 1,
        ("mamba_tiny", "own", 8): 0, ("mamba_tiny", "own", 300): 0,
        ("xlstm_tiny", "own", 8): 0, ("xlstm_tiny", "own", 300): 0,
    }  # fmt: skip
    # every bundled model at batch 1: the first note comes before the end, music comes out
    [bundled] = report["realtime"]
    assert bundled["model"] == "gpt2-small-classical" and 0 < bundled["first_note_s"] < bundled["seconds"]
    assert bundled["realtime_factor"] == bundled["music_seconds"] / bundled["seconds"] > 0


def test_benchmark_names_its_subcommands():
    result = run_script("scripts/benchmark.py", "speed")
    assert result.returncode != 0 and "usage: benchmark.py {data|models|pipeline}" in result.stderr
