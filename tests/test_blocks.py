import itertools
import random
from collections import Counter

import pytest
import torch
from datasets import IterableDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from tokenization import (
    BlockCollator,
    BlockPacker,
    TokenBlockStream,
    evaluation_blocks,
    load_score,
    load_source,
    skip_summary,
)
from tokenization.blocks import IGNORE
from tokenization.sources import FEATURES


def rows_source(rows: list[dict]) -> IterableDataset:
    """A source of given rows, one shard per row like `load_source`."""

    def read(rows):
        yield from rows

    return IterableDataset.from_generator(read, gen_kwargs={"rows": rows}, features=FEATURES)


def synthetic_pieces(tokenizer, lengths: list[int], composers: list[str]) -> list[list[int]]:
    """Pieces `BOS, Composer_x, music..., EOS` whose music ids run through the vocabulary, so a
    lost or repeated token shows."""
    music_ids = itertools.cycle(range(3, tokenizer.base_vocab_size))  # 0, 1, 2: PAD, BOS, EOS
    return [
        [
            tokenizer.bos_token_id,
            tokenizer.composer_token_id(composer),
            *itertools.islice(music_ids, length),
            tokenizer.eos_token_id,
        ]
        for length, composer in zip(lengths, composers, strict=True)
    ]


def targets(blocks: list[dict]) -> list[int]:
    """The ids that carry a loss, in block order."""
    return [
        i for block in blocks for i, label in zip(block["input_ids"], block["labels"], strict=True) if label != IGNORE
    ]


def pack(tokenizer, pieces: list[list[int]], block_size: int, **settings) -> list[dict]:
    packer = BlockPacker(block_size, tokenizer, **settings)
    state = packer.fresh_state()
    blocks = [block for piece in pieces for block in packer.add(state, piece)]
    return blocks + packer.flush(state)


def test_every_block_starts_with_the_condition_of_the_piece_it_continues(tokenizer):
    pieces = synthetic_pieces(tokenizer, [300, 5, 40, 1000], ["bach", "mozart", "chopin", "bach"])
    blocks = pack(tokenizer, pieces, block_size=64)
    owners = [piece[1] for piece in pieces for _ in piece[2:]]  # the condition of each target, in order
    position = 0
    for block in blocks:
        assert block["input_ids"][0] == tokenizer.bos_token_id and block["labels"][:2] == [IGNORE, IGNORE]
        assert block["input_ids"][1] == owners[position]
        assert len(block["input_ids"]) == len(block["labels"]) <= 64
        position += len(targets([block]))
    assert all(len(block["input_ids"]) >= 62 for block in blocks[:-1])


def test_no_token_is_lost_or_predicted_twice_and_prefixes_carry_no_loss(tokenizer):
    pieces = synthetic_pieces(tokenizer, [300, 5, 40, 1000, 61], ["bach", "mozart", "chopin", "bach", "handel"])
    for every_block in (True, False):
        blocks = pack(tokenizer, pieces, block_size=64, condition_every_block=every_block)
        assert targets(blocks) == [i for piece in pieces for i in piece[2:]]  # music and EOS, once, in order
        for block in blocks:  # BOS and conditions are context only
            for i, label in zip(block["input_ids"], block["labels"], strict=True):
                assert (label == IGNORE) == (i == tokenizer.bos_token_id or i >= tokenizer.base_vocab_size)


def test_a_short_piece_shares_its_block_with_the_next_one_behind_its_own_prefix(tokenizer):
    pieces = synthetic_pieces(tokenizer, [5, 50], ["mozart", "chopin"])
    [block] = pack(tokenizer, pieces, block_size=64)
    first, second = pieces
    assert block["input_ids"] == first + second
    assert block["input_ids"][len(first) : len(first) + 2] == second[:2]


