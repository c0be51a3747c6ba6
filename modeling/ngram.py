"""An interpolated Kneser-Ney n-gram language model over token ids: the baseline that shows
what the neural models learn beyond local statistics.

It is evaluated like them: `sequence_nll` gives held-out nats per token, and `generate`
samples pieces through the same logits processors (the grammar) from `next_log_probs`,
the smoothed distribution over the whole vocabulary, not only over seen followers.

Counting is vectorised with numpy, for corpora of tens of millions of tokens: an n-gram
is one int64 key (each id in `bits` bits, the first id highest), so an order is a sorted
key array and a count array. A context is the high bits of its n-grams, so all n-grams
that share a context form one slice of the sorted keys: two binary searches give the
slice, and with it the context's total count and its number of distinct followers. No
context table is stored.

Smoothing is Chen & Goodman's interpolated Kneser-Ney, for orders k = 1 .. `order`:

    p_k(w | h) = (max(c_k(h w) - D_k, 0) + D_k * N_k(h) * p_{k-1}(w | h')) / c_k(h)

where h' is h without its first id, c_k(h) = sum over w of c_k(h w), N_k(h) the number
of ids w with c_k(h w) > 0, and p_0 = 1 / vocab_size, so every id has a probability
above 0. A context never seen (c_k(h) = 0) backs off fully: p_k = p_{k-1}.

The highest order counts occurrences; lower orders count the distinct left extensions of
an n-gram (its continuation count), plus, from order 2 up, its occurrences at the start
of a sequence, where it has none. Sequences open with BOS, so n-grams that start with BOS
keep their raw counts, as in KenLM; with continuation counts alone they would all count 0
and the model would forget what follows BOS. The first id of a sequence (BOS) is context
only: it is never predicted, so it is never counted as a predicted unigram.

Each order has one discount, Ney's estimate D_k = n1 / (n1 + 2 n2) from the counts of
that order (n1, n2: how many n-grams count 1, 2), or 0.75 where n1 or n2 is 0 and the
estimate says nothing (0 or 1).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from safetensors.numpy import load_file, save_file

WEIGHTS_NAME = "ngram.safetensors"
CONFIG_NAME = "ngram.json"
DEFAULT_DISCOUNT = 0.75


def key_bits(vocab_size: int, order: int) -> int:
    """Bits per id in a key; checks that an n-gram of `order` ids fits one int64.

    62 bits, not 63: the end of a context's slice, (context + 1) << bits, must fit too.
    """
    bits = max(1, (vocab_size - 1).bit_length())
    if order < 1 or bits * order > 62:
        raise ValueError(
            f"order must be between 1 and {62 // bits} for a vocabulary of {vocab_size} ids "
            f"(an n-gram is one int64 key of {bits} bits per id), got {order}"
        )
    return bits


def as_ids(values: Sequence[int] | np.ndarray, vocab_size: int) -> np.ndarray:
    """`values` as an int64 array, checked to be ids of the vocabulary (a larger id would corrupt keys)."""
    ids = np.asarray(values, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"token ids must be in [0, {vocab_size}), got ids from {ids.min()} to {ids.max()}")
    return ids


def encode(windows: np.ndarray, bits: int) -> np.ndarray:
    """Keys of the n-grams in the rows of `windows` (an empty row is key 0, the empty context)."""
    keys = np.zeros(len(windows), dtype=np.int64)
    for column in windows.T:
        keys = (keys << bits) | column
    return keys


def ngram_keys(ids: np.ndarray, lengths: np.ndarray, n: int, bits: int) -> np.ndarray:
    """Keys of the n-grams inside one sequence of the concatenated `ids` (none across two) that
    end at a predicted id: any but the first of a sequence, which is only ever context."""
    if len(ids) < n:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    room = np.repeat(ends, lengths) - np.arange(len(ids))  # ids from each position to the end of its sequence
    inside = room[: len(ids) - n + 1] >= n
    if n == 1:
        inside[(ends - lengths)[lengths > 0]] = False
    return encode(sliding_window_view(ids, n), bits)[inside]


def estimate_discount(counts: np.ndarray) -> float:
    """Ney, Essen & Kneser's estimate n1 / (n1 + 2 n2) of the best discount, as Chen & Goodman use it."""
    n1 = int(np.count_nonzero(counts == 1))
    n2 = int(np.count_nonzero(counts == 2))
    return n1 / (n1 + 2 * n2) if n1 and n2 else DEFAULT_DISCOUNT


