"""Music tokenization and the MIDI data layer."""

from .blocks import BlockCollator, BlockPacker, TokenBlockStream, evaluation_blocks, pieces_of, skip_summary
from .cache import TokenCache, build_caches, condition_counts, open_pieces, split_names, tokenizer_for
from .composers import UNKNOWN, canonical_composer
from .grammar import MusicGrammar
from .sources import list_midi_files, load_source, mix_sources, split_of, tokenizer_for_sources
from .tokenizer import InvalidMidiError, MusicTokenizer, load_score

__all__ = [
    "UNKNOWN",
    "BlockCollator",
    "BlockPacker",
    "InvalidMidiError",
    "MusicGrammar",
    "MusicTokenizer",
    "TokenBlockStream",
    "TokenCache",
    "build_caches",
    "canonical_composer",
    "condition_counts",
    "evaluation_blocks",
    "list_midi_files",
    "load_score",
    "load_source",
    "mix_sources",
    "open_pieces",
    "pieces_of",
    "skip_summary",
    "split_names",
    "split_of",
    "tokenizer_for",
    "tokenizer_for_sources",
]
