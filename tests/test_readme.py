"""The README's snippets marked runnable (`<!-- runnable -->` before the code fence) run as
written, so the README cannot drift from the code. Each runs in a fresh folder laid out like
a clone (the `clone` fixture), so what it writes lands there and nothing in the checkout changes."""

import re
import subprocess
import sys

import pytest

from conftest import ROOT

RUNNABLE = re.compile(r"<!-- runnable -->\n```(bash|python)\n(.*?)\n```", re.DOTALL)
SNIPPETS = RUNNABLE.findall((ROOT / "README.md").read_text())


def test_the_readme_marks_its_runnable_snippets():
    languages = [language for language, _ in SNIPPETS]
    assert languages.count("python") >= 3 and "bash" in languages  # a lost marker would drop a snippet


@pytest.mark.parametrize(("language", "code"), SNIPPETS, ids=[f"{i}-{s[0]}" for i, s in enumerate(SNIPPETS)])
def test_a_runnable_snippet_runs_as_written(language, code, clone):
    command = [sys.executable, "-c", code] if language == "python" else ["bash", "-euo", "pipefail", "-c", code]
    result = subprocess.run(command, cwd=clone, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{code}\n---\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
