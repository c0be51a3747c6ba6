"""Model cards: the sections a user needs, metadata the Hub indexes, and figures from the run."""

import math
import re
import subprocess
import sys

from huggingface_hub import ModelCard
from transformers import GPT2Config

from conftest import ROOT
from model_cards import TEMPLATE, model_card
from tokenization import MusicTokenizer, tokenizer_for_sources

BUNDLED = ROOT / "modeling" / "pretrained" / "gpt2-small-classical"
SECTIONS = re.compile(r"^## (.+)$", re.MULTILINE)
MEASURED = {
    "bits_per_token": 5.12341,
    "bits_per_note": 14.5,
    "identification_chance": 0.25,
    "identification_opening": 0.40625,
    "identification_middle": 0.3,
}


def render(sources: list[str], metrics: dict) -> ModelCard:
    tokenizer = tokenizer_for_sources(sources)
    ids = {name: getattr(tokenizer, name) for name in ("bos_token_id", "eos_token_id", "pad_token_id")}
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=len(tokenizer), **ids)
    return model_card(
        config,
        tokenizer,
        name="gpt2-test",
        parameters=123_456,
        sources=sources,
        metrics=metrics,
        evaluated_on="the validation split",
        training={"hardware": "1 x CPU", "precision": "float32"},
        tokens_trained=4096,
        repo_id="me/gpt2-test",
    )


def test_a_card_has_every_section_and_the_metadata_the_hub_indexes():
    card = render(["bundled"], MEASURED)
    assert SECTIONS.findall(card.text) == SECTIONS.findall(TEMPLATE.read_text())
    assert {"Intended use", "Limitations", "How to use", "Training data", "Evaluation", "Citation"} <= set(
        SECTIONS.findall(card.text)
    )
    assert card.data.pipeline_tag == "other" and {"midi", "symbolic-music", "gpt2"} <= set(card.data.tags)
    results = {result.metric_type: result for result in card.data.eval_results}
    assert results["bits_per_token"].metric_value == 5.1234 and results["bits_per_token"].dataset_split == "validation"
    assert set(results) == {"bits_per_token", "bits_per_note", "identification_opening", "identification_middle"}
    # figures with their units, the uniform baseline, and a verdict that follows from them
    assert "| bits per token | 5.1234 | bits/token |" in card.text
    assert f"scores {math.log2(len(tokenizer_for_sources(['bundled']))):.2f} bits" in card.text
    assert "0.406 of them (mid-piece windows: 0.300), against a chance of 0.250 among the 4 composers" in card.text
    assert "**The composer is followed only weakly.**" in card.text and "1.6 times chance" in card.text
    # usage outside this repository, the data's licence and how labels are made
    assert 'pipeline("midi-generation", model="me/gpt2-test", trust_remote_code=True)' in card.text
    assert "licence MIT" in card.text and "the file name's prefix" in card.text
    # a round trip through the Hub's parser keeps the results
    assert ModelCard(str(card)).data.eval_results[0].metric_value == 5.1234


def test_the_composers_are_listed_with_their_training_pieces_most_first():
    tokenizer = tokenizer_for_sources(["bundled"])
    text = render(["bundled"], MEASURED).text
    listed = re.findall(r"`([\w-]+)` \((\d+)\)", text.split("## Composers")[1].split("##")[0])
    assert [int(n) for _, n in listed] == sorted((int(n) for _, n in listed), reverse=True)
    assert dict((name, int(n)) for name, n in listed) == {
        name: tokenizer.training_pieces.get(name, 0) for name in tokenizer.composers
    }
    assert f"{sum(tokenizer.training_pieces.values())} training pieces" in text


def test_a_card_says_what_was_not_measured_and_credits_lakh():
    card = render(["bundled:lakh"], {"bits_per_token": 7.5})
    assert "**How closely the composer is followed was not measured**" in card.text
    assert "CC-BY 4.0" in card.text and "@phdthesis{raffel2016lakh" in card.text
    assert [result.metric_type for result in card.data.eval_results] == ["bits_per_token"]
    assert render(["bundled"], MEASURED | {"identification_opening": 0.26}).text.count("no better than chance") == 1


def test_the_bundled_card_follows_the_template_and_its_tokenizer():
    card = ModelCard.load(BUNDLED / "README.md")
    assert SECTIONS.findall(card.text) == SECTIONS.findall(TEMPLATE.read_text())
    assert card.data.model_name == BUNDLED.name and card.data.pipeline_tag == "other"
    indexed = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert f"| bits per token | {indexed['bits_per_token']} | bits/token |" in card.text
    pieces = MusicTokenizer.from_pretrained(BUNDLED).training_pieces
    assert f"{sum(pieces.values()):,} training pieces" in card.text
    assert (
        f"{sum(n >= 100 for name, n in pieces.items() if name != 'Unknown')} of the 140 composer tokens" in card.text
    )


def test_the_bundled_cards_usage_runs_as_written(clone):
    [code] = re.findall(r"```python\n(.*?)\n```", (BUNDLED / "README.md").read_text(), re.DOTALL)
    result = subprocess.run([sys.executable, "-c", code], cwd=clone, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    tokens, seconds = re.fullmatch(r"(\d+) tokens, ([\d.]+) seconds of music", result.stdout.strip()).groups()
    assert int(tokens) == 1000 and float(seconds) > 5
    assert (clone / "bach.mid").stat().st_size > 1000
