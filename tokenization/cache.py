"""The token cache: a source's pieces tokenized once, as memory-mapped Arrow.

Tokenizing the classical dataset takes minutes on a CPU, and training epochs, DataLoader
workers, evaluations, the classifier, the n-gram and the benchmark would each do it again.
`TokenCache.for_source(uri, tokenizer)` tokenizes a source once, with a `datasets` map over
its files (`num_proc` processes), and saves one row per usable piece, `{"ids", "composer",
"path", "notes", "conditions", "split"}`, with `save_to_disk`; later calls memory-map it. Ids
are stored as uint16 when the vocabulary allows (32M tokens: 64 MB). A MidiCaps archive is
unpacked beside the cache in one pass first, and the unpacked files removed after.

A cache lives in `<cache_dir>/<source>-<digest of its location>/<tokenizer fingerprint>/`,
so another tokenizer never reads stale ids, and it records the source's listing (paths,
sizes, labels): when that changes, the cache is built again. The folder also holds the
tokenizer and `token_cache.json` (what was built from what, skipped files, twins, and the size
of every file it wrote), so it can stand in for its source, e.g. on a machine without the MIDI
files: pass the folder where a source is expected. It is then refused for any other tokenizer.

A cache is built in a temporary folder, `token_cache.json` written last, and moved in place
whole: a build killed at any point leaves nothing that is read as complete. A cache whose
files no longer have the sizes it recorded (a copy cut short, a full disk) is reported in one
line with its path, and built again where its source is at hand (`rebuild=True` forces that).

Splits come from the path hash, as for MIDI read on the fly, except that twins (the same
music in several files, see `duplicates.py`) are kept in one split: the cache is where every
file of the source has been parsed, so it is where they can be found.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import fsspec
import numpy as np
from datasets import Dataset, Features, IterableDataset, List, Value, load_from_disk
from filelock import FileLock
from huggingface_hub.constants import HF_HOME

from . import duplicates
from .blocks import encode_midi, skip_summary
from .sources import (
    CUT_SHORT,
    SPLITS,
    MidiFile,
    archive_signature,
    check_split,
    interleave,
    label_of,
    list_midi_files,
    load_source,
    read_archive,
    resolve,
    sample_paths,
    split_label,
    tokenizer_for_sources,
)
from .tokenizer import MusicTokenizer

logger = logging.getLogger(__name__)

INFO_FILE = "token_cache.json"
FORMAT = 2  # bump when what a cache stores changes: older caches are then built again (2: file sizes)
COLUMNS = ("ids", "composer", "path", "notes", "conditions")


def default_cache_dir() -> Path:
    """`$MIDI_LM_CACHE`, else `midi-lm/token-cache` under the Hugging Face home."""
    return Path(os.environ.get("MIDI_LM_CACHE", Path(HF_HOME) / "midi-lm" / "token-cache"))


def is_token_cache(uri: str) -> bool:
    return (Path(uri) / INFO_FILE).is_file()


class DamagedTokenCache(OSError):
    """A token cache whose files are not what its build wrote."""


def file_sizes(folder: Path) -> dict[str, int]:
    """What a cache folder holds besides its `token_cache.json`: file name -> bytes."""
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file() and p.name != INFO_FILE}


def read_info(folder: Path) -> dict:
    """A cache's `token_cache.json`, its files checked against the sizes it recorded (a cache
    made before sizes were recorded is taken as it is)."""
    try:
        info = json.loads((folder / INFO_FILE).read_text())
    except (OSError, ValueError) as error:
        raise DamagedTokenCache(f"the token cache {folder} is damaged: {INFO_FILE} cannot be read ({error})") from None
    found = file_sizes(folder)
    for name, size in info.get("files", {}).items():
        if found.get(name) != size:
            now = f"{found[name]:,} bytes" if name in found else "missing"
            raise DamagedTokenCache(
                f"the token cache {folder} is damaged: {name} is {now}, its build wrote {size:,} bytes; build it "
                f"again from {info.get('source', 'its source')} (or copy the folder again)"
            )
    return info


def listing_digest(files: list[MidiFile]) -> str:
    """A digest of a source's files (path, size, label): it changes when the source does. (A
    MidiCaps archive, whose files carry conditions, has its `archive_signature` instead.)"""
    listing = [(f.path, f.size, f.composer) for f in files]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]


def source_listing(uri: str, files: list[MidiFile] | None = None) -> str:
    """What tells a cache that its source changed: a MidiCaps archive's signature, else the digest
    of the listing (`files`, when the caller has listed them)."""
    return archive_signature(uri) or listing_digest(files if files is not None else list_midi_files(uri))


def extract(files: list[MidiFile], folder: Path, skipped: Counter) -> list[MidiFile]:
    """The archive members among `files`, written to `folder` in one pass through the archive, as
    files there (named by a digest of their path: a member's name never chooses where it goes);
    what the archive lacks or cannot give is counted in `skipped`."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    listed, extracted = {f.path for f in files}, []
    for f, midi in read_archive(files[0].url, files, listed, skipped):
        target = folder / f"{hashlib.sha256(f.path.encode()).hexdigest()[:24]}.mid"
        target.write_bytes(midi)
        extracted.append(dataclasses.replace(f, url=str(target)))
    return extracted


def source_key(uri: str) -> str:
    """A folder name for a source: its last path part and a digest of its full location."""
    url, layout = resolve(uri)
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in url.rstrip("/").rsplit("/", 1)[-1])
    label = split_label(uri)[0]
    where = f"{layout}:{url}" + (f":label={label}" if label else "")
    return f"{name}-{hashlib.sha256(where.encode()).hexdigest()[:8]}"


