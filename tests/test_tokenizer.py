import inspect
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import miditok
import pytest
import symusic

from modeling import catalog, pipeline_midi_generation
from modeling.pipeline_midi_generation import MusicVocabulary
from tokenization import InvalidMidiError, MusicTokenizer, list_midi_files, load_score, split_of, tokenizer_for_sources
from tokenization import tokenizer as tokenizer_module
from tokenization.composers import canonical_composer
from tokenization.stats import round_trip


def test_sequence_is_bos_composer_music_eos(tokenizer, good_midis):
    ids = tokenizer.encode(good_midis[0], composer="Haendel")
    assert ids[0] == tokenizer.bos_token_id
    assert ids[1] == tokenizer.composer_token_id("handel")
    assert tokenizer.id_to_token(ids[1]) == "Composer_handel"
    assert ids[-1] == tokenizer.eos_token_id
    assert all(i < tokenizer.base_vocab_size for i in ids[2:-1])
    assert tokenizer.encode(good_midis[0])[1] == tokenizer.composer_token_id(None)
    assert tokenizer.id_to_token(tokenizer.composer_token_id(None)) == "Composer_Unknown"


def test_path_bytes_and_score_encode_alike(tokenizer, tmp_path, good_midis):
    path = tmp_path / "piece.mid"
    path.write_bytes(good_midis[1])
    from_bytes = tokenizer.encode(good_midis[1], "bach")
    assert tokenizer.encode(path, "bach") == from_bytes
    assert tokenizer.encode(str(path), "bach") == from_bytes
    assert tokenizer.encode(symusic.Score.from_midi(good_midis[1]), "bach") == from_bytes


def test_decode_drops_condition_and_special_tokens(tokenizer, good_midis):
    ids = tokenizer.encode(good_midis[2], "mozart")
    with_extra = [tokenizer.pad_token_id, *ids[:2], tokenizer.composer_token_id("bach"), *ids[2:]]
    assert tokenizer.decode(with_extra).note_num() == tokenizer.decode(ids).note_num() > 0


def notes_kept(tokenizer, files) -> tuple[int, int]:
    """(notes kept, notes) over the usable files of a source, MIDI -> tokens -> MIDI."""
    kept = total = 0
    for midi_file in files:
        try:
            score = load_score(midi_file.url)
        except InvalidMidiError:
            continue
        file_kept, file_total = round_trip(tokenizer, score)
        kept, total = kept + file_kept, total + file_total
    return kept, total


def test_round_trip_keeps_at_least_99_percent_of_notes(tokenizer):
    kept, total = notes_kept(tokenizer, list_midi_files("bundled"))
    assert total > 100_000
    assert kept / total >= 0.99


def test_bpe_compresses_and_decodes_to_the_same_notes(tokenizer, bpe_tokenizer, good_midis):
    assert bpe_tokenizer.base.is_trained and bpe_tokenizer.base_vocab_size == 800
    for midi in good_midis[:3]:
        plain, merged = tokenizer.encode(midi), bpe_tokenizer.encode(midi)
        assert len(merged) < 0.8 * len(plain)
        assert bpe_tokenizer.decode(merged).tracks[0].notes == tokenizer.decode(plain).tracks[0].notes
    assert "+" in bpe_tokenizer.id_to_token(bpe_tokenizer.base_vocab_size - 1)


def test_add_composers_appends_ids_and_keeps_old_ones(tokenizer):
    new = MusicTokenizer(composers=["bach", "mozart"])
    before = dict(new.condition_token_ids)
    added = new.add_composers(["Satie", "satie", "Bach", "Mendelsonn"])
    assert added == [new.vocab_size - 2, new.vocab_size - 1]
    assert new.composers == ["bach", "mozart", "mendelssohn", "satie"]
    assert {k: v for k, v in new.condition_token_ids.items() if k in before} == before


def test_unknown_composer_names_the_known_ones(tokenizer, good_midis):
    with pytest.raises(ValueError, match=r"unknown composer 'Stockhausen'.*bach.*add_composers"):
        tokenizer.encode(good_midis[0], composer="Stockhausen")


@pytest.mark.parametrize("kind", ["empty", "random", "truncated", "no notes"])
def test_unusable_midi_says_why(tokenizer, bad_midis, kind):
    expected = {"empty": "empty", "random": "unreadable", "truncated": "unreadable", "no notes": "no notes"}[kind]
    with pytest.raises(InvalidMidiError) as error:
        tokenizer.encode(bad_midis[kind])
    assert error.value.reason == expected


def test_a_cut_file_is_refused_before_the_parser_reads_past_its_end(good_midis):
    """symusic reads a cut file past its end: a different error each time, garbage notes, or a
    segmentation fault that ends the whole training run (all three seen on these files). The
    pipeline (Hub remote code, so a marked copy of the check) refuses a cut prompt alike."""
    assert inspect.getsource(pipeline_midi_generation.cut_track) == inspect.getsource(tokenizer_module.cut_track)
    for midi in good_midis:
        for eighth in range(1, 8):
            cut = midi[: len(midi) * eighth // 8]
            with pytest.raises(InvalidMidiError, match="unreadable: truncated: "):
                load_score(cut)
            with pytest.raises(ValueError, match="the prompt is not a readable MIDI file: truncated: "):
                pipeline_midi_generation.read_prompt(cut)


def test_save_and_load_round_trip(bpe_tokenizer, tmp_path, good_midis):
    bpe_tokenizer.save_pretrained(tmp_path)
    loaded = MusicTokenizer.from_pretrained(tmp_path)
    assert loaded.vocab_size == bpe_tokenizer.vocab_size
    assert loaded.condition_token_ids == bpe_tokenizer.condition_token_ids
    assert loaded.encode(good_midis[0], "bach") == bpe_tokenizer.encode(good_midis[0], "bach")


def test_saved_folder_is_readable_without_this_package(bpe_tokenizer, tmp_path, good_midis):
    bpe_tokenizer.save_pretrained(tmp_path)
    base = miditok.REMI(params=tmp_path / "tokenizer.json")
    conditions = json.loads((tmp_path / "music_tokenizer.json").read_text())
    assert len(base) == bpe_tokenizer.base_vocab_size
    assert conditions["condition_tokens"]["Composer_bach"] == bpe_tokenizer.composer_token_id("bach")
    assert conditions["composer_aliases"]["haendel"] == "handel"
    ids = bpe_tokenizer.encode(good_midis[0], "bach")
    music = [i for i in ids if i < len(base) and i not in base.special_tokens_ids]
    assert base.decode(music).note_num() == bpe_tokenizer.decode(ids).note_num()


def test_missing_tokenizer_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="no music tokenizer in .*tokenizer.json"):
        MusicTokenizer.from_pretrained(tmp_path)


