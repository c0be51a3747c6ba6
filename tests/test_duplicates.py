"""Twins: the same music in several files (copies, transposed or re-timed arrangements,
excerpts) is found on the notes and kept in one split."""

import random

import pytest
import symusic

from tokenization import list_midi_files
from tokenization.duplicates import containment, fingerprint, group_splits, note_digest, twin_groups, twin_pairs


@pytest.fixture(scope="module")
def scores() -> list[symusic.Score]:
    """Six different pieces of the bundled corpus."""
    files = [f for f in list_midi_files("bundled") if f.composer in ("bach", "chopin", "mozart", "handel")][:6]
    return [symusic.Score(f.url) for f in files]


def test_an_arrangement_in_another_key_and_resolution_has_the_same_fingerprint(scores):
    piece = scores[0]
    arranged = piece.shift_pitch(3).resample(960)
    assert arranged.ticks_per_quarter != piece.ticks_per_quarter
    assert containment(fingerprint(piece), fingerprint(arranged)) == 1.0
    assert note_digest(piece) == note_digest(piece.resample(960))  # the same notes: an exact duplicate
    assert note_digest(piece) != note_digest(arranged)  # transposed: a near duplicate only


def test_an_excerpt_is_contained_and_other_pieces_are_not(scores):
    whole = fingerprint(scores[0])
    excerpt = fingerprint(scores[0].clip(0, scores[0].end() // 3))
    assert 0 < len(excerpt) < len(whole) / 2
    assert containment(excerpt, whole) > 0.9
    assert all(containment(whole, fingerprint(other)) < 0.1 for other in scores[1:])


def test_twin_pairs_find_copies_arrangements_and_excerpts_only(scores):
    piece = scores[1]
    variants = [piece, piece.shift_pitch(-2), piece.clip(0, piece.end() // 2), *scores[2:]]
    pairs = twin_pairs([fingerprint(s) for s in variants])
    assert pairs == [(0, 1), (0, 2), (1, 2)]


def test_groups_join_chains_of_twins():
    assert twin_groups(6, [(1, 4), (4, 5), (0, 2)]) == [0, 1, 0, 3, 1, 1]


def test_a_group_with_a_training_member_goes_to_train_others_to_their_first_path():
    paths = ["d.mid", "b.mid", "a.mid", "c.mid", "e.mid"]
    hashed = ["test", "train", "validation", "test", "validation"]
    groups = [0, 0, 2, 2, 4]  # (d, b): one trains; (a, c): held out only; e alone
    assert group_splits(paths, hashed, groups) == ["train", "train", "validation", "validation", "validation"]


def test_group_splits_do_not_depend_on_the_order_of_the_files():
    rng = random.Random(0)
    paths = [f"piece_{i}.mid" for i in range(40)]
    hashed = [rng.choice(["train", "validation", "test"]) for _ in paths]
    pairs = [(i, i + 1) for i in range(0, 39, 3)]
    expected = dict(zip(paths, group_splits(paths, hashed, twin_groups(40, pairs)), strict=True))
    order = list(range(40))
    rng.shuffle(order)
    where = {old: new for new, old in enumerate(order)}
    shuffled_pairs = [(where[i], where[j]) for i, j in pairs]
    splits = group_splits([paths[i] for i in order], [hashed[i] for i in order], twin_groups(40, shuffled_pairs))
    assert dict(zip([paths[i] for i in order], splits, strict=True)) == expected
