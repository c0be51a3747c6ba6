"""Speed benchmarks, one module each, run by `scripts/benchmark.py <name>` and written as JSON.

- `data`: the token stream from MIDI and from the token cache, beside miditok's `DatasetMIDI`.
- `models`: training and generation speed and cache memory of each family, beside transformers' own.
- `pipeline`: `pipeline("midi-generation")` per family, batch and length, each case in its own
  process (CPU time, memory), beside another checkout's code if asked; and real time.
- `app`: the web app under load (several users composing at once) and given bad uploads.
- `archive`: a MidiCaps-layout archive streamed in one pass against a loose folder of the same files.

Each module holds its `Arguments` (a dataclass for `HfArgumentParser`) and `run(args) -> dict`,
and imports only what it measures, so `models` runs where the data libraries are not installed
(a bare GPU machine).
"""

from __future__ import annotations

import torch

BENCHMARKS = ("data", "models", "pipeline", "app", "archive")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a wall-clock time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