class TokenCache:
    """The pieces of one source under one tokenizer (see the module docstring)."""

    def __init__(self, folder: str | Path, tokenizer: MusicTokenizer | None = None) -> None:
        self.folder = Path(folder)
        self.info = read_info(self.folder)
        if tokenizer is not None and (fingerprint := tokenizer.fingerprint()) != self.info["tokenizer"]:
            raise ValueError(
                f"the token cache {self.folder} was built with another tokenizer (fingerprint "
                f"{self.info['tokenizer']}, this one has {fingerprint}): use the tokenizer saved "
                "in that folder, or give the MIDI source to tokenize it with yours"
            )
        self.dataset = with_conditions(load_from_disk(str(self.folder)))
        self.splits: list[str] = self.dataset["split"]

    @classmethod
    def for_source(
        cls,
        uri: str,
        tokenizer: MusicTokenizer,
        cache_dir: str | Path | None = None,
        num_proc: int | None = None,
        rebuild: bool = False,
    ) -> TokenCache:
        """The cache of `uri` for `tokenizer`, built first if it is missing, damaged or the source
        changed (or `rebuild`).

        `uri` may also be a cache folder itself (then it must match `tokenizer`, and a damaged one
        is an error: there is no source to build it from). A file lock beside the folder lets one
        job build while others (seeds started together, an evaluation beside a training) wait and
        then read what it built.
        """
        if is_token_cache(uri):
            return cls(uri, tokenizer)
        folder = Path(cache_dir or default_cache_dir()) / source_key(uri) / tokenizer.fingerprint()
        folder.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(folder.with_name(folder.name + ".lock")):
            if not rebuild and (cache := cls.current(folder, uri)):
                return cache
            return cls.build(uri, tokenizer, folder, num_proc)

    @classmethod
    def current(cls, folder: Path, uri: str) -> TokenCache | None:
        """The cache in `folder` if it is whole and up to date with `uri`, else None (said why)."""
        if not (folder / INFO_FILE).is_file():
            return None
        try:
            cache = cls(folder)
        except DamagedTokenCache as error:
            logger.warning("%s: building it again from %s", error, uri)
            return None
        if cache.info["skipped"].get(CUT_SHORT):  # on the Hub, a dropped connection: read it again
            logger.warning("%s was built from an archive that ended early: building it again from %s", folder, uri)
            return None
        if cache.info["format"] == FORMAT and cache.info["listing"] == source_listing(uri):
            return cache
        logger.info("%s changed since its token cache was built: building it again", uri)
        return None

    @classmethod
    def build(cls, uri: str, tokenizer: MusicTokenizer, folder: Path, num_proc: int | None = None) -> TokenCache:
        """Tokenize every file of `uri`, find the twins, assign splits and save to `folder`."""
        files = list_midi_files(uri)
        if not files:
            raise ValueError(f"no MIDI files in {uri!r}")
        listing = source_listing(uri, files)
        num_proc = num_proc or max(1, min(os.cpu_count() or 1, len(files) // 64))
        members = folder.with_name(folder.name + ".members")
        archived = Counter()
        if files[0].in_archive:  # the map reads files by URL: unpack the archive first, in one pass
            files = extract(files, members, archived)
        table = Dataset.from_dict(
            {
                "url": [f.url for f in files],
                "path": [f.path for f in files],
                "composer": [f.composer for f in files],
                "conditions": [f.conditions for f in files],
            }
        )
        ids_type = "uint16" if len(tokenizer) <= 2**16 else "int32"
        encoded = table.map(
            _encode_batch,
            batched=True,
            batch_size=16,
            num_proc=num_proc if num_proc > 1 else None,
            fn_kwargs={"tokenizer": tokenizer},
            remove_columns=["url"],
            features=Features(
                {
                    "path": Value("string"),
                    "composer": Value("string"),
                    "conditions": Value("string"),
                    "ids": List(Value(ids_type)),
                    "notes": Value("int64"),
                    "fingerprint": List(Value("uint32")),
                    "digest": Value("string"),
                    "skipped": Value("string"),
                }
            ),
            new_fingerprint=hashlib.sha256(f"{folder}-{listing}".encode()).hexdigest()[:32],
            desc=f"tokenizing {uri}",
        )
        skipped = Counter(reason for reason in encoded["skipped"] if reason) + archived
        shutil.rmtree(members, ignore_errors=True)
        usable = encoded.filter(lambda reason: not reason, input_columns="skipped")
        if not len(usable):
            raise ValueError(f"no usable MIDI in {uri!r} ({skip_summary(skipped)})")
        paths = usable["path"]
        listed = {f.path: f.split for f in files}
        hashed = [listed[path] for path in paths]
        splits, twins = twin_splits(paths, hashed, usable.with_format("numpy")["fingerprint"], usable["digest"])
        pieces = usable.remove_columns(["fingerprint", "digest", "skipped"]).add_column("split", splits)
        partial = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(partial, ignore_errors=True)
        pieces.save_to_disk(str(partial))
        tokenizer.save_pretrained(partial)
        info = {
            "format": FORMAT,
            "source": uri,
            "tokenizer": tokenizer.fingerprint(),
            "listing": listing,
            "files": len(files),
            "pieces": len(pieces),
            "tokens": int(sum(len(ids) for ids in pieces.with_format("numpy")["ids"])),
            "skipped": dict(skipped),
            "splits": dict(Counter(splits)),
            "twins": twins,
        }
        info["files"] = file_sizes(partial)
        (partial / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")  # last: the build is whole
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(partial, folder)
        logger.info(
            "token cache of %s: %d pieces, %d tokens, %s; %d held-out pieces had a twin in train; in %s",
            uri,
            info["pieces"],
            info["tokens"],
            skip_summary(skipped),
            sum(twins["held_out_with_twin_in_train"].values()),
            folder,
        )
        return cls(folder)

    def indices(self, split: str | None = None, max_files: int | None = None) -> list[int]:
        """Rows of `split` (all for None), or a fixed sample of `max_files` of them, in path order."""
        check_split(split)
        rows = [i for i, name in enumerate(self.splits) if split is None or name == split]
        if max_files is not None:
            paths = self.dataset.select(rows)["path"]
            chosen = sample_paths(paths, max_files)
            rows = [i for i, path in zip(rows, paths, strict=True) if path in chosen]
        return rows

    def pieces(self, split: str | None = None, max_files: int | None = None) -> IterableDataset:
        """A stream of `{"ids", "composer", "path", "notes"}`, one shard per piece (as MIDI
        sources have one per file), so ranks and workers read different pieces."""
        rows = self.indices(split, max_files)
        if not rows:
            raise ValueError(f"no pieces in the {split} split of {self.info['source']}")
        features = Features({name: self.dataset.features[name] for name in COLUMNS})
        where = {"folder": str(self.folder), "listing": self.info["listing"]}
        return IterableDataset.from_generator(_read_rows, gen_kwargs={"rows": rows, **where}, features=features)

    def condition_counts(self, split: str | None = None, kinds: Iterable[str] = ("composer",)) -> dict[str, Counter]:
        """Pieces per composer (and per value of each other condition in `kinds`) in `split`, in
        one read of the labels."""
        composers, conditions = self.dataset["composer"], self.dataset["conditions"]
        rows = [{"composer": composers[i], "conditions": conditions[i]} for i in self.indices(split)]
        return {kind: Counter(label_of(row, kind) for row in rows) for kind in kinds}


@functools.lru_cache(maxsize=8)
def _opened(folder: str, listing: str) -> Dataset:
    """The cache's rows, memory-mapped once per process (DataLoader workers each open their own);
    `listing` tells a cache built again in the same folder from the one it replaced."""
    return with_conditions(load_from_disk(folder)).select_columns(list(COLUMNS))


def with_conditions(dataset: Dataset) -> Dataset:
    """A cache's rows with their `conditions` column: empty for a cache built before the column
    (its sources knew no condition but the composer)."""
    if "conditions" in dataset.column_names:
        return dataset
    return dataset.add_column("conditions", [""] * len(dataset))


def _read_rows(rows: list[int], folder: str, listing: str):
    dataset = _opened(folder, listing)
    for i in rows:
        yield dataset[i]


def _encode_batch(batch: dict[str, list], tokenizer: MusicTokenizer) -> dict[str, list]:
    """The map function: read, tokenize and fingerprint each file; an unusable one gets its reason."""
    columns = ("path", "composer", "conditions", "ids", "notes", "fingerprint", "digest", "skipped")
    out = {name: [] for name in columns}
    for url, path, composer, conditions in zip(
        batch["url"], batch["path"], batch["composer"], batch["conditions"], strict=True
    ):
        skipped: Counter = Counter()
        try:
            with fsspec.open(url, "rb") as handle:
                midi = handle.read()
        except OSError as error:
            logger.warning("skipped %s: cannot read it (%s)", path, error)
            skipped["unreadable"] += 1
            midi = None
        row = {"midi": midi, "composer": composer, "path": path, "conditions": conditions}
        encoded = encode_midi(tokenizer, row, skipped) if midi is not None else None
        score, ids = encoded if encoded is not None else (None, [])
        out["path"].append(path)
        out["composer"].append(composer)
        out["conditions"].append(conditions)
        out["ids"].append(ids)
        out["notes"].append(score.note_num() if score is not None else 0)
        out["fingerprint"].append(duplicates.fingerprint(score) if score is not None else np.zeros(0, np.uint32))
        out["digest"].append(duplicates.note_digest(score) if score is not None else "")
        out["skipped"].append(next(iter(skipped), ""))
    return out


def twin_splits(
    paths: list[str], hashed: list[str], fingerprints: list[np.ndarray], digests: list[str]
) -> tuple[list[str], dict]:
    """The split of every piece (`hashed`: its source's, by path) with twins kept together, and a
    report of the twins found."""
    pairs = duplicates.twin_pairs(fingerprints)
    groups = duplicates.twin_groups(len(paths), pairs)
    splits = duplicates.group_splits(paths, hashed, groups)
    members: dict[int, list[str]] = {}
    for path, group in zip(paths, groups, strict=True):
        members.setdefault(group, []).append(path)
    exact = Counter(digests)
    report = {
        "containment_threshold": duplicates.CONTAINMENT,
        "pairs": len(pairs),
        "exact_duplicates": sum(n - 1 for n in exact.values()),
        "pieces_with_a_twin": sum(len(m) for m in members.values() if len(m) > 1),
        "held_out_with_twin_in_train": {
            split: sum(h == split and s == "train" for h, s in zip(hashed, splits, strict=True))
            for split in SPLITS
            if split != "train"
        },
        "moved": {p: f"{h} -> {s}" for p, h, s in zip(paths, hashed, splits, strict=True) if h != s},
        "groups": sorted(sorted(m) for m in members.values() if len(m) > 1),
    }
    return splits, report


def open_pieces(
    uris: list[str],
    split: str | None,
    tokenizer: MusicTokenizer,
    *,
    cached: bool = True,
    cache_dir: str | Path | None = None,
    num_proc: int | None = None,
    max_files: int | None = None,
    weights: list[float] | None = None,
    seed: int = 0,
    repeat: bool = True,
) -> IterableDataset:
    """The rows of `split` of several sources as one stream (`interleave`): pieces from each
    source's token cache, built on first use, or with `cached=False` MIDI rows, tokenized by
    whoever reads them (splits by path hash only: twins are found when a cache is built)."""
    if cached:
        sources = [TokenCache.for_source(uri, tokenizer, cache_dir, num_proc).pieces(split, max_files) for uri in uris]
    else:
        caches = [uri for uri in uris if is_token_cache(uri)]
        if caches:
            raise ValueError(f"{', '.join(caches)} is a token cache: read it with the cache on, not --no_token_cache")
        sources = [load_source(uri, split, max_files=max_files) for uri in uris]
    return interleave(sources, weights, seed=seed, repeat=repeat)


def build_caches(
    uris: list[str],
    tokenizer: MusicTokenizer,
    cache_dir: str | Path | None = None,
    num_proc: int | None = None,
    rebuild: bool = False,
) -> list[TokenCache]:
    """The token caches of `uris`, built now where missing, damaged or stale (all of them with
    `rebuild`: a command's `--rebuild_token_cache`), so that the readers after find them ready."""
    return [TokenCache.for_source(uri, tokenizer, cache_dir, num_proc, rebuild) for uri in uris]


def split_names(uri: str) -> set[str]:
    """The splits that hold files of `uri` (a MIDI source by path hash, a cache as it was built)."""
    if is_token_cache(uri):
        return set(read_info(Path(uri))["splits"])
    return {f.split for f in list_midi_files(uri)}


def condition_counts(
    uris: list[str],
    split: str,
    tokenizer: MusicTokenizer,
    kinds: Iterable[str] = ("composer",),
    *,
    cached: bool = True,
    cache_dir: str | Path | None = None,
    num_proc: int | None = None,
) -> dict[str, Counter]:
    """Pieces (files, without the cache) per composer, and per value of each other condition in
    `kinds`, in `split` of all `uris` together; each source opened once for all kinds."""
    totals = {kind: Counter() for kind in kinds}
    if cached:
        for uri in uris:
            for kind, counts in (
                TokenCache.for_source(uri, tokenizer, cache_dir, num_proc).condition_counts(split, kinds).items()
            ):
                totals[kind] += counts
        return totals
    rows = [{"composer": f.composer, "conditions": f.conditions} for uri in uris for f in list_midi_files(uri, split)]
    return {kind: Counter(label_of(row, kind) for row in rows) for kind in kinds}


def tokenizer_for(
    name: str | None, sources: list[str], bpe_vocab_size: int = 0, bpe_max_files: int = 2000
) -> MusicTokenizer:
    """The tokenizer `name` (a folder or Hub repo id); without one, the tokenizer saved in a
    token-cache source, else a new one built from the sources (`tokenizer_for_sources`)."""
    if name:
        return MusicTokenizer.from_pretrained(name)
    caches = [uri for uri in sources if is_token_cache(uri)]
    if caches:
        return MusicTokenizer.from_pretrained(caches[0])
    return tokenizer_for_sources(sources, bpe_vocab_size, bpe_max_files)
