"""App benchmark: the web app under load, as its users meet it. The app command
(`scripts/app.py`) serves on a free loopback port; `--users` clients (gradio's client, a thread
each) compose one piece after another for `--seconds`; then each file of a set of bad uploads
is sent once. Reported: every request's latency (p50, p95), requests per minute, failures, how
many pieces each user got, the server's resident memory while they compose (peak, after
warm-up, at the end), and each bad upload's answer, time and what it added to that memory."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .generation_case import resident_mib

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Arguments:
    json: str = field(default="outputs/bench_app.json", metadata={"help": "Where to write the results."})
    model: str | None = field(default=None, metadata={"help": "The model served; left out: the bundled one."})
    users: int = field(default=8, metadata={"help": "Clients composing at once."})
    seconds: float = field(default=120.0, metadata={"help": "How long they compose (requests under way finish)."})
    length: int = field(default=256, metadata={"help": "Tokens of each piece."})
    concurrency: int = field(default=1, metadata={"help": "The app's --concurrency: pieces composed at once."})
    warmup: float = field(default=20.0, metadata={"help": "Seconds after which the memory should stay flat."})
    bad_uploads: bool = field(default=True, metadata={"help": "Then send each bad upload once."})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve(port: int, *options: str) -> subprocess.Popen:
    """The app command on loopback `port` with `options`, once it answers (it loads its first
    model before serving)."""
    server = subprocess.Popen([sys.executable, "scripts/app.py", "--port", str(port), *options], cwd=ROOT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise OSError(f"the app did not answer on port {port}")


class Sampler(threading.Thread):
    """The server's resident memory every half second, with the time since the start."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.samples, self.done, self.start_time = pid, [], threading.Event(), time.monotonic()

    def run(self) -> None:
        while not self.done.wait(0.5):
            self.samples.append((time.monotonic() - self.start_time, resident_mib(self.pid)))


def compose(client, model: str, length: int, seed: int, upload=None) -> tuple:
    return client.predict(model, "bach", length, 1.0, 0.95, 1.0, seed, upload, api_name="/compose")


def user(url: str, model: str, args: Arguments, number: int, deadline: float, requests: list) -> None:
    """One user composing until the deadline; each request's (user, start, seconds, error)."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    seed = number * 1000
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            compose(client, model, args.length, seed)
            error = None
        except Exception as failure:  # recorded: a failed request is what this measures
            error = f"{type(failure).__name__}: {str(failure).splitlines()[0] if str(failure) else ''}"
        requests.append({"user": number, "start": started, "seconds": time.monotonic() - started, "error": error})
        seed += 1


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))] if ordered else 0.0


def bad_uploads(folder: Path) -> dict[str, Path]:
    """The upload set of the app's test: broken, cut, empty, foreign, huge files and too many notes."""
    import symusic

    def notes(count: int) -> bytes:
        score = symusic.Score(480)
        score.tracks.append(symusic.Track("notes"))
        score.tracks[0].notes.extend(symusic.Note(i, 1, 60 + i % 12, 64) for i in range(count))
        return score.dumps_midi()

    good = notes(200)
    flipped = bytearray(good)
    for i in range(14, len(flipped), 97):
        flipped[i] ^= 0x5A
    contents = {
        "bits_flipped": bytes(flipped),
        "truncated": good[: len(good) // 3],
        "zero_bytes": b"",
        "not_midi": b"%PDF-1.4 this is a document, not music",
        "fifty_megabytes": b"MThd" + os.urandom(50 * 2**20),
        "twenty_thousand_notes": notes(20_000),
        "a_million_notes": notes(1_000_000),
    }
    paths = {}
    for name, data in contents.items():
        paths[name] = folder / f"{name}.mid"
        paths[name].write_bytes(data)
    return paths


def send_bad_uploads(url: str, model: str, pid: int, folder: Path) -> dict:
    from gradio_client import Client, handle_file

    client, answers = Client(url, verbose=False), {}
    for name, path in bad_uploads(folder).items():
        before, started = resident_mib(pid), time.monotonic()
        try:
            compose(client, model, 64, 0, handle_file(str(path)))
            answer = "composed"
        except Exception as failure:
            answer = str(failure).splitlines()[0] if str(failure) else type(failure).__name__
        seconds = time.monotonic() - started
        answers[name] = {"answer": answer, "seconds": seconds, "server_mib_growth": resident_mib(pid) - before}
        print(f"{name}: {answer} ({seconds:.2f} s)", flush=True)
    return answers


def run(args: Arguments) -> dict:
    from modeling.catalog import default_model

    model = args.model or str(default_model())
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    server = serve(port, "--concurrency", str(args.concurrency), *(["--model", args.model] if args.model else []))
    try:
        sampler = Sampler(server.pid)
        sampler.start()
        requests: list[dict] = []
        deadline = time.monotonic() + args.seconds
        users = [
            threading.Thread(target=user, args=(url, model, args, number, deadline, requests))
            for number in range(args.users)
        ]
        started = time.monotonic()
        for thread in users:
            thread.start()
        for thread in users:
            thread.join()
        wall = time.monotonic() - started
        loaded = [mib for at, mib in sampler.samples]  # the memory while the users composed
        folder = Path(args.json).with_suffix("")
        folder.mkdir(parents=True, exist_ok=True)
        uploads = send_bad_uploads(url, model, server.pid, folder) if args.bad_uploads else {}
        sampler.done.set()
        sampler.join()
    finally:
        server.terminate()
        server.wait(timeout=60)
    latencies = [r["seconds"] for r in requests if r["error"] is None]
    settled = [mib for at, mib in sampler.samples[: len(loaded)] if at >= args.warmup] or loaded
    summary = {
        "requests": len(requests),
        "failed": sum(r["error"] is not None for r in requests),
        "errors": sorted({r["error"] for r in requests if r["error"]}),
        "pieces_per_user": [sum(r["user"] == n and r["error"] is None for r in requests) for n in range(args.users)],
        "latency_p50_s": percentile(latencies, 0.5),
        "latency_p95_s": percentile(latencies, 0.95),
        "requests_per_minute": len(latencies) / wall * 60,
        "wall_seconds": wall,
        "server_mib_peak": max(loaded, default=0.0),
        "server_mib_after_warmup": settled[0] if settled else 0.0,
        "server_mib_at_end": loaded[-1] if loaded else 0.0,
    }
    print(
        f"{args.users} users, {wall:.0f} s: {summary['requests']} requests, {summary['failed']} failed, "
        f"p50 {summary['latency_p50_s']:.1f} s, p95 {summary['latency_p95_s']:.1f} s, "
        f"{summary['requests_per_minute']:.1f}/min, server {summary['server_mib_after_warmup']:.0f} -> "
        f"{summary['server_mib_at_end']:.0f} MiB (peak {summary['server_mib_peak']:.0f})",
        flush=True,
    )
    return {
        "benchmark": "app",
        "arguments": asdict(args),
        "machine": {"cpus": os.cpu_count()},
        "summary": summary,
        "memory": sampler.samples,
        "latencies": latencies,
        "bad_uploads": uploads,
    }
