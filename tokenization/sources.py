"""MIDI sources behind one call: `load_source(uri)` -> stream of `{"midi", "composer", "path"}`.

A source is a folder of MIDI files reached through fsspec, so the Hub
(`hf://datasets/<owner>/<name>`) and a local copy with the same layout run the same
code. `datasets.load_dataset` on the classical repo would only yield its
`metadata.csv`, hence the file listing. Layouts, i.e. where the composer comes from:

- `classical`: `data/<composer>-<piece>.mid` (drengskapur/midi-classical-music);
- `lakh`: `<root>/<Artist>/<Title>[.N].mid` (Lakh MIDI Clean), `.N` versions skipped
  unless asked for;
- `folder`: any tree of MIDI files, composer `Unknown`;
- `midicaps`: `midicaps.tar.gz` beside `train.json` (amaai-lab/MidiCaps: Lakh MIDI, LMD-full,
  with per-file metadata). The archive is read in one sequential pass (`read_archive`), each
  member joined by its path with its `train.json` row (`location`), which gives its genre,
  tempo bucket and mode (`conditions.py`); no artist, so the composer is `Unknown`. The rows
  marked `test_set` are the test split, the others train or validation by path hash.

`label:<name>:<location>` gives every file of a source the label `name` (a musician's own
folder for fine-tuning): such a source holds out its validation files by rank (`labelled_splits`)
so that a folder of three files still has one.

The composer is named here once, canonically (`composers.canonical_composer`: aliases and
spellings folded); everything downstream (token caches, blocks, the classifier) takes the
name as it comes. The layout is detected, or forced with a prefix: `lakh:/data/clean_midi`.
"""

from __future__ import annotations

import functools
import hashlib
import io
import itertools
import json
import logging
import re
import tarfile
import zlib
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import fsspec
from datasets import Features, IterableDataset, Value, interleave_datasets

from .blocks import skip_summary
from .composers import UNKNOWN, canonical_composer, composer_from_filename
from .conditions import canonical_value, mode_of, tempo_bucket
from .hub import hub_access, offline, unreachable
from .tokenizer import MusicTokenizer

logger = logging.getLogger(__name__)

CORPUS = Path(__file__).parent / "corpus"
BUNDLED = {
    "bundled": CORPUS / "midi-classical-music",
    "bundled:classical": CORPUS / "midi-classical-music",
    "bundled:lakh": CORPUS / "lakh-clean" / "clean_midi",
}
LAYOUTS = ("classical", "lakh", "folder")
SPLITS = {"train": 0.9, "validation": 0.05, "test": 0.05}
MIDI_SUFFIXES = (".mid", ".midi")
# `conditions`: the piece's other conditions as JSON (kind -> value), "" where the source knows none
FEATURES = Features(
    {"midi": Value("binary"), "composer": Value("string"), "path": Value("string"), "conditions": Value("string")}
)
ARCHIVE, METADATA = "midicaps.tar.gz", "train.json"  # amaai-lab/MidiCaps
ARCHIVE_SPLITS = {"train": 0.95, "validation": 0.05}  # its test split is the metadata's `test_set`
CUT_SHORT = "archive cut short"  # the skip reason of an archive that ends early

HUB_DATASET_INSTEAD = (
    "read it where the Hub can be reached, or give a local copy (a folder laid out as the Hub repo), "
    "its token cache's folder, or `bundled` (the bundled sample)"
)

LABEL_PREFIX = "label:"
LABELLED_HELD_OUT = 0.2  # share of a labelled folder's files held out for validation

_VERSION = re.compile(r"\.\d+$")  # Lakh: "Title.2.mid" is another version of "Title.mid"
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass(frozen=True)
class MidiFile:
    url: str  # what fsspec opens (for an archive member, the archive)
    path: str  # relative to the source root (in an archive, the member's name): the split hash and the logs use it
    composer: str
    size: int  # bytes (0 in an archive): with the path, what tells a token cache that the source changed
    split: str
    conditions: str = ""  # FEATURES' `conditions`

    @property
    def in_archive(self) -> bool:
        return self.url.endswith(ARCHIVE)


