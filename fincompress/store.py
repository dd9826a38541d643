"""The stage store: every stage's result kept under ``<output_root>/stages/<stage>/<key>``.

A stage's key hashes everything that decides its result (:func:`stage_key`); ``stage.json`` in
the folder lists those inputs, so a reader sees what a stored stage depends on without
opening the code. A later run with the same key reuses the folder. A stage is built in a
staging folder with a unique name and renamed into place only when complete, under a lock
per key: two runs at once (a parallel sweep) build a key once and never delete each other's
work, and a run killed mid-stage (even ``kill -9``, which releases the lock) leaves only a
staging folder that the next builder of that key removes.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock
from omegaconf import DictConfig, ListConfig, OmegaConf

log = logging.getLogger(__name__)

RECORD = "stage.json"


def _plain(value):
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def stage_key(inputs: dict) -> str:
    """A 16-hex-digit fingerprint of the named inputs that decide a stage's result."""
    text = json.dumps({name: _plain(value) for name, value in inputs.items()}, sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stored_stage(root: str | Path, stage: str, inputs: dict) -> Path | None:
    """The stored folder for these inputs, or None if it was never built."""
    folder = Path(root) / "stages" / stage / stage_key(inputs)
    return folder if (folder / RECORD).is_file() else None


def ensure_stage(root: str | Path, stage: str, inputs: dict,
                 build: Callable[[Path], None]) -> tuple[Path, bool]:
    """The stage's folder for ``inputs``: stored earlier, or made now by ``build(staging)``,
    which writes the stage's files into the (empty, existing) ``staging`` folder.

    Returns:
        ``(folder, reused)``.
    """
    key = stage_key(inputs)
    folder = Path(root) / "stages" / stage / key
    if (folder / RECORD).is_file():
        return folder, True
    locks = Path(root) / "stages" / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(locks / f"{stage}-{key}.lock"):
        if (folder / RECORD).is_file():  # another run built it while this one waited
            return folder, True
        for stale in folder.parent.glob(f".{key}.*.partial"):  # left by a killed run
            log.info("removing %s, left by an interrupted run", stale)
            shutil.rmtree(stale, ignore_errors=True)
        staging = folder.parent / f".{key}.{uuid.uuid4().hex[:8]}.partial"
        staging.mkdir()
        try:
            build(staging)
            record = {"stage": stage, "key": key,
                      "built": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                      "inputs": {name: _plain(value) for name, value in inputs.items()}}
            (staging / RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n")
            if folder.exists():  # a folder without a record: not a finished stage
                shutil.rmtree(folder)
            os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder, False
