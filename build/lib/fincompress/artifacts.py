"""The record every artifact folder carries: ``checkpoint_info.json``.

Whatever the project writes (a Hugging Face model, a pruned one, an OpenVINO or ONNX INT8
artifact) is a folder with the model and ``checkpoint_info.json``: what it was made from, by
which steps and settings, its metrics, parameters, size on disk, the CPU it was measured on,
the time and the git commit. :func:`write_checkpoint_info` is the one writer.
"""

from __future__ import annotations

import datetime
import json
import shutil
import subprocess
from pathlib import Path

from fincompress.files import atomic_folder, folder_size_bytes, write_json

INFO = "checkpoint_info.json"


def git_commit() -> str | None:
    """The commit the code ran from, with ``-dirty`` if tracked files were modified."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty else "")


def write_checkpoint_info(folder: str | Path, info: dict, parameters: int | None = None) -> dict:
    """Write ``info`` with the folder's size on disk, the time and the git commit (and the
    parameter count, when given) as ``folder/checkpoint_info.json``; returns what was written."""
    folder = Path(folder)
    info = {
        **info,
        **({"parameters": parameters} if parameters is not None else {}),
        "size_on_disk_bytes": folder_size_bytes(folder),
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
    }
    write_json(info, folder / INFO)
    return info


def read_checkpoint_info(folder: str | Path) -> dict:
    """The folder's record, or ``{}`` when it has none."""
    path = Path(folder) / INFO
    return json.loads(path.read_text()) if path.is_file() else {}


def save_model_folder(model, tokenizer, folder: str | Path, info: dict,
                      extra_files: dict[str, Path] | None = None) -> dict:
    """Save model + tokenizer + ``checkpoint_info.json`` (+ ``extra_files``, name -> source
    path) to ``folder``, replacing it whole. Returns the info as written."""
    from fincompress.models.sources import count_parameters

    with atomic_folder(folder) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        for name, source in (extra_files or {}).items():
            shutil.copyfile(source, staging / name)
        written = write_checkpoint_info(staging, info, count_parameters(model))
    return written