def split_label(uri: str) -> tuple[str | None, str]:
    """(`name`, `location`) of `label:<name>:<location>`, else (None, `uri`)."""
    if not uri.startswith(LABEL_PREFIX):
        return None, uri
    name, _, location = uri.removeprefix(LABEL_PREFIX).partition(":")
    if not name.strip() or not location:
        raise ValueError(f"source {uri!r}: write a labelled source as label:<name>:<folder>")
    return name.strip(), location


def resolve(uri: str) -> tuple[str, str | None]:
    """Split `[label:<name>:][layout:]location` and expand the short forms; return (url, forced
    layout)."""
    uri = split_label(uri)[1]
    if uri in BUNDLED:
        return str(BUNDLED[uri]), None
    layout, _, rest = uri.partition(":")
    if layout in LAYOUTS and rest:
        return resolve(rest)[0], layout
    if _REPO_ID.match(uri) and not Path(uri).exists():
        return f"hf://datasets/{uri}", None
    return uri, None


def label_of(row: dict, kind: str) -> str:
    """A row's (or piece's) value of a condition kind: its composer, or from its `conditions`;
    `Unknown` where the source knows none."""
    if kind == "composer":
        return row["composer"]
    return json.loads(row.get("conditions") or "{}").get(kind, UNKNOWN)


def path_hash(path: str) -> float:
    """A number in [0, 1) from a file's path relative to the source root: stable across
    runs, ranks and machines, and the same for a Hub dataset and its local copy."""
    return int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "big") / 2**64


def split_of(path: str, fractions: dict[str, float] = SPLITS) -> str:
    """The split of a file, from `path_hash`."""
    position = path_hash(path)
    total = 0.0
    for name, fraction in fractions.items():
        total += fraction
        if position < total:
            return name
    return name


def labelled_splits(paths: list[str]) -> list[str]:
    """The splits of a labelled folder's files (one musician's pieces, often a handful): the
    `LABELLED_HELD_OUT` share with the lowest path hash, at least one file, is validation, the
    rest train. By rank rather than by the hash's value, so that 3 files still hold one out; a
    single file is all training."""
    held_out = max(1, round(len(paths) * LABELLED_HELD_OUT)) if len(paths) > 1 else 0
    ranked = set(sorted(paths, key=path_hash)[:held_out])
    return ["validation" if path in ranked else "train" for path in paths]


def _detect_layout(fs: fsspec.AbstractFileSystem, root: str, relative: list[str]) -> str:
    if fs.exists(f"{root}/metadata.csv") or any(p.startswith("data/") and "-" in p for p in relative):
        return "classical"
    if relative and all(p.count("/") == 1 for p in relative):
        return "lakh"
    return "folder"


def _composer(layout: str, path: str) -> str:
    if layout == "classical":
        return composer_from_filename(path)
    if layout == "lakh":
        return canonical_composer(path.split("/", 1)[0])
    return UNKNOWN


