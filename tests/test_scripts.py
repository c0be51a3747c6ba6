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
