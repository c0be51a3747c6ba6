"""Likelihood identification on hand-made models: one that ignores its condition scores
chance, one that copies it scores 1; windows, gains and bootstrap intervals."""

from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from transformers import AutoModelForCausalLM

from evaluation import bootstrap_interval, identification, identification_windows
from evaluation.identification import condition_nll, summary_metrics
from modeling import build_config

COMPOSERS = ["bach", "chopin", "mozart"]


class ToyModel(torch.nn.Module):
    """Predicts every next token from the condition token at position 1 (`copies=True`) or
    uniformly (`copies=False`): the two ends of how much a model can follow its condition."""

    def __init__(self, vocab_size: int, favourite: dict[int, int], copies: bool) -> None:
        super().__init__()
        self.vocab_size, self.favourite, self.copies = vocab_size, favourite, copies
        self.weight = torch.nn.Parameter(torch.zeros(1))  # gives the model a device

    def forward(self, input_ids, attention_mask=None):
        logits = torch.zeros(*input_ids.shape, self.vocab_size)
        if self.copies:
            for row, condition in enumerate(input_ids[:, 1].tolist()):
                logits[row, :, self.favourite.get(condition, 0)] = 8.0
        return SimpleNamespace(logits=logits)


def favourite_tokens(tokenizer) -> dict[int, int]:
    """Composer token id -> a music token that composer's windows are made of."""
    return {tokenizer.composer_token_id(c): 100 + i for i, c in enumerate(COMPOSERS)}


def windows_of(tokenizer, per_composer: int = 2, length: int = 40):
    favourite = favourite_tokens(tokenizer)
    pieces = [
        {
            "ids": [tokenizer.bos_token_id, condition, *[token] * (2 * length), tokenizer.eos_token_id],
            "composer": composer,
            "path": f"{composer}_{i}.mid",
        }
        for composer, (condition, token) in zip(COMPOSERS, favourite.items(), strict=True)
        for i in range(per_composer)
    ]
    return identification_windows(pieces, COMPOSERS, length, tokenizer)


@pytest.mark.parametrize(("copies", "accuracy"), [(False, 1 / 3), (True, 1.0)])
def test_a_model_that_ignores_its_condition_scores_chance_one_that_copies_it_scores_one(tokenizer, copies, accuracy):
    model = ToyModel(len(tokenizer), favourite_tokens(tokenizer), copies)
    found = identification(model, tokenizer, windows_of(tokenizer), COMPOSERS, batch_size=4)
    assert found["chance"] == pytest.approx(1 / 3)
    for position in ("opening", "middle"):
        assert found[position]["accuracy"] == pytest.approx(accuracy)
        assert found[position]["windows"] == 6
        for gain in ("gain_over_unknown", "gain_over_wrong"):
            bits = found[position][gain]["bits_per_window"]
            assert bits > 100 if copies else bits == pytest.approx(0.0)
    assert set(summary_metrics(found)) == {"identification_chance"} | {
        f"{name}_{position}"
        for name in ("identification", "gain_over_unknown", "gain_over_wrong")
        for position in ("opening", "middle")
    }


def test_windows_are_the_opening_and_the_middle_without_prefix_or_eos(tokenizer):
    music = list(range(10, 110))
    pieces = [
        {"ids": [1, 999, *music, 2], "composer": "bach", "path": "long.mid"},
        {"ids": [1, 999, *music[:30], 2], "composer": "bach", "path": "short.mid"},  # one window's worth
        {"ids": [1, 999, *music[:10], 2], "composer": "bach", "path": "tiny.mid"},  # too short to judge
        {"ids": [1, 999, *music, 2], "composer": "satie", "path": "other.mid"},  # not a candidate
    ]
    windows = identification_windows(pieces, ["bach"], 40, tokenizer)
    assert [(w.path, w.position) for w in windows] == [
        ("long.mid", "opening"),
        ("long.mid", "middle"),
        ("short.mid", "opening"),
    ]
    assert windows[0].music == music[:40] and windows[1].music == music[30:70] and windows[2].music == music[:30]


def test_condition_nll_is_the_same_with_an_accelerator_and_in_batches_of_any_size(tokenizer):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(build_config("transformer", "tiny", tokenizer))
    windows = windows_of(tokenizer, per_composer=3, length=16)
    conditions = [tokenizer.composer_token_id(c) for c in COMPOSERS]
    plain = condition_nll(model, windows, conditions, tokenizer, batch_size=7)
    together = condition_nll(
        model, windows, conditions, tokenizer, batch_size=len(windows), accelerator=Accelerator(cpu=True)
    )
    assert plain.shape == (len(windows), 3)
    assert together == pytest.approx(plain, rel=1e-5)


def test_no_window_long_enough_leaves_identification_without_positions(tokenizer):
    model = ToyModel(len(tokenizer), favourite_tokens(tokenizer), copies=True)
    assert condition_nll(model, [], [tokenizer.composer_token_id(c) for c in COMPOSERS], tokenizer).shape == (0, 3)
    assert identification(model, tokenizer, [], COMPOSERS) == {
        "kind": "composer",
        "composers": COMPOSERS,
        "chance": 1 / 3,
    }


def test_bootstrap_interval_holds_the_estimate_and_shrinks_to_a_point_when_all_agree():
    truth = ["a"] * 20 + ["b"] * 20
    named = ["a"] * 15 + ["b"] * 5 + ["b"] * 10 + ["a"] * 10
    low, high = bootstrap_interval(truth, named)
    assert low < (15 / 20 + 10 / 20) / 2 < high and high - low < 0.4
    assert bootstrap_interval(truth, truth) == (1.0, 1.0)
