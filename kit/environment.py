"""What the machine is and which kernel each family runs on it: `python -m kit.environment`.

The kernels are not read from flags: each family's model at the comparison's size takes one
training step (forward and backward, bf16 autocast on CUDA) and generates a few tokens, and
reports the kernels that step ran (`modeling.training.model_kernels`). A family whose step
fails is reported with its error, and the others still run.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from importlib.metadata import distributions
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from benchmarks.models import Vocabulary, installed
from modeling import FAMILIES, build_config
from modeling.training import model_kernels

PACKAGES = (
    "torch", "triton", "transformers", "accelerate", "huggingface-hub", "datasets", "miditok", "symusic", "xlstm",
    "mlstm-kernels", "flashrnn", "mamba-ssm", "causal-conv1d", "numpy", "safetensors", "tokenizers",
)  # fmt: skip


def machine() -> dict:
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "capability": ".".join(map(str, torch.cuda.get_device_capability())) if cuda else None,
        "versions": {name: installed(name) for name in PACKAGES},
        "packages": sorted(f"{d.metadata['Name']}=={d.version}" for d in distributions()),
    }


def family_kernels(family: str, preset: str, device: torch.device) -> dict:
    """One training step and a short generation of `family` on `device`, and the kernels they ran."""
    model = AutoModelForCausalLM.from_config(build_config(family, preset, Vocabulary(1024))).to(device)
    ids = torch.randint(3, 1024, (2, 256), device=device)
    started = time.perf_counter()
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            model(ids, labels=ids, use_cache=False).loss.backward()
            model.generate(ids[:, :16], max_new_tokens=8, do_sample=False, eos_token_id=None)
    except Exception as error:  # reported, and the other families still run
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"}
    return {"kernels": model_kernels(model, device.type), "seconds": round(time.perf_counter() - started, 2)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="Also write the report here.")
    parser.add_argument("--preset", default="small", help="The model size whose kernels are checked.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    report = machine()
    versions = ", ".join(f"{name} {found or '-'}" for name, found in report["versions"].items())
    print(f"{report['device']} (torch CUDA {report['torch_cuda']}), Python {report['python']}: {versions}", flush=True)
    report["families"] = {}
    for family in FAMILIES:
        result = report["families"][family] = family_kernels(family, args.preset, torch.device(args.device))
        found = result.get("kernels")
        said = ", ".join(f"{part} {kernel}" for part, kernel in found.items()) if found else result["error"]
        print(f"{family} on {args.device}: {said}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
