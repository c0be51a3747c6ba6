import json

import miditok
import pytest
import torch
from transformers import LogitsProcessorList

from modeling.pipeline_midi_generation import GrammarLogitsProcessor
from tokenization import InvalidMidiError, MusicTokenizer, list_midi_files


@pytest.fixture(scope="module", params=["plain", "bpe"])
def any_tokenizer(request, tokenizer, bpe_tokenizer):
    return tokenizer if request.param == "plain" else bpe_tokenizer


def test_grammar_accepts_every_real_piece(any_tokenizer):
    grammar = any_tokenizer.grammar()
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
    grammar = MusicTokenizer(base, composers=["bach"]).grammar()
    assert not grammar.allowed[:, base.vocab["MASK_None"]].any()


def sample(tokenizer, steps: int, batch: int, seed: int) -> torch.Tensor:
    """Random logits through the generation grammar processor (the worst possible model), EOS
    banned; the processor reads the grammar as saved with the tokenizer."""
    processors = LogitsProcessorList([GrammarLogitsProcessor(tokenizer.grammar().to_dict())])
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
    processor = GrammarLogitsProcessor(tokenizer.grammar().to_dict())
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


def test_grammar_is_saved_with_the_tokenizer(bpe_tokenizer, tmp_path):
    bpe_tokenizer.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "music_tokenizer.json").read_text())["grammar"]
    grammar = bpe_tokenizer.grammar()
    assert saved == grammar.to_dict()
    assert len(saved["first_state"]) == len(saved["last_state"]) == len(bpe_tokenizer)
    # a BPE token that spans Pitch..Velocity starts in the Pitch state and ends in the Velocity state
    merged = next(i for i in range(bpe_tokenizer.base_vocab_size) if len(bpe_tokenizer.base_tokens(i)) > 1)
    kinds = [t.split("_")[0] for t in bpe_tokenizer.base_tokens(merged)]
    assert grammar.states[saved["first_state"][merged]] == kinds[0]
    assert grammar.states[saved["last_state"][merged]] == kinds[-1]