def list_midi_files(
    uri: str, split: str | None = None, *, include_versions: bool = False, max_files: int | None = None
) -> list[MidiFile]:
    """The MIDI files of a source (see `load_source` for the arguments), sorted by path."""
    check_split(split)
    label = split_label(uri)[0]
    url, layout = resolve(uri)
    on_hub = url.startswith("hf://")
    if on_hub and offline():  # the Hub's file system keeps no cache to read offline
        raise unreachable("dataset", uri, HUB_DATASET_INSTEAD)
    with hub_access("dataset", uri, HUB_DATASET_INSTEAD):
        fs, root = fsspec.core.url_to_fs(url)
        root = root.rstrip("/")
        if not fs.isdir(root):
            where = "no such dataset folder on the Hub" if on_hub else "no such folder here"
            raise FileNotFoundError(
                f"no MIDI source {uri!r}: {where}; give a local folder, hf://datasets/<owner>/<name>, "
                f"a Hub dataset id, or one of {', '.join(BUNDLED)}"
            )
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        prefix = "" if protocol in ("file", "local") else f"{protocol}://"
        if signature := _archive_signature(fs, root):
            return _chosen(list(archive_files(f"{prefix}{root}", signature)), split, max_files)
        if fs.isdir(f"{root}/clean_midi"):  # the Lakh archive's top folder
            root = f"{root}/clean_midi"
        parent = root.rsplit("/", 1)[0]
        if root.endswith("/data") and fs.exists(f"{parent}/metadata.csv"):  # the classical dataset's data/ folder
            root = parent  # paths stay `data/...`: same labels and splits as the dataset's root
        details = fs.find(root, detail=True)
        found = sorted(p for p in details if p.lower().endswith(MIDI_SUFFIXES))
        relative = [p[len(root) + 1 :] for p in found]
        layout = layout or _detect_layout(fs, root, relative)
    if layout == "lakh" and not include_versions and not label:  # a labelled folder is all the musician's
        kept = [i for i, path in enumerate(relative) if not _VERSION.search(Path(path).stem)]
        found, relative = [found[i] for i in kept], [relative[i] for i in kept]
    splits = labelled_splits(relative) if label else [split_of(path) for path in relative]
    files = [
        MidiFile(
            prefix + full,
            rel,
            canonical_composer(label) if label else _composer(layout, rel),
            details[full].get("size", 0),
            split_name,
        )
        for full, rel, split_name in zip(found, relative, splits, strict=True)
    ]
    return _chosen(files, split, max_files)


def check_split(split: str | None) -> None:
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {', '.join(SPLITS)} or None")


def _chosen(files: list[MidiFile], split: str | None, max_files: int | None) -> list[MidiFile]:
    if split is not None:
        files = [f for f in files if f.split == split]
    if max_files is not None:
        chosen = sample_paths([f.path for f in files], max_files)
        files = [f for f in files if f.path in chosen]
    return files


def archive_signature(uri: str) -> str | None:
    """For a MidiCaps source, a digest of its archive's and metadata's sizes and content hashes
    (on the Hub; modification times here) that tells a token cache whether it changed without
    reading the 428 MB `train.json`; None for any other source."""
    url = resolve(uri)[0]
    if url.startswith("hf://") and offline():
        return None  # listing the source says why it cannot be read
    with hub_access("dataset", uri, HUB_DATASET_INSTEAD):
        fs, root = fsspec.core.url_to_fs(url)
        return _archive_signature(fs, root.rstrip("/"))


def _archive_signature(fs: fsspec.AbstractFileSystem, root: str) -> str | None:
    if not (fs.isfile(f"{root}/{ARCHIVE}") and fs.isfile(f"{root}/{METADATA}")):
        return None
    infos = [fs.info(f"{root}/{name}") for name in (ARCHIVE, METADATA)]
    # the Hub gives an LFS file's sha256 and every file's git blob id; a local file its modification time
    keys = [
        (info["size"], (info.get("lfs") or {}).get("sha256") or info.get("blob_id") or info.get("mtime"))
        for info in infos
    ]
    return hashlib.sha256(json.dumps(keys, default=str).encode()).hexdigest()[:16]


def metadata_conditions(row: dict) -> dict[str, str]:
    """The conditions of a MidiCaps metadata row: its most probable genre, tempo bucket and mode."""
    genres, probabilities = row.get("genre") or [], row.get("genre_prob") or []
    genre = max(zip(probabilities, genres, strict=False), default=(0, None))[1] if probabilities else None
    return {
        "genre": canonical_value("genre", genre or (genres[0] if genres else None)),
        "tempo": tempo_bucket(row.get("tempo")),
        "mode": mode_of(row.get("key")),
    }


