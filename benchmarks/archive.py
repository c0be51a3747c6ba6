"""Archive benchmark: files per second and peak memory reading a MidiCaps-layout mirror
(`midicaps.tar.gz` beside `train.json`, streamed in one pass) against a loose folder of the same
files, each read once through `load_source`, in its own process.

The mirror is written from MIDI files by `write_mirror`, which the tests use too: members named
as in the Hub archive (`lmd_full/<first hex digit>/<md5>.mid`), one metadata row each with the
fields the source reads (genres with probabilities, tempo from the file's first tempo, a key,
`test_set`) and some it ignores (caption, mood). The metadata is made up but well formed.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import platform
import resource
import shutil
import tarfile
import time
import tracemalloc
from dataclasses import asdict, dataclass, field
from pathlib import Path

GENRES = ("rock", "pop", "electronic", "jazz")
KEYS = ("C major", "A minor", "G major", "E minor")


@dataclass
class Arguments:
    source: str = field(default="bundled", metadata={"help": "A folder of MIDI files to mirror."})
    copies: int = field(default=4, metadata={"help": "Each file written this many times (more files to time)."})
    json: str = field(default="outputs/bench_archive.json", metadata={"help": "Where to write the results."})
    workdir: str = field(default="outputs/bench_archive", metadata={"help": "Where the mirror and folder go."})


def member_name(data: bytes, copy: int = 0) -> str:
    digest = hashlib.md5(data + bytes(copy), usedforsecurity=False).hexdigest()
    return f"lmd_full/{digest[0]}/{digest}.mid"


def metadata_row(location: str, number: int, data: bytes) -> dict:
    """A well-formed made-up `train.json` row: genres cycle, the tempo is the file's own."""
    import symusic

    try:
        tempos = symusic.Score.from_midi(data).tempos
        bpm = round(tempos[0].qpm, 1) if len(tempos) else 120.0
    except Exception:  # a broken file still gets a row: the reader, not the writer, must cope
        bpm = 120.0
    first = GENRES[number % len(GENRES)]
    return {
        "location": location,
        "caption": f"A made-up caption for test file {number}.",
        "genre": [first, GENRES[(number + 1) % len(GENRES)]],
        "genre_prob": [0.8, 0.2],
        "mood": ["happy", "energetic"],
        "mood_prob": [0.6, 0.4],
        "key": KEYS[number % len(KEYS)],
        "time_signature": "4/4",
        "tempo": bpm,
        "tempo_word": "Moderato",
        "duration": 60,
        "test_set": number % 5 == 4,
    }


def mirror_of(midis: list[bytes], copies: int = 1) -> tuple[list[tuple[str, bytes]], list[dict]]:
    """(members, metadata rows) of a mirror of `midis`, each file `copies` times under its own name."""
    members = [(member_name(data, copy), data) for copy in range(copies) for data in midis]
    return members, [metadata_row(name, number, data) for number, (name, data) in enumerate(members)]


def write_mirror(folder: Path, members: list[tuple[str, bytes]], rows: list[dict]) -> None:
    """Write `midicaps.tar.gz` (the `(name, bytes)` members, in order) and `train.json` (`rows`)
    in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / "midicaps.tar.gz", "w:gz") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    (folder / "train.json").write_text("".join(json.dumps(row) + "\n" for row in rows))


def read_once(uri: str, queue) -> None:
    """Read every file of `uri` once; put (files, seconds, traced peak bytes, max RSS KiB)."""
    from tokenization import load_source

    tracemalloc.start()
    start = time.perf_counter()
    files = sum(1 for _ in load_source(uri))
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    queue.put((files, seconds, peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))


def measure(uri: str) -> dict:
    context = multiprocessing.get_context("spawn")  # a fresh process each: its peak is its own
    queue = context.Queue()
    process = context.Process(target=read_once, args=(uri, queue))
    process.start()
    files, seconds, peak, rss = queue.get()
    process.join()
    return {
        "files": files,
        "seconds": seconds,
        "files_per_s": files / seconds,
        "python_peak_mib": peak / 2**20,
        "max_rss_mib": rss / 1024,
    }


def run(args: Arguments) -> dict:
    from tokenization import list_midi_files

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    members, rows = mirror_of([Path(f.url).read_bytes() for f in list_midi_files(args.source)], args.copies)
    write_mirror(work / "mirror", members, rows)
    loose = work / "folder"
    for name, data in members:
        (loose / name).parent.mkdir(parents=True, exist_ok=True)
        (loose / name).write_bytes(data)
    results = {"mirror": measure(str(work / "mirror")), "folder": measure(f"folder:{loose}")}
    for name, result in results.items():
        print(
            f"{name}: {result['files']} files, {result['files_per_s']:.0f} files/s, "
            f"{result['python_peak_mib']:.1f} MiB Python peak, {result['max_rss_mib']:.0f} MiB max RSS"
        )
    return {
        "benchmark": "archive",
        "arguments": asdict(args),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "archive_bytes": (work / "mirror" / "midicaps.tar.gz").stat().st_size,
        **results,
    }
