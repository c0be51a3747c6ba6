"""Training stream: pieces -> conditioned `block_size` blocks -> batches.

Every block starts with the conditions of the piece it continues, `BOS, Composer_x` and, in
a tokenizer with more kinds, `Genre_g, TempoBucket_t, Mode_m` (any of them its kind's
`Unknown` under condition dropout), followed by the next chunk of that piece: the context the
pipeline generates from, at every position of every piece. The prefix is context only (labels
-100), so each music token and each EOS is a target exactly once. When a piece ends inside a
block, the next piece follows in the same block with its own prefix; a piece never starts in
a block's last prefix positions (the block ends there).

Condition dropout is decided per block and per kind, not per piece: every piece is then seen
both with each of its conditions and without it, chunk by chunk, which is the difference
classifier-free guidance amplifies (for all conditions, or for one), and the unconditional
branch learns every position of every piece, not whole pieces only.

Rows come from a source: token-cache rows (`{"ids", "composer", "path", "notes", "conditions"}`,
see `cache.py`) are used as they are; MIDI rows (`{"midi", "composer", "path", "conditions"}`)
are tokenized on the fly. Sources are sharded across ranks (`split_dataset_by_node`) and, inside a rank,
across DataLoader workers (datasets does that on its own: each piece is one shard). Blocks
are shuffled through a buffer.

The position is resumable: `state_dict()` holds the source's position, the block being
filled, the shuffle buffer, the random state and the skip counts, so `torchdata`'s
`StatefulDataLoader` (accelerate's `use_stateful_dataloader`) restarts exactly where it
stopped, per worker.
"""

from __future__ import annotations

import copy
import json
import logging
import random
from collections import Counter
from collections.abc import Iterable, Iterator

import numpy as np
import symusic
import torch
from datasets import IterableDataset
from datasets.distributed import split_dataset_by_node

from .tokenizer import InvalidMidiError, MusicTokenizer, load_score

logger = logging.getLogger(__name__)

IGNORE = -100  # the label of a position without a target


def encode_midi(
    tokenizer: MusicTokenizer, row: dict, skipped: Counter, log: bool = True
) -> tuple[symusic.Score, list[int]] | None:
    """(score, ids) of a MIDI row, or None after counting (and logging) why it was skipped.

    A label the tokenizer has no token for is encoded as `Unknown`.
    """
    try:
        score = load_score(row["midi"])
        # canonical: sources name composers once, as they list files
        labels = {"composer": row["composer"], **json.loads(row.get("conditions") or "{}")}
        ids = tokenizer.encode(score, strict=False, **labels)
    except InvalidMidiError as error:
        reason, detail = error.reason, str(error)
    except Exception as error:  # miditok can fail on odd but parseable files; never stop the stream
        reason, detail = "tokenizer error", f"{type(error).__name__}: {error}"
    else:
        return score, ids
    skipped[reason] += 1
    if log:
        logger.warning("skipped %s (%s)", row["path"], detail)
    return None


def as_piece(tokenizer: MusicTokenizer, row: dict, skipped: Counter, log: bool = True) -> dict | None:
    """A source row as a piece `{"ids", "composer", "path", "notes", "conditions"}`: a token-cache
    row as it is, a MIDI row tokenized (None if it is unusable, counted in `skipped`)."""
    if "ids" in row:
        return row
    encoded = encode_midi(tokenizer, row, skipped, log)
    if encoded is None:
        return None
    score, ids = encoded
    return {
        "ids": ids,
        "composer": row["composer"],
        "path": row["path"],
        "notes": score.note_num(),
        "conditions": row.get("conditions") or "",
    }


def pieces_of(rows: Iterable[dict], tokenizer: MusicTokenizer, skipped: Counter) -> Iterator[dict]:
    """The usable pieces among source rows, in order; unusable MIDI is counted in `skipped`."""
    for row in rows:
        piece = as_piece(tokenizer, row, skipped)
        if piece is not None:
            yield piece


def skip_summary(skipped: Counter) -> str:
    """One line: how many files were skipped and why."""
    if not skipped:
        return "skipped no files"
    reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
    return f"skipped {sum(skipped.values())} files: {reasons}"


