"""Draw the documentation's pictures (`make figures`), so that they show what the code does now.

    python scripts/figures.py                     # docs/sample.png and docs/app.png
    python scripts/figures.py --app false         # the piano roll alone (no browser needed)

- `sample.png`: a piece of the bundled model (through the `midi-generation` pipeline, a fixed
  seed, so the same code draws the same picture) as a piano roll.
- `app.png`: the web app, started as `scripts/app.py` on a free local port, driven in Chromium
  (Debian's package, through Playwright) to compose the same piece, screenshot when it is done
  (with the audio player where a General MIDI soundfont is installed: fluid-soundfont-gm).
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import pipeline

import modeling
from benchmarks.app import free_port, serve
from command_line import CommandParser
from evaluation.rendering import piano_roll
from modeling.catalog import default_model

TOP_P = 0.95  # the app's default: both pictures show the same piece


@dataclass
class Arguments:
    output_dir: str = field(default="docs", metadata={"help": "Where the pictures go."})
    composer: str = field(default="Chopin")
    length: int = field(default=512, metadata={"help": "Tokens of the piece."})
    seed: int = field(default=0)
    app: bool = field(default=True, metadata={"help": "Also the app's screenshot (needs Chromium)."})
    chromium: str | None = field(default=None, metadata={"help": "Chromium's path; left out: found on PATH."})


def draw_sample(args: Arguments, path: Path) -> None:
    generator = pipeline("midi-generation", model=str(default_model()), pipeline_class=modeling.MidiGenerationPipeline)
    [piece] = generator(composer=args.composer, max_new_tokens=args.length, seed=args.seed, top_p=TOP_P)
    title = f"{default_model().name}: {args.composer}, {args.length} tokens, {piece['seconds']:.0f} s of music"
    piano_roll(piece["score"], title).savefig(path, dpi=100)


def screenshot_app(args: Arguments, chromium: str, path: Path) -> None:
    """Compose in the app as a user would, and take the page when the piece is done."""
    from playwright.sync_api import sync_playwright

    port = free_port()
    server = serve(port)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            composer = page.get_by_label("Composer (most training pieces first)")
            composer.click()
            composer.fill(args.composer.lower())
            page.keyboard.press("Enter")
            page.get_by_label("number input for Length (tokens)").fill(str(args.length))
            page.get_by_label("Seed", exact=True).fill(str(args.seed))
            page.get_by_role("button", name="Compose").click()
            # the last status: "<n> notes, <s> seconds of music" (and why there is no audio, if none)
            page.get_by_text(re.compile(r"^\d+ notes, [\d.]+ seconds of music")).first.wait_for(timeout=600_000)
            time.sleep(1)  # the audio player and the file draw after the status
            page.screenshot(path=str(path), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


def main(argv: list[str] | None = None) -> list[Path]:
    parser = CommandParser(Arguments)
    (args,) = parser.parse(argv)
    chromium = args.chromium or shutil.which("chromium") or shutil.which("chromium-browser")
    if args.app and not chromium:
        parser.error("no Chromium for the app's screenshot: apt-get install chromium, or --app false")
    folder = Path(args.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    drawn = [folder / "sample.png"]
    with parser.failures():
        draw_sample(args, drawn[0])
        if args.app:
            drawn.append(folder / "app.png")
            screenshot_app(args, chromium, drawn[1])
    print("drew", ", ".join(map(str, drawn)))
    return drawn


if __name__ == "__main__":
    main()
