import miditok
import pytest
import torch
from transformers import LogitsProcessorList

from tokenization import InvalidMidiError, MusicGrammar, MusicGrammarLogitsProcessor, MusicTokenizer, list_midi_files


@pytest.fixture(scope="module", params=["plain", "bpe"])
def any_tokenizer(request, tokenizer, bpe_tokenizer):
    return tokenizer if request.param == "plain" else bpe_tokenizer


def test_grammar_accepts_every_real_piece(any_tokenizer):
    grammar = MusicGrammar(any_tokenizer)
    accepted = 0
    for midi_file in list_midi_files("bundled")[::3]:
        try:
            ids = any_tokenizer.encode(midi_file.url, midi_file.composer)
        except InvalidMidiError:
            continue
        assert grammar.accepts(ids), midi_file.path
        accepted += 1
    assert accepted > 10
    assert not grammar.accepts([any_tokenizer.bos_token_id, any_tokenizer.eos_token_id])


def test_a_tokenizer_with_a_mask_token_gets_a_grammar():
    base = miditok.REMI(miditok.TokenizerConfig(special_tokens=["PAD", "BOS", "EOS", "MASK"]))
    grammar = MusicGrammar(MusicTokenizer(base, composers=["bach"]))
    assert not grammar.allowed[:, base.vocab["MASK_None"]].any()


def sample(tokenizer, steps: int, batch: int, seed: int) -> torch.Tensor:
    """Random logits through the grammar processor (the worst possible model), EOS banned."""
    processors = LogitsProcessorList([MusicGrammarLogitsProcessor(MusicGrammar(tokenizer))])
    generator = torch.Generator().manual_seed(seed)
    ids = torch.full((batch, 1), tokenizer.bos_token_id)
    for _ in range(steps):
        scores = processors(ids, torch.randn(batch, tokenizer.vocab_size, generator=generator) * 3)
        scores[:, tokenizer.eos_token_id] = float("-inf")
        ids = torch.cat([ids, torch.multinomial(scores.softmax(-1), 1, generator=generator)], dim=1)
    return ids


def test_sampled_sequences_follow_miditok_syntax_and_decode(any_tokenizer):
    graph = any_tokenizer.base.tokens_types_graph
    for row in sample(any_tokenizer, steps=300, batch=4, seed=0).tolist():
        assert any_tokenizer.id_to_token(row[1]).startswith("Composer_")
        types = [token.split("_")[0] for i in row[2:] for token in any_tokenizer.base_tokens(i)]
        assert types[0] == "Bar"
        assert all(b in graph[a] for a, b in zip(types, types[1:], strict=False))
        assert any_tokenizer.decode(row).note_num() > 0


def test_processor_masks_only_forbidden_tokens(tokenizer):
    processor = MusicGrammarLogitsProcessor(MusicGrammar(tokenizer))
    scores = processor(torch.tensor([[tokenizer.bos_token_id]]), torch.zeros(1, tokenizer.vocab_size))
    allowed = torch.isfinite(scores[0]).nonzero().flatten().tolist()
    assert allowed == list(tokenizer.condition_token_ids.values())
    bar = tokenizer.base.vocab["Bar_None"]
    after_composer = processor(
        torch.tensor([[tokenizer.composer_token_id("bach")]]), torch.zeros(1, tokenizer.vocab_size)
    )
    assert torch.isfinite(after_composer[0]).nonzero().flatten().tolist() == [bar]
    padded = processor(torch.tensor([[bar]]), torch.zeros(1, tokenizer.vocab_size + 16))
    assert torch.isinf(padded[0, tokenizer.vocab_size :]).all()
