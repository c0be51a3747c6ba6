"""The midi-generation pipeline and scripts/generate.py, on tiny untrained models of each family."""

import importlib.util
import json
import os
import subprocess
import sys
import threading
import wave
from pathlib import Path

import numpy as np
import pytest
import symusic
import torch
from transformers import AutoModelForCausalLM, pipeline
from transformers.cache_utils import DynamicLayer

from conftest import load_script
from evaluation import rendering
from modeling import FAMILIES, MidiGenerationPipeline, NoteStreamer, build_config, catalog
from modeling.pipeline_midi_generation import PreallocatedLayer, guide

ROOT = Path(__file__).resolve().parents[1]


def tiny_model(family: str, tokenizer, **overrides):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(build_config(family, "tiny", tokenizer, **overrides)).eval()


@pytest.fixture(scope="module")
def folders(tokenizer, tmp_path_factory) -> dict[str, Path]:
    """A model folder per family as `save_pretrained` leaves it, with the tokenizer beside it."""
    folders = {}
    for family in FAMILIES:
        folders[family] = tmp_path_factory.mktemp(family)
        tiny_model(family, tokenizer).save_pretrained(folders[family])
        tokenizer.save_pretrained(folders[family])
    return folders


@pytest.fixture(scope="module")
def generators(folders) -> dict[str, MidiGenerationPipeline]:
    return {family: pipeline("midi-generation", model=str(folder)) for family, folder in folders.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_output_decodes_follows_the_grammar_and_holds_notes(family, generators, tokenizer):
    results = generators[family](
        composer=["Bach", "Saint-Saëns"], num_return_sequences=2, max_new_tokens=40, min_new_tokens=40, seed=0
    )
    assert [r["composer"] for r in results] == ["Bach", "Bach", "Saint-Saëns", "Saint-Saëns"]
    grammar = tokenizer.grammar()
    for result in results:
        tokens = result["tokens"]
        assert tokens[:2] == [tokenizer.bos_token_id, tokenizer.composer_token_id(result["composer"])]
        assert len(tokens) == 42 and result["new_tokens"] == 40
        assert grammar.accepts(tokens)
        assert result["score"].note_num() > 0
        assert symusic.Score.from_midi(result["midi"]).note_num() == result["score"].note_num()


@pytest.mark.parametrize("family", FAMILIES)
def test_seeds_reproduce(family, generators):
    def tokens(seed: int) -> list[list[int]]:
        return [
            r["tokens"] for r in generators[family]("Chopin", num_return_sequences=2, max_new_tokens=24, seed=seed)
        ]

    assert tokens(3) == tokens(3)
    assert tokens(3) != tokens(4)


@pytest.mark.parametrize("family", FAMILIES)
def test_continuation_keeps_the_prompt(family, generators, tokenizer, good_midis):
    prompt = symusic.Score.from_midi(good_midis[0])
    prompt_ids = tokenizer.encode(prompt, "bach")[2:-1]
    [result] = generators[family](composer="Bach", prompt=good_midis[0], max_new_tokens=16, min_new_tokens=16, seed=1)
    assert result["tokens"][2 : 2 + len(prompt_ids)] == prompt_ids
    assert result["new_tokens"] == 16
    assert result["score"].note_num() >= tokenizer.decode(prompt_ids).note_num() > 0


def test_guidance_scale_one_is_conditional_and_zero_unconditional():
    conditional, unconditional = torch.randn(3, 50), torch.randn(3, 50)
    both = torch.cat([conditional, unconditional])
    assert torch.allclose(guide(both, 1.0), conditional.log_softmax(-1), atol=1e-6)
    assert torch.allclose(guide(both, 0.0), unconditional.log_softmax(-1), atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_guidance_runs_both_branches_in_one_batch_and_changes_the_output(family, generators, tokenizer):
    generator = generators[family]
    unknown = tokenizer.composer_token_id(None)
    embeddings = generator.model.get_input_embeddings().weight
    saved = embeddings[unknown].clone()
    with torch.no_grad():  # an untrained model barely reads its condition: make the unconditional branch differ
        embeddings[unknown] = torch.randn(embeddings.shape[1], generator=torch.Generator().manual_seed(0))
    batches = []
    hook = generator.model.register_forward_pre_hook(
        lambda _, args, kwargs: batches.append(kwargs["input_ids"]), with_kwargs=True
    )
    try:
        plain = generator(composer=["Bach", "Mozart"], max_new_tokens=24, min_new_tokens=24, seed=5)
        assert {ids.shape[0] for ids in batches} == {2}
        batches.clear()
        guided = generator(["Bach", "Mozart"], max_new_tokens=24, min_new_tokens=24, seed=5, guidance_scale=10)
    finally:
        hook.remove()
        with torch.no_grad():
            embeddings[unknown] = saved
    assert len(batches) == 24 and {ids.shape[0] for ids in batches} == {4}  # one forward per token, 2 x 2 rows
    assert batches[0][2:, 1].tolist() == [unknown, unknown]  # the unconditional branch
    assert [r["tokens"] for r in plain] != [r["tokens"] for r in guided]
    same = generator(composer=["Bach", "Mozart"], max_new_tokens=24, min_new_tokens=24, seed=5, guidance_scale=1)
    assert [r["tokens"] for r in same] == [r["tokens"] for r in plain]


def test_gpt2_slides_its_window_past_its_positions(tokenizer, good_midis, tmp_path):
    model = tiny_model("transformer", tokenizer, n_positions=32)
    tokenizer.save_pretrained(tmp_path)
    generator = MidiGenerationPipeline(model=model, music_tokenizer=tmp_path, device="cpu")
    lengths = []
    hook = model.register_forward_pre_hook(
        lambda _, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    [result] = generator(composer="Bach", max_new_tokens=80, min_new_tokens=80, seed=0)
    hook.remove()
    assert len(result["tokens"]) == 82 and result["score"].note_num() > 0
    assert lengths.count(16) == 3  # BOS, composer and the newest 14 tokens, prefilled at 33, 50 and 67 tokens
    assert lengths[0] == 2 and max(lengths) <= 32
    # a prompt longer than the window, with guidance: the window starts at once, the prompt stays in the result
    prompt_ids = tokenizer.encode(good_midis[0], "bach")[2:-1]
    assert len(prompt_ids) > 32
    lengths.clear()
    hook = model.register_forward_pre_hook(
        lambda _, args, kwargs: lengths.append(kwargs["input_ids"].shape), with_kwargs=True
    )
    [result] = generator(composer="Bach", prompt=good_midis[0], max_new_tokens=20, min_new_tokens=20, guidance_scale=2)
    hook.remove()
    assert result["tokens"][2:-20] == prompt_ids and result["new_tokens"] == 20
    assert lengths[0] == (2, 16) and max(shape[1] for shape in lengths) <= 32


@pytest.mark.parametrize("family", FAMILIES)
def test_rows_that_end_early_are_cut_at_their_end(family, generators, tokenizer):
    eos = tokenizer.eos_token_id

    def end_the_first_row_only(module, inputs, output) -> None:
        output.logits[0, -1, eos] += 100.0
        output.logits[1, -1, eos] -= 100.0

    hook = generators[family].model.register_forward_hook(end_the_first_row_only)
    try:
        first, second = generators[family](composer=["Bach", "Mozart"], max_new_tokens=30, min_new_tokens=0, seed=0)
        wholes = generators[family](composer=["Bach", "Mozart"], max_new_tokens=30, seed=0)  # by default: all
    finally:
        hook.remove()
    for whole in wholes:  # the first row too, though the model pushes its end
        assert whole["new_tokens"] == 30 and whole["seconds"] == whole["score"].to("second").end() > 0
    # the grammar allows the end only after music: BOS, composer, a bar, EOS
    assert first["tokens"][2:] == [tokenizer.base.vocab["Bar_None"], eos] and first["new_tokens"] == 2
    assert second["new_tokens"] == 30 and eos not in second["tokens"]
    assert second["score"].note_num() > 0


def test_bad_inputs_say_what_is_wrong(generators, folders, tmp_path):
    generator = generators["transformer"]
    with pytest.raises(ValueError, match=r"unknown composer 'Elgar': this model knows bach, .*mozart"):
        generator(composer="Elgar", max_new_tokens=4)
    with pytest.raises(ValueError, match="give a name, a list of names, or None"):
        generator(composer=[], max_new_tokens=4)
    with pytest.raises(ValueError, match=r"max_new_tokens \(0\) and temperature \(1.0\) must be positive"):
        generator(composer="Bach", max_new_tokens=0)
    with pytest.raises(ValueError, match="the prompt is not a readable MIDI file"):
        generator(composer="Bach", prompt=os.urandom(200), max_new_tokens=4)
    with pytest.raises(ValueError, match="the prompt is not a readable MIDI file"):
        generator(composer="Bach", prompt=tmp_path / "missing.mid", max_new_tokens=4)
    real_find_spec = importlib.util.find_spec
    with pytest.MonkeyPatch.context() as patch:  # a machine without the [score] extra: refused before sampling
        patch.setattr(
            importlib.util, "find_spec", lambda name, *a: None if name == "music21" else real_find_spec(name, *a)
        )
        with pytest.raises(ImportError, match='pip install "midi-lm\\[score\\]"'):
            generator(composer="Bach", max_new_tokens=4, musicxml=True)
    lonely = tmp_path / "no-tokenizer"
    AutoModelForCausalLM.from_pretrained(folders["mamba"]).save_pretrained(lonely)
    with pytest.raises(FileNotFoundError, match=f"looked for tokenizer.json and music_tokenizer.json in {lonely}"):
        pipeline("midi-generation", model=str(lonely))


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_pipeline_runs_as_remote_code_without_this_project(family, folders, generators, tmp_path):
    """What train.py exports (the pipeline's save_pretrained) generates where only transformers,
    miditok and symusic can be imported, with the same tokens as here: by repo id from a filled
    Hugging Face cache with HF_HUB_OFFLINE=1 (the path a Hub download takes)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / f"models--someone--midi-{family}"
    export = repo / "snapshots" / commit
    generators[family].save_pretrained(export)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name in ("tokenizer.json", "music_tokenizer.json"):
        (export / name).write_bytes((folders[family] / name).read_bytes())
    assert (export / "pipeline_midi_generation.py").is_file()
    assert json.loads((export / "config.json").read_text())["custom_pipelines"]["midi-generation"]["impl"] == (
        "pipeline_midi_generation.MidiGenerationPipeline"
    )
    expected = [r["tokens"] for r in generators[family](composer=["Bach", None], max_new_tokens=20, seed=7)]
    code = f"""
import sys
sys.modules["modeling"] = sys.modules["tokenization"] = None  # this project is not importable
from transformers import pipeline
generator = pipeline("midi-generation", model="someone/midi-{family}", trust_remote_code=True)
assert "transformers_modules" in type(generator).__module__, type(generator).__module__
print([r["tokens"] for r in generator(composer=["Bach", None], max_new_tokens=20, seed=7)])
"""
    env = os.environ | {
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
    }
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected


@pytest.mark.parametrize("family", FAMILIES)
def test_cli_writes_a_file_per_composer_and_sample(family, folders, tmp_path, capsys):
    rows = load_script("generate").main(
        ["--model", str(folders[family]), "--composers", "Bach, Mozart", "--length", "32", "--num-samples", "2"]
        + ["--output_dir", str(tmp_path), "--plot", "--seed", "3"]
    )
    name = folders[family].name
    for composer in ("Bach", "Mozart"):
        for i in range(2):
            midi = tmp_path / name / composer / f"sample_{i}.mid"
            assert symusic.Score(str(midi)).note_num() > 0
            assert (midi.with_suffix(".png")).read_bytes()[:4] == b"\x89PNG"
    assert [r["new_tokens"] for r in rows] == [32] * 4
    out = capsys.readouterr().out
    assert "tokens/s" in out and str(tmp_path / name / "Mozart" / "sample_1.mid") in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--composers", "Bach, Elgar"], "unknown composer 'Elgar'"),
        (["--render", "wav", "--soundfont", "/nonexistent.sf2"], "no soundfont at /nonexistent.sf2: give a .sf2"),
        (["--render", "mp3"], "only wav"),
        (["--length", "0"], "positive"),
        (["--top-p", "2"], "top_p is a probability mass in (0, 1] (2.0)"),
        (["--top-k", "-1"], "top_k a count >= 0 (-1)"),
        (["--format", "pdf"], "--format pdf: choose mid or musicxml"),
    ],
)
def test_cli_bad_arguments_fail_with_one_line(argv, message, folders, capsys):
    with pytest.raises(SystemExit):
        load_script("generate").main(["--model", str(folders["mamba"]), *argv])
    assert message in capsys.readouterr().err


def test_a_sample_written_again_leaves_no_roll_or_audio_of_the_old_one(folders, tmp_path):
    argv = ["--model", str(folders["transformer"]), "--composers", "Bach", "--length", "8"]
    [row] = load_script("generate").main([*argv, "--output_dir", str(tmp_path), "--plot"])
    roll = Path(row["file"]).with_suffix(".png")
    roll.with_suffix(".wav").write_bytes(b"RIFF")  # as an earlier --render wav left it
    assert roll.is_file()
    load_script("generate").main([*argv, "--output_dir", str(tmp_path)])
    assert Path(row["file"]).is_file() and not roll.exists() and not roll.with_suffix(".wav").exists()


def test_cli_renders_audio_in_process(folders, tmp_path, soundfont):
    [row] = load_script("generate").main(
        [
            "--model",
            str(folders["transformer"]),
            "--composers",
            "Bach",
            "--length",
            "48",
            "--output_dir",
            str(tmp_path),
        ]
        + ["--render", "wav", "--soundfont", str(soundfont)]
    )
    with wave.open(str(Path(row["file"]).with_suffix(".wav"))) as audio:
        samples = np.frombuffer(audio.readframes(audio.getnframes()), dtype=np.int16)
        assert audio.getframerate() == 44100 and audio.getnchannels() == 2
        assert audio.getnframes() / 44100 == pytest.approx(row["seconds"], abs=0.1)  # as long as the music
    assert np.sqrt(np.mean(samples.astype(float) ** 2)) > 100 and np.abs(samples).max() < 32767  # heard, not clipped


def test_without_a_soundfont_offline_the_error_says_how_to_get_one(monkeypatch):
    monkeypatch.setattr(rendering, "DEBIAN_SOUNDFONT", Path("/nonexistent.sf2"))
    unreachable = symusic.soundfont.Soundfont("none.sf3", "http://127.0.0.1:9/none.sf3", "0")
    monkeypatch.setattr(symusic.BuiltInSF3, "MuseScoreGeneral", staticmethod(lambda: unreachable))
    with pytest.raises(FileNotFoundError, match=r"could not download none.sf3 .*offline\?\); install one with"):
        rendering.find_soundfont()
    with pytest.raises(FileNotFoundError, match="no soundfont at /nonexistent.sf2"):
        rendering.find_soundfont("/nonexistent.sf2")


def test_cli_family_names_find_a_trained_model_or_say_how_to_get_one(folders, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "mamba-small").symlink_to(folders["mamba"])
    assert catalog.resolve_model("mamba") == ("outputs/mamba-small", "mamba")
    missing = next(f for f in FAMILIES if f not in ("mamba", *catalog.bundled_models()))
    with pytest.raises(ValueError, match=f"scripts/configs/{missing}-small.yaml"):
        catalog.resolve_model(missing)
    with pytest.raises(ValueError, match="not a family name or a Hub repo id"):
        catalog.resolve_model("no/such/folder")


@pytest.mark.parametrize("name", ["outputs/mamba-small", "./models/mine", "modeling/pretrained/nothing"])
def test_a_missing_local_model_folder_is_named_with_what_exists(name, capsys):
    with pytest.raises(SystemExit):
        load_script("generate").main(["--model", name, "--length", "8"])
    error = capsys.readouterr().err
    assert f"--model {name}: no such folder; models here: transformer, mamba, xlstm, " in error
    assert str(catalog.default_model()) in error


def test_the_bundled_model_is_small_and_generates_music():
    folder = catalog.default_model()
    assert (folder / "model.safetensors").stat().st_size <= 25 * 2**20
    assert (folder / "README.md").read_text().startswith("---")  # a model card with metadata
    generator = pipeline("midi-generation", model=str(folder))
    [piece] = generator(composer="Chopin", max_new_tokens=96, min_new_tokens=96, seed=0, top_p=0.95)
    assert generator.model.dtype == torch.float32  # stored in float16, run in float32 on CPU
    pitches = [note.pitch for track in piece["score"].tracks for note in track.notes]
    assert len(pitches) >= 10 and 21 <= min(pitches) <= max(pitches) <= 108  # piano range


def test_cli_lists_the_composers_with_their_training_pieces(capsys):
    assert load_script("generate").main(["--list-composers"]) == []
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("140 composers of ") and lines[0].endswith("(most first):")
    assert lines[1].split() == ["bach", "895"] and lines[2].split() == ["scarlatti", "596"]
    assert lines[-1] == (
        "Composers with fewer than 100 pieces are barely learned. --composers Unknown asks for no composer "
        "(660 pieces)."
    )


def test_cli_says_when_a_model_does_not_record_its_training_pieces(folders, capsys):
    load_script("generate").main(["--model", str(folders["mamba"]), "--list-composers"])
    out = capsys.readouterr().out
    assert "  bach                          ?" in out and "does not record its training pieces" in out


def test_cli_generates_without_a_composer(folders, tmp_path):
    [row] = load_script("generate").main(
        [
            "--model",
            str(folders["transformer"]),
            "--composers",
            "Unknown",
            "--length",
            "24",
            "--output_dir",
            str(tmp_path),
        ]
    )
    assert row["composer"] == "Unknown" and row["new_tokens"] == 24
    assert symusic.Score(row["file"]).note_num() > 0


@pytest.mark.parametrize("family", ["transformer", "mamba"])
def test_streamed_notes_are_the_notes_of_the_result_and_come_while_it_samples(family, generators):
    generator = generators[family]
    call = {"composer": ["Bach", "Chopin"], "max_new_tokens": 80, "seed": 5, "guidance_scale": 2.0}
    streamer, results = NoteStreamer(generator, interval=0.0, timeout=60), []
    thread = threading.Thread(target=lambda: results.extend(generator(**call, streamer=streamer)))
    thread.start()
    items = list(streamer)
    thread.join()
    for row, result in enumerate(generator(**call)):  # the same call without a streamer
        streamed = [note for item in items if item["row"] == row for note in item["notes"]]
        quarters = result["score"].to("quarter")
        expected = sorted(
            (note.pitch, round(note.time, 6), round(note.duration, 6))
            for track in quarters.tracks
            for note in track.notes
        )
        assert sorted((n["pitch"], round(n["start"], 6), round(n["duration"], 6)) for n in streamed) == expected
        assert sum(item["row"] == row for item in items) > 3  # note by note, not all at the end
        assert [item for item in items if item["row"] == row][-1]["score"].note_num() == len(expected)
    assert [r["tokens"] for r in results] == [r["tokens"] for r in generator(**call)]


@pytest.mark.parametrize(
    ("bad", "message"), [({"top_p": 2.0}, "top_p"), ({"prompt": b"MThd no MIDI"}, "not a readable MIDI file")]
)
def test_a_failing_call_ends_its_stream(generators, bad, message):
    streamer = NoteStreamer(generators["transformer"], timeout=60)
    with pytest.raises(ValueError, match=message):
        generators["transformer"]("Bach", max_new_tokens=8, streamer=streamer, **bad)
    assert list(streamer) == []


def test_cli_streams_every_note_as_a_line(folders, tmp_path, capsys):
    [row] = load_script("generate").main(
        ["--model", str(folders["transformer"]), "--composers", "Bach", "--length", "40", "--stream"]
        + ["--output_dir", str(tmp_path), "--seed", "2"]
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Bach ")]
    assert len(lines) == row["notes"] > 0 and " beat " in lines[0] and "velocity" in lines[0]


def test_a_preallocated_cache_layer_returns_what_a_dynamic_one_does_and_keeps_its_buffers_when_reset():
    layer, dynamic = PreallocatedLayer(capacity=6), DynamicLayer()
    chunks = [torch.randn(2, 4, length, 8) for length in (3, 1, 2)]  # a prefill, then steps
    for chunk in chunks:
        keys, values = layer.update(chunk, -chunk)
        expected_keys, expected_values = dynamic.update(chunk, -chunk)
        assert torch.equal(keys, expected_keys) and torch.equal(values, expected_values)
    buffers = layer.key_buffer.data_ptr(), layer.value_buffer.data_ptr()
    with pytest.raises(ValueError, match="holds 6 positions, not 7"):
        layer.update(chunks[1], chunks[1])
    layer.reset()  # a window slide: filled again from the first position, in the same memory
    keys, values = layer.update(chunks[0], chunks[0])
    assert torch.equal(keys, chunks[0]) and torch.equal(values, chunks[0]) and layer.get_seq_length() == 3
    assert (layer.key_buffer.data_ptr(), layer.value_buffer.data_ptr()) == buffers


@pytest.mark.parametrize("guidance_scale", [1.0, 2.0])
def test_a_static_cache_samples_the_same_tokens_as_the_preallocated_one(generators, guidance_scale):
    generator = generators["transformer"]  # 256 positions: 300 new tokens slide the window once
    call = {"composer": ["Bach", "Chopin"], "max_new_tokens": 300, "seed": 4, "guidance_scale": guidance_scale}
    static = generator(**call, static_cache=True)
    assert [r["tokens"] for r in static] == [r["tokens"] for r in generator(**call, static_cache=False)]
    assert all(r["new_tokens"] == 300 for r in static)