def test_a_piece_never_starts_in_the_last_two_positions(tokenizer):
    pieces = synthetic_pieces(tokenizer, [59, 10], ["bach", "mozart"])  # the first leaves 2 positions free
    blocks = pack(tokenizer, pieces, block_size=64)
    assert len(blocks[0]["input_ids"]) == 62 and blocks[1]["input_ids"][:2] == pieces[1][:2]


def test_the_earlier_packing_leaves_mid_piece_blocks_without_a_condition(tokenizer):
    pieces = synthetic_pieces(tokenizer, [300], ["bach"])
    blocks = pack(tokenizer, pieces, block_size=64, condition_every_block=False)
    assert blocks[0]["input_ids"][:2] == pieces[0][:2]
    assert all(block["input_ids"][0] != tokenizer.bos_token_id for block in blocks[1:])
    assert sum(len(block["input_ids"]) for block in blocks) == len(pieces[0])


@pytest.mark.parametrize(("dropout", "low", "high"), [(0.0, 0.0, 0.0), (0.3, 0.2, 0.4), (1.0, 1.0, 1.0)])
def test_condition_dropout_is_per_block(tokenizer, dropout, low, high):
    pieces = synthetic_pieces(tokenizer, [2000] * 5, ["bach"] * 5)
    packer = BlockPacker(64, tokenizer, condition_dropout=dropout)
    state, rng = packer.fresh_state(), random.Random(0)
    blocks = [block for piece in pieces for block in packer.add(state, piece, rng)]
    unknown = [block["input_ids"][1] == tokenizer.composer_token_id(None) for block in blocks]
    assert low <= sum(unknown) / len(unknown) <= high
    if 0 < dropout < 1:  # blocks of one piece differ: the decision is not per piece
        assert len(set(unknown[:30])) == 2


def test_stream_blocks_carry_the_pieces_in_order(tokenizer, good_midis):
    rows = [{"midi": m, "composer": "bach", "path": f"{i}.mid"} for i, m in enumerate(good_midis[:3])]
    blocks = list(TokenBlockStream(rows_source(rows), tokenizer, block_size=256))
    assert all(
        block["input_ids"][:2] == [tokenizer.bos_token_id, tokenizer.composer_token_id("bach")] for block in blocks
    )
    assert targets(blocks) == [i for m in good_midis[:3] for i in tokenizer.encode(m, "bach")[2:]]


