"""The rule every command follows (imported by the scripts beside it).

A command that cannot do what it was asked says so in one line on stderr,
`<command>: error: <what, where it was looked for, the way out>`, and exits with status 2: a bad
flag, a missing folder or file, a Hub that cannot be reached or a repo that does not exist (the
library's `FileNotFoundError`, `ConnectionError` and `ValueError`, see `tokenization.hub`). No
traceback, unless `--debug` asks for it. A flag has one spelling across commands; an old one
still works for a release, with a line that names the new one.
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from collections.abc import Iterator
from typing import NoReturn

from transformers import HfArgumentParser

# old spelling -> the one every command uses
RENAMED_FLAGS = {"--source": "--sources", "--out": "--output_dir", "--output": "--output_dir"}
FAILURES = (ValueError, OSError)  # OSError: FileNotFoundError, ConnectionError, PermissionError, ...


class CommandParser(HfArgumentParser):
    """`HfArgumentParser` with the rule above: `--debug`, one-line errors, renamed flags."""

    def __init__(self, dataclass_types, **kwargs) -> None:
        super().__init__(dataclass_types, **kwargs)
        self.add_argument("--debug", action="store_true", help="On an error, show its traceback too.")
        self.debug = False

    def parse(self, argv: list[str] | None = None, remaining: bool = False) -> tuple:
        """The dataclasses from `argv` (default: the command line), old flag spellings renamed;
        with `remaining`, the strings no field took come last."""
        argv = renamed(self.prog, sys.argv[1:] if argv is None else list(argv))
        *parsed, rest = self.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
        if parsed and not hasattr(type(parsed[-1]), "__dataclass_fields__"):  # what no dataclass took: --debug
            self.debug = parsed.pop().debug
        if rest and not remaining:
            self.error(f"unknown argument(s) {' '.join(rest)}: --help lists the valid ones")
        return (*parsed, rest) if remaining else tuple(parsed)

    def error(self, message: str) -> NoReturn:
        """One line, no usage block: argparse's own errors too."""
        self.exit(2, f"{self.prog}: error: {message.splitlines()[0] if message else 'failed'}\n")

    @contextlib.contextmanager
    def failures(self) -> Iterator[None]:
        """Run the command's work; a failure the user can mend ends it in one line."""
        try:
            yield
        except FAILURES as error:
            if self.debug:
                traceback.print_exc()
            self.error(str(error) or type(error).__name__)


def renamed(prog: str, argv: list[str]) -> list[str]:
    """`argv` with old flag spellings replaced, each said once on stderr."""
    out = []
    for arg in argv:
        flag, equals, value = arg.partition("=")
        if flag in RENAMED_FLAGS:
            new = RENAMED_FLAGS[flag]
            print(f"{prog}: {flag} is now {new} (the old spelling goes in the next release)", file=sys.stderr)
            arg = f"{new}{equals}{value}"
        out.append(arg)
    return out
