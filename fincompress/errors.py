"""The one error type for input a user can fix.

Every entry point (``train.py``, the ``fincompress`` command, the HTTP service) prints an
:class:`InputError` as one ``error: ...`` line naming the bad file, line, field or value and
what to do, without a Python traceback, and exits with status 2 (the service answers 4xx).
The readers' own errors (a malformed PhraseBank line, a news file that is not its format, a
folder that holds no model) are kinds of it. A long script stopped with Ctrl-C says what it
kept and how to resume instead (:func:`stop_on_ctrl_c`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path


class InputError(ValueError):
    """Bad input the user can fix: the message names it and says what to do."""


class NotAModelError(InputError, FileNotFoundError):
    """A folder that holds no model fincompress can open, or a damaged one."""


def read_utf8(path: str | Path) -> str:
    """A text file's content (a UTF-8 byte-order mark is dropped); bytes that are not UTF-8 are
    an :class:`InputError` naming the file, line and byte, never replaced in silence."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise InputError(f"{path} line {line}, byte {column}: not valid UTF-8 "
                         f"(0x{data[error.start]:02x}); save the file as UTF-8") from None


def stop_on_ctrl_c(main: Callable[[], None], message: str) -> None:
    """Run a long script's ``main``; Ctrl-C ends it with ``message`` on stderr (what was kept,
    how to resume) and exit status 130, not a traceback. The child process running then gets
    the same Ctrl-C and stops too."""
    try:
        main()
    except KeyboardInterrupt:
        print(message, file=sys.stderr)
        sys.exit(130)