def process_scores(
    logits_processor: Callable[[torch.LongTensor, torch.FloatTensor], torch.FloatTensor],
    rows: list[list[int]],
    scores: torch.FloatTensor,
) -> torch.FloatTensor:
    """Apply a logits processor to each row's own ids: in one call if the rows are equally
    long, else row by row, since the ids must be one rectangular tensor."""
    if len({len(row) for row in rows}) == 1:
        return logits_processor(torch.tensor(rows, dtype=torch.long), scores)
    ids = [torch.tensor([row], dtype=torch.long) for row in rows]
    return torch.cat(
        [logits_processor(row_ids, row_scores) for row_ids, row_scores in zip(ids, scores.split(1), strict=True)]
    )


class NGramModel:
    """Interpolated Kneser-Ney language model over token ids: Chen & Goodman's interpolated KN
    with one absolute discount per order, estimated from the counts (see the module docstring).

    `keys[k - 1]` and `counts[k - 1]` are the sorted keys of the k-grams and their counts
    (raw at the highest order, continuation counts below); `discounts[k - 1]` is D_k.
    Build one with `fit` or `from_pretrained`.
    """

    def __init__(
        self, order: int, vocab_size: int, keys: list[np.ndarray], counts: list[np.ndarray], discounts: list[float]
    ) -> None:
        self.order = order
        self.vocab_size = vocab_size
        self.bits = key_bits(vocab_size, order)
        self.keys = keys
        self.counts = counts
        self.discounts = discounts
        # a context's total count is the difference of these prefix sums at the ends of its slice
        self.cumulative = [np.concatenate([[0], np.cumsum(c, dtype=np.int64)]) for c in counts]

    @classmethod
    def fit(cls, sequences: Iterable[Sequence[int]], vocab_size: int, order: int = 4) -> NGramModel:
        """Count n-grams of every order within each sequence (no n-gram crosses two sequences;
        sequences start with their own BOS id already, do not pad)."""
        bits = key_bits(vocab_size, order)
        arrays = [np.asarray(sequence, dtype=np.int64) for sequence in sequences]
        ids = as_ids(np.concatenate([np.zeros(0, dtype=np.int64), *arrays]), vocab_size)
        lengths = np.array([len(a) for a in arrays], dtype=np.int64)
        starts = np.cumsum(lengths) - lengths
        keys, counts = np.unique(ngram_keys(ids, lengths, order, bits), return_counts=True)
        tables = [(keys, counts)]
        for k in range(order - 1, 0, -1):
            # a k-gram is the suffix of a (k+1)-gram or opens a sequence (k >= 2: a lone first id is never predicted)
            grams = [tables[-1][0] & ((1 << (bits * k)) - 1)]
            if k > 1:
                opening = starts[lengths >= k]
                grams.append(encode(ids[opening[:, None] + np.arange(k)], bits))
            keys, inverse = np.unique(np.concatenate(grams), return_inverse=True)
            tables.append((keys, np.bincount(inverse, minlength=len(keys))))
        tables.reverse()
        return cls(
            order,
            vocab_size,
            keys=[keys for keys, _ in tables],
            counts=[counts.astype(np.int32) for _, counts in tables],
            discounts=[estimate_discount(counts) for _, counts in tables],
        )

    def _slices(self, k: int, contexts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(start, end, total count) of the slice of k-grams that follow each context key."""
        keys = self.keys[k - 1]
        start = np.searchsorted(keys, contexts << self.bits)
        end = np.searchsorted(keys, (contexts + 1) << self.bits)
        return start, end, self.cumulative[k - 1][end] - self.cumulative[k - 1][start]

    def _interpolate(self, k: int, ngrams: np.ndarray, lower: np.ndarray) -> np.ndarray:
        """p_k of the last id of each n-gram key given the ids before it, from their p_{k-1}."""
        keys, discount = self.keys[k - 1], self.discounts[k - 1]
        start, end, total = self._slices(k, ngrams >> self.bits)
        at = np.searchsorted(keys, ngrams)
        found = at < end
        found[found] = keys[at[found]] == ngrams[found]
        count = np.where(found, self.counts[k - 1][np.where(found, at, 0)], 0)
        interpolated = (np.maximum(count - discount, 0) + discount * (end - start) * lower) / np.maximum(total, 1)
        return np.where(total > 0, interpolated, lower)

    def _histories(self, contexts: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """The last `order - 1` ids of each context, right-aligned in one array, and how many there are."""
        width = self.order - 1
        history = np.zeros((len(contexts), width), dtype=np.int64)
        lengths = np.zeros(len(contexts), dtype=np.int64)
        for row, context in enumerate(contexts):
            tail = as_ids(context[max(0, len(context) - width) :], self.vocab_size)
            history[row, width - len(tail) :] = tail
            lengths[row] = len(tail)
        return history, lengths

    def next_log_probs(self, contexts: Sequence[Sequence[int]]) -> torch.Tensor:
        """(len(contexts), vocab_size) float32 natural-log probabilities of the next token after each
        context (only its last order-1 ids matter; shorter contexts use lower orders). Every id gets
        a probability > 0 (lowest order interpolates with uniform 1/vocab_size), rows sum to 1."""
        history, lengths = self._histories(contexts)
        probs = np.full((len(contexts), self.vocab_size), 1 / self.vocab_size)
        for k in range(1, self.order + 1):
            rows = np.flatnonzero(lengths >= k - 1)
            start, end, total = self._slices(k, encode(history[rows, self.order - k :], self.bits))
            seen = total > 0
            rows, start, end, total = rows[seen], start[seen], end[seen], total[seen]
            discount = self.discounts[k - 1]
            probs[rows] *= (discount * (end - start) / total)[:, None]
            # add every seen follower's discounted count: entries start..end-1 of each row's slice
            sizes = end - start
            entries = np.arange(sizes.sum()) + np.repeat(start - (np.cumsum(sizes) - sizes), sizes)
            followers = self.keys[k - 1][entries] & ((1 << self.bits) - 1)
            share = (self.counts[k - 1][entries] - discount) / np.repeat(total, sizes)
            probs[np.repeat(rows, sizes), followers] += share
        return torch.from_numpy(np.log(probs)).float()

    def sequence_nll(self, ids: Sequence[int], labels: Sequence[int] | None = None) -> tuple[float, int]:
        """(sum of -log p of ids[1:] each given its preceding ids in nats, number of predicted tokens).

        With `labels` (a causal LM's, aligned with `ids`), only positions whose label is not
        -100 count. All positions are scored at once, one order after the other."""
        ids = as_ids(ids, self.vocab_size)
        if len(ids) < 2:
            return 0.0, 0
        probs = np.full(len(ids) - 1, 1 / self.vocab_size)
        for k in range(1, min(self.order, len(ids)) + 1):
            # the k-grams that end at a predicted position (position k - 1 on: earlier ones lack context)
            first = max(1, k - 1)
            ngrams = encode(sliding_window_view(ids, k)[first - k + 1 :], self.bits)
            probs[first - 1 :] = self._interpolate(k, ngrams, probs[first - 1 :])
        if labels is not None:
            probs = probs[np.asarray(labels[1:]) != -100]
        return float(-np.log(probs).sum()), len(probs)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        eos_token_id: int,
        logits_processor: Callable[[torch.LongTensor, torch.FloatTensor], torch.FloatTensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> list[list[int]]:
        """Sample continuations of a batch of prompts, one token per step for every unfinished row.

        `logits_processor` (a transformers `LogitsProcessorList` or any callable
        `(input_ids, scores) -> scores`) sees the unfinished rows' own ids (prompt and new ids),
        row by row when their lengths differ. A row stops after it samples `eos_token_id`.
        Returns prompt + new ids per row.
        """
        rows = [[int(i) for i in prompt] for prompt in prompts]
        unfinished = list(rows)
        for _ in range(max_new_tokens):
            if not unfinished:
                break
            scores = self.next_log_probs(unfinished)
            if logits_processor is not None:
                scores = process_scores(logits_processor, unfinished, scores)
            tokens = torch.multinomial(scores.softmax(-1), 1, generator=generator)[:, 0].tolist()
            for row, token in zip(unfinished, tokens, strict=True):
                row.append(token)
            unfinished = [row for row in unfinished if row[-1] != eos_token_id]
        return rows

    def save_pretrained(self, save_directory: str | Path) -> None:
        """Write `ngram.safetensors` (keys and counts per order) and `ngram.json` (order, vocab_size, discounts)."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {}
        for k in range(1, self.order + 1):
            arrays[f"keys_{k}"] = self.keys[k - 1]
            arrays[f"counts_{k}"] = self.counts[k - 1]
        save_file(arrays, str(folder / WEIGHTS_NAME))
        config = {"order": self.order, "vocab_size": self.vocab_size, "discounts": self.discounts}
        (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> NGramModel:
        """Load a model that `save_pretrained` wrote to `directory`."""
        folder = Path(directory)
        if not (folder / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} in {folder}: no NGramModel.save_pretrained output there")
        config = json.loads((folder / CONFIG_NAME).read_text())
        arrays = load_file(str(folder / WEIGHTS_NAME))
        orders = range(1, config["order"] + 1)
        return cls(
            config["order"],
            config["vocab_size"],
            keys=[arrays[f"keys_{k}"] for k in orders],
            counts=[arrays[f"counts_{k}"] for k in orders],
            discounts=config["discounts"],
        )
