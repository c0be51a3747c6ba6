"""The interpolated Kneser-Ney n-gram baseline, against its definition computed the slow way."""

import math
import random
from collections import Counter

import numpy as np
import pytest
import torch
from transformers import LogitsProcessorList

from modeling.ngram import CONFIG_NAME, WEIGHTS_NAME, NGramModel

BOS, EOS = 0, 1


def random_corpus(pieces: int, length: int, vocab_size: int, seed: int = 0) -> list[list[int]]:
    """Pieces that open with BOS, from a Markov chain with few likely followers per id (repeated n-grams)."""
    rng = random.Random(seed)
    favourites = {i: rng.sample(range(2, vocab_size), 3) for i in range(vocab_size)}
    corpus = []
    for _ in range(pieces):
        piece = [BOS]
        for _ in range(rng.randint(1, length)):
            choices = favourites[piece[-1]] if rng.random() < 0.8 else range(2, vocab_size)
            piece.append(rng.choice(choices))
        corpus.append(piece)
    return corpus


def kn_counts(corpus: list[list[int]], k: int, order: int) -> Counter:
    """Counts of k-grams as interpolated KN uses them, with Python counters.

    Highest order: occurrences that predict an id (not a sequence's first id). Lower orders:
    distinct left extensions, plus occurrences that open a sequence (k >= 2)."""
    if k == order:
        return Counter(tuple(s[i : i + k]) for s in corpus for i in range(len(s) - k + 1) if i + k >= 2)
    extended = {tuple(s[i : i + k + 1]) for s in corpus for i in range(len(s) - k)}
    counts = Counter(gram[1:] for gram in extended)
    counts.update(tuple(s[:k]) for s in corpus if k >= 2 and len(s) >= k)
    return counts


def reference_prob(corpus: list[list[int]], order: int, vocab_size: int, history: list[int], word: int) -> float:
    """p(word | history) straight from the recursion, one order at a time."""
    prob = 1 / vocab_size
    for k in range(1, min(order, len(history) + 1) + 1):
        counts = kn_counts(corpus, k, order)
        n1, n2 = sum(c == 1 for c in counts.values()), sum(c == 2 for c in counts.values())
        discount = n1 / (n1 + 2 * n2) if n1 and n2 else 0.75
        context = tuple(history[len(history) - k + 1 :]) if k > 1 else ()
        followers = {gram[-1]: c for gram, c in counts.items() if gram[:-1] == context}
        total = sum(followers.values())
        if total:
            prob = (max(followers.get(word, 0) - discount, 0) + discount * len(followers) * prob) / total
    return prob


@pytest.fixture(scope="module")
def corpus() -> list[list[int]]:
    return random_corpus(pieces=40, length=30, vocab_size=12)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_rows_are_distributions(corpus, order):
    model = NGramModel.fit(corpus, vocab_size=14, order=order)  # ids 12 and 13 never seen
    contexts = [corpus[0][:5], corpus[1], [12, 13, 12], [13], [BOS], [], [5, 12, 3, 4, 5, 6, 7]]
    log_probs = model.next_log_probs(contexts)
    assert log_probs.shape == (len(contexts), 14) and log_probs.dtype == torch.float32
    assert torch.isfinite(log_probs).all()
    torch.testing.assert_close(log_probs.double().exp().sum(-1), torch.ones(len(contexts), dtype=torch.float64))


@pytest.mark.parametrize("order", [2, 3])
def test_matches_definition(corpus, order):
    """Continuation counts, BOS n-grams, discounts, full back-off from unseen contexts: all as defined."""
    model = NGramModel.fit(corpus, vocab_size=14, order=order)
    contexts = [[BOS], corpus[0][:4], corpus[3][:2], [7, 12], [12], []]
    probs = model.next_log_probs(contexts).double().exp()
    for row, history in enumerate(contexts):
        expected = [reference_prob(corpus, order, 14, history, word) for word in range(14)]
        torch.testing.assert_close(probs[row], torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=0)


def test_unigram_by_hand():
    model = NGramModel.fit([[BOS, 2, 2, 3, 3, 4, 2]], vocab_size=6, order=1)
    # predicted ids 2, 2, 3, 3, 4, 2: counts {2: 3, 3: 2, 4: 1}, total 6, 3 types; D = n1 / (n1 + 2 n2) = 1 / 3
    discount = 1 / 3
    prob = {w: (max(c - discount, 0) + discount * 3 / 6) / 6 for w, c in {0: 0, 1: 0, 2: 3, 3: 2, 4: 1, 5: 0}.items()}
    held_out = [BOS, 2, 5, 4, 0]
    nll, count = model.sequence_nll(held_out)
    assert count == 4
    assert nll == pytest.approx(-sum(math.log(prob[w]) for w in held_out[1:]), rel=1e-12)


def test_no_ngram_crosses_sequences():
    model = NGramModel.fit([[BOS, 2, 3], [BOS, 4, 5]], vocab_size=6, order=2)
    after = model.next_log_probs([[3], [2], []])
    torch.testing.assert_close(after[0], after[2])  # 3 ends a piece: nothing follows it, full back-off
    assert after[0, BOS] < after[1, 3]  # were (3, BOS) counted, BOS would be likely after 3


