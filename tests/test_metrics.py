import json
import math

import numpy as np
import pytest
import symusic

from evaluation.metrics import (
    BINS,
    FEATURES,
    histogram_distances,
    piece_features,
    set_distances,
    set_histograms,
    topk_accuracy,
)

EPSILON = 1e-6


def make_score(*tracks: list[tuple[float, float, int]], drums=(), tpq: int = 480) -> symusic.Score:
    """A score with one track per list of (onset, duration, pitch), times in quarter notes,
    and a drum track of `drums` when given."""
    score = symusic.Score(tpq)
    parts = [(track, False) for track in tracks] + ([(drums, True)] if drums else [])
    for program, (notes, is_drum) in enumerate(parts):
        track = symusic.Track(f"track {program}", program, is_drum)
        for onset, duration, pitch in notes:
            track.notes.append(symusic.Note(round(onset * tpq), round(duration * tpq), pitch, 80))
        score.tracks.append(track)
    return score


def example_piece(tpq: int = 480) -> symusic.Score:
    """A C major chord, then D5; a second track joins while D5 sounds and ends with a
    zero-duration note; drums play where they would change every feature."""
    return make_score(
        [(0, 1, 60), (0, 1, 64), (0, 1, 67), (1, 3, 74)],
        [(2.5, 0.5, 50), (3, 0, 55)],
        drums=[(0.5, 0.25, 36), (6, 1, 90)],
        tpq=tpq,
    )


def test_piece_features_of_a_hand_built_piece():
    features = piece_features(example_piece())
    assert set(features) == set(FEATURES)
    assert sorted(features["pitch_class"].tolist()) == [0, 2, 2, 4, 7, 7]
    assert features["pitch_range"].tolist() == [24]
    # onsets 0, 1, 2.5, 3: the chord; D5 alone (the chord ended at 1); D5 and the second
    # track; D5 and the zero-duration note (the second track's first note ended at 3)
    assert features["polyphony"].tolist() == [3, 1, 2, 2]
    assert features["note_density"].tolist() == [1.5]  # 6 notes in the first 4 quarters
    assert features["ioi"].tolist() == [1.0, 1.5, 0.5]


def test_piece_features_do_not_depend_on_ticks_per_quarter():
    coarse, fine = piece_features(example_piece(tpq=96)), piece_features(example_piece(tpq=480))
    for name in FEATURES:
        np.testing.assert_array_equal(coarse[name], fine[name], err_msg=name)


def test_range_and_density_are_per_segment():
    features = piece_features(make_score([(4, 0, 60), (5, 0, 67), (13, 1, 50), (14, 1, 72), (15, 1, 71)]))
    # segments of 4 quarters: [4, 8) holds 2 notes, [8, 12) none, [12, 16) 3 (the piece starts at 4)
    assert features["note_density"].tolist() == [0.5, 0.0, 0.75]
    assert features["pitch_range"].tolist() == [7, 22]


def test_a_piece_without_pitched_notes_contributes_nothing():
    drums_only = make_score(drums=[(0, 1, 36), (1, 1, 38)])
    assert all(len(values) == 0 for values in piece_features(drums_only).values())
    piece = example_piece()
    with_empty, alone = set_histograms([piece, drums_only, symusic.Score(480)]), set_histograms([piece])
    for name in FEATURES:
        np.testing.assert_array_equal(with_empty[name], alone[name], err_msg=name)


def test_bins_are_fixed_and_clip_outliers():
    assert {name: len(edges) for name, edges in BINS.items()} == {
        "pitch_class": 13,
        "pitch_range": 33,
        "polyphony": 17,
        "note_density": 25,
        "ioi": 25,
    }
    assert BINS["ioi"][12] == 0.5 and BINS["note_density"][12] == 2.0  # round values sit exactly on an edge
    chord_of_twenty = make_score([(0, 1, pitch) for pitch in range(40, 60)] + [(100, 1, 72)])
    histograms = set_histograms([chord_of_twenty])
    assert histograms["polyphony"][0] == 0.5 and histograms["polyphony"][-1] == 0.5
    assert histograms["ioi"][-1] == 1.0  # 100 quarters counts as the longest bin's 16
    assert all(histograms[name].sum() == pytest.approx(1.0) for name in FEATURES)


