"""One case of the pipeline benchmark, in a process of its own: `python generation_case.py '<json>'`.

Run as a script, not as part of the `benchmarks` package, so that the `PYTHONPATH` it is given
decides whose `modeling` it imports (this checkout's or a baseline's), and so that its CPU time
and peak memory are its own. It prints one JSON line: the case's figures.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path


def resident_mib(pid: int | str = "self", field: str = "VmRSS") -> float | None:
    """A process's resident memory (`VmRSS`) or its peak since the last reset (`VmHWM`) from
    /proc, in MiB (None off Linux). The app benchmark reads its server's with it too."""
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return None
    line = next(line for line in status.read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def reset_peak() -> bool:
    """Start the peak-memory count afresh (Linux: writing 5 to clear_refs resets VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run(case: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    import modeling
    from modeling import MidiGenerationPipeline, build_config
    from tokenization import MusicTokenizer

    torch.set_num_threads(case["threads"])
    tokenizer = MusicTokenizer(composers=["bach"])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(build_config(case["family"], case["preset"], tokenizer)).eval()
    prefills = []  # forwards of more than one token: the first, and GPT-2's window slides

    def count_prefills(module, inputs, kwargs) -> None:
        if kwargs["input_ids"].shape[1] > 1:
            prefills.append(kwargs["input_ids"].shape[1])

    model.register_forward_pre_hook(count_prefills, with_kwargs=True)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        generator = MidiGenerationPipeline(model=model, music_tokenizer=folder, device=case["device"])
        options = {"guidance_scale": case["guidance_scale"]}
        if case["cache"] == "static":
            options["static_cache"] = True
        prompts = ["bach"] * case["batch"]
        generator(prompts, max_new_tokens=4, **options)  # first-call costs (grammar tables, kernels) out of the way
        prefills.clear()
        start_mib, peak_reset = resident_mib(), reset_peak()
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        pieces = generator(prompts, max_new_tokens=case["length"], min_new_tokens=case["length"], **options)
        seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    process_peak = after.ru_maxrss / (1024**2 if sys.platform == "darwin" else 1024)  # KiB; macOS: bytes
    peak = resident_mib(field="VmHWM") if peak_reset else process_peak
    return {
        **case,
        "code": str(Path(modeling.__file__).parents[1]),  # the folder it was imported from
        "seconds": seconds,
        "ms_per_step": 1000 * seconds / case["length"],
        "tokens_per_s": sum(piece["new_tokens"] for piece in pieces) / seconds,
        "user_s": user,
        "system_s": system,
        "system_share": system / max(user, 1e-6),
        "start_mib": start_mib,
        "peak_mib": peak,
        "window_prefills": len(prefills) - 1,
    }


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))))
