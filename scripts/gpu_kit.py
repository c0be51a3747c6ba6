"""Build the GPU kit (`make gpu-kit`): where there is internet, gather what a GPU machine without it
needs to check its kernels, benchmark and train the comparison, into the ignored folder gpu-kit/.

    python scripts/gpu_kit.py                      # the H200 machine, the classical dataset's token cache
    python scripts/gpu_kit.py --target_packages freeze.txt --python_version 3.11 --glibc 2.35
    python scripts/gpu_kit.py --source bundled --dry_run    # a rehearsal kit for a CPU

The kit: wheels of every dependency the target lacks (`kit.build`), mamba-ssm and causal-conv1d as
pure-Python wheels, the token cache of `--source` as tar.xz, `run.sh` and `kit.json`. Copy the
checkout with gpu-kit/ to the GPU machine, then there: `bash gpu-kit/run.sh OUT_DIR [MINUTES]`.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from kit.build import DEFAULT_TARGET, KitError, Target, build_kit


@dataclass
class Arguments:
    output: str = field(default="gpu-kit", metadata={"help": "The kit's folder, in the checkout's root."})
    source: str = field(
        default="drengskapur/midi-classical-music", metadata={"help": "MIDI source (or token cache) to train on."}
    )
    tokenizer: str | None = field(
        default="modeling/pretrained/gpt2-small-classical",
        metadata={"help": "Tokenizer of the token cache (the bundled models'); none: a cache source's own."},
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
    parser = HfArgumentParser(Arguments)
    (args,) = parser.parse_args_into_dataclasses(args=sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    packages = args.target_packages or str(DEFAULT_TARGET)
    if not Path(packages).is_file():
        parser.error(f"no file {packages}: give the target's `pip freeze` lines as --target_packages")
    target = Target(args.python_version, args.glibc, args.arch, packages)
    try:
        kit = build_kit(Path(args.output), target, args.source, args.tokenizer, "dry-run" if args.dry_run else "gpu",
                        args.max_mib)  # fmt: skip
    except (KitError, ValueError, OSError) as error:
        parser.error(str(error).splitlines()[0])
    cache = kit["cache"]
    print(f"{args.output}: {len(kit['wheels'])} wheels and the token cache of {cache['source']} ({cache['pieces']:,} "
          f"pieces, {cache['tokens']:,} tokens): {kit['kit_bytes'] / 2**20:.1f} MiB, with the tracked files "
          f"{(kit['kit_bytes'] + kit['tracked_bytes']) / 2**20:.1f} MiB")  # fmt: skip
    print(f"on the GPU machine, from the checkout's root: bash {args.output}/run.sh OUT_DIR [MINUTES]")
    return kit


if __name__ == "__main__":
    main()
