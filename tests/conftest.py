import os
from pathlib import Path

import pytest
import symusic

from tokenization import MusicTokenizer, list_midi_files, load_source

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


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
