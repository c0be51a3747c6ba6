import itertools
from collections import Counter

import pytest
import torch
from datasets import IterableDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from tokenization import BlockCollator, TokenBlockStream, evaluation_blocks, load_score, load_source, skip_summary
from tokenization.sources import FEATURES


def rows_source(rows: list[dict]) -> IterableDataset:
    """A source of given rows, one shard per row like `load_source`."""

    def read(rows):
        yield from rows

    return IterableDataset.from_generator(read, gen_kwargs={"rows": rows}, features=FEATURES)


def test_blocks_pack_the_pieces_in_order(tokenizer, good_midis):
    rows = [{"midi": m, "composer": "bach", "path": f"{i}.mid"} for i, m in enumerate(good_midis[:3])]
    stream = TokenBlockStream(rows_source(rows), tokenizer, block_size=256)
    blocks = [row["input_ids"] for row in stream]
    assert all(len(block) == 256 for block in blocks[:-1]) and 0 < len(blocks[-1]) <= 256
    assert sum(blocks, []) == sum((tokenizer.encode(m, "bach") for m in good_midis[:3]), [])


def test_collator_pads_and_ignores_padding_in_labels():
    batch = BlockCollator(pad_token_id=0)([{"input_ids": [5, 6, 7]}, {"input_ids": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [8, -100, -100]]


def test_bad_files_are_skipped_and_counted(tokenizer, good_midis, bad_midis):
    good = [{"midi": m, "composer": "mozart", "path": f"good{i}.mid"} for i, m in enumerate(good_midis)]
    bad = [{"midi": m, "composer": "mozart", "path": f"{kind}.mid"} for kind, m in bad_midis.items()]
    mixed = [row for pair in itertools.zip_longest(good, bad) for row in pair if row]
    stream = TokenBlockStream(rows_source(mixed), tokenizer, block_size=512)
    tokens = sum((row["input_ids"] for row in stream), [])
    assert tokens.count(tokenizer.bos_token_id) == len(good)
    assert tokens == sum((tokenizer.encode(m, "mozart") for m in good_midis), [])
    assert stream.skipped == Counter({"unreadable": 2, "empty": 1, "no notes": 1})
    assert skip_summary(stream.skipped) == "skipped 4 files: 1 empty, 1 no notes, 2 unreadable"


@pytest.mark.parametrize(("dropout", "expected_unknown"), [(0.0, 0), (1.0, 1.0)])
def test_condition_dropout(tokenizer, dropout, expected_unknown):
    stream = TokenBlockStream(load_source("bundled", split="train"), tokenizer, 1024, condition_dropout=dropout)
    tokens = torch.tensor(sum((row["input_ids"] for row in itertools.islice(stream, 60)), []))
    conditions = tokens[torch.nonzero(tokens[:-1] == tokenizer.bos_token_id).flatten() + 1]
    assert len(conditions) > 5
    unknown = (conditions == tokenizer.composer_token_id(None)).float().mean().item()
    assert unknown == expected_unknown


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
        return Counter(torch.cat([b["input_ids"][b["attention_mask"] == 1] for b in loader]).tolist())

    assert total(2) == total(0)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_is_exact(tokenizer, num_workers):
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

    reference = [b["input_ids"] for b in itertools.islice(loader(), 30)]
    first = loader()
    resumed = [b["input_ids"] for b in itertools.islice(first, 11)]
    state = first.state_dict()
    second = loader()
    second.load_state_dict(state)
    resumed += [b["input_ids"] for b in itertools.islice(second, 19)]
    assert all(torch.equal(a, b) for a, b in zip(reference, resumed, strict=True))
    assert not torch.equal(reference[11], reference[12])


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


def test_evaluation_blocks_predict_every_token_once_and_count_notes(tokenizer, good_midis, bad_midis):
    good = [{"midi": m, "composer": "bach", "path": f"{i}.mid"} for i, m in enumerate(good_midis[:4])]
    rows = [good[0], {"midi": bad_midis["random"], "composer": "bach", "path": "bad.mid"}, *good[1:]]
    blocks, notes, skipped = evaluation_blocks(rows_source(rows), tokenizer, block_size=100, max_files=3)
    ids = sum((tokenizer.encode(m, "bach") for m in good_midis[:3]), [])  # the first 3 usable pieces
    assert all(len(block) == 100 for block in blocks[:-1]) and len(blocks[-1]) >= 2
    assert all(a[-1] == b[0] for a, b in itertools.pairwise(blocks))  # one token of overlap
    assert sum(len(block) - 1 for block in blocks) == len(ids) - 1  # every token but the first is a target
    assert blocks[0] + sum((block[1:] for block in blocks[1:]), []) == ids
    assert notes == sum(load_score(m).note_num() for m in good_midis[:3])
    assert skipped == Counter({"unreadable": 1})
