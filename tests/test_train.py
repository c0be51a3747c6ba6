"""scripts/train.py end to end on the bundled corpus: two CPU processes under
`accelerate launch`, pre-emption of one process, checkpoints that survive a kill while
being written, the exported folder, and bad input."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM, GPT2Config, pipeline

import modeling
import modeling.training
from conftest import QUIET, ROOT, eval_metrics, load_script, train, train_losses
from model_cards import hub_datasets
from modeling.training import (
    list_checkpoints,
    load_checkpoint,
    push_folder,
    resolve_checkpoint,
    save_checkpoint,
    weight_decay_groups,
)
from tokenization import BlockCollator, MusicTokenizer, TokenBlockStream, TokenCache

TWO_PROCESSES = (
    sys.executable,
    "-m",
    "accelerate.commands.launch",
    "--config_file",
    "accelerate_configs/cpu_2proc.yaml",
)
DIGESTS = re.compile(r"rank (\d): .*; data digest (\w+); parameter digest (\w+)")


def rank_blocks_digest(tokenizer: MusicTokenizer, rank: int, batches: int, batch_size: int, block_size: int) -> str:
    """The data digest train.py logs, for what rank `rank` of 2 should read (no shuffling)."""
    pieces = TokenCache.for_source("bundled", tokenizer).pieces("train")
    stream = TokenBlockStream(pieces, tokenizer, block_size, rank=rank, world_size=2, loop=True)
    loader = torch.utils.data.DataLoader(
        stream, batch_size=batch_size, collate_fn=BlockCollator(tokenizer.pad_token_id)
    )
    digest = hashlib.sha1()
    for _, batch in zip(range(batches), loader, strict=False):
        digest.update(batch["input_ids"].numpy().tobytes())
    return digest.hexdigest()[:12]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> tuple[Path, str]:
    output_dir = tmp_path_factory.mktemp("two_processes")
    result = train(
        "scripts/configs/transformer-tiny.yaml",
        *("--output_dir", str(output_dir), "--max_steps", "16", "--eval_steps", "8", "--save_steps", "8"),
        *("--shuffle_buffer", "0", "--condition_dropout", "0", "--learning_rate", "3e-3", "--warmup_steps", "2"),
        *("--identification_min_files", "4", "--identification_tokens", "64"),
        launcher=TWO_PROCESSES,
    )
    return output_dir, result.stderr


def test_two_cpu_processes_read_different_files_and_stay_in_sync(two_process_run):
    output_dir, log = two_process_run
    ranks = {int(rank): (data, params) for rank, data, params in DIGESTS.findall(log)}
    assert sorted(ranks) == [0, 1], log[-3000:]
    assert ranks[0][1] == ranks[1][1], "parameters differ across ranks: gradients were not synchronised"
    tokenizer = MusicTokenizer.from_pretrained(output_dir)
    expected = [rank_blocks_digest(tokenizer, rank, batches=16, batch_size=4, block_size=256) for rank in (0, 1)]
    assert expected[0] != expected[1]  # the two shares hold different files
    assert [ranks[0][0], ranks[1][0]] == expected  # and each process read exactly its own share
    losses = train_losses(output_dir)
    assert sorted(losses) == list(range(1, 17))
    assert sum(list(losses.values())[-4:]) / 4 < losses[1] - 0.3
    evals = [row["eval/bits_per_token"] for row in eval_metrics(output_dir)]
    assert len(evals) == 2 and evals[1] < evals[0]


def test_periodic_evaluation_measures_how_well_the_condition_is_followed(two_process_run):
    output_dir, log = two_process_run
    windows = "likelihood identification of the composer: 16 windows of bach, beethoven, chopin, handel"
    assert windows in log  # 8 x opening, middle
    final = eval_metrics(output_dir)[-1]
    for position in ("opening", "middle"):
        assert 0.0 <= final[f"eval/identification_{position}"] <= 1.0
        assert f"eval/gain_over_unknown_{position}" in final and f"eval/gain_over_wrong_{position}" in final


def test_init_from_fine_tunes_an_exported_model_with_its_tokenizer(two_process_run, tmp_path):
    exported, _ = two_process_run
    output_dir = tmp_path / "fine-tuned"
    train(
        *("--init_from", str(exported), "--output_dir", str(output_dir), "--max_steps", "2", "--eval_steps", "0"),
        *("--save_steps", "0", "--block_size", "128", "--per_device_train_batch_size", "2"),
    )
    start = AutoModelForCausalLM.from_pretrained(exported)
    tuned = AutoModelForCausalLM.from_pretrained(output_dir)
    assert tuned.config.n_layer == start.config.n_layer == 2  # the exported model, not the default preset
    assert not torch.equal(tuned.transformer.wte.weight, start.transformer.wte.weight)
    assert (
        MusicTokenizer.from_pretrained(output_dir).fingerprint()
        == MusicTokenizer.from_pretrained(exported).fingerprint()
    )
    card = (output_dir / "README.md").read_text()
    assert f"fine-tuned from `{exported}`" in card and f"| start | `{exported}` |" in card
    assert "preset, random weights" not in card  # the preset's defaults played no part


def test_export_folder_loads_with_auto_classes_and_has_a_model_card(two_process_run):
    output_dir, _ = two_process_run
    model = AutoModelForCausalLM.from_pretrained(output_dir)
    assert model.config.vocab_size == len(MusicTokenizer.from_pretrained(output_dir)) and model.config.n_layer == 2
    card = ModelCard.load(output_dir / "README.md")
    assert card.data.library_name == "transformers" and card.data.license == "mit"
    assert "midi-generation" in card.data.tags and card.data.model_name == output_dir.name
    final = eval_metrics(output_dir)[-1]
    # the card reports the run's own figures, in the text and in the Hub's model-index
    assert f"| bits per token | {round(final['eval/bits_per_token'], 4):g} | bits/token |" in card.text
    indexed = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert indexed["bits_per_token"] == round(final["eval/bits_per_token"], 4)
    assert "| hardware | 2 x CPU (MULTI_CPU) |" in card.text and "| precision | float32 |" in card.text
    # and the training pieces per composer the run read, as its tokenizer records them
    tokenizer = MusicTokenizer.from_pretrained(output_dir)
    pieces = tokenizer.training_pieces
    assert pieces == dict(TokenCache.for_source("bundled", tokenizer).condition_counts("train")["composer"]) and pieces
    assert f"`{max(pieces, key=pieces.get)}` ({max(pieces.values())})" in card.text
    assert [p.name for p in list_checkpoints(output_dir)] == ["checkpoint-8", "checkpoint-16"]
    # the pipeline ships too (Hub remote code): generate from the export
    assert "midi-generation" in model.config.custom_pipelines
    assert (output_dir / "pipeline_midi_generation.py").is_file()
    [piece] = pipeline("midi-generation", model=str(output_dir), trust_remote_code=True)("Bach", max_new_tokens=8)
    assert piece["tokens"][1] == tokenizer.composer_token_id("Bach")


def test_a_checkpoint_of_another_model_is_refused_on_resume(two_process_run, monkeypatch):
    output_dir, _ = two_process_run
    monkeypatch.chdir(ROOT)
    argv = ["scripts/configs/mamba-tiny.yaml", "--output_dir", str(output_dir), "--resume_from_checkpoint", "latest"]
    with pytest.raises(ValueError, match="holds a transformer-tiny model, this run asks for mamba-tiny"):
        load_script("train").main([*argv, *QUIET])


def test_sigterm_ends_a_single_process_with_a_checkpoint_and_the_signal_status(tmp_path):
    """Without a launcher the exit status is the shell's for a signal, 128 + 15 (resuming to the
    same losses is tested under both multi-process strategies, in test_distributed)."""
    args = ["scripts/configs/transformer-tiny.yaml", "--max_steps", "300", "--save_steps", "0", "--eval_steps", "0"]
    args += ["--num_workers", "1", "--block_size", "128"]
    stopped, log = tmp_path / "stopped", tmp_path / "stopped.log"
    command = [sys.executable, "scripts/train.py", *args, *QUIET, "--output_dir", str(stopped)]
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=output, start_new_session=True)
        deadline = time.monotonic() + 600
        while not (stopped / "metrics.jsonl").is_file() or len(train_losses(stopped)) < 5:
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no 5 steps after 10 minutes"
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(timeout=300) == 128 + signal.SIGTERM, log.read_text()[-3000:]
    step = int(resolve_checkpoint(stopped, "latest").name.removeprefix("checkpoint-"))
    assert 5 <= step < 300 and f"stopped by SIGTERM after step {step} of 300" in log.read_text()
    assert AutoModelForCausalLM.from_pretrained(stopped).config.n_layer == 2


def test_a_time_limit_ends_training_with_an_evaluated_export(tmp_path):
    result = train(
        *("scripts/configs/transformer-tiny.yaml", "--max_steps", "100000", "--time_limit", "4"),
        *("--eval_steps", "0", "--save_steps", "0", "--output_dir", str(tmp_path)),
    )
    [checkpoint] = list_checkpoints(tmp_path)
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert 0 < state["step"] < state["max_steps"] == 100000
    assert state["stopped_by"] == f"the time limit at step {state['step']} of 100000"
    assert f"stopped by the time limit after step {state['step']} of 100000" in result.stderr
    assert [row["step"] for row in eval_metrics(tmp_path)] == [state["step"]]  # evaluated, as at a normal end
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config.n_layer == 2


def test_kill_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    accelerator = Accelerator(cpu=True)
    model = AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32))
    optimizer = torch.optim.AdamW(model.parameters())
    model, optimizer = accelerator.prepare(model, optimizer)
    save_checkpoint(accelerator, tmp_path, 1, {"tokens": 10}, {"data": {"position": 1}}, keep=2)
    saved = {k: v.clone() for k, v in model.state_dict().items()}

    def killed_midway(output_dir, **kwargs):
        (Path(output_dir) / "model.safetensors").write_bytes(b"half a file")
        raise KeyboardInterrupt  # stands for the kill: nothing after this line runs

    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    monkeypatch.setattr(accelerator, "save_state", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(accelerator, tmp_path, 2, {"tokens": 20}, {"data": {"position": 2}}, keep=2)
    monkeypatch.undo()

    latest = resolve_checkpoint(tmp_path, "latest")
    assert latest.name == "checkpoint-1" and (tmp_path / ".checkpoint-2.tmp").is_dir()
    state, rank_state = load_checkpoint(accelerator, latest)
    assert state["tokens"] == 10 and rank_state == {"data": {"position": 1}}
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    save_checkpoint(accelerator, tmp_path, 2, {"tokens": 20}, {"data": {"position": 2}}, keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2"]
    assert not (tmp_path / ".checkpoint-2.tmp").exists()


def test_a_damaged_checkpoint_is_never_resumed_from(two_process_run, tmp_path, caplog):
    """Each kind of file of the newest checkpoint cut in half (as a full disk or a broken copy
    leaves it): `latest` skips it, says so, and takes the one before."""
    output_dir, _ = two_process_run
    newest = output_dir / "checkpoint-16"
    files = sorted(str(p.relative_to(newest)) for p in newest.rglob("*") if p.is_file())
    assert {"model.safetensors", "optimizer.bin", "rank_state_1.pt", "trainer_state.json"} <= set(files)
    for name in files:
        copy = tmp_path / name.replace("/", "_")
        for checkpoint in ("checkpoint-8", "checkpoint-16"):
            shutil.copytree(output_dir / checkpoint, copy / checkpoint)
        damaged = copy / "checkpoint-16" / name
        damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
        assert resolve_checkpoint(copy, "latest") == copy / "checkpoint-8", name
        assert f"skipped {copy / 'checkpoint-16'}: " in caplog.text
        with pytest.raises(ValueError, match="is damaged"):
            resolve_checkpoint(copy, str(copy / "checkpoint-16"))


def test_resume_goes_on_from_the_newest_whole_checkpoint(two_process_run, tmp_path):
    output_dir, _ = two_process_run
    copy = shutil.copytree(output_dir, tmp_path / "run")
    (copy / "checkpoint-16" / "model.safetensors").write_bytes(b"cut")
    result = train(
        "scripts/configs/transformer-tiny.yaml",
        *("--output_dir", str(copy), "--max_steps", "16", "--eval_steps", "0", "--save_steps", "8"),
        *("--shuffle_buffer", "0", "--condition_dropout", "0", "--learning_rate", "3e-3", "--warmup_steps", "2"),
        *("--resume_from_checkpoint", "latest", "--identification_min_files", "4", "--identification_tokens", "64"),
        launcher=TWO_PROCESSES,
    )
    assert f"skipped {copy / 'checkpoint-16'}: model.safetensors is 3 bytes" in result.stderr
    assert f"resumed from {copy / 'checkpoint-8'} at step 8" in result.stderr
    assert train_losses(copy) == pytest.approx(train_losses(output_dir), rel=1e-5)  # steps 9-16 again, the same


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["scripts/configs/transformer-tiny.yaml", "--family", "rnn"], "unknown model family 'rnn': choose one of"),
        (["scripts/configs/mamba-tiny.yaml", "--preset", "huge"], "unknown preset 'huge': choose one of tiny"),
        (["--sources", "/nowhere/midi"], "no MIDI source '/nowhere/midi': no such folder here"),
        (["scripts/configs/nothing.yaml"], "preset scripts/configs/nothing.yaml not found"),
        (["--config_overrides", "[1, 2]"], "--config_overrides must be a mapping"),
        (["--push_to_hub"], "--push_to_hub needs --hub_model_id"),
        (["--resume_from_checkpoint", "/nowhere/checkpoint-5"], "is not a complete checkpoint"),
        (["--sources", "bundled:lakh"], "has no MIDI files in its validation split"),
        (["--learnig_rate", "1"], "unknown argument(s) --learnig_rate 1"),
        (["--block_size", "2"], "--block_size must be at least 3 (a condition and a target), got 2"),
        (["--init_from", "/nowhere/model"], "/nowhere/model"),
        (["--init_from", "modeling/pretrained/gpt2-small-classical", "--tokenizer", "x"], "brings its own tokenizer"),
        (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps must be a positive number, got 0"),
        (["--condition_dropout", "1.5"], "--condition_dropout is a probability, got 1.5"),
        (["--time_limit", "0"], "--time_limit is a number of seconds above 0, got 0"),
        (["--lora_rank", "8"], "fine-tune a model: give it with --init_from"),
        (["--init_from", "modeling/pretrained/gpt2-small-classical", "--add_composers", "Bach"], "already"),
        (["--init_from", "modeling/pretrained/gpt2-small-classical", "--merge_lora"], "give --lora_rank too"),
    ],
)
def test_bad_arguments_fail_at_start_with_a_clear_message(argv, message, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_info:
        load_script("train").parse_arguments(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_unknown_key_in_a_preset_names_it(tmp_path, capsys):
    preset = tmp_path / "preset.yaml"
    preset.write_text("family: mamba\nlearnig_rate: 0.1\n")
    with pytest.raises(SystemExit):
        load_script("train").parse_arguments([str(preset)])
    error = capsys.readouterr().err
    assert "unknown key(s) learnig_rate" in error and "learning_rate" in error


def test_every_shipped_preset_parses_and_builds_its_model():
    train_script = load_script("train")
    tokenizer = MusicTokenizer(composers=["bach"])
    presets = sorted((ROOT / "scripts" / "configs").glob("*.yaml"))
    assert len(presets) == 9
    for preset in presets:
        parser = train_script.CommandParser(train_script.ARGUMENT_CLASSES)
        model_args, _, train_args = parser.parse_yaml_file(str(preset))  # unknown keys fail here
        config = modeling.build_config(model_args.family, model_args.preset, tokenizer)
        assert preset.stem == f"{model_args.family}-{model_args.preset}" and config.vocab_size == len(tokenizer)
        assert train_args.output_dir == f"outputs/{preset.stem}"


def test_a_fresh_run_refuses_an_output_dir_with_checkpoints(two_process_run, capsys):
    output_dir, _ = two_process_run
    with pytest.raises(SystemExit):
        load_script("train").parse_arguments(["--output_dir", str(output_dir)])
    assert "already holds checkpoints: continue with --resume_from_checkpoint latest" in capsys.readouterr().err


def test_push_uploads_the_model_folder_in_the_background(tmp_path, monkeypatch):
    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs))
            return "future"

    monkeypatch.setattr(modeling.training, "HfApi", FakeApi)
    assert push_folder(tmp_path, "me/mamba-midi", True, "step 5") == "future"
    assert calls[0] == ("create_repo", "me/mamba-midi", {"private": True, "exist_ok": True})
    upload = calls[1][1]
    assert upload["repo_id"] == "me/mamba-midi" and upload["folder_path"] == tmp_path
    assert upload["run_as_future"] is True and "checkpoint-*" in upload["ignore_patterns"]


def test_model_card_lists_the_hub_datasets_among_the_sources():
    sources = ["drengskapur/midi-classical-music", "hf://datasets/me/lakh/clean_midi", "lakh:me/other", "bundled"]
    assert hub_datasets([*sources, str(ROOT)]) == ["drengskapur/midi-classical-music", "me/lakh", "me/other"]


@pytest.mark.parametrize("family", modeling.FAMILIES)
def test_every_trainer_decays_matrices_only(family):
    """One rule for train.py and train_classifier.py: decay on the embedding and the projection
    matrices, none on any norm's weight or any bias."""
    model = AutoModelForCausalLM.from_config(modeling.build_config(family, "tiny", MusicTokenizer(composers=["bach"])))
    decay, rest = weight_decay_groups(model, 0.1)
    assert (decay["weight_decay"], rest["weight_decay"]) == (0.1, 0.0)
    decayed, kept = {id(p) for p in decay["params"]}, {id(p) for p in rest["params"]}
    assert not decayed & kept and decayed | kept == {id(p) for p in model.parameters()}
    assert id(model.get_input_embeddings().weight) in decayed
    linears = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(id(w) in decayed for w in linears)
    norms = [p for m in model.modules() if "Norm" in type(m).__name__ for p in m.parameters(recurse=False)]
    biases = [p for name, p in model.named_parameters() if name.endswith(".bias")]
    assert norms and all(id(p) in kept for p in norms + biases)
