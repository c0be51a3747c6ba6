"""Hub failures in one line, the same words wherever the Hub is asked for something.

huggingface_hub, fsspec and transformers report an unreachable Hub as dozens of lines ending in
an HTTP client's `ConnectError`, a `LocalEntryNotFoundError` or, for a dataset read with
HF_HUB_OFFLINE set, as a folder that is simply not there. Every call that may reach the Hub runs
inside `hub_access`, which turns those into one exception type per cause:

- the Hub is needed and cannot be reached (HF_HUB_OFFLINE is set, or no network):
  `ConnectionError`, saying what was asked for and what to use instead;
- the repo does not exist (or is private): `FileNotFoundError`.

A missing local path is a `FileNotFoundError` raised by the caller before any Hub call (a path
that looks local never goes to the Hub).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from huggingface_hub import constants
from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError

# the HTTP clients' connection failures, by name: huggingface_hub has used requests, httpx and httpx2
CONNECTION_FAILURES = ("ConnectError", "ConnectTimeout", "ConnectionError", "ReadTimeout", "Timeout")


def offline() -> bool:
    return bool(constants.HF_HUB_OFFLINE)


def looks_local(name: str) -> bool:
    """Whether a name that is no folder here was meant as one (`./x`, `/x`, `~/x`, `outputs/x`, or a
    path under a folder that exists): then it is reported missing, and never asked of the Hub."""
    first = Path(name).parts[0] if name else ""
    return name.startswith((".", "/", "~")) or first in ("outputs", "modeling") or Path(first).is_dir()


def unreachable(thing: str, name: str, instead: str, failure: BaseException | None = None) -> ConnectionError:
    """The error for `thing` `name` (e.g. "dataset", "drengskapur/midi-classical-music") when the
    Hub cannot be reached; `instead` says what to use then, `failure` is the client's error."""
    why = "HF_HUB_OFFLINE is set" if offline() else "no network"
    if failure is not None and not offline():
        why += f": {type(failure).__name__}: {str(failure).splitlines()[0] if str(failure) else ''}"
    return ConnectionError(f"{thing} {name} is not on this machine and the Hub cannot be reached ({why}): {instead}")


def _causes(error: BaseException) -> Iterator[BaseException]:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


@contextlib.contextmanager
def hub_access(thing: str, name: str, instead: str) -> Iterator[None]:
    """Run a Hub call for `thing` `name`; an unreachable Hub or a missing repo becomes one line
    (the clients' tracebacks dropped: the line says what failed)."""
    try:
        yield
    except Exception as error:
        causes = list(_causes(error))
        if any(isinstance(cause, RepositoryNotFoundError) for cause in causes):
            message = f"no {thing} {name} on the Hub (a private or gated one needs `hf auth login`): {instead}"
            raise FileNotFoundError(message) from None
        failure = next((cause for cause in causes if type(cause).__name__ in CONNECTION_FAILURES), None)
        if failure or any(isinstance(cause, (OfflineModeIsEnabled, LocalEntryNotFoundError)) for cause in causes):
            raise unreachable(thing, name, instead, failure) from None
        raise
