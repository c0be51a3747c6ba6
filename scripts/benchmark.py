"""Speed benchmarks, written as JSON: `data`, `models` or `pipeline` (see the `benchmarks` package).

python scripts/benchmark.py data --sources ../shared/data/midi-classical-music --json outputs/bench_data.json

python scripts/benchmark.py models --json outputs/bench_models.json
python scripts/benchmark.py models --device cuda --precision bf16 --json outputs/bench_models_gpu.json

python scripts/benchmark.py pipeline --json outputs/bench_pipeline.json
git worktree add ../before <commit> && python scripts/benchmark.py pipeline --baseline ../before
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from benchmarks import BENCHMARKS
from command_line import CommandParser


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in BENCHMARKS:
        print(f"benchmark.py: error: name one: {{{'|'.join(BENCHMARKS)}}} [--option value ...]", file=sys.stderr)
        sys.exit(2)
    benchmark = importlib.import_module(f"benchmarks.{argv[0]}")  # only what this benchmark measures
    parser = CommandParser(benchmark.Arguments, prog=f"benchmark.py {argv[0]}")
    (args,) = parser.parse(argv[1:])
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    with parser.failures():
        results = benchmark.run(args)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {args.json}")
    return results


if __name__ == "__main__":
    main()
