"""Every command, given each bad input a user meets (offline: HF_HUB_OFFLINE=1 and an empty
Hugging Face cache), fails with exit status 2 and one line on stderr that names the cause, and no
traceback; the library raises the same words.

The commands run as subprocesses, as a user types them: about 6 s of imports each, two at a
time, about a minute in all."""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from huggingface_hub.errors import RepositoryNotFoundError

from conftest import ROOT, load_script
from tokenization import MusicTokenizer, TokenCache, load_source
from tokenization.hub import hub_access

BUNDLED_MODEL = "modeling/pretrained/gpt2-small-classical"
HUB_DATASET = "dataset drengskapur/midi-classical-music is not on this machine and the Hub cannot be reached "
OFFLINE = "(HF_HUB_OFFLINE is set)"

# (command and arguments, words the error line holds); TOKENIZER_ONLY is a folder with a tokenizer and no
# model, FRESH a folder that does not exist yet (so that no earlier run's checkpoints are found first)
CASES = [
    (["train.py", "--sources", "drengskapur/midi-classical-music", "--output_dir", "FRESH"], HUB_DATASET + OFFLINE),
    (
        ["train.py", "--sources", "amaai-lab/MidiCaps", "--output_dir", "FRESH"],
        "dataset amaai-lab/MidiCaps is not on this machine and the Hub cannot be reached " + OFFLINE,
    ),
    (
        ["train.py", "--tokenizer", "outputs/tokenizer-classical-4096"],
        "no tokenizer folder outputs/tokenizer-classical",
    ),
    (["train.py", "--init_from", "me/no-such-model"], "model me/no-such-model is not on this machine"),
    (
        ["train_classifier.py", "--sources", "drengskapur/midi-classical-music", "--output_dir", "FRESH"],
        HUB_DATASET + OFFLINE,
    ),
    (["train_ngram.py", "--tokenizer", "outputs/tokenizer-classical-4096"], "no tokenizer folder outputs/tokenizer"),
    (
        ["evaluate.py", "outputs/framing/new-seed1", "--classifier", "TOKENIZER_ONLY", "--sources", "bundled"],
        "no model folder outputs/framing/new-seed1: give train.py's or train_ngram.py's --output_dir",
    ),
    (
        ["evaluate.py", "TOKENIZER_ONLY", "--likelihood_only", "--sources", "bundled", "--json", "x.json"],
        "holds a tokenizer but no model (no config.json)",
    ),
    (["evaluate.py", BUNDLED_MODEL, "--classifier", "/nowhere/judge"], "no classifier folder /nowhere/judge"),
    (["generate.py", "--model", "me/mamba-classical", "--prompt", "theme.mid"], "no prompt file theme.mid"),
    (["generate.py", "--model", "me/mamba-classical"], "model me/mamba-classical is not on this machine"),
    (["generate.py", "--model", "outputs/nowhere", "--render", "wav"], "--model outputs/nowhere: no such folder"),
    (["generate.py", "--render", "wav", "--soundfont", "/nowhere.sf2"], "no soundfont at /nowhere.sf2"),
    (["generate.py", "--model", "TOKENIZER_ONLY"], "the folder holds a tokenizer but no model"),
    (["compare.py", "--sources", "drengskapur/midi-classical-music", "--tokenizer", BUNDLED_MODEL], HUB_DATASET),
    (["build_tokenizer.py", "--sources", "drengskapur/midi-classical-music"], HUB_DATASET + OFFLINE),
    (["benchmark.py", "data", "--sources", "drengskapur/midi-classical-music"], HUB_DATASET + OFFLINE),
    (["benchmark.py", "dataset"], "name one: {data|models|pipeline|app|archive}"),
    (["app.py", "--model", "/nowhere"], "--model /nowhere: no such folder"),
    (["gpu_kit.py", "--tokenizer", "/nowhere"], "no tokenizer folder /nowhere"),
]


def run_command(argv: list[str], env: dict, folders: dict[str, str]) -> subprocess.CompletedProcess:
    script, *args = (folders.get(arg, arg) for arg in argv)
    command = [sys.executable, f"scripts/{script}", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def offline_env(tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("hf-home")  # an empty Hugging Face cache: nothing to fall back on
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(home), "HF_DATASETS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def outcomes(offline_env, tmp_path_factory, tokenizer) -> list[subprocess.CompletedProcess]:
    folder = tmp_path_factory.mktemp("tokenizer-only")
    tokenizer.save_pretrained(folder)
    folders = {"TOKENIZER_ONLY": str(folder), "FRESH": str(tmp_path_factory.mktemp("runs") / "fresh")}
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda case: run_command(case[0], offline_env, folders), CASES))


@pytest.mark.parametrize("index", range(len(CASES)), ids=[" ".join(argv[:2]) for argv, _ in CASES])
def test_a_bad_input_ends_the_command_in_one_line(index, outcomes):
    (argv, words), result = CASES[index], outcomes[index]
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert lines[0].startswith(f"{argv[0]}") and ": error: " in lines[0] and words in lines[0], lines[0]


def test_debug_shows_the_traceback_and_an_old_flag_says_its_new_name(offline_env, tmp_path):
    result = run_command(["generate.py", "--prompt", "theme.mid", "--debug", "--out", str(tmp_path)], offline_env, {})
    assert result.returncode == 2 and "Traceback" in result.stderr
    assert "generate.py: --out is now --output_dir" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "generate.py: error: no prompt file theme.mid: give a MIDI file for the samples to continue"
    )


def test_the_library_raises_the_same_words(monkeypatch, tokenizer, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # read once, at import
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ConnectionError, match=f"^{HUB_DATASET}"):
        load_source("drengskapur/midi-classical-music")
    with pytest.raises(ConnectionError, match=f"^{HUB_DATASET}"):
        TokenCache.for_source("drengskapur/midi-classical-music", tokenizer, cache_dir=tmp_path)
    with pytest.raises(ConnectionError, match="^tokenizer me/tokenizer is not on this machine .* give a tokenizer"):
        MusicTokenizer.from_pretrained("me/tokenizer", cache_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="^no tokenizer folder outputs/typo: give a tokenizer folder"):
        MusicTokenizer.from_pretrained("outputs/typo")  # looks local: never asked of the Hub


def test_a_repo_that_does_not_exist_is_named_as_such():
    missing = RepositoryNotFoundError.__new__(RepositoryNotFoundError)  # as huggingface_hub raises on a 404
    expected = "^no model me/nothing on the Hub .*hf auth login.*: give a folder$"
    with pytest.raises(FileNotFoundError, match=expected), hub_access("model", "me/nothing", "give a folder"):
        raise OSError("could not load the model") from missing


def test_the_table_reads_every_kind_of_result(tmp_path, capsys):
    likelihood = {"bits_per_token": 5.0, "bits_per_note": 20.0, "tokens": 10, "notes": 3}
    results = {
        "compact.json": {
            "model": "m",
            "family": "gpt2",
            "parameters": 1e7,
            "likelihood": likelihood,
        },  # --likelihood_only
        "ngram.json": {"model": "n", "family": "ngram", "parameters": None, "likelihood": likelihood, "runs": []},
    }
    for name, result in results.items():
        (tmp_path / name).write_text(json.dumps(result))
    load_script("evaluate").main(["--table", *(str(tmp_path / name) for name in results)])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| compact") or "| ngram" in line]
    assert rows[0].startswith("| compact (gpt2) | 10.0M | - | 5.000 | 20.00 | - | - | - | - |")
    assert rows[1].startswith("| ngram (ngram) | - | - | 5.000 | 20.00 |")
