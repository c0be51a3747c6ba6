"""The token cache: pieces tokenized once and memory-mapped, keyed by the tokenizer, rebuilt
when the source changes, usable as a source of its own, with twins kept in one split."""

import itertools
import json
import shutil
import threading

import pytest
import symusic
from datasets import load_from_disk
from filelock import FileLock

from conftest import load_script
from tokenization import (
    TokenBlockStream,
    TokenCache,
    list_midi_files,
    load_score,
    load_source,
    open_pieces,
    split_of,
    tokenizer_for,
)
from tokenization.cache import DamagedTokenCache, file_sizes, source_key

BROKEN = "data/german-overture_to_princess_of_kensington.mid"  # the bundled corpus's one unreadable file


@pytest.fixture(scope="module")
def cache(tokenizer, tmp_path_factory) -> TokenCache:
    return TokenCache.for_source("bundled", tokenizer, tmp_path_factory.mktemp("cache"), num_proc=2)


def test_cached_pieces_are_what_tokenizing_gives(cache, tokenizer):
    rows = list(cache.pieces())
    midi = [row for row in load_source("bundled") if row["path"] != BROKEN]
    assert [row["path"] for row in rows] == [row["path"] for row in midi]
    for row, source in zip(rows, midi, strict=True):
        assert row["ids"] == tokenizer.encode(source["midi"], source["composer"])
        assert row["notes"] == load_score(source["midi"]).note_num() and row["composer"] == source["composer"]
    assert cache.dataset.features["ids"].feature.dtype == "uint16"  # compact: 2 bytes a token
    assert cache.info["skipped"] == {"unreadable": 1}  # the bundled corpus holds one broken file
    assert cache.info["pieces"] == len(list_midi_files("bundled")) - 1


def test_the_cached_stream_gives_the_blocks_of_the_midi_stream(cache, tokenizer):
    def blocks(source):
        return list(itertools.islice(TokenBlockStream(source, tokenizer, 256), 200))

    assert blocks(cache.pieces("train")) == blocks(load_source("bundled", "train"))


def test_a_second_call_reads_the_cache_and_another_tokenizer_gets_its_own(
    cache, tokenizer, bpe_tokenizer, monkeypatch
):
    def no_build(*args, **kwargs):
        raise AssertionError("the cache was built again")

    with monkeypatch.context() as patch:
        patch.setattr(TokenCache, "build", no_build)
        again = TokenCache.for_source("bundled", tokenizer, cache.folder.parents[1])
    assert again.folder == cache.folder
    other = TokenCache.for_source("bundled", bpe_tokenizer, cache.folder.parents[1])
    assert other.folder != cache.folder and other.folder.parent == cache.folder.parent
    assert next(iter(other.pieces("test")))["ids"] != next(iter(cache.pieces("test")))["ids"]


def test_a_cache_folder_is_a_source_and_refuses_another_tokenizer(cache, tokenizer, bpe_tokenizer):
    with pytest.raises(ValueError, match="was built with another tokenizer .*use the tokenizer saved in that folder"):
        open_pieces([str(cache.folder)], "train", bpe_tokenizer)
    own = tokenizer_for(None, [str(cache.folder)])  # the tokenizer saved with the cache
    assert own.fingerprint() == tokenizer.fingerprint()
    assert len(list(open_pieces([str(cache.folder)], "train", own))) == cache.info["splits"]["train"]
    with pytest.raises(ValueError, match="is a token cache"):
        open_pieces([str(cache.folder)], "train", own, cached=False)


def test_a_changed_source_is_tokenized_again(tokenizer, tmp_path):
    source = tmp_path / "source" / "data"
    files = [f for f in list_midi_files("bundled") if f.composer == "bach"]
    source.mkdir(parents=True)
    for f in files[:2]:
        shutil.copy(f.url, source / f.path.removeprefix("data/"))
    first = TokenCache.for_source(str(source.parent), tokenizer, tmp_path / "caches")
    shutil.copy(files[2].url, source / files[2].path.removeprefix("data/"))
    second = TokenCache.for_source(str(source.parent), tokenizer, tmp_path / "caches")
    assert (first.info["pieces"], second.info["pieces"]) == (2, 3) and second.folder == first.folder


def test_a_job_waits_for_the_one_building_the_cache(tokenizer, tmp_path):
    source = tmp_path / "source" / "data"
    source.mkdir(parents=True)
    for f in [f for f in list_midi_files("bundled") if f.composer == "bach"][:2]:
        shutil.copy(f.url, source / f.path.removeprefix("data/"))
    folder = tmp_path / "caches" / source_key(str(source.parent)) / tokenizer.fingerprint()
    folder.parent.mkdir(parents=True)
    built = []
    job = threading.Thread(
        target=lambda: built.append(TokenCache.for_source(str(source.parent), tokenizer, folder.parent.parent))
    )
    with FileLock(folder.with_name(folder.name + ".lock")):  # another job is building
        job.start()
        job.join(timeout=3)
        assert job.is_alive() and not folder.exists()
    job.join(timeout=120)
    assert not job.is_alive() and built[0].info["pieces"] == 2


def path_in(split: str, stem: str) -> str:
    """A classical-layout path of `stem` whose path hash falls in `split`."""
    return next(p for i in itertools.count() if split_of(p := f"data/bach-{stem}_{i}.mid") == split)


