"""Composer classification data: labelled pieces of a source as windows of token ids.

A classifier window is `BOS, Composer_Unknown, <up to `length` music tokens>`: the frame a
language model sees under condition dropout, so a pretrained backbone fits it and the label
never leaks into the input. Real pieces and generated samples are both read from their
start, so the classifier's accuracy on both compares.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass

import symusic
import torch
from transformers import AutoModelForSequenceClassification

from tokenization.blocks import BlockCollator, as_piece
from tokenization.composers import UNKNOWN
from tokenization.sources import label_of
from tokenization.tokenizer import MusicTokenizer

MIN_MUSIC_TOKENS = 16  # shorter pieces say too little to be labelled


@dataclass
class LabelledPiece:
    music: list[int]  # token ids without BOS, conditions and EOS
    label: str  # its composer, or its value of the condition the classifier learns
    path: str


def composers_by_files(counts: Counter, min_files: int) -> list[str]:
    """Composers (or genres, ...; not `Unknown`) with at least `min_files` pieces in `counts`, most first."""
    return [
        name
        for name, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        if n >= min_files and name != UNKNOWN
    ]


def same_vocabulary(first: MusicTokenizer, second: MusicTokenizer) -> bool:
    """Whether every id means the same token in both, so that ids pass between them as they are."""
    return len(first) == len(second) and all(first.id_to_token(i) == second.id_to_token(i) for i in range(len(first)))


def music_ids(tokenizer: MusicTokenizer, score: symusic.Score) -> list[int]:
    """The music tokens of a score, without its frame (BOS, condition, EOS)."""
    return tokenizer.encode(score)[tokenizer.prefix_length : -1]


def labelled_pieces(
    rows: Iterable[dict],
    tokenizer: MusicTokenizer,
    composers: Collection[str],
    skipped: Counter,
    max_per_composer: int | None = None,
    kind: str = "composer",
) -> list[LabelledPiece]:
    """The pieces of `composers` (or of these values of another condition `kind`) among source
    rows (token-cache or MIDI rows; up to `max_per_composer` each), as music tokens.

    Rows of other composers are passed over before MIDI is parsed; unusable files are
    counted in `skipped`.
    """
    taken: Counter = Counter()
    pieces = []
    for row in rows:
        name = label_of(row, kind)
        if name not in composers or (max_per_composer is not None and taken[name] >= max_per_composer):
            continue
        piece = as_piece(tokenizer, row, skipped)
        if piece is None:
            continue
        music = list(piece["ids"][tokenizer.prefix_length : -1])
        if len(music) < MIN_MUSIC_TOKENS:
            skipped["too short to classify"] += 1
            continue
        taken[name] += 1
        pieces.append(LabelledPiece(music, name, row["path"]))
    return pieces


def frame(tokenizer: MusicTokenizer, music: list[int]) -> list[int]:
    return [*tokenizer.prefix_ids(), *music]


def evaluation_windows(
    pieces: Iterable[LabelledPiece], tokenizer: MusicTokenizer, length: int, per_piece: int = 1
) -> tuple[list[list[int]], list[str]]:
    """(windows, labels): consecutive windows from each piece's start, up to `per_piece`.

    The first window may be shorter than `length` (a short piece); later ones are whole.
    """
    windows, labels = [], []
    for piece in pieces:
        for start in range(0, len(piece.music), length)[:per_piece]:
            chunk = piece.music[start : start + length]
            if start and len(chunk) < length:
                break
            windows.append(frame(tokenizer, chunk))
            labels.append(piece.label)
    return windows, labels


def training_batch(
    pieces: dict[str, list[LabelledPiece]], tokenizer: MusicTokenizer, length: int, size: int, rng: random.Random
) -> tuple[list[list[int]], list[str]]:
    """A class-balanced batch: a composer at random, one of its pieces, a window at a random start.

    Balancing by composer rather than by piece keeps the large classes (Bach has ten times
    Chopin's files) from drowning the per-composer accuracy the evaluation reports.
    """
    names = sorted(pieces)
    windows, labels = [], []
    for _ in range(size):
        name = rng.choice(names)
        music = rng.choice(pieces[name]).music
        start = rng.randrange(max(len(music) - length, 0) + 1)
        windows.append(frame(tokenizer, music[start : start + length]))
        labels.append(name)
    return windows, labels


@torch.no_grad()
def rank_labels(model: torch.nn.Module, windows: list[list[int]], batch_size: int = 32) -> list[list[str]]:
    """For each window of token ids, the classifier's label names, most likely first.

    Windows are right-padded with the config's `pad_token_id`; sequence-classification
    heads read the last token that is not padding.
    """
    model.eval()
    device = next(model.parameters()).device
    collate = BlockCollator(model.config.pad_token_id)
    ranked = []
    for batch in collate.batches([{"input_ids": w} for w in windows], batch_size):
        logits = model(
            input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
        ).logits
        ranked.extend(logits.argsort(dim=-1, descending=True).tolist())
    return [[model.config.id2label[i] for i in row] for row in ranked]


class Judge:
    """The composer classifier (or the classifier of another condition, `condition`), which reads
    music with its own tokenizer."""

    def __init__(self, folder: str, device: str, model_tokenizer: MusicTokenizer) -> None:
        self.model = AutoModelForSequenceClassification.from_pretrained(folder).to(device)
        self.tokenizer = MusicTokenizer.from_pretrained(folder)
        self.window = getattr(self.model.config, "window_tokens", None)
        if self.window is None:
            raise ValueError(f"{folder} has no window_tokens in its config: give a train_classifier.py output folder")
        self.labels = list(self.model.config.label2id)
        self.condition = getattr(self.model.config, "condition", "composer")
        self.shared = same_vocabulary(self.tokenizer, model_tokenizer)

    def read(self, samples: list[list[int]], scores: list[symusic.Score]) -> list[list[int]]:
        """The music tokens of generated samples in the classifier's vocabulary: the model's own ids
        when the vocabularies agree (they decode to the same music; encoding a generated score
        again can fail in miditok), else the score encoded again (no tokens where miditok cannot
        encode it: the classifier then misses that sample)."""
        if self.shared:
            special = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
            return [[i for i in ids[self.tokenizer.prefix_length :] if i not in special] for ids in samples]
        musics = []
        for score in scores:
            try:
                musics.append(music_ids(self.tokenizer, score))
            except Exception:  # miditok fails on some odd scores (durations after a metre change)
                musics.append([])
        return musics

    def rank(self, musics: list[list[int]]) -> list[list[str]]:
        """Labels, best first, for the opening window of each piece; none for a piece without tokens."""
        readable = [music for music in musics if music]
        ranked = iter(rank_labels(self.model, [frame(self.tokenizer, m[: self.window]) for m in readable]))
        return [next(ranked) if music else [] for music in musics]
