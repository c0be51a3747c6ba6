"""Model benchmark: per family at one preset, training tokens/s (forward + backward, batch 1 unless
told) at several lengths, and generation ms/token and memory after a prefill of several context
lengths, beside transformers' own `Mamba2ForCausalLM` and `xLSTMForCausalLM` at matched sizes; JSON
plus a PNG plot. MusicXLSTM is timed once per sLSTM backend that runs on the device
(`--slstm_backends`), and one sLSTM block per backend against one mLSTM block. GPT-2 gets
`n_positions` large enough for the longest context. Memory is the size of the cache and, on CUDA,
the allocator's peak above its level before the prefill (on CPU the resident size says nothing once
training has grown the allocator's pool, so none is reported)."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, Mamba2Config, Mamba2ForCausalLM, xLSTMConfig, xLSTMForCausalLM

from modeling import FAMILIES, build_config, modeling_music_xlstm

from . import synchronize


@dataclass
class Arguments:
    json: str = field(default="outputs/bench_models.json", metadata={"help": "Where to write the results (and .png)."})
    preset: str = "small"
    families: list[str] = field(default_factory=lambda: list(FAMILIES))
    references: bool = field(default=True, metadata={"help": "Also time transformers' Mamba2 and xLSTM."})
    device: str = "cpu"
    precision: str = field(
        default="fp32", metadata={"help": "fp32, or bf16 (autocast, as accelerate's mixed precision)."}
    )
    threads: int = field(default=2, metadata={"help": "torch threads (CPU)."})
    vocab_size: int = 1024
    train_lengths: list[int] = field(default_factory=lambda: [1024, 4096])
    train_batch: int = field(default=1, metadata={"help": "Sequences per training step (e.g. 32 on a GPU)."})
    contexts: list[int] = field(default_factory=lambda: [256, 1024, 4096, 16384])
    new_tokens: int = field(default=32, metadata={"help": "Tokens generated after each prefill."})
    slstm_backends: list[str] = field(
        default_factory=lambda: ["vanilla", "native", "flashrnn"],
        metadata={"help": "MusicXLSTM's sLSTM backends to time (flashrnn: CUDA with the [cuda] extra only)."},
    )
    block_lengths: list[int] = field(
        default_factory=lambda: [1024, 4096], metadata={"help": "Lengths of the per-block (sLSTM vs mLSTM) timing."}
    )


class Vocabulary:
    """Token ids for `build_config` without a tokenizer."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


def reference_models(preset: str, vocab_size: int) -> dict:
    """transformers' own Mamba-2 and xLSTM, sized from our presets.

    The Mamba-2 copies our Mamba preset. transformers' xLSTM has mLSTM blocks only: with
    12 of them it matches the parameter count of our 14 mixed blocks (mLSTM + sLSTM).
    """
    vocabulary = Vocabulary(vocab_size)
    mamba, xlstm = build_config("mamba", preset, vocabulary), build_config("xlstm", preset, vocabulary)
    mamba = Mamba2Config(
        vocab_size=vocab_size, hidden_size=mamba.n_embd, num_hidden_layers=mamba.n_layer, state_size=mamba.d_state,
        head_dim=mamba.headdim, num_heads=mamba.nheads, n_groups=mamba.ngroups, expand=mamba.expand,
        chunk_size=mamba.chunk_size, tie_word_embeddings=True,
    )  # fmt: skip
    xlstm = xLSTMConfig(
        vocab_size=vocab_size, hidden_size=xlstm.n_embd, num_blocks=xlstm.n_layer - 2,
        num_heads=xlstm.num_heads, chunk_size=xlstm.chunk_size, tie_word_embeddings=True,
    )  # fmt: skip
    return {"transformers_mamba2": (Mamba2ForCausalLM, mamba), "transformers_xlstm": (xLSTMForCausalLM, xlstm)}


def installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def usable_backends(backends: list[str], device: torch.device) -> list[str]:
    """The sLSTM backends that run here: flashrnn's kernel needs CUDA and the package."""
    fused = device.type == "cuda" and modeling_music_xlstm.flashrnn is not None
    return [backend for backend in backends if backend != "flashrnn" or fused]


def time_blocks(config, lengths: list[int], backends: list[str], device: torch.device, reps: int = 3) -> list[dict]:
    """Forward + backward of one mLSTM block and one sLSTM block per backend (batch 1): the
    fastest of `reps` runs in ms (single runs drift with the garbage collector and the machine)."""
    torch.manual_seed(0)
    blocks = {"mLSTM": modeling_music_xlstm.MusicXLSTMMLSTMBlock(config)}
    slstm = modeling_music_xlstm.MusicXLSTMSLSTMBlock(config, config.slstm_at[0])
    blocks |= {f"sLSTM {backend}": slstm for backend in backends}
    rows = []
    for length in lengths:
        x = torch.randn(1, length, config.n_embd, device=device, requires_grad=True)
        for name, block in blocks.items():
            if name.startswith("sLSTM "):
                config.slstm_backend = name.removeprefix("sLSTM ")
            block.to(device)
            block(x, None)[0].sum().backward()  # warm-up
            times = []
            for _ in range(reps):
                synchronize(device)
                start = time.perf_counter()
                block(x, None)[0].sum().backward()
                synchronize(device)
                times.append(time.perf_counter() - start)
            ms = 1000 * min(times)
            rows.append({"block": name, "length": length, "ms": ms})
            print(f"{name} block: {length} tokens: {ms:.0f} ms forward + backward", flush=True)
    return rows


