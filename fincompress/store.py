"""The stage store: every stage's result kept under ``<output_root>/stages/<stage>/<key>``.

A stage's key hashes everything that decides its result (:func:`stage_key`); ``stage.json`` in
the folder lists those inputs, so a reader sees what a stored stage depends on without
opening the code. A later run with the same key reuses the folder. A stage is built in a
staging folder with a unique name and renamed into place only when complete, under a lock
per key: two runs at once (a parallel sweep) build a key once and never delete each other's
work, and a run killed mid-stage (even ``kill -9``, which releases the lock) leaves only a
staging folder that the next builder of that key removes.

Ranks of a DDP job that an external launcher started (several machines: :mod:`fincompress.distributed`)
all call :func:`ensure_stage` in the same order; rank 0 takes the lock and stores the stage,
the other ranks build it too where the build holds a fit that needs every rank
(``collective=True``), into a scratch folder, and wait for rank 0's otherwise.
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

from fincompress import distributed
from fincompress.files import atomic_folder, write_json

log = logging.getLogger(__name__)

RECORD = "stage.json"
# the folder where the stage being built keeps what a rerun resumes from (training checkpoints)
_RESUME: ContextVar[Path | None] = ContextVar("resume_folder", default=None)
# True inside a build that rank 0 of a multi-process DDP job runs alone: stages it needs are
# built there without the other ranks, which wait for the outer stage
_ALONE: ContextVar[bool] = ContextVar("building_alone", default=False)
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
                 build: Callable[[Path], None], wait: bool = True,
                 collective: bool = False) -> tuple[Path | None, bool]:
    """The stage's folder for ``inputs``: stored earlier, or made now by ``build(staging)``,
    which writes the stage's files into the (empty, existing) ``staging`` folder.

    ``wait=False``: while another process builds it, return ``(None, False)`` at once instead
    of waiting for it (workers that share a list of stages take the next free one).

    ``collective=True``: the build fits a model, which every rank of a DDP job that an
    external launcher started must join; the ranks above 0 run it into a scratch folder.

    Returns:
        ``(folder, reused)``.
    """
    key = stage_key(inputs)
    folder = Path(root) / "stages" / stage / key
    resume = Path(root) / "stages" / ".resume" / f"{stage}-{key}"
    together = distributed.ranks() > 1 and not _ALONE.get()
    if together and distributed.rank() > 0:
        building = distributed.broadcast(None)
        if building and collective:
            _build_on_worker(folder, resume, build)
        distributed.barrier()  # rank 0 has stored it
        return folder, not building
    if _ALONE.get() and collective:
        raise RuntimeError(f"stage {stage} fits a model, which needs every DDP rank, inside a "
                           "stage that rank 0 builds alone")
    if (folder / RECORD).is_file():
        if together:
            distributed.broadcast(False)
            distributed.barrier()
        return folder, True
    locks = Path(root) / "stages" / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    # the other ranks follow rank 0, which must not skip a stage another job is building
    lock = FileLock(locks / f"{stage}-{key}.lock", timeout=-1 if wait or together else 0)
    try:
        lock.acquire()
    except Timeout:
        return None, False
    try:
        if (folder / RECORD).is_file():  # another run built it while this one waited
            if together:
                distributed.broadcast(False)
                distributed.barrier()
            return folder, True
        if together:
            distributed.broadcast(True)
        for stale in folder.parent.glob(f".{key}.*.partial"):  # left by a killed run
            log.info("removing %s, left by an interrupted run", stale)
            shutil.rmtree(stale, ignore_errors=True)
        token = _RESUME.set(resume)
        alone = _ALONE.set(together and not collective)
        try:
            # a folder without a record is not a finished stage: atomic_folder replaces it
            with atomic_folder(folder) as staging:
                build(staging)
                write_json({"stage": stage, "key": key, "built": datetime.datetime.now(
                    datetime.UTC).isoformat(timespec="seconds"),
                    "inputs": {name: _plain(value) for name, value in inputs.items()}},
                    staging / RECORD)
        finally:
            _ALONE.reset(alone)
            _RESUME.reset(token)
        shutil.rmtree(resume, ignore_errors=True)
    finally:
        lock.release()
    if together:
        distributed.barrier()
    return folder, False


def _build_on_worker(folder: Path, resume: Path, build: Callable[[Path], None]) -> None:
    """A rank above 0 runs ``build`` beside rank 0 (its fits need every rank) into a scratch
    folder, which it then deletes: rank 0 stores the stage. Fits share rank 0's resume folder,
    where only rank 0 writes checkpoints."""
    scratch = folder.parent / f".{folder.name}.rank{distributed.rank()}.scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    token = _RESUME.set(resume)
    try:
        build(scratch)
    finally:
        _RESUME.reset(token)
        shutil.rmtree(scratch, ignore_errors=True)
