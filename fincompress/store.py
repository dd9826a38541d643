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
import shutil
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path

from filelock import FileLock, Timeout
from omegaconf import DictConfig, ListConfig, OmegaConf

from fincompress.files import atomic_folder, write_json

log = logging.getLogger(__name__)

RECORD = "stage.json"
# the folder where the stage being built keeps what a rerun resumes from (training checkpoints)
_RESUME: ContextVar[Path | None] = ContextVar("resume_folder", default=None)
# files of a model folder that describe a run, not the model
UNHASHED_FILES = ("checkpoint_info.json", "stage.json", "test_split.csv")


def _plain(value):
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def stage_key(inputs: dict) -> str:
    """A 16-hex-digit fingerprint of the named inputs that decide a stage's result."""
    text = json.dumps({name: _plain(value) for name, value in inputs.items()}, sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def folder_fingerprint(folder: str | Path) -> str:
    """A hash of what decides a model folder's outputs: every file (weights in any format,
    config, tokenizer) except its run records, and of ``tokenizer.json`` only what it does to
    text. The padding and truncation state a tokenizer call leaves in the file are left out:
    the bundled MiniLM saves ``padding: Fixed 128``, the same tokenizer saved after a call
    ``null``, and downstream keys must not depend on which happened first."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*")):
        if not path.is_file() or path.name in UNHASHED_FILES:
            continue
        digest.update(f"{path.relative_to(folder)}\n".encode())
        if path.name == "tokenizer.json":
            digest.update(tokenizer_rules(json.loads(path.read_bytes())).encode())
            continue
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def tokenizer_rules(state: dict) -> str:
    """A tokenizer's ``tokenizer.json`` state as canonical JSON, without the padding and
    truncation that a call leaves in it: what the tokenizer does to text."""
    state = {key: value for key, value in state.items() if key not in ("padding", "truncation")}
    return json.dumps(state, sort_keys=True)


def resume_folder() -> Path | None:
    """Inside a stage's ``build``: a folder that outlives the build when it is killed or
    preempted, the same for every build of that stage and key, and removed once the stage is
    stored (``<root>/stages/.resume/<stage>-<key>``); training keeps its checkpoints there so
    that a rerun resumes. None outside a build."""
    return _RESUME.get()


def stored(root: str | Path, stage: str, inputs: dict) -> Path | None:
    """The finished stage's folder for ``inputs``, or None."""
    folder = Path(root) / "stages" / stage / stage_key(inputs)
    return folder if (folder / RECORD).is_file() else None


def ensure_stage(root: str | Path, stage: str, inputs: dict,
                 build: Callable[[Path], None], wait: bool = True) -> tuple[Path | None, bool]:
    """The stage's folder for ``inputs``: stored earlier, or made now by ``build(staging)``,
    which writes the stage's files into the (empty, existing) ``staging`` folder.

    ``wait=False``: while another process builds it, return ``(None, False)`` at once instead
    of waiting for it (workers that share a list of stages take the next free one).

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
    lock = FileLock(locks / f"{stage}-{key}.lock", timeout=-1 if wait else 0)
    try:
        lock.acquire()
    except Timeout:
        return None, False
    try:
        if (folder / RECORD).is_file():  # another run built it while this one waited
            return folder, True
        for stale in folder.parent.glob(f".{key}.*.partial"):  # left by a killed run
            log.info("removing %s, left by an interrupted run", stale)
            shutil.rmtree(stale, ignore_errors=True)
        resume = Path(root) / "stages" / ".resume" / f"{stage}-{key}"
        token = _RESUME.set(resume)
        try:
            # a folder without a record is not a finished stage: atomic_folder replaces it
            with atomic_folder(folder) as staging:
                build(staging)
                write_json({"stage": stage, "key": key, "built": datetime.datetime.now(
                    datetime.UTC).isoformat(timespec="seconds"),
                    "inputs": {name: _plain(value) for name, value in inputs.items()}},
                    staging / RECORD)
        finally:
            _RESUME.reset(token)
        shutil.rmtree(resume, ignore_errors=True)
    finally:
        lock.release()
    return folder, False