def test_twins_never_straddle_splits(tokenizer, tmp_path):
    pieces = [symusic.Score(f.url) for f in list_midi_files("bundled") if f.composer == "chopin"]
    original, held_out_only, other, another = pieces[:4]
    layout = {
        path_in("train", "original"): original,
        path_in("test", "copy"): original,  # an exact duplicate
        path_in("validation", "arranged"): original.shift_pitch(2).resample(960),  # another key and resolution
        path_in("validation", "whole"): held_out_only,
        path_in("test", "excerpt"): held_out_only.clip(0, held_out_only.end() // 2),
        path_in("train", "other"): other,
        path_in("test", "another"): another,
    }
    for path, score in layout.items():
        (tmp_path / "source" / path).parent.mkdir(parents=True, exist_ok=True)
        score.dump_midi(tmp_path / "source" / path)
    cache = TokenCache.for_source(str(tmp_path / "source"), tokenizer, tmp_path / "caches")
    split = dict(zip(cache.dataset["path"], cache.splits, strict=True))
    paths = list(layout)
    assert [split[p] for p in paths[:3]] == ["train"] * 3  # twins of a training piece train with it
    first = min(paths[3:5])
    assert split[paths[3]] == split[paths[4]] == split_of(first)  # held-out twins: the first path's split
    assert [split[p] for p in paths[5:]] == ["train", "test"]  # the rest by path hash
    twins = cache.info["twins"]
    assert twins["held_out_with_twin_in_train"] == {"validation": 1, "test": 1}
    assert twins["exact_duplicates"] == 1 and twins["pieces_with_a_twin"] == 5
    assert sorted(twins["groups"]) == sorted([sorted(paths[:3]), sorted(paths[3:5])])


@pytest.fixture(scope="module")
def lakh_cache(tokenizer, tmp_path_factory) -> TokenCache:
    """A small cache of its own (the bundled Lakh files), to damage."""
    return TokenCache.for_source("bundled:lakh", tokenizer, tmp_path_factory.mktemp("lakh-cache"), num_proc=1)


def cut(path, keep: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


@pytest.mark.parametrize("name", ["data-00000-of-00001.arrow", "state.json", "dataset_info.json", "tokenizer.json",
                                  "music_tokenizer.json", "token_cache.json"])  # fmt: skip
def test_every_file_of_a_cache_cut_short_is_found(lakh_cache, tmp_path, name):
    copy = shutil.copytree(lakh_cache.folder, tmp_path / "copy")
    assert {*lakh_cache.info["files"], "token_cache.json"} == {p.name for p in copy.iterdir()}
    cut(copy / name)
    with pytest.raises(DamagedTokenCache, match=f"^the token cache {copy} is damaged: {name}"):
        TokenCache(copy)


def test_a_damaged_cache_is_built_again_where_its_source_is(lakh_cache, tokenizer, caplog):
    cut(lakh_cache.folder / "data-00000-of-00001.arrow")
    again = TokenCache.for_source("bundled:lakh", tokenizer, lakh_cache.folder.parents[1])
    assert "is damaged: data-00000-of-00001.arrow is" in caplog.text and "building it again" in caplog.text
    assert again.folder == lakh_cache.folder and len(list(again.pieces())) == lakh_cache.info["pieces"]


def test_a_damaged_cache_given_as_a_source_stops_a_command_in_one_line(lakh_cache, tmp_path, capsys):
    copy = shutil.copytree(lakh_cache.folder, tmp_path / "copy")
    cut(copy / "data-00000-of-00001.arrow")
    with pytest.raises(SystemExit) as stopped:
        load_script("train_ngram").main(["--sources", str(copy), "--output_dir", str(tmp_path / "ngram")])
    [line] = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and f": error: the token cache {copy} is damaged: data-00000-of-00001.arrow" in line


def test_a_build_killed_midway_leaves_nothing_read_as_complete(tokenizer, tmp_path, monkeypatch):
    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as a kill while the tokenizer is written beside the pieces

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(type(tokenizer), "save_pretrained", killed)
        TokenCache.for_source("bundled:lakh", tokenizer, tmp_path)
    assert not list(tmp_path.glob("*/*/token_cache.json"))  # only the temporary folder
    built = TokenCache.for_source("bundled:lakh", tokenizer, tmp_path)
    assert built.info["pieces"] > 0 and not list(tmp_path.glob("*/*.tmp"))


def test_rebuild_builds_a_whole_and_current_cache_again(lakh_cache, tokenizer, monkeypatch):
    built = []
    monkeypatch.setattr(TokenCache, "build", classmethod(lambda cls, *args: built.append(args) or lakh_cache))
    TokenCache.for_source("bundled:lakh", tokenizer, lakh_cache.folder.parents[1])
    TokenCache.for_source("bundled:lakh", tokenizer, lakh_cache.folder.parents[1], rebuild=True)
    assert len(built) == 1


def test_a_cache_built_before_the_conditions_column_reads_as_having_none(lakh_cache, tokenizer, tmp_path):
    """As a GPU kit's copy of a cache made before other conditions existed: still a source."""
    current = TokenCache(lakh_cache.folder)  # as the tests before left it (rebuilt: the fixture's rows are stale)
    old = tmp_path / "old"
    shutil.copytree(current.folder, old, ignore=shutil.ignore_patterns("data-*", "state.json", "dataset_info.json"))
    load_from_disk(str(current.folder)).remove_columns("conditions").save_to_disk(str(tmp_path / "rows"))
    for path in (tmp_path / "rows").iterdir():
        shutil.copy(path, old / path.name)
    info = json.loads((old / "token_cache.json").read_text())
    (old / "token_cache.json").write_text(json.dumps(info | {"files": file_sizes(old)}))
    rows = list(open_pieces([str(old), "bundled:lakh"], "train", tokenizer, repeat=False))
    assert {row["conditions"] for row in rows} == {""} and len(rows) == 2 * len(current.indices("train"))
