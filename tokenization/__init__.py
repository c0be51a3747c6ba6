"""Music tokenization and the MIDI data layer."""

from .blocks import BlockCollator, TokenBlockStream, skip_summary
from .composers import UNKNOWN, canonical_composer
from .grammar import MusicGrammar, MusicGrammarLogitsProcessor
from .sources import list_midi_files, load_source, split_of
from .tokenizer import InvalidMidiError, MusicTokenizer, load_score

__all__ = [
    "UNKNOWN",
    "BlockCollator",
    "InvalidMidiError",
    "MusicGrammar",
    "MusicGrammarLogitsProcessor",
    "MusicTokenizer",
    "TokenBlockStream",
    "canonical_composer",
    "list_midi_files",
    "load_score",
    "load_source",
    "skip_summary",
    "split_of",
]
