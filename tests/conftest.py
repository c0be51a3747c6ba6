import functools
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import symusic

from tokenization import MusicTokenizer, list_midi_files, load_source

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
QUIET = ["--report_to", "none", "--logging_steps", "1"]


def train(*args: str, launcher: tuple[str, ...] = (sys.executable,), **popen) -> subprocess.CompletedProcess:
    """scripts/train.py run to the end (quietly, logging every step), which must succeed."""
    command = [*launcher, "scripts/train.py", *args, *QUIET]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, **popen)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def train_losses(output_dir: Path) -> dict[int, float]:
    return {row["step"]: row["train/loss"] for row in metrics(output_dir) if "train/loss" in row}


def eval_metrics(output_dir: Path) -> list[dict]:
    return [row for row in metrics(output_dir) if "eval/loss" in row]


class Ids:
    """The tokenizer ids a config needs, without building a tokenizer."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __len__(self) -> int:
        return 96


@functools.cache
def load_script(name: str):
    """`scripts/<name>.py` as a module, loaded once (scripts are not a package; as when a script
    runs, the modules beside it import, e.g. `command_line`)."""
    if str(ROOT / "scripts") not in sys.path:
        sys.path.append(str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / "scripts" / f"{name}.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look it up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session", autouse=True)
def token_cache_dir(tmp_path_factory) -> Iterator[Path]:
    """Where the session's token caches go (scripts run in subprocesses inherit it): never the user's."""
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("token-cache")
        patch.setenv("MIDI_LM_CACHE", str(folder))
        yield folder


@pytest.fixture
def clone(tmp_path) -> Path:
    """A fresh folder laid out like a clone: the project's code and data, and the virtual
    environment `make` installs, linked in; what a command writes there leaves the checkout alone."""
    for name in ("modeling", "tokenization", "evaluation", "model_cards", "scripts", "accelerate_configs"):
        (tmp_path / name).symlink_to(ROOT / name)
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parents[1])
    return tmp_path


@pytest.fixture(scope="session")
def soundfont() -> Path:
    """A small General MIDI soundfont: the one pretty-midi ships (a test dependency), found without importing it."""
    return Path(importlib.util.find_spec("pretty_midi").origin).parent / "TimGM6mb.sf2"


@pytest.fixture(scope="session")
def tokenizer() -> MusicTokenizer:
    return MusicTokenizer(composers={f.composer for f in list_midi_files("bundled")})


@pytest.fixture(scope="session")
def bpe_tokenizer() -> MusicTokenizer:
    tokenizer = MusicTokenizer(composers={f.composer for f in list_midi_files("bundled")})
    tokenizer.train_bpe(800, (row["midi"] for row in load_source("bundled", split="train")))
    return tokenizer


@pytest.fixture(scope="session")
def good_midis() -> list[bytes]:
    """Real pieces from the bundled corpus, as bytes (the smallest few, to stay fast)."""
    files = sorted(list_midi_files("bundled"), key=lambda f: os.path.getsize(f.url))
    return [Path(f.url).read_bytes() for f in files[:6]]


@pytest.fixture(scope="session")
def bad_midis(good_midis) -> dict[str, bytes]:
    """One file for each way a MIDI file can be unusable."""
    silent = symusic.Score(480)
    silent.tracks.append(symusic.Track("empty track"))
    return {
        "empty": b"",
        "random": os.urandom(3000),
        "truncated": good_midis[0][: len(good_midis[0]) // 2],
        "no notes": silent.dumps_midi(),
    }


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it exists only beside the development checkout)")
    return SHARED_DATA
