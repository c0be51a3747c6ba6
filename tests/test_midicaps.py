"""MidiCaps (Lakh with per-file metadata) through the Hub code path, on a local mirror of the Hub
layout built here from the bundled Lakh files, and the conditions it brings: genre, tempo, mode."""

import io
import json
import logging
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from transformers import pipeline

import modeling
from benchmarks.archive import member_name, metadata_row, write_mirror
from conftest import ROOT, eval_metrics, load_script, train
from modeling import catalog
from modeling.pipeline_midi_generation import MusicVocabulary
from tokenization import MusicTokenizer, TokenBlockStream, TokenCache, list_midi_files, load_source, open_pieces
from tokenization.cache import source_key
from tokenization.conditions import canonical_value, tempo_bucket
from tokenization.sources import (
    ARCHIVE_SPLITS,
    metadata_conditions,
    read_archive,
    resolve,
    split_of,
    tokenizer_for_sources,
)

# genre, test_set and the split the member's name must hash to, per bundled Lakh file
PLAN = [("rock", False, "train"), ("jazz", False, "train"), ("rock", False, "validation"), ("rock", True, None)]
PLAN += [("jazz", True, None)]


def named_for(data: bytes, split: str | None) -> str:
    """A member name of `data` whose path hash gives `split` (any for None)."""
    names = (member_name(data, copy) for copy in range(1000))
    return next(name for name in names if split is None or split_of(name, ARCHIVE_SPLITS) == split)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    """midicaps.tar.gz + train.json: five real files with made-up metadata, a member that is not
    MIDI, a MIDI member without a row, and a row without a member."""
    folder = tmp_path_factory.mktemp("midicaps")
    midis = sorted(p.read_bytes() for p in (ROOT / "tokenization/corpus/lakh-clean").rglob("*.mid"))
    members, rows = [], []
    for number, (data, (genre, test, split)) in enumerate(zip(midis, PLAN, strict=True)):
        members.append((named_for(data, split), data))
        rows.append(metadata_row(members[-1][0], number, data) | {"genre": [genre, "pop"], "test_set": test})
    members += [("lmd_full/README.txt", b"not music"), ("lmd_full/0/unlisted.mid", midis[0])]
    rows.append(metadata_row("lmd_full/f/missing.mid", 9, midis[0]) | {"genre": ["rock"], "test_set": False})
    write_mirror(folder, members, rows)
    return folder


def test_the_mirror_lists_its_metadata_rows_with_their_conditions_and_splits(mirror):
    files = list_midi_files(str(mirror))
    assert len(files) == 6 and all(f.composer == "Unknown" for f in files)
    tests = [f for f in files if f.split == "test"]
    assert sorted(json.loads(f.conditions)["genre"] for f in tests) == ["jazz", "rock"]
    assert {f.split for f in files} == {"train", "validation", "test"}
    first = json.loads(files[0].conditions)
    assert set(first) == {"genre", "tempo", "mode"} and first["mode"] in ("major", "minor")
    assert resolve("amaai-lab/MidiCaps")[0] == "hf://datasets/amaai-lab/MidiCaps"


def test_one_pass_joins_members_with_rows_and_counts_every_bad_case(mirror, caplog):
    files = list_midi_files(str(mirror))
    skipped = Counter()
    with caplog.at_level(logging.WARNING):
        read = [(f.path, len(midi)) for f, midi in read_archive(files[0].url, files, {f.path for f in files}, skipped)]
    assert len(read) == 5 and all(size > 1000 for _, size in read)
    assert skipped == Counter({"not MIDI": 1, "no metadata": 1, "not in the archive": 1})
    lines = [r.getMessage() for r in caplog.records]
    assert any("README.txt" in line and "not a MIDI file" in line for line in lines)
    assert any("unlisted.mid" in line and "no row" in line for line in lines)
    assert any("missing.mid" in line and "no such file" in line for line in lines)
    rows = list(load_source(str(mirror), split="test"))
    assert sorted(json.loads(row["conditions"])["genre"] for row in rows) == ["jazz", "rock"]


