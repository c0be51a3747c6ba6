"""Composer classification data, scripts/train_classifier.py, scripts/train_ngram.py and
scripts/evaluate.py end to end on the bundled corpus, with tiny models."""

import json
import random
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from conftest import load_script
from evaluation.classification import (
    composers_by_files,
    evaluation_windows,
    labelled_pieces,
    music_ids,
    rank_labels,
    same_vocabulary,
    training_batch,
)
from modeling import build_config
from tokenization import load_source

CLASSES = ["bach", "chopin", "mozart"]


@pytest.fixture(scope="module")
def pieces(tokenizer):
    return labelled_pieces(load_source("bundled", "train"), tokenizer, set(CLASSES), Counter())


def test_labelled_pieces_keep_only_the_classes_and_no_frame(pieces, tokenizer):
    assert Counter(p.label for p in pieces) == {"bach": 4, "chopin": 4, "mozart": 4}
    special = {tokenizer.bos_token_id, tokenizer.eos_token_id, *tokenizer.condition_token_ids.values()}
    assert all(not special & set(p.music) for p in pieces)
    capped = labelled_pieces(load_source("bundled", "train"), tokenizer, {"bach"}, Counter(), max_per_composer=2)
    assert len(capped) == 2


def test_composers_by_files_orders_by_count_then_name_and_leaves_out_unknown():
    counts = Counter({"chopin": 3, "beethoven": 4, "bach": 4, "Unknown": 9})
    assert composers_by_files(counts, 4) == ["bach", "beethoven"]
    assert composers_by_files(counts, 1) == ["bach", "beethoven", "chopin"]
    assert composers_by_files(counts, 5) == []


def test_evaluation_windows_start_at_the_piece_and_carry_no_composer(pieces, tokenizer):
    windows, labels = evaluation_windows(pieces, tokenizer, length=64, per_piece=3)
    frame = [tokenizer.bos_token_id, tokenizer.composer_token_id(None)]
    assert all(w[:2] == frame and len(w) == 66 for w in windows)
    assert windows[0][2:] == pieces[0].music[:64] and windows[1][2:] == pieces[0].music[64:128]
    assert len(windows) == 3 * len(pieces) and labels[:3] == [pieces[0].label] * 3
    short = pieces[0].__class__(pieces[0].music[:20], "bach", "x.mid")
    assert evaluation_windows([short], tokenizer, length=64, per_piece=3) == ([frame + short.music], ["bach"])


def test_training_batches_are_balanced_and_reproducible(pieces, tokenizer):
    by_composer = {name: [p for p in pieces if p.label == name] for name in CLASSES}
    windows, labels = training_batch(by_composer, tokenizer, 32, 300, random.Random(1))
    assert set(labels) == set(CLASSES) and min(Counter(labels).values()) > 70  # ~100 each
    assert all(len(w) == 34 for w in windows)
    assert training_batch(by_composer, tokenizer, 32, 8, random.Random(1)) == (windows[:8], labels[:8])


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("classifier")
    results = load_script("train_classifier").main(
        ["--sources", "bundled", "--composers", ",".join(CLASSES), "--max_steps", "4", "--save_steps", "2"]
        + ["--window_tokens", "48", "--per_device_train_batch_size", "6", "--output_dir", str(output_dir)]
    )
    assert set(results["test"]["per_class"]) == set(CLASSES)
    return output_dir


def test_classifier_is_saved_like_any_model_with_its_test_accuracy(classifier, tokenizer):
    model = AutoModelForSequenceClassification.from_pretrained(classifier)
    assert model.config.id2label == dict(enumerate(CLASSES)) and model.config.window_tokens == 48
    assert model.config.n_positions == 48 + 2  # a fresh judge has the positions of a framed window
    saved = json.loads((classifier / "classifier_results.json").read_text())["test"]
    assert saved["windows"] == 4 * 3 and {row["count"] for row in saved["per_class"].values()} == {4}
    assert 0.0 <= saved["mean"]["top1"] <= saved["mean"]["top3"] <= 1.0


def test_rank_labels_ignores_padding(classifier):
    model = AutoModelForSequenceClassification.from_pretrained(classifier)
    short, long = list(range(10, 30)), list(range(40, 90))  # at most its 50 positions
    alone = rank_labels(model, [short])
    assert rank_labels(model, [short, long]) == alone + rank_labels(model, [long])
    assert sorted(alone[0]) == sorted(CLASSES)


