"""Fuzz what reads MIDI from anywhere (`make fuzz`; minutes, not part of `make test`).

    python scripts/fuzz.py --target data --seconds 300
    python scripts/fuzz.py --target prompt --seconds 300

atheris (coverage-guided, libFuzzer) mutates MIDI bytes, starting from the bundled corpus, and
feeds them to one of two paths with their contracts:

- `data`: the data layer's reading of a file (`tokenization.blocks.encode_midi`: a file is
  tokenized or skipped for a reason `load_score` names; the stream counts a failure of the
  tokenizer itself and goes on, but here that is a finding), then the ids it made decoded to a
  score and written back as MIDI (ids a tokenizer made always decode);
- `prompt`: the pipeline's reading of an uploaded prompt (`read_prompt`: a Score or a
  `ValueError` that says why) and its tokens (`MusicVocabulary.encode`).

Anything else, a crash of the process, a hang past `--timeout` seconds or memory past
`--rss_limit_mb` is a finding: libFuzzer writes the input to `<output_dir>/crashes/`, and the
suite replays every input kept in `tests/fuzz_cases/` (`tests/test_fuzz_cases.py`).
"""

from __future__ import annotations

import shutil
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from command_line import CommandParser

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("data", "prompt")


@dataclass
class Arguments:
    target: str = field(default="data", metadata={"help": "data or prompt (see above)."})
    seconds: int = field(default=300, metadata={"help": "How long to fuzz."})
    output_dir: str = field(default="outputs/fuzz", metadata={"help": "Corpus and crashes go here."})
    timeout: int = field(default=10, metadata={"help": "Seconds one input may take before it counts as a hang."})
    rss_limit_mb: int = field(default=2048, metadata={"help": "Memory past which an input counts as a blow-up."})
    max_len: int = field(default=200_000, metadata={"help": "Largest input, in bytes."})


class Harness:
    """The two paths and their contracts; an exception out of `__call__` is a finding."""

    def __init__(self, target: str) -> None:
        from modeling.catalog import default_model
        from modeling.pipeline_midi_generation import MusicVocabulary, read_prompt
        from tokenization import MusicTokenizer
        from tokenization.blocks import encode_midi

        self.target, self.read_prompt, self.encode_midi = target, read_prompt, encode_midi
        self.tokenizer = MusicTokenizer.from_pretrained(default_model())
        self.vocabulary = MusicVocabulary(str(default_model()))

    def __call__(self, data: bytes) -> None:
        if self.target == "data":
            row, skipped = {"midi": data, "composer": "bach", "path": "fuzzed.mid"}, Counter()
            encoded = self.encode_midi(self.tokenizer, row, skipped, log=False)
            if skipped["tokenizer error"]:  # the stream goes on, but a file we read failed to tokenize
                raise RuntimeError("miditok failed on a score that load_score let through")
            if encoded is not None:
                self.tokenizer.decode(encoded[1]).dumps_midi()
            return
        try:
            score = self.read_prompt(data)
        except ValueError:
            return  # the contract: an unreadable prompt is a ValueError that says so
        self.vocabulary.encode(score)


def seed_corpus(folder: Path) -> Path:
    """The bundled corpus as the fuzzer's starting inputs (copied once: libFuzzer adds to it)."""
    folder.mkdir(parents=True, exist_ok=True)
    if not any(folder.iterdir()):
        for path in sorted((ROOT / "tokenization" / "corpus").rglob("*.mid")):
            shutil.copy(path, folder / path.name)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = CommandParser(Arguments)
    (args,) = parser.parse(argv)
    if args.target not in TARGETS:
        parser.error(f"unknown --target {args.target!r}: choose {' or '.join(TARGETS)}")
    try:
        import atheris
    except ImportError:
        parser.error("atheris is not installed: pip install -e '.[fuzz]' (make fuzz does)")
    out = Path(args.output_dir) / args.target
    corpus, crashes = seed_corpus(out / "corpus"), out / "crashes"
    crashes.mkdir(parents=True, exist_ok=True)
    with atheris.instrument_imports(include=["tokenization", "modeling", "miditok"]):
        harness = Harness(args.target)
    options = [f"-max_total_time={args.seconds}", f"-timeout={args.timeout}", f"-rss_limit_mb={args.rss_limit_mb}"]
    options += [f"-max_len={args.max_len}", f"-artifact_prefix={crashes}/", "-print_final_stats=1"]
    atheris.Setup([sys.argv[0], *options, str(corpus)], harness)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
