"""Likelihood identification: does a model follow the composer (or genre, ...) it is given?

For a held-out window of music by composer c, the model reads the window once after each
candidate composer's prefix `BOS, Composer_k` (one batched forward per candidate), and the
composer whose prefix makes the window most likely is the model's guess. A model that
ignores its condition scores the same under every prefix and guesses one composer for all
windows: mean accuracy per composer = chance. One that uses it names c. The condition gain
is what the true prefix saves, in bits per window, over `Composer_Unknown` (what the
condition adds to the unconditional model that guidance pushes away from) and over a wrong
composer (the mean over the other candidates).

Any condition kind is identified the same way (`kind="genre"`): only that kind's token in the
piece's own prefix changes, the piece's other conditions stay as they are.

Windows are read where the model is asked to continue from a prefix: the opening of each
held-out piece (generation starts there) and its middle (training blocks and GPT-2's
sliding window put the prefix before mid-piece chunks).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from accelerate import Accelerator

from tokenization import BlockCollator, MusicTokenizer
from tokenization.blocks import IGNORE
from tokenization.sources import label_of

from .likelihood import token_nll

POSITIONS = ("opening", "middle")
MIN_TOKENS = 16  # shorter windows say too little about their composer


@dataclass(frozen=True)
class Window:
    music: list[int]  # music tokens, without prefix or EOS
    label: str  # the piece's value of the identified kind
    path: str
    position: str  # "opening" or "middle"
    prefix: tuple[int, ...]  # the piece's BOS and condition tokens


def window_tokens(config, length: int, tokenizer: MusicTokenizer) -> int:
    """`length`, or less where the model has fewer positions (GPT-2) for the prefix and the window."""
    prefix = tokenizer.prefix_length
    return min(length, getattr(config, "n_positions", length + prefix) - prefix)


def condition_candidates(pieces: Iterable[dict], tokenizer: MusicTokenizer, kind: str) -> list[str]:
    """The values of `kind` that the tokenizer knows and some of `pieces` carry: the candidates of
    identifying `kind` on them (an error naming the kinds there are, for a kind the tokenizer has
    not; fewer than 2 is an error too)."""
    if kind not in tokenizer.kinds:
        raise ValueError(f"the model has no {kind} condition to identify: it has {', '.join(tokenizer.kinds)}")
    found = {label_of(piece, kind) for piece in pieces}
    values = [value for value in tokenizer.values(kind) if value in found]
    if len(values) < 2:
        raise ValueError(
            f"identifying the {kind} needs pieces of 2 {kind} values the model knows; these pieces have "
            f"{', '.join(values) or 'none'}: give test data with more of them"
        )
    return values


def identification_windows(
    pieces: Iterable[dict], labels: Iterable[str], length: int, tokenizer: MusicTokenizer, kind: str = "composer"
) -> list[Window]:
    """The opening window of every piece whose `kind` is one of `labels` and, where the piece
    holds two windows' worth, the window centred in it (in a piece shorter than three windows
    the two share music, each scored from its own start)."""
    wanted, prefix = set(labels), tokenizer.prefix_length
    windows = []
    for piece in pieces:
        music, label = list(piece["ids"][prefix:-1]), label_of(piece, kind)
        if label not in wanted or len(music) < MIN_TOKENS:
            continue
        head = tuple(piece["ids"][:prefix])
        windows.append(Window(music[:length], label, piece["path"], "opening", head))
        if len(music) >= 2 * length:
            start = (len(music) - length) // 2
            windows.append(Window(music[start : start + length], label, piece["path"], "middle", head))
    return windows


@torch.no_grad()
def condition_nll(
    model: torch.nn.Module,
    windows: list[Window],
    condition_ids: list[int],
    tokenizer: MusicTokenizer,
    batch_size: int = 8,
    accelerator: Accelerator | None = None,
    slot: int = 1,
) -> np.ndarray:
    """Nats of each window's music after its prefix with each condition in position `slot`,
    `[windows, conditions]`.

    With an `accelerator`, every process reads an equal slice of the windows (padded by
    repeating windows in order, so all run the same forwards, as FSDP needs) and the slices
    are gathered.
    """
    if not windows:  # the same on every process: none of them meets the others in a gather
        return np.zeros((0, len(condition_ids)))
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    ranks = accelerator.num_processes if accelerator is not None else 1
    share = math.ceil(len(windows) / ranks)
    padded = [windows[i % len(windows)] for i in range(share * ranks)]  # cyclic: fewer windows than ranks too
    rank = accelerator.process_index if accelerator is not None else 0
    mine = padded[rank * share : (rank + 1) * share]
    collate = BlockCollator(tokenizer.pad_token_id)
    training = model.training
    model.eval()
    scores = torch.zeros(len(mine), len(condition_ids), dtype=torch.float64, device=device)
    for column, condition in enumerate(condition_ids):
        rows = [
            {
                "input_ids": [*w.prefix[:slot], condition, *w.prefix[slot + 1 :], *w.music],
                "labels": [IGNORE] * len(w.prefix) + w.music,
            }
            for w in mine
        ]
        nll = [
            token_nll(model, {k: v.to(device) for k, v in batch.items()}).sum(dim=1)
            for batch in collate.batches(rows, batch_size)
        ]
        scores[:, column] = torch.cat(nll).double()
    model.train(training)
    if accelerator is not None:
        scores = accelerator.gather(scores)
    return scores[: len(windows)].cpu().numpy()


def identification(
    model: torch.nn.Module,
    tokenizer: MusicTokenizer,
    windows: list[Window],
    composers: list[str],
    batch_size: int = 8,
    accelerator: Accelerator | None = None,
    kind: str = "composer",
) -> dict:
    """Accuracy (mean per candidate), chance and condition gains per window position, for the
    candidate values `composers` of `kind` (composers, or genres, ...).

    Per position: `accuracy` (and `per_composer`, per candidate), `gain_over_unknown` and
    `gain_over_wrong` in bits per window (mean) and per token, `windows`, and per window
    the candidate named (`named`), for bootstrap intervals.
    """
    if len(composers) < 2:
        raise ValueError(f"identification needs at least 2 candidate values of {kind}, got {composers}")
    conditions = [tokenizer.condition_id(kind, c) for c in composers] + [tokenizer.condition_id(kind, None)]
    slot = 1 + tokenizer.kinds.index(kind)
    nll = condition_nll(model, windows, conditions, tokenizer, batch_size, accelerator, slot) / math.log(2)
    results = {"kind": kind, "composers": composers, "chance": 1 / len(composers)}
    for position in POSITIONS:
        rows = [i for i, w in enumerate(windows) if w.position == position]
        if rows:
            results[position] = position_summary([windows[i] for i in rows], nll[rows], composers)
    return results


def position_summary(windows: list[Window], bits: np.ndarray, composers: list[str]) -> dict:
    """What `identification` reports for the windows of one position (`bits`: `[windows, composers + 1]`)."""
    truth = np.array([composers.index(w.label) for w in windows])
    named = bits[:, : len(composers)].argmin(axis=1)
    rows = np.arange(len(windows))
    true_bits = bits[rows, truth]
    wrong = np.ma.masked_array(bits[:, : len(composers)], mask=np.eye(len(composers), dtype=bool)[truth])
    tokens = np.array([len(w.music) for w in windows])
    per_composer = {c: float((named[truth == k] == k).mean()) for k, c in enumerate(composers) if (truth == k).any()}
    gains = {
        "gain_over_unknown": bits[:, -1] - true_bits,
        "gain_over_wrong": wrong.mean(axis=1).filled(np.nan) - true_bits,
    }
    return {
        "accuracy": float(np.mean(list(per_composer.values()))),
        "per_composer": per_composer,
        **{
            name: {"bits_per_window": float(gain.mean()), "bits_per_token": float(gain.sum() / tokens.sum())}
            for name, gain in gains.items()
        },
        "windows": len(windows),
        "named": [composers[k] for k in named],
        "truth": [w.label for w in windows],
    }


def bootstrap_interval(
    truth: list[str], named: list[str], samples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """A percentile bootstrap interval of the mean per-composer accuracy, resampling windows
    within each composer (so every composer keeps its count)."""
    rng = np.random.default_rng(seed)
    correct = np.array([t == n for t, n in zip(truth, named, strict=True)], dtype=float)
    labels = np.array(truth)
    groups = [correct[labels == c] for c in sorted(set(truth))]
    means = np.mean([rng.choice(g, size=(samples, len(g))).mean(axis=1) for g in groups], axis=0)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def summary_metrics(results: dict) -> dict[str, float]:
    """What a training log follows: accuracy and gains (bits per window) per position, and chance."""
    metrics = {"identification_chance": results["chance"]}
    for position in POSITIONS:
        if position in results:
            found = results[position]
            metrics[f"identification_{position}"] = found["accuracy"]
            metrics[f"gain_over_unknown_{position}"] = found["gain_over_unknown"]["bits_per_window"]
            metrics[f"gain_over_wrong_{position}"] = found["gain_over_wrong"]["bits_per_window"]
    return metrics