def test_classifier_resumes_exactly(classifier, tmp_path):
    """Killed after step 2: resuming from checkpoint-2 ends with the same weights."""
    output_dir = tmp_path / "resumed"
    argv = ["--sources", "bundled", "--composers", ",".join(CLASSES), "--max_steps", "4", "--save_steps", "2"]
    argv += ["--window_tokens", "48", "--per_device_train_batch_size", "6", "--output_dir", str(output_dir)]
    script = load_script("train_classifier")
    script.main(argv)
    shutil.rmtree(output_dir / "checkpoint-4")
    (output_dir / "model.safetensors").unlink()
    script.main([*argv, "--resume_from_checkpoint", "latest"])
    resumed = AutoModelForSequenceClassification.from_pretrained(output_dir).state_dict()
    first = AutoModelForSequenceClassification.from_pretrained(classifier).state_dict()
    assert all(torch.equal(resumed[k], first[k]) for k in first)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--composers", "bach"], "at least 2 composers"),
        (["--min_files", "50"], "at least 2 composers"),
        (["--composers", "bach,elgar"], "no usable training piece of elgar"),
        (["--composers", "bach,chopin", "--logging_steps", "0"], "must be positive"),
    ],
)
def test_classifier_bad_arguments_fail_with_one_line(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit):
        load_script("train_classifier").main(["--sources", "bundled", "--output_dir", str(tmp_path), *argv])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("family", "message"),
    [
        ("mamba", "start from a GPT-2 (transformer) model"),
        ("transformer", "exceed the model's 256 positions: give --window_tokens 254 or less"),  # 256 + 2 framing
    ],
)
def test_classifier_refuses_a_model_it_cannot_start_from(family, message, tmp_path, tokenizer, capsys):
    AutoModelForCausalLM.from_config(build_config(family, "tiny", tokenizer)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(SystemExit):
        load_script("train_classifier").main(
            ["--init_from", str(tmp_path), "--composers", "bach,chopin", "--output_dir", str(tmp_path / "out")]
        )
    assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def models(tokenizer, tmp_path_factory) -> dict[str, Path]:
    """A tiny untrained GPT-2 and Mamba, and a 3-gram of the bundled training split."""
    folders = {}
    for family in ("transformer", "mamba"):
        folders[family] = tmp_path_factory.mktemp(family)
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(build_config(family, "tiny", tokenizer)).save_pretrained(folders[family])
        tokenizer.save_pretrained(folders[family])
    folders["ngram"] = tmp_path_factory.mktemp("ngram")
    tokenizer.save_pretrained(folders["ngram"])
    load_script("train_ngram").main(
        [
            "--sources",
            "bundled",
            "--tokenizer",
            str(folders["ngram"]),
            "--order",
            "3",
            "--output_dir",
            str(folders["ngram"]),
        ]
    )
    return folders


def evaluate(model: Path, classifier: Path, out: Path, *extra: str) -> dict:
    return load_script("evaluate").main(
        [str(model), "--classifier", str(classifier), "--sources", "bundled", "--json", str(out)]
        + ["--composers", "bach, chopin", "--num_samples", "2", "--length", "40", *extra]
    )


@pytest.mark.parametrize("kind", ["transformer", "mamba", "ngram"])
def test_evaluate_writes_json_report_and_plots(kind, models, classifier, tmp_path):
    out = tmp_path / f"{kind}.json"
    results = evaluate(models[kind], classifier, out, "--guidance_scales", "1", "2")
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    nll = results["likelihood"]
    assert nll["tokens"] > 1000 and nll["bits_per_note"] > nll["bits_per_token"] > 0
    assert results["real"]["pieces"] == {"bach": 1, "chopin": 1}
    scales = [run["guidance_scale"] for run in results["runs"]]
    assert scales == ([1.0] if kind == "ngram" else [1.0, 2.0])  # an n-gram has nothing to guide with
    for run in results["runs"]:
        assert run["classifier"]["per_class"]["bach"]["count"] == 2
        assert sum(run["classifier"]["named"]["chopin"].values()) == 2
        samples = tmp_path / f"{kind}_samples" / f"guidance{run['guidance_scale']:g}"
        assert sorted(p.name for p in (samples / "bach").iterdir()) == ["sample_0.mid", "sample_1.mid"]
        assert run["generation"]["new_tokens"] == 4 * 40
        assert set(run["distances"]["chopin"]) == {"pitch_class", "pitch_range", "polyphony", "note_density", "ioi"}
        assert 0.0 <= run["mean_distances"]["pitch_class"]["overlap"] <= 1.0
        assert (tmp_path / f"{kind}_guidance{run['guidance_scale']:g}.png").read_bytes()[:4] == b"\x89PNG"
    report = out.with_suffix(".md").read_text()
    assert "bits/note" in report and "| chopin |" in report and f"{kind}_guidance1.png" in report
    found = results["identification"]
    if kind == "ngram":  # it sees the condition in its first steps only: not measured
        assert found is None and "Likelihood identification" not in report
    else:
        assert found["composers"] == ["bach", "chopin"] and found["chance"] == 0.5  # the composers asked for
        opening = found["opening"]
        assert opening["truth"] == ["bach", "chopin"] and len(opening["named"]) == 2  # one test piece each
        assert opening["interval"][0] <= opening["accuracy"] <= opening["interval"][1]
        assert 0.0 <= opening["classifier"] <= 1.0
        assert "Likelihood identification" in report


def test_ngram_learns_more_than_an_untrained_model(models, classifier, tmp_path):
    ngram = evaluate(models["ngram"], classifier, tmp_path / "ngram.json")["likelihood"]
    untrained = evaluate(models["transformer"], classifier, tmp_path / "gpt2.json")["likelihood"]
    assert ngram["tokens"] == untrained["tokens"] and ngram["notes"] == untrained["notes"]
    assert ngram["bits_per_token"] < untrained["bits_per_token"] - 1


def test_table_compares_runs(models, classifier, tmp_path, capsys):
    evaluate(models["ngram"], classifier, tmp_path / "ngram.json")
    evaluate(models["transformer"], classifier, tmp_path / "gpt2.json")
    capsys.readouterr()  # the reports
    load_script("evaluate").main(["--table", str(tmp_path / "ngram.json"), str(tmp_path / "gpt2.json")])
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| model | params |") and table[2].startswith("| ngram (ngram) | - |")
    assert table[3].startswith("| gpt2 (gpt2) |") and "identification opening / middle" in table[0]
    assert table[2].count("|") == table[3].count("|") == table[0].count("|")
    assert table[-2].startswith("| real test music") and table[-1].startswith("| chance |")
    assert "| 0.333 / 1.000 |" in table[-1]  # three classes


def test_classification_of_generated_music_goes_through_midi(tokenizer, pieces):
    """Generated samples are scored like real pieces: the score's tokens from the start."""
    score = tokenizer.decode(pieces[0].music[:200])
    assert music_ids(tokenizer, score)[:50] == pieces[0].music[:50]


def test_a_table_of_missing_results_says_which(tmp_path, capsys):
    with pytest.raises(SystemExit):
        load_script("evaluate").main(["--table", str(tmp_path / "*.json")])
    assert (
        f"--table: no results file {tmp_path / '*.json'}: give evaluate.py's --json outputs" in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("no tokenizer", "no music tokenizer in"),
        ("empty source", "no MIDI files in"),
        ("unknown composer", "composer(s) elgar unknown"),
        ("not a classifier of ours", "has no window_tokens in its config"),
        ("top_p", "--top_p is a probability mass"),
    ],
)
def test_evaluate_bad_input_fails_with_one_line(change, message, models, classifier, tmp_path, capsys):
    model, source, composers, extra = models["transformer"], "bundled", "bach", []
    if change == "not a classifier of ours":
        foreign = AutoModelForSequenceClassification.from_pretrained(classifier)
        del foreign.config.window_tokens
        foreign.save_pretrained(tmp_path / "foreign")
        shutil.copy(classifier / "tokenizer.json", tmp_path / "foreign")
        shutil.copy(classifier / "music_tokenizer.json", tmp_path / "foreign")
        classifier = tmp_path / "foreign"
    elif change == "top_p":
        extra = ["--top_p", "0"]
    elif change == "no tokenizer":
        model = tmp_path / "bare"
        AutoModelForCausalLM.from_pretrained(models["transformer"]).save_pretrained(model)
    elif change == "empty source":
        source = str(tmp_path / "empty")
        Path(source).mkdir()
    else:
        composers = "bach, elgar"
    with pytest.raises(SystemExit):
        load_script("evaluate").main(
            [str(model), "--classifier", str(classifier), "--sources", source, "--json", str(tmp_path / "x.json")]
            + ["--composers", composers, *extra]
        )
    assert message in capsys.readouterr().err


