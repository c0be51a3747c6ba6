"""The fuzzer's findings (`make fuzz`), replayed: each input it found to crash, hang or blow up
the data layer or the prompt path is kept in `fuzz_cases/<target>/` and must now pass."""

from collections import Counter

import pytest

from conftest import ROOT, load_script
from modeling.pipeline_midi_generation import read_prompt
from tokenization.blocks import encode_midi

CASES = ROOT / "tests" / "fuzz_cases"


@pytest.fixture(scope="module")
def harnesses() -> dict:
    script = load_script("fuzz")
    return {target: script.Harness(target) for target in script.TARGETS}


@pytest.mark.parametrize("path", sorted(CASES.glob("*/*.mid")), ids=lambda path: f"{path.parent.name}/{path.name}")
def test_a_finding_of_the_fuzzer_now_passes(harnesses, path):
    harnesses[path.parent.name](path.read_bytes())


@pytest.mark.parametrize(
    "kind, message",
    [
        ("far-end", r"the prompt spans [\d,]+ quarter notes .* may span 100,000"),
        ("before-start", r"the prompt has an event at tick -[\d,]+, before its start"),
        ("no-time-unit", r"the prompt's header gives 0 ticks per quarter note"),
    ],
)
def test_a_damaged_time_is_refused_before_tokenizing(tokenizer, kind, message):
    """The fuzzer's hangs and crashes: an event millions of quarter notes out took the tokenizer
    half a minute (a bar token for each bar up to it); one before the start, or a header without
    a time unit, crashed miditok. Now such a file is skipped and counted, such a prompt refused
    in one sentence."""
    cases = sorted(CASES.glob(f"*/{kind}-*.mid"))
    assert cases
    for path in cases:
        skipped = Counter()
        row = {"midi": path.read_bytes(), "composer": "bach", "path": path.name}
        assert encode_midi(tokenizer, row, skipped, log=False) is None and skipped == Counter({"damaged time": 1})
        with pytest.raises(ValueError, match=message):
            read_prompt(path)
