"""The `midi-generation` pipeline: MIDI from any causal LM over our tokens, conditioned on a
composer and, for a model trained with them, a genre, a tempo and a mode.

This file ships beside exported models as Hub remote code, so it uses only torch,
transformers, miditok and symusic. It reads the music tokenizer saved beside the model:
miditok's `tokenizer.json` and `music_tokenizer.json`, which describes the condition tokens
and the decoding grammar (as tables, so nothing here re-derives them).

Sampling runs its own loop over the model's forward and cache instead of `generate`,
for two things `generate` cannot do for these models: classifier-free guidance with both
branches in one batched forward, and a sliding window for models with learned positions
(GPT-2), so any length works for every family. GPT-2 keeps its keys and values in buffers
sized to the call (`PreallocatedLayer`): transformers' `DynamicCache` concatenates the whole
cache into new memory at every step. A `NoteStreamer` passed as `streamer=`
receives the tokens as they are sampled and hands out the notes they complete.
"""

from __future__ import annotations

import json
import queue
import re
import struct
import time
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

import miditok
import symusic
import torch
from tqdm.auto import tqdm
from transformers import (
    Cache,
    LogitsProcessor,
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    Pipeline,
    StaticCache,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.cache_utils import DynamicLayer
from transformers.utils import cached_file

from .musicxml import MISSING_MUSIC21, music21_available, score_to_musicxml

MIDI_FILE = "tokenizer.json"
CONDITIONS_FILE = "music_tokenizer.json"
WORD_MARKER = "\u2581"  # miditok's BPE word marker: an id that stands for no token
# As the tokenizer's MAX_QUARTER_NOTES (this file is the Hub's remote code: it stands alone): 11
# times the longest real piece; a damaged time value spans millions, which take up to half a minute to encode.
MAX_PROMPT_QUARTER_NOTES = 100_000


def name_key(name: str) -> str:
    """A spelling-insensitive key for matching a user's composer name ("Saint-Saëns" ~ "saint_saens")."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]", "", ascii_name.lower())


class GrammarLogitsProcessor(LogitsProcessor):
    """Sets the score of every token that may not follow the last one to -inf.

    `grammar` is the table description saved with the tokenizer: per id the state of its
    first and last REMI token, and which state may follow which.
    """

    def __init__(self, grammar: dict[str, list]) -> None:
        follows = torch.tensor(grammar["follows"], dtype=torch.bool)
        self.allowed = follows[:, torch.tensor(grammar["first_state"])]  # [states, vocab]
        self.last_state = torch.tensor(grammar["last_state"])

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.allowed.device != input_ids.device:  # once, not at every step
            self.allowed, self.last_state = self.allowed.to(input_ids.device), self.last_state.to(input_ids.device)
        mask = self.allowed[self.last_state[input_ids[:, -1]]]
        vocab = scores.shape[-1]
        if mask.shape[-1] < vocab:  # a model with a padded embedding matrix: extra ids never allowed
            mask = torch.nn.functional.pad(mask, (0, vocab - mask.shape[-1]), value=False)
        return scores.masked_fill(~mask[:, :vocab], float("-inf"))


class PreallocatedLayer(DynamicLayer):
    """A dynamic cache layer whose keys and values fill buffers allocated once, for `capacity`
    positions: attention sees the filled part, as with `DynamicLayer`, without its concatenation,
    which copies the whole cache into new memory at every step. Measured with the bundled GPT-2,
    28 rows and 768 new tokens on 2 cores: that copy took 213 s, 92 s of it system time (the
    kernel mapping and zeroing freed pages again)."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self.key_buffer = key_states.new_empty(*key_states.shape[:-2], self.capacity, key_states.shape[-1])
        self.value_buffer = value_states.new_empty(*value_states.shape[:-2], self.capacity, value_states.shape[-1])
        self.keys, self.values = self.key_buffer[..., :0, :], self.value_buffer[..., :0, :]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start = self.keys.shape[-2]
        end = start + key_states.shape[-2]
        if end > self.capacity:
            raise ValueError(f"the cache holds {self.capacity} positions, not {end}: reset it first")
        self.key_buffer[..., start:end, :].copy_(key_states)
        self.value_buffer[..., start:end, :].copy_(value_states)
        self.keys, self.values = self.key_buffer[..., :end, :], self.value_buffer[..., :end, :]
        return self.keys, self.values

    def reset(self) -> None:
        """Empty, keeping the buffers."""
        if self.is_initialized:
            self.keys, self.values = self.key_buffer[..., :0, :], self.value_buffer[..., :0, :]


def guide(logits: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: rows `[:B]` conditional, `[B:]` unconditional, in log-probabilities.

    `scale` 1 gives the conditional distribution; larger values push away from the
    unconditional one.
    """
    conditional, unconditional = logits.log_softmax(-1).chunk(2)
    return unconditional + scale * (conditional - unconditional)


class MusicVocabulary:
    """The saved music tokenizer, read with miditok alone: condition ids, grammar, MIDI <-> ids."""

    def __init__(self, name_or_path: str) -> None:
        """Condition kinds and their prefixes come from the file; one saved before there were
        several kinds holds only `Composer_` tokens."""
        files = {}
        for name in (MIDI_FILE, CONDITIONS_FILE):
            files[name] = cached_file(name_or_path, name, _raise_exceptions_for_missing_entries=False)
            if files[name] is None:
                raise FileNotFoundError(
                    f"no music tokenizer beside the model: looked for {MIDI_FILE} and {CONDITIONS_FILE} in "
                    f"{name_or_path} (offline: in the local Hugging Face cache); save one there with "
                    "MusicTokenizer.save_pretrained, or pass music_tokenizer="
                )
        self.base = miditok.REMI(params=files[MIDI_FILE])
        description = json.loads(Path(files[CONDITIONS_FILE]).read_text())
        if "grammar" not in description:
            raise ValueError(f"{CONDITIONS_FILE} in {name_or_path} has no grammar: save the tokenizer again")
        self.bos_token_id = description["bos_token_id"]
        self.eos_token_id = description["eos_token_id"]
        self.pad_token_id = description["pad_token_id"]
        self.grammar = description["grammar"]
        prefixes = description.get("condition_kinds", {"composer": "Composer_"})
        self.kinds = list(prefixes)  # in the order their tokens follow BOS
        self.conditions: dict[str, dict[str, int]] = {kind: {} for kind in self.kinds}  # kind -> name -> id
        for token, i in description["condition_tokens"].items():
            kind = next(kind for kind, prefix in prefixes.items() if token.startswith(prefix))
            self.conditions[kind][token.removeprefix(prefixes[kind])] = i
        self.unknown = description["unknown_composer"]
        self.tempo_buckets: dict[str, float | None] = description.get("tempo_buckets", {})
        self.training_pieces: dict[str, int] = description.get("training_pieces", {})  # per composer, if recorded
        self.condition_pieces: dict[str, dict[str, int]] = description.get("condition_pieces", {})  # other kinds
        self._lookup = {kind: {name_key(name): name for name in names} for kind, names in self.conditions.items()}
        for alias, name in description["composer_aliases"].items():
            if name in self.conditions["composer"]:
                self._lookup["composer"].setdefault(name_key(alias), name)
        self.music_size = min(i for names in self.conditions.values() for i in names.values())  # below: miditok's
        marker = self.base.vocab_model.get(WORD_MARKER) if self.base.is_trained else None
        self._skipped = {self.bos_token_id, self.eos_token_id, self.pad_token_id, marker}

    @property
    def composers(self) -> list[str]:
        return self.values("composer")

    def values(self, kind: str) -> list[str]:
        """The values of a condition kind the model knows (not `Unknown`)."""
        return [name for name in self.conditions.get(kind, {}) if name != self.unknown]

    def most_trained(self) -> list[str]:
        """The composers, those with the most training pieces first (the ones worth asking for)."""
        return sorted(self.composers, key=lambda name: (-self.training_pieces.get(name, 0), name))

    def condition_id(self, kind: str, value: str | float | None) -> int:
        """Id of a condition token (None: that condition left open; a tempo may be in beats per
        minute); an unknown value, or a kind the model was not trained with, is an error."""
        if kind not in self.conditions:
            raise ValueError(f"this model has no {kind} condition: it was trained with {', '.join(self.kinds)}")
        if isinstance(value, (int, float)) and kind == "tempo" and self.tempo_buckets:
            value = next(name for name, bound in self.tempo_buckets.items() if bound is None or value < bound)
        if value is None or value == "":
            return self.conditions[kind][self.unknown]
        name = self._lookup[kind].get(name_key(str(value)))
        if name is None:
            raise ValueError(
                f"unknown {kind} {value!r}: this model knows {', '.join(self.values(kind)) or 'none'} "
                f"(or None or {self.unknown!r} for no {kind})"
            )
        return self.conditions[kind][name]

    def prefix(self, conditions: dict[str, str | float | None]) -> list[int]:
        """BOS and the condition tokens of `conditions` (kind -> value, a kind left out is open)."""
        for kind, value in conditions.items():
            if value is not None and kind not in self.conditions:
                self.condition_id(kind, value)  # raises: the model has no such condition
        return [self.bos_token_id, *(self.condition_id(kind, conditions.get(kind)) for kind in self.kinds)]

    def encode(self, score: symusic.Score) -> list[int]:
        return [i for i in self.base.encode(score).ids if i not in self._skipped]

    def decode(self, ids: list[int]) -> symusic.Score:
        music = [i for i in ids if i < self.music_size and i not in self._skipped]
        return self.base.decode(music) if music else symusic.Score(self.base.time_division)


class NoteStreamer:
    """The notes of a pipeline call while it samples, in transformers' streamer convention.

    The pipeline calls `put` with the rows' ids (first the whole prompt, then each step's new
    tokens) and `end` when it stops. Every `interval` seconds, and at the end, the rows that
    grew are decoded and the notes they completed since the last look are queued; iterate over
    the streamer from another thread than the call's (as with `TextIteratorStreamer`) to get
    `{"row", "notes", "score"}` items: the row (in the call's order of composers and samples),
    its new notes (`start` and `duration` in quarter notes: a tempo token sampled later can
    still change a note's seconds; `pitch`, `velocity`, `program`), and the row's whole score so
    far (for a growing piano roll). Decoding from the start of the
    row costs a few milliseconds, hence the interval instead of a decode per token. Together,
    the streamed notes of a row are the notes of its result.
    """

    def __init__(self, generator: MidiGenerationPipeline, interval: float = 0.1, timeout: float | None = None):
        self.vocabulary = generator.vocabulary
        self.interval, self.timeout = interval, timeout
        self.rows: list[list[int]] = []
        self.finished: list[bool] = []
        self.emitted: list[Counter] = []
        self.grown: set[int] = set()
        self.last_look = 0.0
        self.items: queue.Queue = queue.Queue()

    def put(self, value: torch.Tensor) -> None:
        """The prompt (`[rows, length]`) on the first call, then one new id per row (`[rows]`)."""
        if not self.rows:
            self.rows = [list(row) for row in value.tolist()]
            self.finished = [False] * len(self.rows)
            self.emitted = [Counter() for _ in self.rows]
            self.grown = set(range(len(self.rows)))
        else:
            for row, token in enumerate(value.tolist()):
                if not self.finished[row]:
                    self.rows[row].append(token)
                    self.finished[row] = token == self.vocabulary.eos_token_id
                    self.grown.add(row)
        if time.perf_counter() - self.last_look >= self.interval:
            self.look()

    def end(self) -> None:
        self.look()
        self.items.put(None)

    def look(self) -> None:
        """Decode the rows that grew and queue the notes they completed."""
        for row in sorted(self.grown):
            score = self.vocabulary.decode(self.rows[row])
            notes = Counter(note_key(track, note) for track in score.tracks for note in track.notes)
            new = notes - self.emitted[row]
            if new:
                self.emitted[row] = notes
                self.items.put({"row": row, "notes": notes_in_quarters(score, new), "score": score})
        self.grown.clear()
        self.last_look = time.perf_counter()

    def __iter__(self) -> NoteStreamer:
        return self

    def __next__(self) -> dict[str, Any]:
        item = self.items.get(timeout=self.timeout)
        if item is None:
            raise StopIteration
        return item


def note_key(track, note) -> tuple[int, int, int, int, int]:
    return note.time, note.duration, note.pitch, note.velocity, track.program


def notes_in_quarters(score: symusic.Score, keys: Counter) -> list[dict[str, Any]]:
    """The notes of `score` named by `keys` (from `note_key`), timed in quarter notes, in order of onset."""
    wanted, notes = keys.copy(), []
    for track, timed in zip(score.tracks, score.to("quarter").tracks, strict=True):
        for note, in_quarters in zip(track.notes, timed.notes, strict=True):
            key = note_key(track, note)
            if wanted[key] > 0:
                wanted[key] -= 1
                notes.append(
                    {
                        "start": in_quarters.time,
                        "duration": in_quarters.duration,
                        "pitch": note.pitch,
                        "velocity": note.velocity,
                        "program": track.program,
                    }
                )
    return sorted(notes, key=lambda note: (note["start"], note["pitch"]))


# Copied from tokenization.tokenizer.cut_track (this file is Hub remote code: it imports nothing of ours)
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


def read_prompt(prompt: str | Path | bytes | symusic.Score) -> symusic.Score:
    """A MIDI path, MIDI bytes or Score; anything else is an error that says so."""
    if isinstance(prompt, symusic.Score):
        return prompt
    try:
        data = Path(prompt).read_bytes() if isinstance(prompt, (str, Path)) else bytes(prompt)
        if problem := cut_track(data):
            raise ValueError(problem)
        score = symusic.Score.from_midi(data)
    except Exception as error:  # symusic reports its parser's message as RuntimeError/ValueError
        raise ValueError(f"the prompt is not a readable MIDI file: {str(error).splitlines()[0]}") from error
    if score.ticks_per_quarter < 1:
        raise ValueError(f"the prompt's header gives {score.ticks_per_quarter} ticks per quarter note: a damaged file")
    if score.start() < 0:  # symusic added a damaged delta time up past what its integers hold
        raise ValueError(f"the prompt has an event at tick {score.start():,}, before its start: a damaged file")
    if (quarters := score.end() / score.ticks_per_quarter) > MAX_PROMPT_QUARTER_NOTES:
        raise ValueError(
            f"the prompt spans {quarters:,.0f} quarter notes (a damaged time value?); "
            f"a prompt may span {MAX_PROMPT_QUARTER_NOTES:,}"
        )
    return score


class MidiGenerationPipeline(Pipeline):
    """Generate MIDI for one or more composers, optionally continuing a prompt.

    ```python
    generator = pipeline("midi-generation", model="path/or/repo", trust_remote_code=True)
    [piece] = generator(composer="Bach", max_new_tokens=1000, seed=0)
    open("bach.mid", "wb").write(piece["midi"])
    ```
    A model trained with more conditions (MidiCaps' genres, tempo buckets, modes) takes any
    subset of them: `generator(genre="jazz", tempo="fast")`, a tempo also in beats per minute;
    a condition left out is open. Each result holds `score` (symusic Score), `midi` (bytes),
    `tokens` (ids: BOS, the condition tokens, the prompt's tokens, then the new ones),
    `composer`, `conditions` (every condition asked for, by kind),
    `new_tokens` (how many were generated) and `seconds` (of music), and with `musicxml=True`
    `musicxml` (bytes: the score for MuseScore or Sibelius, on the tokenizer's grid; needs
    music21); a prompt's own notes are part of the score. A call generates `max_new_tokens`
    tokens: a model's end of piece comes too early to make music of (often after a few bars),
    so `min_new_tokens` (0 lets a row end at the model's EOS) is the way to allow it.
    """

    _load_tokenizer = False
    _load_processor = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False

    def __init__(self, *args, music_tokenizer: str | Path | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        source = music_tokenizer or self.model.name_or_path
        if not source:
            raise ValueError("the model was not loaded from a folder or repo: pass music_tokenizer=<folder or repo>")
        self.vocabulary = MusicVocabulary(str(source))
        self.grammar = GrammarLogitsProcessor(self.vocabulary.grammar)  # built once, reused by every call
        if self.device.type == "cpu" and self.model.dtype in (torch.float16, torch.bfloat16):
            self.model.float()  # half precision on CPU is slow, and not every kernel has it
        self.window = getattr(self.model.config, "n_positions", None)  # learned positions: slide past them

    def save_pretrained(self, save_directory: str | Path, **kwargs) -> None:
        """As transformers' own, with `AutoModelForCausalLM` as the folder's model class: where our
        package is imported the task loads names with its `load_model` (which also takes LoRA
        adapter folders), a class that the folder's remote code cannot import."""
        super().save_pretrained(save_directory, **kwargs)
        for task in self.model.config.custom_pipelines.values():
            task["pt"] = ("AutoModelForCausalLM",)
        self.model.config.save_pretrained(save_directory)

    def __call__(
        self,
        composer: str | list[str] | None = None,
        *,
        genre: str | None = None,
        tempo: str | float | None = None,
        mode: str | None = None,
        **kwargs,
    ) -> list[dict[str, Any]]:
        """`composer`: a name, a list of names (one batch), or None (no composer); `genre`,
        `tempo`, `mode`: one value each for every row, or None (open)."""
        composers = composer if isinstance(composer, (list, tuple)) else [composer]
        if not composers:
            raise ValueError("composer=[]: give a name, a list of names, or None (no composer)")
        others = {kind: value for kind, value in (("genre", genre), ("tempo", tempo), ("mode", mode)) if value}
        inputs = {"composers": list(composers), "conditions": others, "prompt": kwargs.pop("prompt", None)}
        streamer = kwargs.get("streamer")
        try:
            return super().__call__(inputs, **kwargs)
        finally:  # however the call ends (an unreadable prompt fails before sampling), its stream ends
            if streamer is not None:
                streamer.end()

    def _sanitize_parameters(
        self,
        max_new_tokens: int | None = None,
        min_new_tokens: int | None = None,
        num_return_sequences: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        guidance_scale: float | None = None,
        guidance_conditions: str | list[str] | None = None,
        grammar: bool | None = None,
        seed: int | None = None,
        progress_bar: bool | None = None,
        streamer: NoteStreamer | None = None,
        static_cache: bool | None = None,
        musicxml: bool | None = None,
    ) -> tuple[dict, dict, dict]:
        preprocess = {} if num_return_sequences is None else {"num_return_sequences": num_return_sequences}
        given = {
            "max_new_tokens": max_new_tokens,
            "min_new_tokens": min_new_tokens,
            "temperature": temperature,
            "top_k": top_k,
            "top_p": top_p,
            "guidance_scale": guidance_scale,
            "guided_slots": self._guided_slots(guidance_conditions),
            "grammar": grammar,
            "seed": seed,
            "progress_bar": progress_bar,
            "streamer": streamer,
            "static_cache": static_cache,
        }
        if musicxml and not music21_available():  # before sampling, not after
            raise ImportError(MISSING_MUSIC21)
        postprocess = {} if musicxml is None else {"musicxml": musicxml}
        return preprocess, {k: v for k, v in given.items() if v is not None}, postprocess

    def _guided_slots(self, kinds: str | list[str] | None) -> list[int] | None:
        """The prefix positions guidance's unconditional branch leaves open: those of `kinds`
        (a condition, or a list), or with None every condition's."""
        if kinds is None:
            return None
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        unknown = [kind for kind in kinds if kind not in self.vocabulary.kinds]
        if unknown or not kinds:
            raise ValueError(
                f"guidance_conditions={kinds}: name conditions of this model ({', '.join(self.vocabulary.kinds)})"
            )
        return [1 + self.vocabulary.kinds.index(kind) for kind in kinds]

    def preprocess(self, inputs: dict, num_return_sequences: int = 1) -> dict[str, Any]:
        if num_return_sequences < 1:
            raise ValueError(f"num_return_sequences must be at least 1, not {num_return_sequences}")
        composers = [name for name in inputs["composers"] for _ in range(num_return_sequences)]
        prefixes = [self.vocabulary.prefix({"composer": name, **inputs["conditions"]}) for name in composers]
        music = [] if inputs["prompt"] is None else self.vocabulary.encode(read_prompt(inputs["prompt"]))
        input_ids = torch.tensor([[*prefix, *music] for prefix in prefixes])
        return {"input_ids": input_ids, "composers": composers, "conditions": inputs["conditions"]}

    def _forward(
        self,
        model_inputs: dict[str, Any],
        max_new_tokens: int = 512,
        min_new_tokens: int | None = None,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        guidance_scale: float = 1.0,
        guided_slots: list[int] | None = None,
        grammar: bool = True,
        seed: int | None = None,
        progress_bar: bool = False,
        streamer: NoteStreamer | None = None,
        static_cache: bool | None = None,
    ) -> dict[str, Any]:
        if max_new_tokens < 1 or temperature <= 0:
            raise ValueError(f"max_new_tokens ({max_new_tokens}) and temperature ({temperature}) must be positive")
        if not 0 < top_p <= 1 or top_k < 0:
            raise ValueError(f"top_p is a probability mass in (0, 1] ({top_p}) and top_k a count >= 0 ({top_k})")
        min_new_tokens = max_new_tokens if min_new_tokens is None else min_new_tokens
        prompts = model_inputs["input_ids"]
        processors = self._processors(prompts.shape[1], min_new_tokens, temperature, top_k, top_p, grammar)
        generator = torch.Generator(self.device)
        generator.manual_seed(seed) if seed is not None else generator.seed()
        steps = tqdm(range(max_new_tokens), desc="generating", unit="token", disable=not progress_bar)
        cache = self._cache(min(prompts.shape[1] + max_new_tokens, self.window or 0), static_cache)
        slots = range(1, 1 + len(self.vocabulary.kinds)) if guided_slots is None else guided_slots
        tokens = self._sample(prompts, steps, processors, generator, (guidance_scale, list(slots)), streamer, cache)
        return {
            "tokens": tokens,
            "composers": model_inputs["composers"],
            "conditions": model_inputs["conditions"],
            "prompt_length": prompts.shape[1],
        }

    def _cache(self, context: int, static: bool | None) -> Cache | None:
        """Where GPT-2 keeps its keys and values for a call of `context` positions (None: a
        recurrent model's own cache): buffers of that size, filled as the call goes
        (`PreallocatedLayer`), or with `static=True` transformers' `StaticCache`, which attends
        over all of them at every step."""
        if not context:
            return None
        if static:
            return StaticCache(config=self.model.config, max_cache_len=context)
        return Cache(layers=[PreallocatedLayer(context) for _ in range(self.model.config.num_hidden_layers)])

    def _sample(
        self,
        prompts: torch.Tensor,
        steps: tqdm,
        processors: LogitsProcessorList,
        generator: torch.Generator,
        guidance: tuple[float, list[int]],
        streamer: NoteStreamer | None,
        cache: Cache | None,
    ) -> torch.Tensor:
        """The sampling loop: the prompts with their new tokens, row by row, in one buffer written
        in place (with guidance, `(scale, prefix positions)`, the unconditional branch's rows after
        them: the same rows with those positions' conditions open)."""
        rows, length = prompts.shape
        guidance_scale, slots = guidance
        guided = guidance_scale != 1.0
        tokens = prompts.new_empty((2 if guided else 1) * rows, length + len(steps))
        tokens[:rows, :length] = prompts
        if guided:
            tokens[rows:, :length] = prompts
            for slot in slots:
                tokens[rows:, slot] = self.vocabulary.condition_id(self.vocabulary.kinds[slot - 1], None)
        done = torch.zeros(rows, dtype=torch.bool, device=self.device)
        if streamer is not None:
            streamer.put(prompts.cpu())
        step_ids, context = tokens[:, :length], length
        for _ in steps:
            if self.window is not None and context > self.window:  # context: the cache after this forward
                step_ids = self._window_ids(tokens[:, :length])  # prefill again on the newest tokens
                context = step_ids.shape[1]
                cache.reset()  # the same buffers, filled again from the first position
            output = self.model(input_ids=step_ids, cache=cache, use_cache=True, logits_to_keep=1)
            cache, logits = output.cache, output.logits[:, -1].float()
            scores = processors(tokens[:rows, :length], guide(logits, guidance_scale) if guided else logits)
            next_ids = torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(1)
            done |= next_ids == self.vocabulary.eos_token_id
            next_ids.masked_fill_(done, self.vocabulary.eos_token_id)  # finished rows: cut off later
            tokens[:, length] = next_ids.repeat(2) if guided else next_ids
            step_ids, length, context = tokens[:, length : length + 1], length + 1, context + 1
            if streamer is not None:
                streamer.put(next_ids.cpu())
            if done.all():
                break
        return tokens[:rows, :length]

    def _processors(
        self, start: int, min_new_tokens: int, temperature: float, top_k: int, top_p: float, grammar: bool
    ) -> LogitsProcessorList:
        processors = LogitsProcessorList()
        if min_new_tokens:
            eos = self.vocabulary.eos_token_id
            processors.append(MinNewTokensLengthLogitsProcessor(start, min_new_tokens, eos, device=self.device))
        if grammar:
            processors.append(self.grammar)
        if temperature != 1.0:
            processors.append(TemperatureLogitsWarper(temperature))
        if top_k:
            processors.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p))
        return processors

    def _window_ids(self, tokens: torch.Tensor) -> torch.Tensor:
        """BOS and conditions, then the newest tokens: half a window, so the next prefill is far off."""
        prefix = 1 + len(self.vocabulary.kinds)
        return torch.cat([tokens[:, :prefix], tokens[:, prefix:][:, -max(self.window // 2 - prefix, 1) :]], dim=1)

    def postprocess(self, model_outputs: dict[str, Any], musicxml: bool = False) -> list[dict[str, Any]]:
        grid = max(self.vocabulary.base.config.beat_res.values())  # the finest positions per quarter note
        results = []
        for row, composer in zip(model_outputs["tokens"].tolist(), model_outputs["composers"], strict=True):
            ids = row[: row.index(self.vocabulary.eos_token_id) + 1] if self.vocabulary.eos_token_id in row else row
            score = self.vocabulary.decode(ids)
            new_tokens = len(ids) - model_outputs["prompt_length"]
            results.append(
                {
                    "score": score,
                    "midi": score.dumps_midi(),
                    "tokens": ids,
                    "composer": composer,
                    "conditions": {"composer": composer, **model_outputs["conditions"]},
                    "new_tokens": new_tokens,
                    "seconds": score.to("second").end() if score.note_num() else 0.0,
                }
            )
            if musicxml:
                results[-1]["musicxml"] = score_to_musicxml(score, grid)
        return results