def time_training(model, length: int, batch: int, vocab_size: int, device: torch.device, reps: int = 2) -> float:
    """Tokens per second of forward + backward on `batch` sequences of `length` tokens."""
    ids = torch.randint(3, vocab_size, (batch, length), device=device)
    model.train()
    model(ids, labels=ids, use_cache=False).loss.backward()  # warm-up (kernel compilation, allocator)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(reps):
        model.zero_grad(set_to_none=True)
        model(ids, labels=ids, use_cache=False).loss.backward()
    synchronize(device)
    model.zero_grad(set_to_none=True)
    return ids.numel() * reps / (time.perf_counter() - start)


def cache_bytes(cache) -> int:
    """Bytes held by any cache object: the tensors reachable from its attributes."""
    seen, total, stack = set(), 0, [cache]
    while stack:
        item = stack.pop()
        key = item.data_ptr() if isinstance(item, torch.Tensor) else id(item)
        if key in seen:
            continue
        seen.add(key)
        if isinstance(item, torch.Tensor):
            total += item.numel() * item.element_size()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif hasattr(item, "__dict__"):
            stack.extend(vars(item).values())
    return total


@torch.no_grad()
def time_generation(model, context: int, new_tokens: int, vocab_size: int, device: torch.device) -> dict:
    """Prefill `context` tokens, then `new_tokens` single-token steps through the cache."""
    model.eval()
    ids = torch.randint(3, vocab_size, (1, context), device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    out = model(ids, use_cache=True)
    synchronize(device)
    prefill = time.perf_counter() - start
    step = out.logits[:, -1:].argmax(-1)
    start = time.perf_counter()
    for _ in range(new_tokens):
        out = model(step, cache=out.cache, use_cache=True)
        step = out.logits[:, -1:].argmax(-1)
    synchronize(device)
    stepping = time.perf_counter() - start
    return {
        "context": context,
        "prefill_s": prefill,
        "ms_per_token": 1000 * stepping / new_tokens,
        "cache_bytes": cache_bytes(out.cache),
        "peak_memory_bytes": torch.cuda.max_memory_allocated() - base if device.type == "cuda" else None,
    }


def measure(name: str, model, args: Arguments, device: torch.device) -> dict:
    result = {
        "model": name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "training": [],
        "generation": [],
    }
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
        for length in args.train_lengths:
            tokens_per_s = time_training(model, length, args.train_batch, args.vocab_size, device)
            result["training"].append({"length": length, "batch": args.train_batch, "tokens_per_s": tokens_per_s})
            print(f"{name}: train {length} tokens: {tokens_per_s:.0f} tokens/s", flush=True)
        for context in args.contexts:
            row = time_generation(model, context, args.new_tokens, args.vocab_size, device)
            result["generation"].append(row)
            cache_mib = row["cache_bytes"] / 2**20
            print(
                f"{name}: context {context}: {row['ms_per_token']:.1f} ms/token, cache {cache_mib:.1f} MiB", flush=True
            )
    return result


def plot_models(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (train, generate, memory) = plt.subplots(1, 3, figsize=(15, 4.5))
    for result in results:
        train.plot([r["length"] for r in result["training"]], [r["tokens_per_s"] for r in result["training"]], "o-")
        contexts = [r["context"] for r in result["generation"]]
        generate.plot(contexts, [r["ms_per_token"] for r in result["generation"]], "o-", label=result["model"])
        memory.plot(contexts, [r["cache_bytes"] / 2**20 for r in result["generation"]], "o-")
    for axis, title in zip(
        (train, generate, memory),
        ("training tokens/s (fwd+bwd)", "generation ms/token", "cache MiB"),
        strict=True,
    ):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("tokens" if axis is train else "context tokens")
        axis.set_title(title)
    memory.set_yscale("log")
    generate.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def run(args: Arguments) -> dict:
    if args.precision not in ("fp32", "bf16"):
        raise ValueError(f"unknown precision {args.precision!r}: use fp32 or bf16")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    candidates = {}
    longest = max(*args.train_lengths, max(args.contexts) + args.new_tokens)
    backends = usable_backends(args.slstm_backends, device)
    for family in args.families:
        extra = {"n_positions": longest} if family == "transformer" else {}
        variants = {f" sLSTM {b}": {"slstm_backend": b} for b in backends} if family == "xlstm" else {"": {}}
        for suffix, overrides in variants.items():
            config = build_config(family, args.preset, Vocabulary(args.vocab_size), **extra, **overrides)
            candidates[f"{family}_{args.preset}{suffix}"] = (AutoModelForCausalLM.from_config, config)
    if args.references:
        candidates |= reference_models(args.preset, args.vocab_size)
    results = []
    for name, (make, config) in candidates.items():
        torch.manual_seed(0)
        try:
            results.append(measure(name, make(config).to(device), args, device))
        except Exception as error:  # a reference without its kernels must not cost the other figures
            print(f"{name}: failed: {type(error).__name__}: {error}", flush=True)
            results.append(
                {"model": name, "error": f"{type(error).__name__}: {error}", "training": [], "generation": []}
            )
    blocks = []
    if "xlstm" in args.families:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            xlstm_config = build_config("xlstm", args.preset, Vocabulary(args.vocab_size))
            blocks = time_blocks(xlstm_config, args.block_lengths, backends, device)
    output = {
        "benchmark": "models",
        "arguments": asdict(args),
        "machine": {
            "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "versions": {
            name: installed(name) for name in ("torch", "transformers", "xlstm", "mlstm_kernels", "flashrnn")
        },
        "results": results,
        "blocks": blocks,
    }
    plot_models(results, Path(args.json).with_suffix(".png"))
    return output
