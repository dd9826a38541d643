"""What every stage does around training: build the Trainer, save artifacts, describe the run.

Each saved model folder holds a Hugging Face model and tokenizer plus ``checkpoint_info.json``
(resolved config, metrics, parameter count, size on disk, wall time, timestamp, git commit,
split hash), written atomically so a crash never leaves a half-written artifact.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import shutil
import subprocess
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from fincompress.hardware import machine_record, resolve_precision
from fincompress.models.sources import count_parameters, folder_size_bytes


def build_trainer(cfg: DictConfig, prefix: str = "") -> L.Trainer:
    """The configured Trainer (``precision: auto`` resolved for this machine); ``prefix`` keeps
    each stage's metrics apart in a shared logger."""
    choose_precision(cfg)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    loggers = [instantiate(c, prefix=prefix) for c in (cfg.get("logger") or {}).values()]
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def choose_precision(cfg: DictConfig) -> dict:
    """Resolve ``trainer.precision: auto`` for this machine, in place, once per job; say what
    was chosen and why. Returns the machine record (CPU, ISA flags, precision, reason) that
    ``checkpoint_info.json`` and ``results.json`` carry; it is also kept as ``cfg.machine``."""
    if cfg.get("machine"):
        return OmegaConf.to_container(cfg.machine)
    precision, reason = resolve_precision(cfg.trainer.precision)
    record = machine_record(precision, reason)
    with open_dict(cfg):
        cfg.trainer.precision = precision
        cfg.machine = record
    print(f"precision: {precision} ({reason})", flush=True)
    return record


def stage_config(cfg: DictConfig, output_dir: str | Path, **trainer_overrides) -> DictConfig:
    """A copy of ``cfg`` writing to ``output_dir`` (splits, checkpoints, logs) with trainer
    fields replaced, so each stage of a pipeline keeps its own folder."""
    stage = copy.deepcopy(cfg)
    stage.paths.output_dir = str(output_dir)
    for key, value in trainer_overrides.items():
        stage.trainer[key] = value
    return stage


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


def write_json(data: dict, path: str | Path) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def save_model_folder(model, tokenizer, folder: str | Path, info: dict,
                      extra_files: dict[str, Path] | None = None) -> dict:
    """Save model + tokenizer + ``checkpoint_info.json`` (+ ``extra_files``, name -> source
    path) to ``folder``, replacing it whole.

    Returns the info as written (with parameter count and size on disk added).
    """
    folder = Path(folder)
    staging = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    for name, source in (extra_files or {}).items():
        shutil.copyfile(source, staging / name)
    info = {
        **info,
        "parameters": count_parameters(model),
        "size_on_disk_bytes": folder_size_bytes(staging),
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
    }
    write_json(info, staging / "checkpoint_info.json")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(staging, folder)
    return info


def load_best_weights(trainer: L.Trainer, module: L.LightningModule) -> None:
    """Put the best checkpoint's weights (by the monitored metric) back into ``module``, then
    delete the checkpoint folder: a stage keeps its saved model, not the epochs (an MPNet
    checkpoint with optimizer state is over 1 GB)."""
    callback = trainer.checkpoint_callback
    if callback is not None and callback.best_model_path:
        state = torch.load(callback.best_model_path, weights_only=False)["state_dict"]
        module.load_state_dict(state)
    if callback is not None and callback.dirpath:
        shutil.rmtree(callback.dirpath, ignore_errors=True)


def best_score(trainer: L.Trainer) -> float | None:
    callback = trainer.checkpoint_callback
    if callback is None or callback.best_model_score is None:
        return None
    return float(callback.best_model_score)