def test_collator_pads_and_ignores_padding_in_labels():
    batch = BlockCollator(pad_token_id=0)([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]


def test_blocks_in_memory_are_batched_in_order_with_a_smaller_last_batch():
    blocks = [{"input_ids": list(range(3, 3 + n))} for n in (4, 2, 5, 1, 3)]
    batches = BlockCollator(pad_token_id=0).batches(blocks, batch_size=2)
    assert [b["input_ids"].shape for b in batches] == [(2, 4), (2, 5), (1, 3)]
    rows = [
        ids[mask.bool()].tolist()
        for b in batches
        for ids, mask in zip(b["input_ids"], b["attention_mask"], strict=True)
    ]
    assert rows == [block["input_ids"] for block in blocks]


def test_bad_files_are_skipped_and_counted(tokenizer, good_midis, bad_midis):
    good = [{"midi": m, "composer": "mozart", "path": f"good{i}.mid"} for i, m in enumerate(good_midis)]
    bad = [{"midi": m, "composer": "mozart", "path": f"{kind}.mid"} for kind, m in bad_midis.items()]
    mixed = [row for pair in itertools.zip_longest(good, bad) for row in pair if row]
    stream = TokenBlockStream(rows_source(mixed), tokenizer, block_size=512)
    assert targets(list(stream)) == [i for m in good_midis for i in tokenizer.encode(m, "mozart")[2:]]
    assert stream.skipped == Counter({"unreadable": 2, "empty": 1, "no notes": 1})
    assert skip_summary(stream.skipped) == "skipped 4 files: 1 empty, 1 no notes, 2 unreadable"


def test_ranks_read_different_files(tokenizer):
    source = load_source("bundled", split="train")
    ranks = [TokenBlockStream(source, tokenizer, 512, rank=r, world_size=2) for r in range(2)]
    paths = [[row["path"] for row in rank.source] for rank in ranks]
    assert paths[0] and paths[1] and not set(paths[0]) & set(paths[1])
    assert sorted(paths[0] + paths[1]) == sorted(row["path"] for row in source)
    first_blocks = [next(iter(rank))["input_ids"] for rank in ranks]
    assert first_blocks[0] != first_blocks[1]


def test_workers_share_the_files_without_repeats(tokenizer):
    def total(num_workers):
        stream = TokenBlockStream(load_source("bundled", split="validation"), tokenizer, 512)
        loader = torch.utils.data.DataLoader(
            stream, batch_size=4, num_workers=num_workers, collate_fn=BlockCollator(0)
        )
        return Counter(torch.cat([b["labels"][b["labels"] != IGNORE] for b in loader]).tolist())

    assert total(2) == total(0)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_mid_piece_is_exact(tokenizer, num_workers):
    def loader():
        stream = TokenBlockStream(
            load_source("bundled", split="train"),
            tokenizer,
            512,
            shuffle_buffer=8,
            condition_dropout=0.3,
            seed=3,
            loop=True,
        )
        return StatefulDataLoader(stream, batch_size=4, num_workers=num_workers, collate_fn=BlockCollator(0))

    reference = [b for b in itertools.islice(loader(), 30)]
    first = loader()
    resumed = list(itertools.islice(first, 11))
    state = first.state_dict()
    if num_workers == 0:  # the checkpoint falls inside a piece: a block is half filled
        assert len(state["dataset_state"]["block"]["ids"]) > 2
    second = loader()
    second.load_state_dict(state)
    resumed += list(itertools.islice(second, 19))
    for a, b in zip(reference, resumed, strict=True):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    assert not torch.equal(reference[11]["input_ids"], reference[12]["input_ids"])


def test_state_loads_with_weights_only_as_accelerate_does(tokenizer, tmp_path):
    stream = TokenBlockStream(load_source("bundled", split="validation"), tokenizer, 256, shuffle_buffer=4, loop=True)
    first = iter(stream)
    next(first)
    torch.save(stream.state_dict(), tmp_path / "state.bin")
    resumed = TokenBlockStream(load_source("bundled", split="validation"), tokenizer, 256, shuffle_buffer=4, loop=True)
    resumed.load_state_dict(torch.load(tmp_path / "state.bin", weights_only=True))
    assert next(iter(resumed)) == next(first)


def test_a_share_without_usable_files_fails_instead_of_spinning(tokenizer, bad_midis):
    rows = [{"midi": m, "composer": "bach", "path": f"{kind}.mid"} for kind, m in bad_midis.items()]
    stream = TokenBlockStream(rows_source(rows), tokenizer, 256, loop=True)
    with pytest.raises(ValueError, match="no usable MIDI in this rank's or worker's files .*skipped 4 files"):
        next(iter(stream))


def test_evaluation_blocks_are_framed_as_training_and_count_notes(tokenizer, good_midis, bad_midis):
    good = [{"midi": m, "composer": "bach", "path": f"{i}.mid"} for i, m in enumerate(good_midis[:4])]
    rows = [good[0], {"midi": bad_midis["random"], "composer": "bach", "path": "bad.mid"}, *good[1:]]
    blocks, notes, skipped = evaluation_blocks(rows_source(rows), tokenizer, block_size=100, max_files=3)
    pieces = [tokenizer.encode(m, "bach") for m in good_midis[:3]]  # the first 3 usable pieces
    assert blocks == pack(tokenizer, pieces, block_size=100)  # the training framing, without dropout
    assert targets(blocks) == [i for piece in pieces for i in piece[2:]]
    assert notes == sum(load_score(m).note_num() for m in good_midis[:3])
    assert skipped == Counter({"unreadable": 1})