@functools.lru_cache(maxsize=2)
def archive_files(root: str, signature: str) -> tuple[MidiFile, ...]:
    """The files `train.json` lists for `midicaps.tar.gz` in `root` (a URL), sorted by path; a
    line that is not a JSON object with a `location` is skipped with a log line. Read once per
    process and `signature` (`_archive_signature`): on the Hub the file is 428 MB, and a training
    run lists its sources several times. Sizes are 0: the signature tells a token cache that
    the archive changed (`archive_signature`)."""
    archive = f"{root}/{ARCHIVE}"
    files = []
    with fsspec.open(f"{root}/{METADATA}", "rb") as raw:
        for number, line in enumerate(io.TextIOWrapper(raw, encoding="utf-8"), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                path = str(row["location"]).removeprefix("./")
            except (ValueError, KeyError, TypeError) as error:
                logger.warning("skipped line %d of %s: not a metadata row (%s)", number, METADATA, error)
                continue
            split = "test" if row.get("test_set") else split_of(path, ARCHIVE_SPLITS)
            conditions = json.dumps(metadata_conditions(row))
            files.append(MidiFile(archive, path, UNKNOWN, 0, split, conditions))
    return tuple(sorted(files, key=lambda f: f.path))


def read_archive(
    url: str, files: Iterable[MidiFile], listed: Collection[str], skipped: Counter
) -> Iterator[tuple[MidiFile, bytes]]:
    """(file, MIDI bytes) of each of `files` found in the archive `url`, in archive order, in one
    sequential pass whose memory does not grow with the archive.

    Counted in `skipped` and logged once each, never raised: a member that is not MIDI, a MIDI
    member without a metadata row (`listed`: all the rows' paths), a listed file the archive
    lacks, and an archive that ends early (the files after the cut count as lacking).
    """
    wanted = {f.path: f for f in files}
    found: set[str] = set()
    try:
        with fsspec.open(url, "rb") as raw, tarfile.open(fileobj=raw, mode="r|gz") as archive:
            while (member := archive.next()) is not None:
                archive.members.clear()  # a stream still keeps every header read: memory that grows
                path = member.name.removeprefix("./")
                if not member.isfile():
                    continue
                if not path.lower().endswith(MIDI_SUFFIXES):
                    skipped["not MIDI"] += 1
                    logger.warning("skipped %s in %s: not a MIDI file", path, ARCHIVE)
                elif path not in listed:
                    skipped["no metadata"] += 1
                    logger.warning("skipped %s in %s: %s has no row for it", path, ARCHIVE, METADATA)
                elif path in wanted:
                    midi = archive.extractfile(member).read()  # a cut archive fails here, before the file counts
                    found.add(path)
                    yield wanted[path], midi
    except (EOFError, OSError, tarfile.TarError, zlib.error) as error:
        skipped[CUT_SHORT] += 1
        logger.warning("%s ends early (%s: %s): the files after the cut are skipped", url, type(error).__name__, error)
    missing = [path for path in wanted if path not in found]
    if missing:
        skipped["not in the archive"] += len(missing)
    for path in missing:
        logger.warning("skipped %s: %s lists it, %s holds no such file", path, METADATA, ARCHIVE)


def sample_paths(paths: list[str], max_files: int) -> set[str]:
    """A fixed sample of `max_files` paths, by a salted hash of the path (the lowest plain
    hashes would all be training files)."""
    return set(sorted(paths, key=lambda path: path_hash("sample:" + path))[:max_files])


def _read(files: list[MidiFile]):
    for f in files:
        try:
            with fsspec.open(f.url, "rb") as handle:
                midi = handle.read()
        except OSError as error:
            logger.warning("skipped %s: cannot read it (%s)", f.path, error)
            continue
        yield {"midi": midi, "composer": f.composer, "path": f.path, "conditions": f.conditions}


def _read_archive(archives: list[str], files: tuple[MidiFile, ...], listed: frozenset[str]):
    for url in archives:  # one: the archive is one shard, read from its start
        skipped = Counter()
        for f, midi in read_archive(url, files, listed, skipped):
            yield {"midi": midi, "composer": f.composer, "path": f.path, "conditions": f.conditions}
        if skipped:
            logger.warning("%s: %s", url, skip_summary(skipped))


def load_source(
    uri: str, split: str | None = None, *, include_versions: bool = False, max_files: int | None = None
) -> IterableDataset:
    """A streaming dataset of `{"midi": bytes, "composer": str, "path": str}`, one row per file.

    `uri`: a local folder, `hf://datasets/<owner>/<name>[/subfolder]`, a Hub dataset id,
    or `bundled` / `bundled:lakh`, optionally prefixed by a layout (`lakh:`,
    `classical:`, `folder:`). `split`: `train`, `validation` or `test` by path hash, or
    None for all files. `max_files`: a fixed sample of that many (by path hash), for
    quick runs. Each file is one shard, so ranks and DataLoader workers read different
    files; a MidiCaps archive is one shard, read once from its start (ranks then take
    every n-th file of it).
    """
    check_split(split)  # before the listing, which may take long
    every = list_midi_files(uri, include_versions=include_versions)
    files = _chosen(every, split, max_files)
    if not files:
        raise ValueError(f"no MIDI files in {uri!r}" + (f" for split {split!r}" if split else ""))
    if files[0].in_archive:
        # tuples and sets: datasets makes one shard per item of a list, and the archive is one
        kwargs = {"archives": [files[0].url], "files": tuple(files), "listed": frozenset(f.path for f in every)}
        return IterableDataset.from_generator(_read_archive, gen_kwargs=kwargs, features=FEATURES)
    return IterableDataset.from_generator(_read, gen_kwargs={"files": files}, features=FEATURES)


def mix_sources(
    uris: list[str],
    split: str | None = None,
    weights: list[float] | None = None,
    *,
    seed: int = 0,
    repeat: bool = True,
) -> IterableDataset:
    """Several MIDI sources as one stream (see `interleave`)."""
    return interleave([load_source(uri, split) for uri in uris], weights, seed=seed, repeat=repeat)


def interleave(
    sources: list[IterableDataset], weights: list[float] | None = None, *, seed: int = 0, repeat: bool = True
) -> IterableDataset:
    """Several streams as one: each next row comes from stream i with probability
    `weights[i]` (normalised; default equal), until every stream has been read once.
    `repeat=True` (training) repeats the smaller streams meanwhile; `repeat=False`
    (evaluation) reads every row exactly once. One stream is returned as it is."""
    if weights and len(weights) != len(sources):
        raise ValueError(f"{len(weights)} source weights for {len(sources)} sources: give one weight per source")
    if weights and (min(weights) < 0 or sum(weights) <= 0):
        raise ValueError(f"source weights must be non-negative and not all zero, got {weights}")
    if len(sources) == 1:
        return sources[0]
    total = sum(weights) if weights else len(sources)
    probabilities = [w / total for w in weights] if weights else None
    strategy = "all_exhausted" if repeat else "all_exhausted_without_replacement"
    return interleave_datasets(sources, probabilities, seed=seed, stopping_strategy=strategy)


def tokenizer_for_sources(
    uris: list[str], bpe_vocab_size: int = 0, bpe_max_files: int = 2000, weights: list[float] | None = None
) -> MusicTokenizer:
    """A new tokenizer with a condition token for every label in `uris` (all splits, so a
    composer seen only in validation still has one; genres, tempo buckets and modes where a
    source knows them), the training files per composer, and, if
    `bpe_vocab_size`, BPE learned on up to `bpe_max_files` training files, sampled from the
    sources by `weights`."""
    files = [f for uri in uris for f in list_midi_files(uri)]
    tokenizer = MusicTokenizer(composers={f.composer for f in files})
    labels = [json.loads(f.conditions) for f in files if f.conditions]
    for kind in dict.fromkeys(kind for conditions in labels for kind in conditions):  # in the sources' order
        values = {conditions.get(kind) for conditions in labels} - {None, UNKNOWN}
        if values:
            tokenizer.add_conditions(kind, values)
    tokenizer.training_pieces = dict(Counter(f.composer for f in files if f.split == "train"))
    train = [json.loads(f.conditions) for f in files if f.conditions and f.split == "train"]
    tokenizer.condition_pieces = {
        kind: dict(Counter(conditions.get(kind, UNKNOWN) for conditions in train))
        for kind in tokenizer.kinds
        if kind != "composer"
    }
    if bpe_vocab_size:
        rows = itertools.islice(mix_sources(uris, split="train", weights=weights), bpe_max_files)
        tokenizer.train_bpe(bpe_vocab_size, (row["midi"] for row in rows))
    return tokenizer