def test_loads_repo_id_offline_from_the_hugging_face_cache(tokenizer, tmp_path):
    """The Hub path (snapshot_download) on a cache filled as huggingface_hub lays it out."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--music-tokenizer"
    tokenizer.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    code = (
        "from tokenization import MusicTokenizer;"
        "t = MusicTokenizer.from_pretrained('someone/music-tokenizer');"
        "print(len(t), ','.join(t.composers))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=Path(__file__).parents[1]
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(len(tokenizer)), ",".join(tokenizer.composers)]


def test_push_to_hub_uploads_both_files(tokenizer, monkeypatch):
    uploaded = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            uploaded["repo"] = repo_id

        def upload_folder(self, repo_id, folder_path, commit_message):
            uploaded["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            return type("Commit", (), {"commit_url": f"https://hub/{repo_id}/commit/1"})()

    monkeypatch.setattr("tokenization.tokenizer.HfApi", FakeApi)
    assert tokenizer.push_to_hub("someone/tok") == "https://hub/someone/tok/commit/1"
    assert uploaded == {"repo": "someone/tok", "files": ["music_tokenizer.json", "tokenizer.json"]}


def test_round_trip_on_real_classical_files(tokenizer, shared_data):
    kept, total = notes_kept(tokenizer, list_midi_files(str(shared_data / "midi-classical-music"), max_files=40))
    assert kept / total >= 0.99


def test_mistyped_folder_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer folder .*typo: give a tokenizer folder"):
        MusicTokenizer.from_pretrained(tmp_path / "typo")


def test_decoding_nothing_gives_an_empty_score(tokenizer):
    assert tokenizer.decode([tokenizer.bos_token_id, tokenizer.composer_token_id("bach")]).note_num() == 0


def test_a_tokenizer_records_its_training_pieces_per_composer(tmp_path):
    tokenizer = tokenizer_for_sources(["bundled"])
    train = [f for f in list_midi_files("bundled") if split_of(f.path) == "train"]
    assert tokenizer.training_pieces == dict(Counter(f.composer for f in train))
    fingerprint = tokenizer.fingerprint()
    tokenizer.training_pieces["bach"] += 1  # a count is not part of the ids
    assert tokenizer.fingerprint() == fingerprint
    tokenizer.save_pretrained(tmp_path)
    assert MusicTokenizer.from_pretrained(tmp_path).training_pieces == tokenizer.training_pieces


@pytest.mark.parametrize("kind", ["plain", "bpe", "bundled"])
def test_the_pipeline_reads_a_saved_tokenizer_as_the_tokenizer_does(
    kind, tokenizer, bpe_tokenizer, good_midis, tmp_path
):
    """The pipeline's `MusicVocabulary` reads a saved tokenizer with miditok alone (Hub remote code
    cannot import this project): ids, composer lookup, grammar, encode and decode must agree."""
    if kind == "bundled":
        folder = catalog.default_model()
        tokenizer = MusicTokenizer.from_pretrained(folder)
    else:
        tokenizer = bpe_tokenizer if kind == "bpe" else tokenizer
        folder = tmp_path
        tokenizer.save_pretrained(folder)
    vocabulary = MusicVocabulary(str(folder))
    ids = ("bos_token_id", "eos_token_id", "pad_token_id")
    assert [getattr(vocabulary, name) for name in ids] == [getattr(tokenizer, name) for name in ids]
    assert vocabulary.music_size == tokenizer.base_vocab_size
    composers = vocabulary.conditions["composer"]
    assert {f"Composer_{name}": i for name, i in composers.items()} == tokenizer.condition_token_ids
    assert vocabulary.composers == tokenizer.composers and vocabulary.grammar == tokenizer.grammar().to_dict()
    for name in [*tokenizer.composers, None, "", "Unknown", "Haendel", "J.S. Bach", "MOZART"]:
        known = name in (None, "", "Unknown") or canonical_composer(name) in tokenizer.composers
        if known:
            assert vocabulary.condition_id("composer", name) == tokenizer.composer_token_id(name or None), name
        else:
            with pytest.raises(ValueError, match="unknown composer"):
                vocabulary.condition_id("composer", name)
            with pytest.raises(ValueError, match="unknown composer"):
                tokenizer.composer_token_id(name)
    for midi in good_midis[:3]:
        score = load_score(midi)
        music = tokenizer.encode(score)[2:-1]
        assert vocabulary.encode(score) == music
        noisy = [tokenizer.bos_token_id, tokenizer.composer_token_id(None), *music, tokenizer.eos_token_id]
        assert vocabulary.decode(noisy).dumps_midi() == tokenizer.decode(noisy).dumps_midi()
