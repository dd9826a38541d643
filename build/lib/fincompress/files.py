"""Writing files so that a crash never leaves a half-written one.

Every file and folder the project writes goes through :func:`atomic_file` or
:func:`atomic_folder`: the content is written under a hidden ``.NAME.<random>.partial`` name
beside the target and renamed into place only when complete, so a reader sees the old version
or the new one, never a mixture, and a killed writer leaves only a ``.partial`` that is safe to
delete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


def partial_path(target: str | Path) -> Path:
    """A fresh staging name beside ``target``: ``.NAME.<random>.partial``."""
    target = Path(target)
    return target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w", newline: str | None = None) -> Iterator:
    """An open file that replaces ``path`` when the block ends without an error."""
    path = Path(path)
    staging = partial_path(path)
    encoding = None if "b" in mode else "utf-8"
    try:
        with open(staging, mode, newline=newline, encoding=encoding) as handle:
            yield handle
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_file(path) as handle:
        handle.write(text)
    return Path(path)


def write_json(data, path: str | Path) -> Path:
    return write_text(path, json.dumps(data, indent=2, default=str) + "\n")


@contextlib.contextmanager
def atomic_folder(target: str | Path, replace: bool = True) -> Iterator[Path]:
    """An empty staging folder that becomes ``target`` when the block ends without an error.

    With ``replace`` an existing ``target`` is removed first (just before the rename); without,
    an existing ``target`` is an error before anything is written."""
    target = Path(target)
    if target.exists() and not replace:
        raise FileExistsError(f"{target} exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = partial_path(target)
    staging.mkdir()
    try:
        yield staging
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def folder_size_bytes(folder: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
