"""Twin pieces: the same music in several files, kept inside one split.

Classical MIDI collections hold the same piece several times: duplicate uploads, a movement
beside the whole work, a piano arrangement beside the orchestral score. A held-out piece
with a twin in the training split inflates likelihood and identification figures, so the
token cache assigns every group of twins to one split.

A piece is described by the top voice of its notes (the highest pitch at each onset, drums
left out), read as steps of (pitch interval, onset gap), which is the same in another key,
tempo or time resolution and under most re-orchestrations. Its fingerprint is the set of
hashes of every run of `SHINGLE` steps. Two pieces are twins when most of the smaller one's
runs occur in the other (containment >= `CONTAINMENT`): a movement inside a complete work
counts, which Jaccard similarity would miss. datasketch's LSH Ensemble (MinHash over the
fingerprints) proposes candidate pairs; their containment is then computed exactly.

Measured on drengskapur/midi-classical-music: pairs at containment >= 0.3 were, on reading
their file names, the same piece or a part of it (renamed uploads, arrangements, movements
of a whole work); below 0.3, unrelated pairs of long pieces start to appear.
"""

from __future__ import annotations

import hashlib

import numpy as np
import symusic
from datasketch import MinHash, MinHashLSHEnsemble

SHINGLE = 8  # steps per run
CONTAINMENT = 0.3
NUM_PERM = 128
SEED = 1
ONSET_GRID = 12  # onsets are rounded to 1/12 of a quarter note (triplets and sixteenths)


def fingerprint(score: symusic.Score) -> np.ndarray:
    """The sorted, distinct 32-bit hashes of every run of `SHINGLE` top-voice steps (may be empty)."""
    quarters = score.to("quarter")
    notes = [(note.time, note.pitch) for track in quarters.tracks if not track.is_drum for note in track.notes]
    if len(notes) <= SHINGLE:
        return np.zeros(0, dtype=np.uint32)
    onsets, pitches = np.array(notes, dtype=np.float64).T
    onsets = np.round(onsets * ONSET_GRID).astype(np.int64)
    pitches = pitches.astype(np.int64)
    order = np.lexsort((-pitches, onsets))  # by onset, highest pitch first
    onsets, pitches = onsets[order], pitches[order]
    top = np.r_[True, onsets[1:] != onsets[:-1]]
    onsets, pitches = onsets[top], pitches[top]
    intervals = np.clip(np.diff(pitches), -24, 24) + 24  # 0..48
    gaps = np.minimum(np.round(2 * np.log2(np.maximum(np.diff(onsets), 1))), 15).astype(np.int64)  # 0..15
    steps = intervals * 16 + gaps  # < 784
    if len(steps) < SHINGLE:
        return np.zeros(0, dtype=np.uint32)
    runs = np.lib.stride_tricks.sliding_window_view(steps, SHINGLE)
    keys = np.zeros(len(runs), dtype=np.uint64)
    for column in runs.T:  # a polynomial hash, wrapping at 64 bits
        keys = keys * np.uint64(1_000_003) + column.astype(np.uint64)
    hashes = (keys * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)  # Fibonacci hashing to 32 bits
    return np.unique(hashes.astype(np.uint32))


def note_digest(score: symusic.Score) -> str:
    """A digest of the notes (onset and duration in quarters, pitch, drums apart): equal for exact duplicates."""
    quarters = score.to("quarter")
    notes = sorted(
        (round(note.time * ONSET_GRID), round(note.duration * ONSET_GRID), note.pitch, track.is_drum)
        for track in quarters.tracks
        for note in track.notes
    )
    return hashlib.sha1(np.array(notes, dtype=np.int64).tobytes()).hexdigest()


def containment(first: np.ndarray, second: np.ndarray) -> float:
    """Share of the smaller fingerprint's hashes that the other holds."""
    smaller = min(len(first), len(second))
    return len(np.intersect1d(first, second, assume_unique=True)) / smaller if smaller else 0.0


def twin_pairs(fingerprints: list[np.ndarray], threshold: float = CONTAINMENT) -> list[tuple[int, int]]:
    """Index pairs (i < j) of pieces whose fingerprints contain each other at `threshold` or more."""
    sketches = {}
    for i, hashes in enumerate(fingerprints):
        if len(hashes):
            sketch = MinHash(num_perm=NUM_PERM, seed=SEED, hashfunc=int)
            sketch.update_batch(hashes.tolist())
            sketches[i] = sketch
    if len(sketches) < 2:
        return []
    index = MinHashLSHEnsemble(threshold=threshold, num_perm=NUM_PERM)
    index.index((i, sketch, len(fingerprints[i])) for i, sketch in sketches.items())
    pairs = set()
    for i, sketch in sketches.items():
        for j in index.query(sketch, len(fingerprints[i])):
            pair = (min(i, j), max(i, j))
            if i != j and pair not in pairs and containment(fingerprints[i], fingerprints[j]) >= threshold:
                pairs.add(pair)
    return sorted(pairs)


def twin_groups(count: int, pairs: list[tuple[int, int]]) -> list[int]:
    """For each of `count` pieces, the smallest index of its group (pieces linked by twin pairs)."""
    parent = list(range(count))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        first, second = root(i), root(j)
        parent[max(first, second)] = min(first, second)
    return [root(i) for i in range(count)]


def group_splits(paths: list[str], hashed: list[str], groups: list[int]) -> list[str]:
    """The split of each piece once twins stay together.

    A group with a member in `train` goes to train entirely: held-out splits only ever lose
    pieces, so a model trained before the twins were known never saw a held-out piece. Any
    other group takes the split of its member with the smallest path, so the result depends
    on the files alone, not on their order or the machine.
    """
    members: dict[int, list[int]] = {}
    for i, group in enumerate(groups):
        members.setdefault(group, []).append(i)
    splits = list(hashed)
    for indices in members.values():
        if len(indices) == 1:
            continue
        trained = any(hashed[i] == "train" for i in indices)
        split = "train" if trained else hashed[min(indices, key=lambda i: paths[i])]
        for i in indices:
            splits[i] = split
    return splits
