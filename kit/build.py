"""Building the GPU kit, where there is internet (`make gpu-kit`, `scripts/gpu_kit.py`).

What the target lacks is decided by pip itself: a scratch Python (no packages, no pip) is given
the target's packages as bare `.dist-info` folders, and `pip --python <scratch> install --dry-run
--report` resolves the project's requirements for the target's Python and platform against them.
A package the target has in a version that satisfies every requirement stays out of the kit; one
it lacks, or has too old, comes in as a wheel. A target package listed without a version is taken
to satisfy (and what only it needed is left out too). Markers are evaluated for the Python that
builds (pip's rule), not the target's: at worst a wheel too many.

mamba-ssm and causal-conv1d publish only sources whose CUDA extensions need a compiler and an
hour; their Triton kernels need neither. They are built here into pure-Python wheels with their
own switches (`MAMBA_SKIP_CUDA_BUILD=TRUE`, ...) and installed there without their dependencies
(tilelang, quack-kernels: for kernels this project does not use).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import venv
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tokenization import MusicTokenizer, TokenCache, split_names, tokenizer_for

from . import KIT_FILE

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
RUN_SCRIPT = Path(__file__).with_name("run.sh")
DEFAULT_TARGET = Path(__file__).with_name("targets") / "nvidia-h200.txt"
# the source-only packages of the [cuda] extra, by the prefix of their build switches
SOURCE_ONLY = {"mamba-ssm": "MAMBA", "causal-conv1d": "CAUSAL_CONV1D"}
# what the runner needs beyond the project's requirements: the CUDA agreement tests
RUNNER_REQUIREMENTS = ["pytest>=8"]


class KitError(ValueError):
    """A kit that cannot be built as asked: one line, with the way out."""


@dataclass(frozen=True)
class Target:
    """The machine the kit is for: its Python, C library and processor, and what it has installed."""

    python_version: str = "3.12"
    glibc: str = "2.28"
    arch: str = "x86_64"
    packages: str = str(DEFAULT_TARGET)

    def platforms(self) -> list[str]:
        """pip's `--platform` tags this machine runs: pip matches each tag exactly, so every older
        manylinux is named too."""
        major, minor = (int(part) for part in self.glibc.split(".")[:2])
        tags = [f"manylinux_{major}_{m}_{self.arch}" for m in range(minor, 16, -1)]
        return [*tags, f"manylinux2014_{self.arch}", f"manylinux2010_{self.arch}", f"manylinux1_{self.arch}"]

    def pip_flags(self) -> list[str]:
        flags = ["--only-binary=:all:", "--python-version", self.python_version, "--implementation", "cp"]
        return flags + [flag for tag in self.platforms() for flag in ("--platform", tag)]


def read_packages(path: str | Path) -> dict[str, str | None]:
    """`pip freeze` lines (`name==version`, or a bare name when the version is not known; `#`
    comments) as {canonical name: version or None}. A local version label (`+cu130`) is dropped."""
    packages = {}
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, version = line.partition("==")
        packages[canonicalize_name(name.split("@")[0].strip())] = version.split("+")[0].strip() or None
    return packages


def project_requirements(extras: tuple[str, ...] = ("cuda",)) -> tuple[list[str], list[str]]:
    """The installed project's requirements with `extras`, split into those with wheels and the
    source-only ones (`SOURCE_ONLY`)."""
    wheels, sources = [], []
    environment = default_environment()
    try:
        lines = requires("midi-lm") or []
    except PackageNotFoundError as error:
        raise KitError(
            "the project is not installed here, so its requirements are unknown: run make install"
        ) from error
    for line in lines:
        requirement = Requirement(line)
        marker = requirement.marker
        if marker and not any(marker.evaluate({**environment, "extra": extra}) for extra in ("", *extras)):
            continue
        requirement.marker = None
        target = sources if canonicalize_name(requirement.name) in SOURCE_ONLY else wheels
        target.append(str(requirement))
    return wheels + RUNNER_REQUIREMENTS, sources


def pip(*arguments: str, env: dict | None = None) -> None:
    """This Python's pip; its last lines of output in the error when it fails."""
    command = [sys.executable, "-m", "pip", *arguments]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise KitError(f"pip failed: {' / '.join(tail)}")


