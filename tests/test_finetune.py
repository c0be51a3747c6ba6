"""Fine-tuning on a user's folder: labelled sources, LoRA adapters, the folders they load from,
and scripts/finetune.py end to end (tiny random models: what is tested is the mechanics)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import symusic
import torch
from transformers import AutoModelForCausalLM, pipeline

import modeling
from conftest import ROOT, load_script
from modeling.adapters import LORA_TARGETS, add_condition_rows, load_model, save_adapter, with_lora
from tokenization import MusicTokenizer, list_midi_files
from tokenization.sources import labelled_splits

LAKH = ROOT / "tokenization" / "corpus" / "lakh-clean" / "clean_midi"


@pytest.fixture(scope="module")
def bases(tmp_path_factory, tokenizer) -> dict[str, Path]:
    """A tiny random model of each family with the bundled tokenizer, which records many training
    pieces for two composers (the conditions a fine-tuning's new one is identified against)."""
    folder = tmp_path_factory.mktemp("bases")
    tokenizer.save_pretrained(folder / "tokenizer")  # a copy: the session's tokenizer stays as it is
    saved = MusicTokenizer.from_pretrained(folder / "tokenizer")
    saved.training_pieces = {"bach": 300, "chopin": 120, "mozart": 3}
    found = {}
    for family in modeling.FAMILIES:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(modeling.build_config(family, "tiny", saved))
        model.save_pretrained(folder / family)
        saved.save_pretrained(folder / family)
        found[family] = folder / family
    return found


@pytest.fixture
def three_files(tmp_path) -> Path:
    """A user's folder of three pieces, in subfolders of their own."""
    for i, path in enumerate(sorted(LAKH.glob("*/*.mid"))[:3]):
        (tmp_path / "mine" / f"set{i}").mkdir(parents=True)
        shutil.copy(path, tmp_path / "mine" / f"set{i}" / path.name)
    return tmp_path / "mine"


def test_a_labelled_folder_names_every_file_and_holds_a_fifth_out(three_files):
    files = list_midi_files(f"label:My Style:{three_files}")
    assert {f.composer for f in files} == {"my_style"} and len(files) == 3
    assert [f.split for f in files].count("validation") == 1  # a fifth of 3, at least one
    paths = [f"piece{i}.mid" for i in range(20)]
    splits = labelled_splits(paths)
    assert splits.count("validation") == 4 and splits.count("train") == 16
    assert labelled_splits(paths[::-1]) == splits[::-1]  # by path, whatever the listing's order
    assert labelled_splits(["one.mid"]) == ["train"]
    versions = list_midi_files(f"label:pop:{LAKH}")  # Lakh's ".N" versions are the musician's files too
    assert len(versions) == len(list(LAKH.glob("*/*.mid"))) > len(list_midi_files("bundled:lakh"))
    with pytest.raises(ValueError, match="label:<name>:<folder>"):
        list_midi_files("label::somewhere")


@pytest.mark.parametrize("family", modeling.FAMILIES)
def test_lora_trains_every_targeted_projection_and_the_new_condition_only(family, bases):
    model = AutoModelForCausalLM.from_pretrained(bases[family])
    tokenizer = MusicTokenizer.from_pretrained(bases[family])
    known = model.config.vocab_size
    conditions = model.get_input_embeddings().weight[tokenizer.base_vocab_size :].detach().clone()
    add_condition_rows(model, known + 1, range(tokenizer.base_vocab_size, known))
    new_row = model.get_input_embeddings().weight[known]
    assert torch.allclose(new_row, conditions.mean(0)) and model.get_output_embeddings().weight.shape[0] == known + 1
    tuned = with_lora(model, rank=4, trainable_tokens=[known])
    trained = {name for name, p in tuned.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in name or "trainable_tokens" in name for name in trained)
    batch = torch.tensor([[tokenizer.bos_token_id, known, *range(5, 40)]])
    tuned(input_ids=batch, labels=batch).loss.backward()
    targeted = {name.rsplit(".", 3)[0].rsplit(".", 1)[-1] for name in trained if "lora_B" in name}
    assert targeted == set(LORA_TARGETS[model.config.model_type])  # each target name matches a projection
    without_gradient = [n for n, p in tuned.named_parameters() if "lora_B" in n and not p.grad.abs().sum()]
    assert not without_gradient, f"LoRA matrices the forward never used: {without_gradient[:3]}"
    token = next(p for n, p in tuned.named_parameters() if "trainable_tokens" in n)
    assert token.grad.abs().sum() > 0


@pytest.mark.parametrize("family", modeling.FAMILIES)
def test_an_adapter_folder_loads_merged_with_its_tokenizer_and_generates(family, bases, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(bases[family])
    tokenizer = MusicTokenizer.from_pretrained(bases[family])
    known = model.config.vocab_size
    tokenizer.add_composers(["new style"])
    add_condition_rows(model, len(tokenizer), range(tokenizer.base_vocab_size, known))
    tuned = with_lora(model, rank=4, trainable_tokens=[known])
    with torch.no_grad():
        for parameter in (p for p in tuned.parameters() if p.requires_grad):
            parameter.add_(torch.randn_like(parameter) * 0.1)  # an adapter that changes the output
    save_adapter(tuned, tmp_path, str(bases[family]))
    tokenizer.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    assert (tmp_path / "adapter_model.safetensors").stat().st_size < 0.25 * (
        bases[family] / "model.safetensors"
    ).stat().st_size
    batch = torch.tensor([[tokenizer.bos_token_id, known, *range(5, 30)]])
    tuned.eval()
    with torch.no_grad():
        expected = tuned(input_ids=batch).logits
        base_logits = AutoModelForCausalLM.from_pretrained(bases[family])(input_ids=batch[:, 2:]).logits
        loaded = load_model(tmp_path)
        torch.testing.assert_close(loaded(input_ids=batch).logits, expected, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(loaded(input_ids=batch[:, 2:]).logits[..., :known], base_logits, atol=1e-3)
    generator = pipeline("midi-generation", model=str(tmp_path))  # the name, as a user gives it
    [piece] = generator(composer="New Style", max_new_tokens=24, min_new_tokens=24, seed=0)
    assert piece["new_tokens"] == 24 and piece["tokens"][1] == known


def run_finetune(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "scripts" / "finetune.py"), *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)


TINY = ("--block_size", "64", "--batch_size", "2", "--epochs", "0.01")


@pytest.mark.parametrize("family", modeling.FAMILIES)
def test_finetune_writes_an_adapter_that_generate_loads(family, bases, three_files, tmp_path):
    """The whole command on a folder of three files: a held-out file scored before and after,
    an adapter folder, and generate.py writing the new style's MIDI from it. (10-20 s a family:
    a token cache, two evaluations and a model load each time.)"""
    output_dir = tmp_path / "out"
    result = run_finetune(
        *("--data", str(three_files), "--name", "My Style", "--model", str(bases[family])),
        *("--output_dir", str(output_dir), *TINY),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((output_dir / "finetune.json").read_text())
    assert report["before"]["bits_per_token"] != report["after"]["bits_per_token"]
    assert report["after"]["identification_chance"] == pytest.approx(1 / 3)  # bach, chopin, my_style
    assert report["weights_mb"] < 0.5 * (bases[family] / "model.safetensors").stat().st_size / 1e6
    assert not (output_dir / "model.safetensors").exists() and (output_dir / "adapter_config.json").is_file()
    card = (output_dir / "README.md").read_text()
    assert "LoRA adapters of rank 8" in card and f"it learned from what `{bases[family]}` learned from, then" in card
    assert (
        "held-out bits per token:" in result.stdout and "'My Style' named by likelihood (chance 0.33)" in result.stdout
    )
    generate = load_script("generate")
    rows = generate.main(
        ["--model", str(output_dir), "--composers", "My Style", "--length", "16", "--output_dir", str(tmp_path / "g")]
    )
    assert len(rows) == 1 and Path(rows[0]["file"]).is_file() and rows[0]["new_tokens"] == 16


def test_finetune_resumes_and_merges(bases, three_files, tmp_path):
    """Run again, the command finds its finished run; with --merge the folder is a whole model."""
    args = ("--data", str(three_files), "--name", "Mine", "--model", str(bases["transformer"]), *TINY)
    output_dir = tmp_path / "merged"
    first = run_finetune(*args, "--merge", "--output_dir", str(output_dir))
    assert first.returncode == 0, first.stderr[-3000:]
    exported = AutoModelForCausalLM.from_pretrained(output_dir).state_dict()  # no adapter: transformers loads it
    again = run_finetune(*args, "--merge", "--output_dir", str(output_dir))
    assert again.returncode == 0 and "resumed from" in again.stderr
    model = AutoModelForCausalLM.from_pretrained(output_dir)  # exported again from the checkpoint
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, exported[name], rtol=0, atol=0, msg=name)
    assert model.config.vocab_size == len(MusicTokenizer.from_pretrained(output_dir))
    assert not (output_dir / "adapter_config.json").exists()


def test_finetune_refuses_bad_input_in_one_line_and_writes_nothing(bases, three_files, tmp_path, capsys, monkeypatch):
    empty, broken, single = tmp_path / "empty", tmp_path / "broken", tmp_path / "single"
    empty.mkdir()
    broken.mkdir()
    for i in range(3):
        (broken / f"{i}.mid").write_bytes(b"MThd not really a MIDI file")
    single.mkdir()
    shutil.copy(next(three_files.rglob("*.mid")), single / "one.mid")
    no_tokenizer = tmp_path / "bare-model"
    shutil.copytree(bases["transformer"], no_tokenizer)
    (no_tokenizer / "music_tokenizer.json").unlink()
    model = str(bases["transformer"])
    cases = [
        (("--data", str(empty), "--name", "X", "--model", model), "no .mid or .midi files in it"),
        (("--data", str(broken), "--name", "X", "--model", model), "no usable MIDI in"),
        (("--data", str(single), "--name", "X", "--model", model), "give 2 or more"),
        (("--data", str(three_files), "--name", "Bach", "--model", model), "has that condition already"),
        (("--data", str(three_files), "--name", "X", "--model", str(no_tokenizer)), "music_tokenizer.json missing"),
        (("--data", str(tmp_path / "nowhere"), "--name", "X", "--model", model), "no such folder"),
        (("--data", str(three_files), "--name", "a:b", "--model", model), "give a name without ':'"),
    ]
    monkeypatch.chdir(tmp_path)  # where the default output folder would go
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            load_script("finetune").main([*args, "--output_dir", str(tmp_path / "out")])
        error = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and ": error: " in error[-1] and message in error[-1]
    assert not (tmp_path / "out").exists() and not (tmp_path / "outputs").exists()


def test_the_notebook_fine_tunes_generates_and_shows_the_piece(bases, three_files, tmp_path, soundfont):
    """notebooks/your_music.ipynb run as Jupyter runs it, its parameters pointed at a tiny model and
    three files (kernel start, fine-tuning and generation: about 20 s)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(ROOT / "notebooks" / "your_music.ipynb", as_version=4)
    parameters = next(cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", []))
    output = tmp_path / "tuned"
    parameters.source += (  # after the notebook's own values, as papermill injects them
        f"\nDATA, MODEL, OUTPUT = {str(three_files)!r}, {str(bases['transformer'])!r}, {str(output)!r}"
        f"\nFINETUNE_ARGS, LENGTH, SOUNDFONT = {list(TINY)!r}, 32, {str(soundfont)!r}"
    )
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3").execute()  # raises on a failing cell
    shown = [
        item for cell in notebook.cells for item in cell.get("outputs", []) if item["output_type"] == "display_data"
    ]
    assert any("image/png" in item["data"] for item in shown)  # the piano roll
    assert any("<audio" in item["data"].get("text/html", "") for item in shown)
    assert (output / "adapter_config.json").is_file() and symusic.Score(output / "sample.mid").note_num() > 0
    assert b"<score-partwise" in (output / "sample.musicxml").read_bytes()