@pytest.mark.parametrize("order", [3, 4])
def test_learns_a_deterministic_pattern(order):
    vocab_size = 50
    model = NGramModel.fit([[BOS] + [2, 3, 4, 5] * 20 for _ in range(10)], vocab_size=vocab_size, order=order)
    probs = model.next_log_probs([[BOS, 2, 3], [4, 5, 2], [BOS]]).exp()
    assert probs[0, 4] > 0.9 and probs[1, 3] > 0.9 and probs[2, 2] > 0.9
    nll, count = model.sequence_nll([BOS] + [2, 3, 4, 5] * 10)
    assert nll / count < 0.05 * math.log(vocab_size)


def test_sequence_nll_matches_next_log_probs(corpus):
    model = NGramModel.fit(corpus, vocab_size=14, order=4)
    held_out = random_corpus(pieces=1, length=40, vocab_size=12, seed=1)[0] + [12, 13, 5]
    nll, count = model.sequence_nll(held_out)
    log_probs = model.next_log_probs([held_out[:t] for t in range(1, len(held_out))])
    stepwise = -sum(log_probs[t - 1, held_out[t]].item() for t in range(1, len(held_out)))
    assert count == len(held_out) - 1
    assert nll == pytest.approx(stepwise, rel=1e-5)
    assert model.sequence_nll([BOS]) == (0.0, 0)


def test_generate_is_reproducible(corpus):
    model = NGramModel.fit(corpus, vocab_size=14, order=3)

    def sample(seed: int) -> list[list[int]]:
        return model.generate([[BOS], [BOS, 3]], 30, EOS, generator=torch.Generator().manual_seed(seed))

    assert sample(0) == sample(0)
    assert sample(0) != sample(1)


def test_generate_stops_at_eos_and_max_new_tokens():
    pieces = random_corpus(pieces=30, length=6, vocab_size=8)
    model = NGramModel.fit([piece + [EOS] for piece in pieces], vocab_size=8, order=3)
    prompts = [[BOS]] * 20 + [[BOS, 4, 5]] * 5
    rows = model.generate(prompts, 12, EOS, generator=torch.Generator().manual_seed(0))
    stopped = 0
    for prompt, row in zip(prompts, rows, strict=True):
        new = row[len(prompt) :]
        assert row[: len(prompt)] == prompt and 1 <= len(new) <= 12
        assert EOS not in new[:-1]
        stopped += new[-1] == EOS and len(new) < 12
    assert stopped > 0  # some rows ended early, on EOS


@pytest.mark.parametrize("prompts", [[[BOS], [BOS]], [[BOS], [BOS, 2, 3]]], ids=["same length", "ragged"])
def test_generate_applies_logits_processor(prompts):
    model = NGramModel.fit([[BOS] + [2, 3] * 20] * 3, vocab_size=6, order=2)
    seen = []

    def ban_three(input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        seen.append(input_ids.tolist())
        return scores.index_fill(-1, torch.tensor([3]), float("-inf"))

    rows = model.generate(prompts, 10, EOS, LogitsProcessorList([ban_three]), torch.Generator().manual_seed(0))
    assert all(3 not in row[len(prompt) :] for prompt, row in zip(prompts, rows, strict=True))
    # the processor saw each unfinished row's own ids, prompt and new ids so far
    assert all(any(row[: len(ids)] == ids for row in rows) for batch in seen for ids in batch)
    assert max(len(batch[0]) for batch in seen) == max(len(row) for row in rows) - 1


def test_save_and_load(corpus, tmp_path):
    model = NGramModel.fit(corpus, vocab_size=14, order=3)
    model.save_pretrained(tmp_path / "ngram")
    assert {p.name for p in (tmp_path / "ngram").iterdir()} == {WEIGHTS_NAME, CONFIG_NAME}
    loaded = NGramModel.from_pretrained(tmp_path / "ngram")
    assert (loaded.order, loaded.vocab_size, loaded.discounts) == (3, 14, model.discounts)
    contexts = [corpus[0][:6], [12], []]
    assert torch.equal(loaded.next_log_probs(contexts), model.next_log_probs(contexts))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "missing")):
        NGramModel.from_pretrained(tmp_path / "missing")


def test_fit_a_large_vocabulary():
    rng = np.random.default_rng(0)
    pieces = [np.concatenate([[BOS], rng.integers(2, 4000, 999)]) for _ in range(200)]
    model = NGramModel.fit(pieces, vocab_size=4000, order=4)
    for keys, counts in zip(model.keys, model.counts, strict=True):
        assert (np.diff(keys) > 0).all() and (counts > 0).all()
    assert model.counts[-1].sum() == 200 * 997  # every 4-gram inside a piece, once
    nll, count = model.sequence_nll(pieces[0])
    assert count == 999 and nll / count < math.log(4000)  # seen text: better than uniform
    with pytest.raises(ValueError, match="token ids"):
        NGramModel.fit([[BOS, 4000]], vocab_size=4000)
    with pytest.raises(ValueError, match="order"):  # 6 ids of 12 bits do not fit one int64 key
        NGramModel.fit(pieces, vocab_size=4000, order=6)
