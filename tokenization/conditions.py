"""The conditions a piece can carry, and the one place their values are named.

A sequence opens with `BOS` and one token per condition kind the tokenizer has, always in the
order of `KINDS`: the composer or artist (every tokenizer has it), then, where the training
data knew them (MidiCaps' metadata), the genre, a tempo bucket and the mode. Each kind has an
`Unknown` value: what a source that does not know it gives, and what condition dropout puts in
its place, one kind at a time, so that guidance can push on any one of them.

Values are normalised here before they become tokens, as composer names are in `composers.py`:
a genre "Hip-Hop" is `hip_hop`, a tempo of 132 bpm is `fast`, a key "F# minor" is `minor`.
"""

from __future__ import annotations

import math
import re

from .composers import UNKNOWN, canonical_composer

KINDS = ("composer", "genre", "tempo", "mode")
TOKEN_PREFIXES = {"composer": "Composer_", "genre": "Genre_", "tempo": "TempoBucket_", "mode": "Mode_"}
# Upper bounds in beats per minute, as metronome markings go: below Andante is slow, from Allegro on fast.
TEMPO_BUCKETS = {"slow": 80.0, "moderate": 120.0, "fast": math.inf}
MODES = ("major", "minor")


def tempo_bucket(bpm: str | float | None) -> str:
    """The bucket of a tempo in beats per minute (`Unknown` for none, or one that is no positive
    number: metadata can hold anything)."""
    if not _is_number(bpm) or not 0 < float(bpm) < math.inf:
        return UNKNOWN
    return next(name for name, bound in TEMPO_BUCKETS.items() if float(bpm) < bound)


def mode_of(key: str | None) -> str:
    """`major` or `minor` from a key such as "F# minor" (MidiCaps' `key`); `Unknown` otherwise."""
    words = (key or "").lower().split()
    return words[-1] if words and words[-1] in MODES else UNKNOWN


def canonical_value(kind: str, value: str | float | None) -> str:
    """The token name of a condition value: normalised, `Unknown` for an empty one.

    A tempo may be given in beats per minute; a kind that is none of `KINDS` is an error.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown condition {kind!r}: the conditions are {', '.join(KINDS)}")
    if kind == "composer":
        return canonical_composer(value)
    if kind == "tempo" and _is_number(value):
        return tempo_bucket(float(value))
    if kind == "mode" and value and str(value).lower() not in MODES:
        return mode_of(str(value))
    text = re.sub(r"[^a-z0-9]+", "_", str(value or "").lower()).strip("_")
    return text if text and text != "unknown" else UNKNOWN


def _is_number(value: str | float | None) -> bool:
    try:
        float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True
