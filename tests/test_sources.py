import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from tokenization import list_midi_files, load_source, mix_sources, split_of
from tokenization.sources import BUNDLED, resolve


def test_bundled_corpus_labels_and_splits():
    files = list_midi_files("bundled")
    composers = Counter(f.composer for f in files)
    assert len(composers) >= 10
    assert composers["handel"] == 6 and composers["mendelssohn"] == 6  # aliases merged
    assert {"rimsky-korsakov", "saint-saens", "Unknown"} <= set(composers)
    splits = Counter(split_of(f.path) for f in files)
    assert splits["validation"] > 0 and splits["test"] > 0 and splits["train"] > splits["validation"]
    assert sum(p.stat().st_size for p in BUNDLED["bundled"].rglob("*")) < 10_000_000


def test_rows_are_midi_composer_path_and_no_other_condition():
    rows = list(load_source("bundled", split="validation"))
    assert rows and all(set(row) == {"midi", "composer", "path", "conditions"} for row in rows)
    assert all(row["conditions"] == "" for row in rows)
    assert all(row["midi"][:4] == b"MThd" and row["path"].startswith("data/") for row in rows)
    assert {row["path"] for row in rows} == {
        f.path for f in list_midi_files("bundled") if split_of(f.path) == "validation"
    }


def test_split_is_a_stable_partition():
    paths = [f"data/piece_{i}.mid" for i in range(4000)]
    first = [split_of(p) for p in paths]
    assert first == [split_of(p) for p in paths]
    shares = Counter(first)
    assert 0.87 < shares["train"] / 4000 < 0.93 and 0.03 < shares["validation"] / 4000 < 0.07


@pytest.fixture
def lakh_folder(tmp_path) -> Path:
    """A Lakh MIDI Clean tree: surname-first and quoted names, `.N` versions."""
    root = tmp_path / "lakh" / "clean_midi"
    for src in BUNDLED["bundled:lakh"].rglob("*.mid"):
        (root / src.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / src.parent.name / src.name)
    (root / "Jackson Michael").mkdir()
    shutil.copy(next(root.glob("Bruno/*.mid")), root / "Jackson Michael" / "Beat It.mid")
    shutil.copy(next(root.glob("Bruno/*.mid")), root / "Jackson Michael" / "Beat It.2.mid")
    return tmp_path / "lakh"


def test_lakh_layout_artists_and_versions(lakh_folder):
    files = list_midi_files(str(lakh_folder))
    assert {f.composer for f in files} == {"bruno", "christina_aguilera", "the_beatles", "jackson_michael"}
    assert [f.path for f in files if f.composer == "jackson_michael"] == ["Jackson Michael/Beat It.mid"]
    with_versions = list_midi_files(str(lakh_folder), include_versions=True)
    assert len(with_versions) == len(files) + 3  # Beat It.2, Hound Dog.4, Don't Cry ... .1
    assert {f.composer for f in with_versions} >= {"julie_covington", "elvis_presley"}


def test_any_folder_and_forced_layout(lakh_folder):
    files = list_midi_files(f"folder:{lakh_folder}")
    assert len(files) == 7 and {f.composer for f in files} == {"Unknown"}


def test_hub_ids_become_hf_urls():
    assert resolve("drengskapur/midi-classical-music") == ("hf://datasets/drengskapur/midi-classical-music", None)
    assert resolve("lakh:hf://datasets/someone/lakh-clean") == ("hf://datasets/someone/lakh-clean", "lakh")


def test_bad_sources_say_what_is_valid(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="no MIDI source .*: no such folder here; give a local folder, hf://datasets"
    ):
        load_source(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no MIDI files in"):
        load_source(str(tmp_path))
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load_source("bundled", split="dev")


def test_hub_layout_copy_of_the_classical_dataset(shared_data):
    """The real dataset in its Hub layout, read by the same code as hf://datasets/... ."""
    files = list_midi_files(str(shared_data / "midi-classical-music"))
    assert len(files) == 4489
    composers = Counter(f.composer for f in files)
    assert composers["handel"] == 193 and composers["mendelssohn"] == 61
    assert composers["rimsky-korsakov"] == 4 and composers["coleridge-taylor"] == 3 and composers["saint-saens"] == 8
    assert "haendel" not in composers and "rimsky" not in composers
    splits = Counter(split_of(f.path) for f in files)
    assert 0.03 < splits["validation"] / len(files) < 0.07


def test_real_lakh_sample(shared_data):
    files = list_midi_files(str(shared_data / "lakh-clean-sample"))
    assert files and not any(re.search(r"\.\d+$", Path(f.path).stem) for f in files)
    assert "jackson_michael" in {
        f.composer for f in list_midi_files(str(shared_data / "lakh-clean-sample"), include_versions=True)
    }


def test_the_data_folder_of_the_classical_layout_keeps_labels_and_splits():
    files = list_midi_files(str(BUNDLED["bundled"] / "data"))
    assert files == list_midi_files("bundled")


def test_a_sample_spans_the_splits():
    sample = list_midi_files("bundled", max_files=30)
    assert len(sample) == 30 and len({split_of(f.path) for f in sample}) == 3


def test_mixed_sources_draw_from_each_until_all_are_read():
    rows = [row["path"] for row in mix_sources(["bundled", "bundled:lakh"], "train", [1, 1], seed=0)]
    classical = {f.path for f in list_midi_files("bundled", "train")}
    lakh = {f.path for f in list_midi_files("bundled:lakh", "train")}
    assert set(rows) == classical | lakh  # every file of both, the smaller source repeated meanwhile
    assert sum(path in lakh for path in rows) > len(lakh)
    once = [row["path"] for row in mix_sources(["bundled", "bundled:lakh"], "train", repeat=False)]
    assert sorted(once) == sorted(classical | lakh)  # evaluation: every file exactly once
    assert any(path in lakh for path in once[:4])  # drawn from both sources from the start
    assert [row["path"] for row in mix_sources(["bundled"], "test")] == [
        f.path for f in list_midi_files("bundled", "test")
    ]
    with pytest.raises(ValueError, match="2 source weights for 1 sources"):
        mix_sources(["bundled"], "train", [1, 2])
