"""Composer (or artist) names: one canonical spelling per person.

Labels come from file names (`haendel-messiah.mid`) and folder names (`The Beatles/`),
so the same person arrives under several spellings. Every label goes through
`canonical_composer` before it becomes a condition token; the alias table below is the
only place where spellings are merged.
"""

from __future__ import annotations

import re
import unicodedata

UNKNOWN = "Unknown"

# Spelling found in the data -> canonical name. Keys and values are already normalised
# (lower case, ASCII, words joined by "_").
ALIASES: dict[str, str] = {
    "haendel": "handel",
    "mendelsonn": "mendelssohn",
    "buxehude": "buxtehude",
    "skriabin": "scriabin",
    "mussorgski": "mussorgsky",
    "rachmaninov": "rachmaninoff",
    "vaughan": "vaughan-williams",  # the classical dataset's `vaughan-...` files: folk songs, Linden Lea
    "unknown_artist": UNKNOWN,
    "unknown": UNKNOWN,
}

# Names that contain the "-" that otherwise separates composer from piece in
# `<composer>-<piece>.mid`.
HYPHENATED: tuple[str, ...] = (
    "rimsky-korsakov",
    "coleridge-taylor",
    "saint-saens",
    "vaughan-williams",
)


def canonical_composer(name: str | None) -> str:
    """Return the canonical spelling of a composer or artist name.

    Case, accents, spaces and punctuation are normalised ("Saint-Saëns" ->
    "saint-saens", "The Beatles" -> "the_beatles") and known aliases merged; an empty
    name or an alias of "unknown" gives `UNKNOWN`.
    """
    if not name:
        return UNKNOWN
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    text = re.sub(r"[^a-z0-9-]+", "_", text.lower()).strip("_-")
    if not text:
        return UNKNOWN
    if text.replace("_", "-") in HYPHENATED:  # "Vaughan Williams", "Saint Saens"
        return text.replace("_", "-")
    return ALIASES.get(text, text)


def composer_from_filename(filename: str) -> str:
    """The composer of a `<composer>-<piece>.mid` file name (the classical dataset's layout)."""
    stem = filename.rsplit("/", 1)[-1].lower()
    for name in HYPHENATED:
        if stem.startswith(name + "-"):
            return canonical_composer(name)
    return canonical_composer(stem.split("-", 1)[0]) if "-" in stem else UNKNOWN