def test_identical_sets_have_full_overlap_and_no_divergence(good_midis):
    scores = [symusic.Score.from_midi(midi) for midi in good_midis]
    histograms = set_histograms(scores)
    distances = set_distances(histograms, set_histograms(scores))
    assert set(distances) == set(FEATURES)
    for name, values in distances.items():
        assert values["overlap"] == pytest.approx(1.0), name
        assert values["kl"] == 0.0, name
    other = set_distances(set_histograms(scores[:3]), set_histograms(scores[3:]))
    assert other["pitch_class"]["overlap"] < 1.0 and other["pitch_class"]["kl"] > 0.0
    assert all(type(value) is float for values in other.values() for value in values.values())
    json.dumps(other)


def test_shifted_pitch_classes():
    real = set_histograms([make_score([(0, 1, 60), (1, 1, 62)])])  # C and D
    generated = set_histograms([make_score([(0, 1, 62), (1, 1, 64)])])  # D and E
    distances = set_distances(real, generated)
    assert distances["pitch_class"]["overlap"] == 0.5
    # C: real 0.5 against generated 0; D: equal; E: real 0 against generated 0.5; the
    # renormalising constant 1 + 12 epsilon cancels inside the logarithm
    by_hand = (
        (0.5 + EPSILON) * math.log((0.5 + EPSILON) / EPSILON) + EPSILON * math.log(EPSILON / (0.5 + EPSILON))
    ) / (1 + 12 * EPSILON)
    assert distances["pitch_class"]["kl"] == pytest.approx(by_hand, rel=1e-9)
    assert distances["pitch_range"] == {"overlap": 1.0, "kl": 0.0}  # a whole tone in both


@pytest.mark.filterwarnings("error")  # an empty set is expected, not a division by zero
def test_disjoint_and_empty_sets():
    real = set_histograms([make_score([(0, 1, 60)])])
    disjoint = set_distances(real, set_histograms([make_score([(0, 1, 66)])]))["pitch_class"]
    assert disjoint["overlap"] == 0.0
    assert 10.0 < disjoint["kl"] < math.inf  # about log(1 / epsilon)
    for empty in ([], [symusic.Score(480)]):
        distances = set_distances(real, set_histograms(empty))
        assert all(math.isnan(value) for values in distances.values() for value in values.values())


def test_counts_compare_like_normalised_histograms():
    real, generated = np.array([3.0, 1.0, 0.0]), np.array([1.0, 1.0, 2.0])
    assert histogram_distances(real, generated) == histogram_distances(real / 4, generated / 4)
    assert histogram_distances(real, generated)["overlap"] == 0.5


def test_histograms_over_different_bins_are_refused():
    with pytest.raises(ValueError, match="different bins"):
        histogram_distances(np.ones(12), np.ones(13))


def test_topk_accuracy_per_class_macro_and_micro():
    targets = ["bach", "bach", "bach", "chopin"]
    rankings = [
        ["bach", "chopin", "mozart"],
        ["chopin", "bach", "mozart"],
        ["mozart", "chopin", "liszt", "bach"],
        ["chopin", "bach", "mozart"],
    ]
    accuracy = topk_accuracy(targets, rankings)
    assert accuracy["per_class"] == {
        "bach": {"top1": pytest.approx(1 / 3), "top3": pytest.approx(2 / 3), "count": 3},
        "chopin": {"top1": 1.0, "top3": 1.0, "count": 1},
    }
    assert accuracy["mean"] == {"top1": pytest.approx(2 / 3), "top3": pytest.approx(5 / 6)}
    assert accuracy["micro"] == {"top1": 0.5, "top3": 0.75}
    assert topk_accuracy(targets, rankings, ks=(4,))["micro"] == {"top4": 1.0}
    json.dumps(accuracy)


@pytest.mark.parametrize(
    ("targets", "rankings", "message"),
    [([], [], "at least one target"), (["bach"], [], "1 targets but 0 rankings"), (["bach"], [["bach"]] * 2, "but 2")],
)
def test_topk_accuracy_refuses_bad_input(targets, rankings, message):
    with pytest.raises(ValueError, match=message):
        topk_accuracy(targets, rankings)


def test_topk_accuracy_refuses_k_below_one():
    with pytest.raises(ValueError, match="at least 1"):
        topk_accuracy(["bach"], [["bach"]], ks=(0, 1))