def scratch_python(folder: Path, packages: dict[str, str | None]) -> Path:
    """A Python with nothing installed but bare records of the target's versioned packages."""
    venv.create(folder, with_pip=False)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(folder), "platbase": str(folder)}))
    for name, version in packages.items():
        if version:
            record = site / f"{name.replace('-', '_')}-{version}.dist-info"
            record.mkdir(parents=True)
            (record / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return folder / "bin" / "python"


def missing_packages(requirements: list[str], target: Target) -> dict[str, str]:
    """{name: version} of every distribution the target needs for `requirements` and lacks."""
    packages = read_packages(target.packages)
    with tempfile.TemporaryDirectory() as scratch:
        python = scratch_python(Path(scratch) / "python", packages)
        report = Path(scratch) / "report.json"
        pip(
            *("--python", str(python), "install", "--dry-run", "--quiet", "--report", str(report)),
            *target.pip_flags(),
            *requirements,
        )
        planned = json.loads(report.read_text())["install"]
    trusted = {name for name, version in packages.items() if version is None}
    return needed(planned, trusted)


def needed(planned: list[dict], trusted: set[str]) -> dict[str, str]:
    """The planned installs (pip's report) reachable from the requested ones without passing
    through a package the target has in an unknown version."""
    by_name = {canonicalize_name(item["metadata"]["name"]): item["metadata"] for item in planned}
    roots = [(canonicalize_name(item["metadata"]["name"]), ()) for item in planned if item.get("requested")]
    environment, keep, todo = default_environment(), {}, roots
    while todo:
        name, extras = todo.pop()
        if name in trusted or name not in by_name or name in keep:
            continue
        keep[name] = by_name[name]["version"]
        for line in by_name[name].get("requires_dist", []):
            requirement = Requirement(line)
            marker = requirement.marker
            if marker is None or any(marker.evaluate({**environment, "extra": e}) for e in ("", *extras)):
                todo.append((canonicalize_name(requirement.name), tuple(requirement.extras)))
    return dict(sorted(keep.items()))


def download_wheels(packages: dict[str, str], target: Target, folder: Path) -> None:
    pins = [f"{name}=={version}" for name, version in packages.items()]
    pip("download", "--no-deps", "--quiet", *target.pip_flags(), "--dest", str(folder), *pins)


def build_source_only(requirements: list[str], folder: Path) -> None:
    """Pure-Python wheels of the source-only packages: their CUDA builds skipped, no download
    of their prebuilt binaries tried, built against this environment's torch."""
    env = dict(os.environ)
    for prefix in SOURCE_ONLY.values():
        env |= {f"{prefix}_SKIP_CUDA_BUILD": "TRUE", f"{prefix}_FORCE_BUILD": "TRUE"}
    pip("wheel", "--no-deps", "--no-build-isolation", "--no-binary=:all:", "--quiet", "--wheel-dir", str(folder),
        *requirements, env=env)  # fmt: skip


def pack_token_cache(source: str, tokenizer: MusicTokenizer, folder: Path) -> dict:
    """The token cache of `source` under `tokenizer`, built first if needed, as
    `<folder>/<name>.tar.xz`; what it holds."""
    cache = TokenCache.for_source(source, tokenizer)
    name = f"{cache.folder.parent.name}-{cache.folder.name}"
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / f"{name}.tar.xz", "w:xz") as archive:
        archive.add(cache.folder, arcname=name)
    held = {key: cache.info[key] for key in ("pieces", "tokens")}
    return {"file": f"cache/{name}.tar.xz", "folder": name, "source": source, **held}


def tracked_bytes(root: Path = ROOT) -> int:
    """The size of the files git tracks: what travels with the kit."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
    return sum((root / name).stat().st_size for name in listed.decode().split("\0") if (root / name).is_file())


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def build_kit(
    output: Path,
    target: Target,
    sources: list[str],
    tokenizer_name: str | None,
    mode: str = "gpu",
    max_mib: float = 60.0,
) -> dict:
    """Write the kit to `output` (built beside it, then moved in place: a refused or broken build
    leaves no kit); return its description (also `kit.json`)."""
    tokenizer = tokenizer_for(tokenizer_name, sources)  # as train.py picks it: without one, a cache's own
    for source in sources:
        split_names(source)  # a missing source fails here, before anything slow
    partial = output.with_name(output.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        wheels, source_only = project_requirements()
        missing = missing_packages(wheels, target)
        logger.info("the target lacks %s", ", ".join(f"{name} {version}" for name, version in missing.items()))
        download_wheels(missing, target, partial / "wheels")
        logger.info("building pure-Python wheels of %s", ", ".join(source_only))
        build_source_only(source_only, partial / "wheels")
        logger.info("packing the token caches of %s", ", ".join(sources))
        caches = [pack_token_cache(source, tokenizer, partial / "cache") for source in sources]
        shutil.copy2(RUN_SCRIPT, partial / RUN_SCRIPT.name)
        kit = {
            "built": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "mode": mode,
            "target": asdict(target),
            "wheels": sorted(path.name for path in (partial / "wheels").glob("*.whl")),
            "caches": caches,
            "kit_bytes": folder_bytes(partial),
            "tracked_bytes": tracked_bytes(),
        }
        total = (kit["kit_bytes"] + kit["tracked_bytes"]) / 2**20
        if total > max_mib:
            raise KitError(
                f"the kit ({kit['kit_bytes'] / 2**20:.1f} MiB) and the tracked files "
                f"({kit['tracked_bytes'] / 2**20:.1f} MiB) come to {total:.1f} MiB, over {max_mib:g}: "
                "give smaller sources, or raise --max_mib if the machine takes more"
            )
        (partial / KIT_FILE).write_text(json.dumps(kit, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(output, ignore_errors=True)
    os.replace(partial, output)
    return kit
