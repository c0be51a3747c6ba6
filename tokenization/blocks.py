"""Training stream: MIDI rows -> token ids -> packed `block_size` blocks -> batches.

Files are sharded across ranks (`split_dataset_by_node`) and, inside a rank, across
DataLoader workers (datasets does that on its own: each file is one shard). Each
worker tokenizes its files on the fly, concatenates the pieces
(`BOS, Composer_x, ..., EOS, BOS, Composer_y, ...`), cuts the stream into blocks and
shuffles them through a buffer.

The position is resumable: `state_dict()` holds the source's position, the tokens
carried over to the next block, the shuffle buffer, the random state and the skip
counts, so `torchdata`'s `StatefulDataLoader` (accelerate's `use_stateful_dataloader`)
restarts exactly where it stopped, per worker.
"""

from __future__ import annotations

import copy
import logging
import random
from collections import Counter
from collections.abc import Iterator

import torch
from datasets import IterableDataset
from datasets.distributed import split_dataset_by_node

from .composers import UNKNOWN, canonical_composer
from .tokenizer import InvalidMidiError, MusicTokenizer, load_score

logger = logging.getLogger(__name__)


def encode_example(
    tokenizer: MusicTokenizer, example: dict, skipped: Counter, composer: str | None = None, log: bool = True
):
    """(score, ids) of a source row, or None after counting (and logging) why it was skipped.

    `composer` overrides the row's label (condition dropout); a label the tokenizer has
    no token for is encoded as `Unknown`.
    """
    try:
        score = load_score(example["midi"])
        name = canonical_composer(composer if composer is not None else example["composer"])
        ids = tokenizer.encode(score, name if name in tokenizer.composers else UNKNOWN)
    except InvalidMidiError as error:
        reason, detail = error.reason, str(error)
    except Exception as error:  # miditok can fail on odd but parseable files; never stop the stream
        reason, detail = "tokenizer error", f"{type(error).__name__}: {error}"
    else:
        return score, ids
    skipped[reason] += 1
    if log:
        logger.warning("skipped %s (%s)", example["path"], detail)
    return None


def skip_summary(skipped: Counter) -> str:
    """One line: how many files were skipped and why."""
    if not skipped:
        return "skipped no files"
    reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
    return f"skipped {sum(skipped.values())} files: {reasons}"


class TokenBlockStream(torch.utils.data.IterableDataset):
    """Packed token blocks of a MIDI source, as `{"input_ids": list[int]}` rows.

    `loop=True` repeats the source forever (training); `loop=False` reads it once and
    ends with a shorter last block (evaluation). `shuffle_buffer > 0` shuffles the file
    order at every epoch and the blocks through a buffer of that many; 0 keeps file
    order. Unusable files are counted at every pass and logged at the first.
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
        seed: int = 0,
        loop: bool = False,
    ) -> None:
        if block_size < 2:
            raise ValueError(f"block_size must be at least 2, got {block_size}")
        if not 0.0 <= condition_dropout <= 1.0:
            raise ValueError(f"condition_dropout is a probability, got {condition_dropout}")
        if shuffle_buffer:
            source = source.shuffle(seed=seed, buffer_size=1)  # file order per epoch; blocks mix below
        self.source = split_dataset_by_node(source, rank=rank, world_size=world_size) if world_size > 1 else source
        self.tokenizer = tokenizer
        self.block_size = block_size
        self.shuffle_buffer = shuffle_buffer
        self.condition_dropout = condition_dropout
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
            "carry": [],
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
        return {
            **state,
            "source": copy.deepcopy(state["source"]),
            "carry": list(state["carry"]),
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
        if state["source"] is None and not state["carry"] and not state["buffer"]:
            state = self._state = self._fresh_state(state["epoch"]) | {"skipped": state["skipped"]}
        yield from self._cut(state)  # a resumed stream first finishes the piece it was in
        while True:
            if self.shuffle_buffer:
                self.source.set_epoch(state["epoch"])
            if state["source"] is not None:
                self.source.load_state_dict(state["source"])
            for example in self.source:
                state["source"] = self.source.state_dict()
                yield from self._add_piece(example, state)
            if not self.loop:
                break
            if not state["pieces"]:
                raise ValueError(
                    f"no usable MIDI in this rank's or worker's files ({skip_summary(state['skipped'])}): "
                    "use fewer ranks or DataLoader workers than files, or check the source"
                )
            state.update(epoch=state["epoch"] + 1, source=None, pieces=0)
        while state["buffer"]:
            yield self._pop(state)
        if len(state["carry"]) >= 2:  # a single token would be a block without a target
            yield {"input_ids": state["carry"]}
        state["carry"] = []
        self._state = self._fresh_state(epoch=0) | {"skipped": state["skipped"]}

    def _add_piece(self, example: dict, state: dict) -> Iterator[dict]:
        dropped = self.condition_dropout and state["rng"].random() < self.condition_dropout
        composer = UNKNOWN if dropped else None
        encoded = encode_example(self.tokenizer, example, state["skipped"], composer, log=state["epoch"] == 0)
        if encoded is None:
            return
        state["pieces"] += 1
        state["carry"].extend(encoded[1])
        yield from self._cut(state)

    def _cut(self, state: dict) -> Iterator[dict]:
        while len(state["carry"]) >= self.block_size:
            state["buffer"].append(state["carry"][: self.block_size])
            del state["carry"][: self.block_size]
            if len(state["buffer"]) > self.shuffle_buffer:
                yield self._pop(state)

    def _pop(self, state: dict) -> dict:
        buffer = state["buffer"]
        index = state["rng"].randrange(len(buffer)) if self.shuffle_buffer else 0
        buffer[index], buffer[-1] = buffer[-1], buffer[index]
        return {"input_ids": buffer.pop()}


def evaluation_blocks(
    source: IterableDataset, tokenizer: MusicTokenizer, block_size: int, *, max_files: int | None = None
) -> tuple[list[list[int]], int, Counter]:
    """(blocks, notes, skipped) of the first `max_files` usable pieces of `source`, in order.

    The pieces are concatenated like training data and cut into blocks that overlap by one
    token, so every token but the very first is predicted exactly once; `notes` counts the
    notes of those pieces, so that summed bits / notes is the bits per note of the set.
    """
    if block_size < 2:
        raise ValueError(f"block_size must be at least 2, got {block_size}")
    ids: list[int] = []
    notes, pieces, skipped = 0, 0, Counter()
    for example in source:
        if max_files is not None and pieces == max_files:
            break
        encoded = encode_example(tokenizer, example, skipped)
        if encoded is not None:
            notes += encoded[0].note_num()
            pieces += 1
            ids.extend(encoded[1])
    starts = range(0, max(len(ids) - 1, 1), block_size - 1)
    blocks = [ids[start : start + block_size] for start in starts]
    return [block for block in blocks if len(block) >= 2], notes, skipped


class BlockCollator:
    """Batches blocks: pads to the longest, `attention_mask` 0 and `labels` -100 on padding."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        length = max(len(row["input_ids"]) for row in rows)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row["input_ids"])] = torch.tensor(row["input_ids"])
            attention_mask[i, : len(row["input_ids"])] = 1
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
