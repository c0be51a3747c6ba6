"""The documentation is tested: README.md, CONTRIBUTING.md and every page of docs/.

- Snippets marked runnable (`<!-- runnable -->` before the code fence) run as written, each in a
  fresh folder laid out like a clone (the `clone` fixture), so the pages cannot drift from the
  code and nothing in the checkout changes.
- Every relative link and picture resolves.
- Every `--flag` a command line in a code block gives a script is one of that script's (the
  old spellings that still work, e.g. `--source`, do not count: the pages use the new ones).
- The README stays short: under 200 lines, the rest is in the pages it links to."""

import dataclasses
import importlib
import re
import subprocess
import sys

import pytest

from conftest import ROOT, load_script

PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = re.compile(r"<!-- runnable -->\n```(bash|python)\n(.*?)\n```", re.DOTALL)
SNIPPETS = [(page.name, language, code) for page in PAGES for language, code in RUNNABLE.findall(page.read_text())]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
BASH = re.compile(r"```bash\n(.*?)\n```", re.DOTALL)
COMMAND = re.compile(r"scripts/(\w+)\.py([^;&|#\n]*)")
FLAG = re.compile(r"(?<![\w-])(--[a-z][\w-]*)")


def test_the_pages_mark_their_runnable_snippets():
    languages = [language for _, language, _ in SNIPPETS]
    assert languages.count("python") >= 5 and languages.count("bash") >= 2  # a lost marker would drop a snippet


@pytest.mark.parametrize(
    ("page", "language", "code"),
    SNIPPETS,
    ids=[f"{page}-{i}-{language}" for i, (page, language, _) in enumerate(SNIPPETS)],
)
def test_a_runnable_snippet_runs_as_written(page, language, code, clone):
    command = [sys.executable, "-c", code] if language == "python" else ["bash", "-euo", "pipefail", "-c", code]
    result = subprocess.run(command, cwd=clone, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{page}:\n{code}\n---\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"


def test_every_relative_link_and_picture_resolves():
    broken = []
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            path = target.split("#")[0]
            if path and not re.match(r"^[a-z]+:", path) and not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken


def options(script: str, rest: str) -> tuple[str, set[str]]:
    """The flags `scripts/<script>.py` takes (a benchmark's: those of the one named first)."""
    if script == "benchmark":
        name = rest.split()[0]
        return f"benchmark.py {name}", flags_of([importlib.import_module(f"benchmarks.{name}").Arguments])
    module = load_script(script)
    types = [v for v in vars(module).values() if dataclasses.is_dataclass(v) and v.__module__ == module.__name__]
    return f"{script}.py", flags_of(types)


def flags_of(types: list[type]) -> set[str]:
    return set(load_script("command_line").CommandParser(types)._option_string_actions)


def test_every_flag_a_command_line_names_is_one_of_its_scripts():
    unknown = []
    for page in PAGES:
        for block in BASH.findall(page.read_text()):
            for script, rest in COMMAND.findall(block.replace("\\\n", " ")):
                name, known = options(script, rest)
                unknown += [
                    f"{page.relative_to(ROOT)}: {name} {flag}" for flag in FLAG.findall(rest) if flag not in known
                ]
    assert not unknown


def test_the_readme_stays_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def test_the_pictures_are_drawn_by_a_command(tmp_path):
    """`make figures` draws the piano roll the README shows (the app's screenshot needs Chromium:
    tests/test_app.py drives the app in it the same way)."""
    [drawn] = load_script("figures").main(["--app", "false", "--output_dir", str(tmp_path)])
    assert drawn.read_bytes()[:4] == b"\x89PNG" and (ROOT / "docs" / drawn.name).is_file()