def test_max_test_files_samples_the_likelihood_only(models, classifier, tmp_path):
    full = evaluate(models["ngram"], classifier, tmp_path / "all.json")
    sample = evaluate(models["ngram"], classifier, tmp_path / "sample.json", "--max_test_files", "3")
    assert sample["likelihood"]["tokens"] < full["likelihood"]["tokens"]
    assert sample["real"] == full["real"]


def test_a_classifier_with_another_vocabulary_reads_the_samples_again(classifier, bpe_tokenizer, tokenizer, tmp_path):
    """The samples of a BPE model go MIDI -> the classifier's (plain REMI) tokens."""
    assert same_vocabulary(tokenizer, tokenizer) and not same_vocabulary(tokenizer, bpe_tokenizer)
    model = tmp_path / "bpe-model"
    AutoModelForCausalLM.from_config(build_config("transformer", "tiny", bpe_tokenizer)).save_pretrained(model)
    bpe_tokenizer.save_pretrained(model)
    results = evaluate(model, classifier, tmp_path / "bpe.json")
    assert results["real"]["classifier"]["per_class"]["chopin"]["count"] == 1
    [run] = results["runs"]
    assert run["classifier"]["per_class"]["bach"]["count"] == 2 and run["classifier"]["unreadable"] == 0
