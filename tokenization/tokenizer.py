"""The music tokenizer: miditok REMI plus condition tokens.

Ids `[0, len(base))` are miditok's own (its special tokens PAD/BOS/EOS first, then
REMI tokens, then learned BPE tokens); the condition tokens follow: `Composer_<name>`,
`Composer_Unknown` first, and, in a tokenizer built from data that knows them, `Genre_<name>`,
`TempoBucket_<name>` and `Mode_<name>`, each kind with its own `Unknown` (`conditions.py`).
Keeping them outside miditok's vocabulary means that BPE can be trained without touching them
and that a value added later just takes the next id, so the ids of a trained model never move.

A piece is `BOS`, one condition token per kind the tokenizer has (in `conditions.KINDS`
order), its music, `EOS`: a composer-only tokenizer (all made before other kinds existed)
frames it as `BOS, Composer_<name>, <music>, EOS`, as it always has.

A saved folder holds miditok's `tokenizer.json` (readable by miditok alone) and
`music_tokenizer.json`, a plain JSON description of the condition tokens, of how many
training pieces each composer had (`training_pieces`; `condition_pieces` for the other
kinds' values) and of the decoding grammar, so the
Hub pipeline can use the folder with nothing but miditok installed.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Union

import miditok
import symusic
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .composers import ALIASES, HYPHENATED, UNKNOWN
from .conditions import KINDS, TEMPO_BUCKETS, TOKEN_PREFIXES, canonical_value
from .grammar import CONDITION, MusicGrammar, token_type
from .hub import hub_access, looks_local

BASE_FILE = "tokenizer.json"
CONDITIONS_FILE = "music_tokenizer.json"
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
    """REMI tokens of a piece framed as `BOS, <one token per condition kind>, <music>, EOS`."""

    def __init__(self, base: miditok.REMI | None = None, composers: Iterable[str] = ()) -> None:
        self.base = base if base is not None else miditok.REMI(default_base_config())
        for name in ("PAD_None", "BOS_None", "EOS_None"):
            if name not in self.base.vocab:
                raise ValueError(
                    f"the miditok tokenizer lacks {name}: create it with special_tokens=['PAD', 'BOS', 'EOS']"
                )
        self._conditions: list[tuple[str, str]] = [("composer", UNKNOWN)]  # (kind, name) in id order
        self.add_composers(composers)
        # Training pieces per composer (`Unknown` included) of the data behind the tokenizer, or
        # behind the model it was saved with: which composer tokens a model has learned well.
        # Not part of the ids: the fingerprint ignores it.
        self.training_pieces: dict[str, int] = {}
        self.condition_pieces: dict[str, dict[str, int]] = {}  # the same for each other kind: kind -> value -> n

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
    def kinds(self) -> list[str]:
        """The condition kinds of this tokenizer, in the order their tokens follow BOS."""
        return [kind for kind in KINDS if (kind, UNKNOWN) in self._conditions]

    @property
    def prefix_length(self) -> int:
        """BOS and one condition token per kind: where a sequence's music starts."""
        return 1 + len(self.kinds)

    def values(self, kind: str) -> list[str]:
        """The values of a condition kind this tokenizer has tokens for (not `Unknown`)."""
        return [name for k, name in self._conditions if k == kind and name != UNKNOWN]

    @property
    def composers(self) -> list[str]:
        """The canonical composer names this tokenizer has tokens for (not `Unknown`)."""
        return self.values("composer")

    @property
    def condition_token_ids(self) -> dict[str, int]:
        base = self.base_vocab_size
        return {TOKEN_PREFIXES[kind] + name: base + i for i, (kind, name) in enumerate(self._conditions)}

    def add_conditions(self, kind: str, names: Iterable[str | float]) -> list[int]:
        """Add tokens for new values of a condition kind (and the kind's `Unknown` if it is new);
        return their ids.

        Known values and aliases are ignored. A model trained with this tokenizer needs
        `model.resize_token_embeddings(len(tokenizer))` afterwards; a new kind also lengthens
        every sequence's prefix by one token, which a trained model has to learn.
        """
        new = (
            {canonical_value(kind, n) for n in names} - {name for k, name in self._conditions if k == kind} - {UNKNOWN}
        )
        added = []
        for name in ([UNKNOWN] if (kind, UNKNOWN) not in self._conditions else []) + sorted(new):
            self._conditions.append((kind, name))
            added.append(self.base_vocab_size + len(self._conditions) - 1)
        return added

    def add_composers(self, names: Iterable[str]) -> list[int]:
        """Add condition tokens for new composers (e.g. before fine-tuning); return their ids
        (see `add_conditions`)."""
        return self.add_conditions("composer", names)

    def fingerprint(self) -> str:
        """A digest of everything that decides the ids (miditok's configuration, vocabulary and
        BPE model, and the condition tokens): token ids stored for one tokenizer are valid for
        another only when their fingerprints are equal. Composers are hashed by bare name, as
        before other kinds existed, so that earlier token caches stay valid."""
        with tempfile.TemporaryDirectory() as folder:
            self.base.save(Path(folder) / BASE_FILE)
            base = (Path(folder) / BASE_FILE).read_bytes()
        names = [name if kind == "composer" else TOKEN_PREFIXES[kind] + name for kind, name in self._conditions]
        return hashlib.sha256(base + json.dumps(names).encode()).hexdigest()[:16]

    def condition_name(self, value: str | float | None, kind: str = "composer") -> str | None:
        """The name of `value`'s token here: its canonical name, or for a composer the spelling a
        tokenizer made before an alias merged that spelling into the canonical name has a token for
        (its models keep working); None when there is neither."""
        name = canonical_value(kind, value)
        if (kind, name) in self._conditions:
            return name
        if kind != "composer":
            return None
        spellings = (old for old, new in ALIASES.items() if new == name and ("composer", old) in self._conditions)
        return next(spellings, None)

    def condition_id(self, kind: str, value: str | float | None) -> int:
        """Id of a condition token (None gives the kind's `Unknown`); an unknown value, or a kind
        this tokenizer has not, is an error that names what it knows."""
        if kind not in self.kinds:
            raise ValueError(f"this tokenizer has no {kind} condition: it has {', '.join(self.kinds)}")
        name = self.condition_name(value, kind)
        if name is None:
            known = ", ".join(self.values(kind)) or "none"
            adder = "add_composers" if kind == "composer" else "add_conditions"
            raise ValueError(
                f"unknown {kind} {value!r}: this tokenizer knows {known}; add it with MusicTokenizer.{adder}"
            )
        return self.base_vocab_size + self._conditions.index((kind, name))

    def composer_token_id(self, composer: str | None) -> int:
        """Id of `Composer_<name>` (None gives `Composer_Unknown`); an unknown name is an error."""
        return self.condition_id("composer", composer)

    def prefix_ids(self, conditions: dict[str, str | float | None] | None = None, *, strict: bool = True) -> list[int]:
        """`BOS` and the condition tokens of `conditions` (kind -> value; a kind left out is
        `Unknown`). `strict=False` (labels read from data) takes an unknown value, or a kind this
        tokenizer has not, as `Unknown` instead of failing."""
        conditions = {kind: value for kind, value in (conditions or {}).items() if value is not None}
        if strict:
            for kind in conditions:
                if kind not in self.kinds and canonical_value(kind, conditions[kind]) != UNKNOWN:
                    self.condition_id(kind, conditions[kind])  # raises: no such kind here
        elif conditions:
            conditions = {k: v for k, v in conditions.items() if k in self.kinds and self.condition_name(v, k)}
        return [self.bos_token_id, *(self.condition_id(kind, conditions.get(kind)) for kind in self.kinds)]

    def piece_conditions(self, ids: list[int]) -> dict[str, str]:
        """Kind -> value of a sequence's condition tokens (its prefix)."""
        return dict(self._conditions[i - self.base_vocab_size] for i in ids[1 : self.prefix_length])

    def id_to_token(self, token_id: int) -> str:
        """The token string of an id: a condition token, or miditok's (BPE) token."""
        if token_id >= self.base_vocab_size:
            kind, name = self._conditions[token_id - self.base_vocab_size]
            return TOKEN_PREFIXES[kind] + name
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
    def encode(
        self, midi: MidiInput, composer: str | None = None, *, strict: bool = True, **conditions: str | float | None
    ) -> list[int]:
        """Token ids of a piece: `BOS, Composer_<composer>, <other conditions>, <REMI/BPE tokens>, EOS`
        (`conditions`: genre=, tempo=, mode=, each `Unknown` when left out; `strict` as in
        `prefix_ids`)."""
        prefix = self.prefix_ids({"composer": composer, **conditions}, strict=strict)
        music = self.base.encode(load_score(midi)).ids
        if self.base.is_trained:  # drop the bare word marker: it carries no music
            marker = self.base.vocab_model.get(WORD_MARKER)
            music = [i for i in music if i != marker]
        return [*prefix, *music, self.eos_token_id]

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
            "condition_kinds": {kind: TOKEN_PREFIXES[kind] for kind in self.kinds},
            "tempo_buckets": {name: None if math.isinf(bound) else bound for name, bound in TEMPO_BUCKETS.items()},
            "training_pieces": most_first(self.training_pieces),
            "condition_pieces": {kind: most_first(counts) for kind, counts in self.condition_pieces.items()},
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
        tokenizer._conditions = [_kind_and_name(token) for token, _ in by_id]
        tokenizer.training_pieces = description.get("training_pieces", {})
        tokenizer.condition_pieces = description.get("condition_pieces", {})
        if by_id[0][1] != tokenizer.base_vocab_size or tokenizer._conditions[0] != ("composer", UNKNOWN):
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


def most_first(counts: dict[str, int]) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _kind_and_name(token: str) -> tuple[str, str]:
    """(kind, name) of a condition token such as `Genre_jazz`."""
    kind = next((kind for kind, prefix in TOKEN_PREFIXES.items() if token.startswith(prefix)), None)
    if kind is None:
        raise ValueError(f"condition token {token!r} has none of the prefixes {', '.join(TOKEN_PREFIXES.values())}")
    return kind, token.removeprefix(TOKEN_PREFIXES[kind])
