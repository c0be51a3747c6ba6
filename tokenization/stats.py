"""What a tokenizer makes of a corpus: per-composer counts and the MIDI round trip."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from fractions import Fraction

import symusic

from .blocks import encode_midi
from .tokenizer import MusicTokenizer


def note_keys(score: symusic.Score) -> Counter:
    """The notes of a score as (program, pitch, onset, duration), times in quarter notes.

    Drums count as program -1, as miditok writes them. Times are exact fractions, so
    scores with different ticks per quarter compare.
    """
    tpq = score.ticks_per_quarter
    return Counter(
        (-1 if track.is_drum else track.program, note.pitch, Fraction(note.time, tpq), Fraction(note.duration, tpq))
        for track in score.tracks
        for note in track.notes
    )


def round_trip(tokenizer: MusicTokenizer, score: symusic.Score, ids: list[int] | None = None) -> tuple[int, int]:
    """(notes kept, notes in the file) for MIDI -> tokens -> MIDI.

    A note is kept when its program, pitch, onset and duration come back at the
    tokenizer's resolution, i.e. equal to the note after miditok's own quantisation.
    Notes that quantisation drops (out of the pitch range, exact duplicates) count as
    lost. `ids` saves encoding again when the caller has them.
    """
    expected = note_keys(tokenizer.base.preprocess_score(score))
    decoded = note_keys(tokenizer.decode(ids if ids is not None else tokenizer.encode(score)))
    return sum((expected & decoded).values()), score.note_num()


def corpus_table(tokenizer: MusicTokenizer, rows: Iterable[dict]) -> tuple[list[dict], Counter]:
    """Per-composer files, notes, tokens, tokens per note and round-trip share; plus skips.

    `rows` are source rows (`{"midi", "composer", "path"}`); the last table row is the
    total.
    """
    skipped: Counter = Counter()
    totals: dict[str, Counter] = {}
    for row in rows:
        encoded = encode_midi(tokenizer, row, skipped)
        if encoded is None:
            continue
        score, ids = encoded
        kept, notes = round_trip(tokenizer, score, ids)
        totals.setdefault(row["composer"], Counter()).update(files=1, notes=notes, tokens=len(ids), kept=kept)
    totals["total"] = sum(totals.values(), Counter())
    table = [
        {
            "composer": name,
            "files": count["files"],
            "notes": count["notes"],
            "tokens": count["tokens"],
            "tokens_per_note": count["tokens"] / max(count["notes"], 1),
            "round_trip": count["kept"] / max(count["notes"], 1),
        }
        for name, count in sorted(totals.items(), key=lambda item: (item[0] == "total", -item[1]["files"], item[0]))
    ]
    return table, skipped
