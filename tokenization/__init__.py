"""Music tokenization and the MIDI data layer."""

from .blocks import BlockCollator, TokenBlockStream, evaluation_blocks, skip_summary
from .composers import UNKNOWN, canonical_composer
from .grammar import MusicGrammar
from .sources import list_midi_files, load_source, mix_sources, split_of, tokenizer_for_sources
from .tokenizer import InvalidMidiError, MusicTokenizer, load_score

__all__ = [
    "UNKNOWN",
    "BlockCollator",
    "InvalidMidiError",
    "MusicGrammar",
    "MusicTokenizer",
    "TokenBlockStream",
    "canonical_composer",
    "evaluation_blocks",
    "list_midi_files",
    "load_score",
    "load_source",
    "mix_sources",
    "skip_summary",
    "split_of",
    "tokenizer_for_sources",
]
