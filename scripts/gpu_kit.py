"""Build the GPU kit (`make gpu-kit`): where there is internet, gather what a GPU machine without it
needs to check its kernels, benchmark and train the comparison, into the ignored folder gpu-kit/.

    python scripts/gpu_kit.py                      # the H200 machine, the classical dataset's token cache
    python scripts/gpu_kit.py --target_packages freeze.txt --python_version 3.11 --glibc 2.35
    python scripts/gpu_kit.py --sources bundled --dry_run    # a rehearsal kit for a CPU

The kit: wheels of every dependency the target lacks (`kit.build`), mamba-ssm and causal-conv1d as
pure-Python wheels, the token caches of `--sources` as tar.xz, `run.sh` and `kit.json`. Copy the
checkout with gpu-kit/ to the GPU machine, then there: `bash gpu-kit/run.sh OUT_DIR [MINUTES]`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from command_line import CommandParser
from kit.build import DEFAULT_TARGET, Target, build_kit


@dataclass
class Arguments:
    output_dir: str = field(default="gpu-kit", metadata={"help": "The kit's folder, in the checkout's root."})
    sources: list[str] = field(
        default_factory=lambda: ["drengskapur/midi-classical-music"],
        metadata={"help": "MIDI sources (or token caches) to train on."},
    )
    tokenizer: str | None = field(
        default="modeling/pretrained/gpt2-small-classical",
        metadata={"help": "Tokenizer of the token caches (the bundled models'); none: a cache source's own."},
    )
    target_packages: str | None = field(
        default=None,
        metadata={"help": "What the target has, as `pip freeze` lines (a bare name: any version); none: the H200's."},
    )
    python_version: str = field(default="3.12", metadata={"help": "The target's Python."})
    glibc: str = field(default="2.28", metadata={"help": "The target's C library: wheels up to this manylinux."})
    arch: str = field(default="x86_64", metadata={"help": "The target's processor."})
    dry_run: bool = field(default=False, metadata={"help": "A kit that rehearses the run on a CPU (tiny models)."})
    max_mib: float = field(default=60.0, metadata={"help": "Refuse a kit that, with the tracked files, is larger."})


def main(argv: list[str] | None = None) -> dict:
    parser = CommandParser(Arguments)
    (args,) = parser.parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    packages = args.target_packages or str(DEFAULT_TARGET)
    if not Path(packages).is_file():
        parser.error(f"no file {packages}: give the target's `pip freeze` lines as --target_packages")
    target = Target(args.python_version, args.glibc, args.arch, packages)
    with parser.failures():
        mode = "dry-run" if args.dry_run else "gpu"
        kit = build_kit(Path(args.output_dir), target, args.sources, args.tokenizer, mode, args.max_mib)
    pieces, tokens = (sum(cache[key] for cache in kit["caches"]) for key in ("pieces", "tokens"))
    print(f"{args.output_dir}: {len(kit['wheels'])} wheels and the token caches of {', '.join(args.sources)} "
          f"({pieces:,} pieces, {tokens:,} tokens): {kit['kit_bytes'] / 2**20:.1f} MiB, with the tracked files "
          f"{(kit['kit_bytes'] + kit['tracked_bytes']) / 2**20:.1f} MiB")  # fmt: skip
    print(f"on the GPU machine, from the checkout's root: bash {args.output_dir}/run.sh OUT_DIR [MINUTES]")
    return kit


if __name__ == "__main__":
    main()