def test_a_cut_archive_gives_what_comes_before_the_cut(mirror, tmp_path, caplog):
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "train.json").write_bytes((mirror / "train.json").read_bytes())
    data = (mirror / "midicaps.tar.gz").read_bytes()
    (cut / "midicaps.tar.gz").write_bytes(data[: len(data) // 2])
    files = list_midi_files(str(cut))
    skipped = Counter()
    with caplog.at_level(logging.WARNING):
        read = list(read_archive(files[0].url, files, {f.path for f in files}, skipped))
    assert 0 < len(read) < 5 and skipped["archive cut short"] == 1
    assert skipped["not in the archive"] == 6 - len(read)
    assert any("ends early" in r.getMessage() for r in caplog.records)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as whole:  # the mirror itself is whole
        assert len(whole.getnames()) == 7
    tokenizer = tokenizer_for_sources([str(mirror)])
    cache = TokenCache.for_source(str(cut), tokenizer)
    assert cache.info["pieces"] == len(read) and cache.info["skipped"]["archive cut short"] == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        TokenCache.for_source(str(cut), tokenizer)  # a cache of a cut archive is never taken as current
    assert any("ended early: building it again" in r.getMessage() for r in caplog.records)


def test_blocks_open_with_every_condition_and_dropout_leaves_each_open_on_its_own(mirror, token_cache_dir):
    tokenizer = tokenizer_for_sources([str(mirror)])
    assert tokenizer.kinds == ["composer", "genre", "tempo", "mode"] and tokenizer.prefix_length == 5
    assert tokenizer.values("genre") == ["jazz", "rock"]
    cache = TokenCache.for_source(str(mirror), tokenizer)
    assert cache.info["pieces"] == 5 and cache.info["skipped"] == {
        "not MIDI": 1,
        "no metadata": 1,
        "not in the archive": 1,
    }
    assert not list((token_cache_dir / source_key(str(mirror))).glob("*.members"))  # unpacked files removed
    piece = next(iter(cache.pieces("test")))
    assert tokenizer.piece_conditions(piece["ids"])["genre"] in ("jazz", "rock")
    blocks = list(TokenBlockStream(cache.pieces("train"), tokenizer, 64))
    assert blocks and all(tokenizer.piece_conditions(b["input_ids"])["genre"] != "Unknown" for b in blocks)
    assert all(b["labels"][:5] == [-100] * 5 for b in blocks)
    dropped = TokenBlockStream(cache.pieces("train"), tokenizer, 64, condition_dropout=0.5, seed=1)
    heads = [tokenizer.piece_conditions(b["input_ids"]) for b in dropped]
    open_genre = [h for h in heads if h["genre"] == "Unknown"]
    assert open_genre and any(h["tempo"] != "Unknown" for h in open_genre)  # one left open, the other kept
    assert any(h["genre"] != "Unknown" and h["tempo"] == "Unknown" for h in heads)


def test_metadata_values_become_tokens_and_bad_ones_unknown():
    row = {"genre": ["pop", "jazz"], "genre_prob": [0.3, 0.6], "tempo": 132.5, "key": "F# minor"}
    assert metadata_conditions(row) == {"genre": "jazz", "tempo": "fast", "mode": "minor"}
    assert [tempo_bucket(bpm) for bpm in (79.9, 80, 119.9, 120, "96", None, "n/a", -1, float("nan"))] == [
        *("slow", "moderate", "moderate", "fast", "moderate"),
        *["Unknown"] * 4,
    ]
    assert metadata_conditions({"genre": [], "key": "atonal"}) == {
        "genre": "Unknown",
        "tempo": "Unknown",
        "mode": "Unknown",
    }
    assert canonical_value("genre", "Hip-Hop") == "hip_hop" and canonical_value("tempo", "FAST") == "fast"
    with pytest.raises(ValueError, match="unknown condition 'mood': the conditions are composer, genre, tempo, mode"):
        canonical_value("mood", "happy")


def test_conditions_save_and_reload_and_a_composer_only_tokenizer_keeps_its_fingerprint(tmp_path):
    tokenizer = MusicTokenizer(composers=["bach"])
    before = tokenizer.fingerprint()
    assert before == "2139b7338a268dda"  # as before other kinds existed: its token caches stay valid
    tokenizer.add_conditions("genre", ["Jazz", "Hip-Hop"])
    tokenizer.add_conditions("tempo", [70, "fast"])
    tokenizer.condition_pieces = {"genre": {"jazz": 3, "hip_hop": 5}}  # recorded, not part of the ids
    fingerprint = tokenizer.fingerprint()
    tokenizer.save_pretrained(tmp_path)
    loaded = MusicTokenizer.from_pretrained(tmp_path)
    assert (
        loaded.condition_token_ids == tokenizer.condition_token_ids and loaded.fingerprint() == fingerprint != before
    )
    assert loaded.condition_pieces == {"genre": {"hip_hop": 5, "jazz": 3}}
    assert loaded.values("genre") == ["hip_hop", "jazz"] and loaded.values("tempo") == ["fast", "slow"]
    vocabulary = MusicVocabulary(str(tmp_path))
    assert vocabulary.kinds == loaded.kinds == ["composer", "genre", "tempo"]
    assert vocabulary.prefix({"genre": "hip hop", "tempo": 150}) == loaded.prefix_ids(
        {"genre": "hip_hop", "tempo": 150}
    )
    with pytest.raises(ValueError, match=r"^unknown genre 'metal': this model knows hip_hop, jazz"):
        vocabulary.prefix({"genre": "metal"})
    with pytest.raises(
        ValueError, match="this model has no mode condition: it was trained with composer, genre, tempo"
    ):
        vocabulary.prefix({"mode": "minor"})


@pytest.fixture(scope="module")
def midicaps_model(mirror, tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("midicaps_model")
    train(
        *("scripts/configs/transformer-tiny.yaml", "--sources", str(mirror), "--output_dir", str(output_dir)),
        *("--max_steps", "6", "--eval_steps", "0", "--save_steps", "0", "--block_size", "128"),
        *("--identification_condition", "genre", "--identification_min_files", "1", "--identification_tokens", "32"),
    )
    return output_dir


def test_a_model_trained_on_the_mirror_generates_for_a_genre(midicaps_model):
    generator = pipeline("midi-generation", model=str(midicaps_model), pipeline_class=modeling.MidiGenerationPipeline)
    kwargs = {"max_new_tokens": 8, "seed": 0}
    [piece] = generator(genre="jazz", tempo="fast", guidance_scale=2.0, guidance_conditions="genre", **kwargs)
    vocabulary = generator.vocabulary
    assert piece["tokens"][:5] == vocabulary.prefix({"genre": "jazz", "tempo": "fast"})
    assert piece["conditions"] == {"composer": None, "genre": "jazz", "tempo": "fast"}
    with pytest.raises(ValueError, match=r"unknown genre 'metal': this model knows jazz, rock"):
        generator(genre="metal", **kwargs)
    assert generator._guided_slots("genre") == [2] and generator._guided_slots(["mode", "composer"]) == [4, 1]
    every = generator(genre="jazz", guidance_scale=2.0, guidance_conditions=vocabulary.kinds, **kwargs)
    assert every[0]["tokens"] == generator(genre="jazz", guidance_scale=2.0, **kwargs)[0]["tokens"]  # the default
    with pytest.raises(ValueError, match=r"guidance_conditions=\['mood'\]: name conditions of this model"):
        generator(guidance_scale=2.0, guidance_conditions="mood", **kwargs)


def test_generate_lists_the_conditions_and_names_a_sample_by_them(midicaps_model, tmp_path, capsys):
    generate = load_script("generate")
    generate.main(["--model", str(midicaps_model), "--list-conditions"])
    listed = capsys.readouterr().out
    assert "--genre: jazz (1), rock (1)" in listed and "--tempo: fast (1), slow (1), moderate (0)" in listed
    rows = generate.main(
        ["--model", str(midicaps_model), "--genre", "rock", "--length", "8", "--output_dir", str(tmp_path)]
    )
    assert [Path(r["file"]).parent.name for r in rows] == ["rock"]
    with pytest.raises(SystemExit):
        generate.main(["--genre", "jazz", "--length", "8", "--output_dir", str(tmp_path)])  # the bundled model
    assert "this model has no genre condition: it was trained with composer" in capsys.readouterr().err


def test_evaluation_reports_genre_identification_with_its_chance(midicaps_model, mirror, tmp_path):
    command = [sys.executable, "scripts/evaluate.py", str(midicaps_model), "--likelihood_only", "--identify", "genre"]
    command += ["--sources", str(mirror), "--json", str(tmp_path / "eval.json"), "--identification_tokens", "32"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "genre identification over 2 values: opening" in result.stdout and "chance 0.500" in result.stdout
    found = json.loads((tmp_path / "eval.json").read_text())["identification_of"]["genre"]
    assert found["kind"] == "genre" and sorted(found["opening"]["truth"]) == ["jazz", "rock"]


def test_a_genre_classifier_judges_the_windows_likelihood_identification_reads(midicaps_model, mirror, tmp_path):
    classifier = tmp_path / "genre-classifier"
    results = load_script("train_classifier").main(
        ["--sources", str(mirror), "--init_from", str(midicaps_model), "--condition", "genre", "--min_files", "1"]
        + ["--window_tokens", "32", "--max_steps", "2", "--per_device_train_batch_size", "4", "--warmup_steps", "1"]
        + ["--save_steps", "0", "--output_dir", str(classifier)]
    )
    assert set(results["test"]["per_class"]) == {"jazz", "rock"} and results["test"]["chance"]["top1"] == 0.5
    evaluate = load_script("evaluate")
    argv = [str(midicaps_model), "--likelihood_only", "--sources", str(mirror), "--identification_tokens", "32"]
    argv += ["--json", str(tmp_path / "eval.json"), "--condition_classifier", str(classifier)]
    with pytest.raises(SystemExit):
        evaluate.main(argv)  # a genre classifier without --identify genre
    found = evaluate.main([*argv, "--identify", "genre"])["identification_of"]["genre"]
    assert 0.0 <= found["opening"]["classifier"] <= 1.0


def test_the_app_offers_the_conditions_a_model_has_and_composes_with_them(midicaps_model, soundfont):
    app = load_script("app")
    genre, tempo, mode = app.other_choices(str(midicaps_model), device=None)
    assert genre.visible and genre.choices == [("Any", "Any"), ("jazz", "jazz"), ("rock", "rock")]
    assert tempo.visible and mode.visible
    bundled = app.other_choices(str(catalog.default_model()), device=None)
    assert not any(dropdown.visible for dropdown in bundled)
    settings = ("Unknown", 16, 1.0, 0.95, 2.0, 0, None, "jazz", "fast", "Any")
    *_, (_, _, _, midi, status) = app.compose(str(midicaps_model), *settings, device=None, soundfont=str(soundfont))
    assert Path(midi).name == "Unknown-jazz-fast.mid" and "notes" in status


def test_midicaps_mixes_with_the_classical_set_each_piece_with_what_its_source_knows(mirror):
    sources = [str(mirror), "bundled"]
    tokenizer = tokenizer_for_sources(sources)
    heads = {
        row["path"]: tokenizer.piece_conditions(row["ids"])
        for row in open_pieces(sources, "train", tokenizer, repeat=False)
    }
    classical = [head for path, head in heads.items() if path.startswith("data/")]
    lakh = [head for path, head in heads.items() if path.startswith("lmd_full/")]
    assert classical and all(head["genre"] == head["tempo"] == head["mode"] == "Unknown" for head in classical)
    assert any(head["composer"] == "bach" for head in classical)
    assert lakh and all(head["composer"] == "Unknown" and head["genre"] in ("jazz", "rock") for head in lakh)


def test_the_card_of_a_midicaps_model_shows_its_conditions_licence_and_citation(midicaps_model):
    card = (midicaps_model / "README.md").read_text()
    assert "in the style of a requested composer, genre, tempo and mode" in card
    assert "`BOS, Composer_<name>, Genre_<name>, TempoBucket_<name>, Mode_<name>`" in card
    assert 'generate(genre="jazz", max_new_tokens=1000' in card and "- `genre=`: `jazz` (1), `rock` (1)" in card
    assert "licence CC-BY-SA 4.0" in card and "@article{melechovsky2024midicaps" in card
    # trained with --identification_condition genre: its validation names genres, and the card says so
    assert "**The genre is followed" in card and "against a chance of 0.500 among the 2 genres" in card
    assert "| condition gain over `Genre_Unknown`, opening |" in card
    assert "eval/identification_opening" in eval_metrics(midicaps_model)[-1]
