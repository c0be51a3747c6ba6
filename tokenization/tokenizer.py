"""The music tokenizer: miditok REMI plus composer condition tokens.

Ids `[0, len(base))` are miditok's own (its special tokens PAD/BOS/EOS first, then
REMI tokens, then learned BPE tokens); the condition tokens `Composer_<name>` follow,
`Composer_Unknown` first. Keeping them outside miditok's vocabulary means that BPE can
be trained without touching them and that a composer added later just takes the next
id, so the ids of a trained model never move.

A saved folder holds miditok's `tokenizer.json` (readable by miditok alone) and
`music_tokenizer.json`, a plain JSON description of the condition tokens, of how many
training pieces each composer had (`training_pieces`) and of the decoding grammar, so the
Hub pipeline can use the folder with nothing but miditok installed.
"""

from __future__ import annotations

import hashlib
import json
import struct
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Union

import miditok
import symusic
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .composers import ALIASES, HYPHENATED, UNKNOWN, canonical_composer
from .grammar import CONDITION, MusicGrammar, token_type
from .hub import hub_access, looks_local

BASE_FILE = "tokenizer.json"
CONDITIONS_FILE = "music_tokenizer.json"
COMPOSER_PREFIX = "Composer_"
# The longest piece of the classical set and the Lakh sample spans 9,035 quarter notes (Bach's Art
# of Fugue in one file); past 11 times that, a file's times are damaged (`time_problem`).
MAX_QUARTER_NOTES = 100_000
# miditok trains BPE per bar with a Metaspace pre-tokenizer: each bar's bytes start with
# this marker, which, when BPE leaves it alone, becomes an id that stands for no token.
WORD_MARKER = "\u2581"

MidiInput = Union[str, Path, bytes, "symusic.Score"]  # noqa: UP007 (symusic.Score is a factory, not a class)


TOKENIZER_INSTEAD = (
    "give a tokenizer folder (every model folder holds one, e.g. modeling/pretrained/gpt2-small-classical), "
    "or build one with scripts/build_tokenizer.py"
)


