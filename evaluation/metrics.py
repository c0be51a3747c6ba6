"""Music statistics of scores, and how far apart two sets of pieces are in them.

Generated music is judged against real music of the same composer in the manner of
Yang & Lerch (2020): a few simple statistics per piece, pooled over each set, and the two
sets' distributions compared by overlap and KL divergence. They smooth with kernel density
estimates; here the histograms have fixed bins instead, so a result depends only on the
pieces and is the same on every machine and at every run. `topk_accuracy` scores a
composer classifier, e.g. on generated pieces labelled with the composer they were asked for.

Drum tracks are left out of every statistic: they have no pitch, and their hits would
swamp the rhythm statistics of the pitched parts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import symusic

FEATURES: tuple[str, ...] = ("pitch_class", "pitch_range", "polyphony", "note_density", "ioi")
# Range and density are measured per stretch of this many quarter notes (a 4/4 bar), not per
# piece: a set of eight samples then gives hundreds of values instead of eight, and a piece's
# length (which grows its range) drops out.
SEGMENT_QUARTERS = 4


def _powers_of_two(first: int, last: int, num_edges: int) -> np.ndarray:
    """Geometric edges from 2**first to 2**last.

    Each exponent is one division of whole numbers, so whole exponents come out exact and
    round values (half a quarter, two notes per quarter) sit exactly on an edge rather
    than a rounding error to one side of it, which `np.geomspace` does not promise.
    """
    return 2.0 ** (first + np.arange(num_edges) * (last - first) / (num_edges - 1))


# Histogram bin edges per feature. Values outside the edges are clipped into the first or last
# bin, so that e.g. every chord of 16 notes or more counts as 16 (the last bin is closed).
BINS: dict[str, np.ndarray] = {
    "pitch_class": np.arange(13) - 0.5,
    "pitch_range": np.arange(0, 129, 4, dtype=float),
    "polyphony": np.arange(17) + 0.5,
    "note_density": _powers_of_two(-4, 6, 25),
    "ioi": _powers_of_two(-6, 4, 25),
}


def _pitched_notes(score: symusic.Score) -> dict[str, np.ndarray]:
    """Onsets, durations and pitches of all non-drum notes, as int64 arrays in ticks."""
    tracks = [track.notes.numpy() for track in score.tracks if not track.is_drum]
    return {
        key: np.concatenate([notes[key] for notes in tracks]).astype(np.int64) if tracks else np.zeros(0, np.int64)
        for key in ("time", "duration", "pitch")
    }


def _polyphony(onsets: np.ndarray, durations: np.ndarray) -> np.ndarray:
    """Notes sounding at each distinct onset: started at or before it and not yet ended.

    A zero-duration note is given one tick, so it sounds at its own onset and nowhere else
    (onsets are whole ticks).
    """
    times = np.unique(onsets)
    ends = np.sort(onsets + np.maximum(durations, 1))
    started = np.searchsorted(np.sort(onsets), times, side="right")
    ended = np.searchsorted(ends, times, side="right")
    return started - ended


def piece_features(score: symusic.Score) -> dict[str, np.ndarray]:
    """Raw values of one piece, one array per feature of `FEATURES`.

    - pitch_class: pitch % 12 of every note
    - pitch_range: in every segment of `SEGMENT_QUARTERS` quarters that has onsets, the
      highest minus the lowest pitch of the notes starting there
    - polyphony: at every distinct onset, the number of notes sounding (all tracks together)
    - note_density: in every segment from the first onset's to the last onset's, notes
      starting there per quarter note (silent segments count, as 0, which the histogram puts
      in its lowest bin)
    - ioi: time between consecutive distinct onsets, in quarter notes

    A piece without notes gives empty arrays, and so adds nothing to a set's histograms.
    The score must be in ticks (as read from MIDI); times are divided by its
    `ticks_per_quarter`, so the resolution of the file does not matter.
    """
    notes = _pitched_notes(score)
    onsets, durations, pitches = notes["time"], notes["duration"], notes["pitch"]
    if len(onsets) == 0:
        no_counts, no_times = np.zeros(0, np.int64), np.zeros(0)
        return {
            "pitch_class": no_counts,
            "pitch_range": no_counts,
            "polyphony": no_counts,
            "note_density": no_times,
            "ioi": no_times,
        }
    tpq = score.ticks_per_quarter
    segments = onsets // (SEGMENT_QUARTERS * tpq)
    segments -= segments.min()
    used = np.unique(segments)
    highest = np.full(segments.max() + 1, -1)
    lowest = np.full(segments.max() + 1, 128)
    np.maximum.at(highest, segments, pitches)
    np.minimum.at(lowest, segments, pitches)
    return {
        "pitch_class": pitches % 12,
        "pitch_range": (highest - lowest)[used],
        "polyphony": _polyphony(onsets, durations),
        "note_density": np.bincount(segments) / SEGMENT_QUARTERS,
        "ioi": np.diff(np.unique(onsets)) / tpq,
    }


def _histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Normalised histogram over fixed edges; all zeros when there are no values."""
    counts, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)
    total = counts.sum()
    return counts / total if total else np.zeros(len(edges) - 1)


