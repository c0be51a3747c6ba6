"""The web app: through Gradio's client (streaming, files, errors) and in a real browser."""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import symusic
import torch
from gradio_client import Client, handle_file

from benchmarks.app import bad_uploads
from conftest import ROOT, load_script
from modeling import build_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def app_url(tokenizer, soundfont, tmp_path_factory):
    """The app on a free local port, serving a tiny GPT-2 beside its tokenizer."""
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    torch.manual_seed(0)  # the same untrained model, hence the same pieces, every run
    AutoModelForCausalLM.from_config(build_config("transformer", "tiny", tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    script = load_script("app")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # a queue of one waiting request, so that a test can fill it (the tests' own calls come one by one)
    arguments = script.Arguments(model=str(folder), port=port, soundfont=str(soundfont), max_queue=1)
    app = script.build(arguments)
    script.launch(app, arguments, prevent_thread_lock=True, quiet=True)  # the command's queue and limits
    yield f"http://127.0.0.1:{port}/", folder
    app.close()


@pytest.fixture
def not_midi(tmp_path) -> Path:
    path = tmp_path / "broken.mid"
    path.write_bytes(b"MThd this is not MIDI")
    return path


def test_the_app_streams_the_piano_roll_then_gives_audio_midi_and_the_score(app_url):
    url, folder = app_url
    client = Client(url, verbose=False)
    updates = list(client.submit(str(folder), "bach", 192, 1.0, 0.95, 1.0, 3, None, api_name="/compose"))
    assert len(updates) >= 2 and all(update[1] is None for update in updates[:-1])  # the roll comes first
    _, audio, score, midi, status = updates[-1]
    assert symusic.Score(midi).note_num() > 0 and Path(audio).stat().st_size > 44
    assert b"<score-partwise" in Path(score).read_bytes()  # the MusicXML download (the [score] extra)
    assert status.endswith("seconds of music")
    assert client.predict(str(folder), api_name="/composers")["value"] in ("bach", "chopin", "handel", "mozart")


def test_an_unreadable_upload_is_one_sentence(app_url, not_midi):
    url, folder = app_url
    client = Client(url, verbose=False)
    with pytest.raises(Exception, match="the prompt is not a readable MIDI file"):
        client.predict(str(folder), "bach", 64, 1.0, 0.95, 1.0, 0, handle_file(str(not_midi)), api_name="/compose")


def test_every_bad_upload_is_one_sentence_and_the_app_keeps_serving(app_url, tmp_path):
    """Broken, cut, empty, foreign and huge files, and too many notes (the load benchmark's set)."""
    url, folder = app_url
    client = Client(url, verbose=False)
    for name, path in bad_uploads(tmp_path).items():
        with pytest.raises(Exception) as failed:
            client.predict(str(folder), "bach", 64, 1.0, 0.95, 1.0, 0, handle_file(str(path)), api_name="/compose")
        message = str(failed.value)
        assert "\n" not in message.strip() and "Traceback" not in message, (name, message)
        assert re.search(r"not a readable MIDI file|notes; the app takes 10,000|exceeds|too large", message), message
    with pytest.raises(Exception, match="Value 100000 is greater than maximum value 2048"):
        client.predict(str(folder), "bach", 100_000, 1.0, 0.95, 1.0, 0, None, api_name="/compose")
    *_, midi, status = client.predict(str(folder), "bach", 64, 1.0, 0.95, 1.0, 0, None, api_name="/compose")
    assert symusic.Score(midi).note_num() > 0 and status.endswith("seconds of music")  # still serving


def test_a_full_queue_tells_the_user_to_try_again(app_url):
    """One piece composing, one waiting (the queue's size here): a third user is turned away."""
    url, folder = app_url
    clients = [Client(url, verbose=False) for _ in range(3)]
    settings = (str(folder), "bach", 2048, 1.0, 0.95, 1.0, 0, None)
    jobs = [client.submit(*settings, api_name="/compose") for client in clients]
    served, refused = [], []
    for job in jobs:  # which of the three came last is up to the threads that send them
        try:
            served.append(symusic.Score(job.result(timeout=300)[3]).note_num())  # the MIDI file
        except Exception as failure:
            refused.append(str(failure))
    assert refused == ["Queue is full! Please try again."] and len(served) == 2 and min(served) > 0


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_the_app_in_a_browser(app_url, not_midi, tmp_path):
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    url, _ = app_url
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        composer = page.get_by_label("Composer (most training pieces first)")
        composer.click()
        composer.fill("chopin")
        page.keyboard.press("Enter")
        page.get_by_label("number input for Length (tokens)").fill("256")
        page.get_by_role("button", name="Compose").click()
        page.get_by_text(re.compile(r"^\d+ notes\.\.\.$")).wait_for(timeout=60_000)  # the roll grows, no audio yet
        assert page.locator("audio").count() == 0
        page.locator("audio").first.wait_for(state="attached", timeout=120_000)
        link = page.locator("a[download][href$='.mid']")
        midi = tmp_path / "downloaded.mid"
        midi.write_bytes(page.request.get(link.get_attribute("href")).body())
        assert symusic.Score(str(midi)).note_num() > 0
        (ROOT / "outputs").mkdir(exist_ok=True)
        page.screenshot(path=str(ROOT / "outputs" / "app.png"), full_page=True)

        page.locator("input[type=file]").set_input_files(str(not_midi))
        time.sleep(1)  # the upload lands before the click
        page.get_by_role("button", name="Compose").click()
        page.get_by_text("the prompt is not a readable MIDI file").first.wait_for(timeout=60_000)
        browser.close()


def test_the_command_serves_where_a_space_says_when_no_flag_does(app_url):
    """GRADIO_SERVER_PORT and GRADIO_SERVER_NAME, the Hugging Face Spaces convention, when --port
    and --host are left out (the command's start: about 10 s)."""
    _, folder = app_url
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1"}
    command = [sys.executable, "scripts/app.py", "--model", str(folder)]
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as page:
                    assert page.status == 200
                    return
            except OSError:
                time.sleep(0.5)
        pytest.fail(f"nothing served on port {port}: {server.stderr.read().decode()[-2000:] if server.poll() else ''}")
    finally:
        server.terminate()
        server.wait(timeout=30)