class BlockPacker:
    """Cuts pieces (`BOS, conditions..., music..., EOS`) into `{"input_ids", "labels"}` blocks.

    `condition_every_block=False` is the earlier packing, kept to measure against: pieces
    are concatenated and cut, so a block in the middle of a piece carries no condition.
    The prefix carries no loss in both. The packer's state (the block being filled) is a
    plain dict, so that the stream can checkpoint it.
    """

    def __init__(
        self,
        block_size: int,
        tokenizer: MusicTokenizer,
        *,
        condition_every_block: bool = True,
        condition_dropout: float = 0.0,
    ) -> None:
        self.prefix = tokenizer.prefix_length
        if block_size < self.prefix + 1:
            raise ValueError(f"block_size must be at least {self.prefix + 1} (a condition prefix and a target)")
        if not 0.0 <= condition_dropout <= 1.0:
            raise ValueError(f"condition_dropout is a probability, got {condition_dropout}")
        self.block_size = block_size
        self.unknown_ids = [tokenizer.condition_id(kind, None) for kind in tokenizer.kinds]
        self.condition_every_block = condition_every_block
        self.condition_dropout = condition_dropout

    def fresh_state(self) -> dict:
        return {"ids": [], "labels": [], "dropped": [False] * (self.prefix - 1)}

    def add(self, state: dict, ids: list[int], rng: random.Random | None = None) -> list[dict]:
        """Pack one piece; return the blocks it completes (the last one may stay in `state`)."""
        prefix, position = ids[: self.prefix], self.prefix
        blocks = []
        if state["ids"] and self.block_size - len(state["ids"]) <= self.prefix:
            blocks.append(self._close(state))
        while position < len(ids):
            if not state["ids"]:
                state["dropped"] = [
                    bool(self.condition_dropout) and rng.random() < self.condition_dropout for _ in self.unknown_ids
                ]
            if position == self.prefix or (not state["ids"] and self.condition_every_block):
                state["ids"] += [prefix[0], *self._conditions(prefix[1:], state["dropped"])]
                state["labels"] += [IGNORE] * self.prefix
            take = ids[position : position + self.block_size - len(state["ids"])]
            position += len(take)
            state["ids"] += take
            state["labels"] += take
            if len(state["ids"]) == self.block_size:
                blocks.append(self._close(state))
        return blocks

    def _conditions(self, conditions: list[int], dropped: list[bool] | bool) -> list[int]:
        if isinstance(dropped, bool):  # a stream position saved before there were several kinds
            dropped = [dropped] * len(conditions)
        return [unknown if drop else c for c, unknown, drop in zip(conditions, self.unknown_ids, dropped, strict=True)]

    def flush(self, state: dict) -> list[dict]:
        """The block being filled, if it holds a target (at the end of a finite source)."""
        has_target = any(label != IGNORE for label in state["labels"])
        block = self._close(state)
        return [block] if has_target else []

    def _close(self, state: dict) -> dict:
        block = {"input_ids": state["ids"], "labels": state["labels"]}
        state.update(self.fresh_state())
        return block