class InvalidMidiError(ValueError):
    """A MIDI input that cannot be used; `reason` is one of "empty", "unreadable", "no notes",
    "damaged time"."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def default_base_config() -> miditok.TokenizerConfig:
    """REMI as the design asks: all programs in one stream, tempos, time signatures,
    rests, 16 velocity bins, and BOS/EOS/PAD as miditok special tokens."""
    return miditok.TokenizerConfig(
        use_programs=True,
        one_token_stream_for_programs=True,
        use_tempos=True,
        use_time_signatures=True,
        use_rests=True,
        num_velocities=16,
        special_tokens=["PAD", "BOS", "EOS"],
    )


def load_score(midi: MidiInput) -> symusic.Score:
    """Read a MIDI path, MIDI bytes or Score; raise `InvalidMidiError` saying why it is unusable."""
    if isinstance(midi, symusic.Score):
        score = midi
    else:
        data = Path(midi).read_bytes() if isinstance(midi, (str, Path)) else bytes(midi)
        if not data:
            raise InvalidMidiError("empty", "0 bytes")
        if problem := cut_track(data):
            raise InvalidMidiError("unreadable", problem)
        try:
            score = symusic.Score.from_midi(data)
        except Exception as error:  # symusic raises RuntimeError/ValueError with its parser's text
            raise InvalidMidiError("unreadable", str(error).splitlines()[0]) from error
    if problem := time_problem(score):
        raise InvalidMidiError("damaged time", problem)
    if score.note_num() == 0:
        raise InvalidMidiError("no notes")
    return score


def time_problem(score: symusic.Score) -> str | None:
    """What is wrong with a score's times, else None (each found by the fuzzer). A header can give
    no time unit (miditok divides by it); one damaged delta time can put an event before the
    start (symusic adds it up past what its integers hold; miditok then fails with a KeyError)
    or millions of quarter notes out (which the tokenizer writes out bar by bar: 5.5 million
    took 33 s and 930,000 tokens)."""
    if score.ticks_per_quarter < 1:
        return f"{score.ticks_per_quarter} ticks per quarter note"
    if score.start() < 0:
        return f"an event at tick {score.start():,}, before the start"
    if (quarters := score.end() / score.ticks_per_quarter) > MAX_QUARTER_NOTES:
        return f"spans {quarters:,.0f} quarter notes, the longest real piece about 9,000"
    return None


def cut_track(data: bytes) -> str | None:
    """What is cut when a track the MIDI header announces runs past the end of the file, else None.

    symusic parses such a file past its end: the same bytes then fail with a different message
    each time, now and then give a score of garbage notes, or end the process with a
    segmentation fault. Trailing bytes after the last track (old files carry padding) are left to
    symusic.
    """
    if data[:4] != b"MThd" or len(data) < 14:
        return None  # symusic names what is wrong with the header
    (tracks,) = struct.unpack_from(">H", data, 10)
    position, found = 8 + struct.unpack_from(">I", data, 4)[0], 0
    while found < tracks:
        if position + 8 > len(data):
            return f"truncated: {found} of {tracks} tracks before the end of the file"
        kind, (length,) = data[position : position + 4], struct.unpack_from(">I", data, position + 4)
        if position + 8 + length > len(data):
            return (
                f"truncated: track {found + 1} of {tracks} runs {position + 8 + length - len(data)} bytes past the end"
            )
        found += kind == b"MTrk"
        position += 8 + length
    return None


class MusicTokenizer:
    """REMI tokens of a piece framed as `BOS, Composer_<name>, <music>, EOS`."""

    def __init__(self, base: miditok.REMI | None = None, composers: Iterable[str] = ()) -> None:
        self.base = base if base is not None else miditok.REMI(default_base_config())
        for name in ("PAD_None", "BOS_None", "EOS_None"):
            if name not in self.base.vocab:
                raise ValueError(
                    f"the miditok tokenizer lacks {name}: create it with special_tokens=['PAD', 'BOS', 'EOS']"
                )
        self._conditions: list[str] = [UNKNOWN]
        self.add_composers(composers)
        # Training pieces per composer (`Unknown` included) of the data behind the tokenizer, or
        # behind the model it was saved with: which composer tokens a model has learned well.
        # Not part of the ids: the fingerprint ignores it.
        self.training_pieces: dict[str, int] = {}

    # ----- vocabulary -----
    @property
    def base_vocab_size(self) -> int:
        """Size of miditok's vocabulary, BPE tokens included: the first condition token's id."""
        return len(self.base)

    @property
    def vocab_size(self) -> int:
        return self.base_vocab_size + len(self._conditions)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def pad_token_id(self) -> int:
        return self.base.vocab["PAD_None"]

    @property
    def bos_token_id(self) -> int:
        return self.base.vocab["BOS_None"]

    @property
    def eos_token_id(self) -> int:
        return self.base.vocab["EOS_None"]

    @property
    def composers(self) -> list[str]:
        """The canonical composer names this tokenizer has tokens for (not `Unknown`)."""
        return self._conditions[1:]

    @property
    def condition_token_ids(self) -> dict[str, int]:
        return {COMPOSER_PREFIX + name: self.base_vocab_size + i for i, name in enumerate(self._conditions)}

    def add_composers(self, names: Iterable[str]) -> list[int]:
        """Add condition tokens for new composers (e.g. before fine-tuning); return their ids.

        Known names and aliases are ignored. A model trained with this tokenizer needs
        `model.resize_token_embeddings(len(tokenizer))` afterwards.
        """
        added = []
        for name in sorted({canonical_composer(n) for n in names} - set(self._conditions)):
            self._conditions.append(name)
            added.append(self.base_vocab_size + len(self._conditions) - 1)
        return added

    def fingerprint(self) -> str:
        """A digest of everything that decides the ids (miditok's configuration, vocabulary and
        BPE model, and the condition tokens): token ids stored for one tokenizer are valid for
        another only when their fingerprints are equal."""
        with tempfile.TemporaryDirectory() as folder:
            self.base.save(Path(folder) / BASE_FILE)
            base = (Path(folder) / BASE_FILE).read_bytes()
        return hashlib.sha256(base + json.dumps(self._conditions).encode()).hexdigest()[:16]

    def condition_name(self, composer: str | None) -> str | None:
        """The name of `composer`'s token here: its canonical name, or the spelling a tokenizer
        made before an alias merged that spelling into the canonical name has a token for (its
        models keep working); None when there is neither."""
        name = canonical_composer(composer)
        if name in self._conditions:
            return name
        return next((old for old, new in ALIASES.items() if new == name and old in self._conditions), None)

    def composer_token_id(self, composer: str | None) -> int:
        """Id of `Composer_<name>` (None gives `Composer_Unknown`); an unknown name is an error."""
        name = self.condition_name(composer)
        if name is None:
            known = ", ".join(self.composers) or "none"
            raise ValueError(
                f"unknown composer {composer!r}: this tokenizer knows {known}; "
                "add it with MusicTokenizer.add_composers"
            )
        return self.base_vocab_size + self._conditions.index(name)

    def id_to_token(self, token_id: int) -> str:
        """The token string of an id: a condition token, or miditok's (BPE) token."""
        if token_id >= self.base_vocab_size:
            return COMPOSER_PREFIX + self._conditions[token_id - self.base_vocab_size]
        return "+".join(self.base_tokens(token_id))

    def base_tokens(self, token_id: int) -> list[str]:
        """The REMI tokens an id stands for: one, or several for a BPE token."""
        if not self.base.is_trained:
            return [self.base[token_id]]
        seq = miditok.TokSequence(ids=[token_id], are_ids_encoded=True)
        self.base.decode_token_ids(seq)  # sets the tokens too: no need for the slow complete_sequence
        return seq.tokens

    def grammar(self) -> MusicGrammar:
        """Which id may follow which: miditok's graph of REMI token types, lifted to these ids."""
        types = [[token_type(t) for t in self.base_tokens(i)] for i in range(self.base_vocab_size)]
        return MusicGrammar(self.base.tokens_types_graph, types + [[CONDITION]] * len(self._conditions))

    # ----- encoding -----
    def encode(self, midi: MidiInput, composer: str | None = None) -> list[int]:
        """Token ids of a piece: `BOS, Composer_<composer>, <REMI/BPE tokens>, EOS`."""
        condition = self.composer_token_id(composer)
        music = self.base.encode(load_score(midi)).ids
        if self.base.is_trained:  # drop the bare word marker: it carries no music
            marker = self.base.vocab_model.get(WORD_MARKER)
            music = [i for i in music if i != marker]
        return [self.bos_token_id, condition, *music, self.eos_token_id]

    def decode(self, ids: Iterable[int]) -> symusic.Score:
        """A Score from token ids; special and condition tokens are dropped."""
        skip = {self.pad_token_id, self.bos_token_id, self.eos_token_id}
        base_size = self.base_vocab_size  # len(miditok) rebuilds a dict: once, not per id
        music = [int(i) for i in ids if int(i) < base_size and int(i) not in skip]
        return self.base.decode(music) if music else symusic.Score(self.base.time_division)

    def train_bpe(self, vocab_size: int, midis: Iterable[MidiInput]) -> None:
        """Learn BPE merges with miditok's trainer on the given pieces.

        Condition ids move up by the number of new tokens, so train BPE before any model
        uses the tokenizer. Unusable MIDI is skipped.
        """
        with tempfile.TemporaryDirectory() as folder:
            paths = []
            for i, midi in enumerate(midis):
                try:
                    score = load_score(midi)
                except InvalidMidiError:
                    continue
                paths.append(Path(folder, f"{i}.mid"))
                score.dump_midi(paths[-1])
            if not paths:
                raise ValueError("no usable MIDI to train BPE on")
            self.base.train(vocab_size=vocab_size, model="BPE", files_paths=paths)

    # ----- saving and loading -----
    def save_pretrained(self, save_directory: str | Path) -> None:
        """Write `tokenizer.json` (miditok) and `music_tokenizer.json` (condition tokens)."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        self.base.save(folder / BASE_FILE)
        description = {
            "tokenizer_class": type(self).__name__,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "unknown_composer": UNKNOWN,
            "condition_tokens": self.condition_token_ids,
            "training_pieces": dict(sorted(self.training_pieces.items(), key=lambda item: (-item[1], item[0]))),
            "composer_aliases": ALIASES,
            "hyphenated_composers": list(HYPHENATED),
            "grammar": self.grammar().to_dict(),
        }
        (folder / CONDITIONS_FILE).write_text(json.dumps(description, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, revision: str | None = None, **hub_kwargs) -> MusicTokenizer:
        """Load from a folder, or from a Hub repo id (through the Hugging Face cache)."""
        folder = Path(name_or_path)
        if not folder.is_dir():
            if looks_local(str(name_or_path)):
                raise FileNotFoundError(f"no tokenizer folder {name_or_path}: {TOKENIZER_INSTEAD}")
            try:
                validate_repo_id(str(name_or_path))
            except HFValidationError:
                raise FileNotFoundError(
                    f"no tokenizer {name_or_path}: no such folder, nor a Hub repo id (owner/name); {TOKENIZER_INSTEAD}"
                ) from None
            with hub_access("tokenizer", str(name_or_path), TOKENIZER_INSTEAD):
                folder = Path(
                    snapshot_download(
                        str(name_or_path), revision=revision, allow_patterns=[BASE_FILE, CONDITIONS_FILE], **hub_kwargs
                    )
                )
        missing = [name for name in (BASE_FILE, CONDITIONS_FILE) if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"no music tokenizer in {name_or_path}: {', '.join(missing)} missing; "
                "save one there with MusicTokenizer.save_pretrained"
            )
        base = miditok.REMI(params=folder / BASE_FILE)
        description = json.loads((folder / CONDITIONS_FILE).read_text())
        tokenizer = cls(base)
        by_id = sorted(description["condition_tokens"].items(), key=lambda item: item[1])
        tokenizer._conditions = [token.removeprefix(COMPOSER_PREFIX) for token, _ in by_id]
        tokenizer.training_pieces = description.get("training_pieces", {})
        if by_id[0][1] != tokenizer.base_vocab_size or tokenizer._conditions[0] != UNKNOWN:
            raise ValueError(f"{folder / CONDITIONS_FILE} does not match {folder / BASE_FILE}: rebuild the tokenizer")
        return tokenizer

    def push_to_hub(self, repo_id: str, private: bool | None = None, token: str | None = None) -> str:
        """Upload the tokenizer files to a Hub model repo (created if needed); return the commit URL."""
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder)
            commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="Upload music tokenizer")
        return commit.commit_url