def set_histograms(scores: Iterable[symusic.Score]) -> dict[str, np.ndarray]:
    """Per feature, the normalised histogram of the values of all pieces pooled.

    Pooling (rather than averaging per-piece histograms) weighs a piece by how many values
    it has: a long piece says more about a set's pitch classes than a short one.
    """
    pooled: dict[str, list[np.ndarray]] = {name: [] for name in FEATURES}
    for score in scores:
        for name, values in piece_features(score).items():
            pooled[name].append(values)
    return {
        name: _histogram(np.concatenate(pooled[name]) if pooled[name] else np.zeros(0), BINS[name])
        for name in FEATURES
    }


def histogram_distances(real: np.ndarray, generated: np.ndarray, epsilon: float = 1e-6) -> dict[str, float]:
    """Overlap and KL divergence of two histograms over the same bins.

    - overlap: sum of the bin-wise minimum, in [0, 1]; 1 means the same distribution.
    - kl: KL(real || generated) in nats, after adding `epsilon` to every bin of both and
      renormalising. Without it a bin that real music uses and the generated music never
      does would make the divergence infinite; with it the value stays finite but large,
      and it still ranks models.

    Both are nan when either histogram is empty (all zeros): there is nothing to compare.
    Raw counts work as well as normalised histograms: both are normalised first.
    """
    real, generated = np.asarray(real, dtype=float), np.asarray(generated, dtype=float)
    if real.shape != generated.shape:
        raise ValueError(f"histograms have different bins: {real.shape} and {generated.shape}")
    if not real.sum() or not generated.sum():
        return {"overlap": float("nan"), "kl": float("nan")}
    p, q = real / real.sum(), generated / generated.sum()
    p_smooth, q_smooth = (p + epsilon) / (p + epsilon).sum(), (q + epsilon) / (q + epsilon).sum()
    return {
        "overlap": float(np.minimum(p, q).sum()),
        "kl": float(np.sum(p_smooth * np.log(p_smooth / q_smooth))),
    }


def set_distances(real: dict[str, np.ndarray], generated: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per feature of `real`, `histogram_distances` of two `set_histograms` outputs."""
    return {name: histogram_distances(real[name], generated[name]) for name in real}


def topk_accuracy(
    targets: Sequence[str], rankings: Sequence[Sequence[str]], ks: Sequence[int] = (1, 3)
) -> dict[str, dict]:
    """Classifier accuracy per target class, and averaged two ways.

    `rankings[i]` are class names best first for item `targets[i]`; an item counts for
    `top{k}` when its target is among the first k. Returns
    `{"per_class": {name: {"top1": .., "top3": .., "count": n}}, "mean": {...}, "micro": {...}}`:
    "mean" averages over the classes in `targets` (the original study's mean success per
    composer, which every composer weighs equally however many pieces it has), "micro"
    over all items.
    """
    if len(targets) == 0:
        raise ValueError("topk_accuracy needs at least one target")
    if len(targets) != len(rankings):
        raise ValueError(f"got {len(targets)} targets but {len(rankings)} rankings")
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be at least 1, got {list(ks)}")
    hits = {
        k: np.array([target in ranking[:k] for target, ranking in zip(targets, rankings, strict=True)]) for k in ks
    }
    labels = np.asarray(targets)
    per_class = {
        name: {f"top{k}": float(hits[k][labels == name].mean()) for k in ks} | {"count": int((labels == name).sum())}
        for name in sorted(set(targets))
    }
    return {
        "per_class": per_class,
        "mean": {f"top{k}": float(np.mean([scores[f"top{k}"] for scores in per_class.values()])) for k in ks},
        "micro": {f"top{k}": float(hits[k].mean()) for k in ks},
    }


def mean_distances(distances: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per feature, overlap and KL averaged over composers (those with values)."""
    means = {}
    for feature in FEATURES:
        values = [d[feature] for d in distances.values()]
        means[feature] = {
            key: float(np.nanmean([v[key] for v in values]))
            if any(not np.isnan(v[key]) for v in values)
            else float("nan")
            for key in ("overlap", "kl")
        }
    return means