class TokenBlockStream(torch.utils.data.IterableDataset):
    """Conditioned token blocks of a source, as `{"input_ids", "labels"}` rows.

    `loop=True` repeats the source forever (training); `loop=False` reads it once and
    ends with a shorter last block (evaluation). `shuffle_buffer > 0` shuffles the piece
    order at every epoch and the blocks through a buffer of that many; 0 keeps the order.
    Unusable MIDI files are counted at every pass and logged at the first.
    """

    def __init__(
        self,
        source: IterableDataset,
        tokenizer: MusicTokenizer,
        block_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 0,
        condition_dropout: float = 0.0,
        condition_every_block: bool = True,
        seed: int = 0,
        loop: bool = False,
    ) -> None:
        self.packer = BlockPacker(
            block_size,
            tokenizer,
            condition_every_block=condition_every_block,
            condition_dropout=condition_dropout,
        )
        if shuffle_buffer:
            source = source.shuffle(seed=seed, buffer_size=1)  # piece order per epoch; blocks mix below
        self.source = split_dataset_by_node(source, rank=rank, world_size=world_size) if world_size > 1 else source
        self.tokenizer = tokenizer
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed + 7919 * rank
        self.loop = loop
        self._state = self._fresh_state(epoch=0)

    def _fresh_state(self, epoch: int) -> dict:
        worker = torch.utils.data.get_worker_info()
        rng = random.Random(f"{self.seed}-{epoch}-{worker.id if worker else 0}")
        return {
            "epoch": epoch,
            "source": None,
            "pieces": 0,
            "block": self.packer.fresh_state(),
            "buffer": [],
            "rng": rng,
            "skipped": Counter(),
        }

    @property
    def skipped(self) -> Counter:
        """Files skipped so far in this process, by reason."""
        return self._state["skipped"]

    def state_dict(self) -> dict:
        """Plain Python values only (the random state as a tuple), so that checkpoints load
        with `torch.load(weights_only=True)` as accelerate does.

        The DataLoader asks for it after every batch, so it copies only what changes: the
        buffered blocks themselves are never modified, and the buffer holds hundreds of them.
        """
        state = self._state
        block = state["block"]
        return {
            **state,
            "source": copy.deepcopy(state["source"]),
            "block": {**block, "ids": list(block["ids"]), "labels": list(block["labels"])},
            "buffer": list(state["buffer"]),
            "skipped": Counter(state["skipped"]),
            "rng": state["rng"].getstate(),
        }

    def load_state_dict(self, state: dict) -> None:
        rng = random.Random()
        rng.setstate(state["rng"])
        self._state = copy.deepcopy({**state, "rng": None}) | {"rng": rng}

    def __iter__(self) -> Iterator[dict]:
        state = self._state
        if state["source"] is None and not state["block"]["ids"] and not state["buffer"]:
            state = self._state = self._fresh_state(state["epoch"]) | {"skipped": state["skipped"]}
        yield from self._drain(state)  # a resumed stream first yields what its buffer holds over its size
        while True:
            if self.shuffle_buffer:
                self.source.set_epoch(state["epoch"])
            if state["source"] is not None:
                self.source.load_state_dict(state["source"])
            for row in self.source:
                state["source"] = self.source.state_dict()
                piece = as_piece(self.tokenizer, row, state["skipped"], log=state["epoch"] == 0)
                if piece is not None:
                    state["pieces"] += 1
                    state["buffer"] += self.packer.add(state["block"], piece["ids"], state["rng"])
                    yield from self._drain(state)
            if not self.loop:
                break
            if not state["pieces"]:
                raise ValueError(
                    f"no usable MIDI in this rank's or worker's files ({skip_summary(state['skipped'])}): "
                    "use fewer ranks or DataLoader workers than files, or check the source"
                )
            state.update(epoch=state["epoch"] + 1, source=None, pieces=0)
        state["buffer"] += self.packer.flush(state["block"])
        while state["buffer"]:
            yield self._pop(state)
        self._state = self._fresh_state(epoch=0) | {"skipped": state["skipped"]}

    def _drain(self, state: dict) -> Iterator[dict]:
        while len(state["buffer"]) > self.shuffle_buffer:
            yield self._pop(state)

    def _pop(self, state: dict) -> dict:
        buffer = state["buffer"]
        if not self.shuffle_buffer:
            return buffer.pop(0)
        index = state["rng"].randrange(len(buffer))
        buffer[index], buffer[-1] = buffer[-1], buffer[index]
        return buffer.pop()


def evaluation_blocks(
    rows: Iterable[dict], tokenizer: MusicTokenizer, block_size: int, *, max_files: int | None = None
) -> tuple[list[dict], int, Counter]:
    """(blocks, notes, skipped) of the first `max_files` usable pieces of `rows`, in order.

    The pieces are framed as in training without dropout, so every block starts with its
    piece's condition, as generation does, and every music token and EOS is predicted
    exactly once; `notes` counts the notes of those pieces, so that summed bits / notes is
    the bits per note of the set.
    """
    packer = BlockPacker(block_size, tokenizer)
    state = packer.fresh_state()
    blocks, notes, skipped = [], 0, Counter()
    for count, piece in enumerate(pieces_of(rows, tokenizer, skipped)):
        if count == max_files:
            break
        notes += piece["notes"]
        blocks += packer.add(state, piece["ids"])
    return blocks + packer.flush(state), notes, skipped


def as_long(values: list[int]) -> torch.Tensor:
    """A list of ids as a tensor through numpy: `torch.tensor` converts a list item by item,
    8x slower, and was three quarters of the cached stream's time."""
    return torch.from_numpy(np.asarray(values, dtype=np.int64))


class BlockCollator:
    """Batches blocks: pads to the longest, `attention_mask` 0 and `labels` -100 on padding.

    Rows without `labels` are targets everywhere (a classifier's windows, whose labels the
    caller sets).
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        length = max(len(row["input_ids"]) for row in rows)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            size = len(row["input_ids"])
            input_ids[i, :size] = as_long(row["input_ids"])
            labels[i, :size] = as_long(row.get("labels", row["input_ids"]))
            attention_mask[i, :size] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def batches(self, blocks: list[dict], batch_size: int) -> list[dict[str, torch.Tensor]]:
        """Blocks held in memory (validation, test) as batches of `batch_size`, the last one
        smaller: through a DataLoader, the path training batches take."""
        return list(torch.utils.data.DataLoader(blocks, batch_size=batch_size, collate_fn=self))
