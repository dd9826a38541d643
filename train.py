"""Hydra entry point: ``python train.py +experiment=NAME [overrides]``.

The configs live inside the package (``fincompress/conf``), so an installed fincompress
composes them wherever it runs.
"""

from __future__ import annotations

import datetime
import importlib
import json
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from fincompress.config_checks import check_config, trusted_targets
from fincompress.errors import InputError
from fincompress.files import write_json
from fincompress.hardware import keep_freed_memory

# each task's function, imported once the config is checked: the stages import Lightning,
# transformers and the INT8 engines (about 15 s on a 2-core CPU), which a bad value need not wait for
TASKS = {"teacher": "teacher:train_teacher", "distill": "distill:run_distill",
         "prune": "prune:run_prune", "ptq": "quantize:run_ptq", "qat": "qat:run_qat",
         "static": "static:run_static", "compress": "compress:run_compress",
         "benchmark": "benchmark:run_benchmark", "label": "label:run_label"}


def task_function(task: str):
    module, name = TASKS[task].split(":")
    return getattr(importlib.import_module(f"fincompress.stages.{module}"), name)


@hydra.main(version_base="1.3", config_path="pkg://fincompress.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        if cfg.task not in TASKS:
            raise InputError(f"task={cfg.task!r} is unknown; known: {', '.join(sorted(TASKS))}")
        check_config(cfg)
        finished = Path(cfg.paths.run_dir) / "results.json"
        if cfg.get("reuse_finished_run") and finished.is_file():
            print(f"reusing {finished}, from an earlier run into this folder")
            return json.loads(finished.read_text())["student"].get("f1_macro")
        from fincompress import distributed

        distributed.join(cfg)  # DDP ranks started by srun or torchrun: every rank runs the job
        with trusted_targets():
            info = task_function(cfg.task)(cfg)
        distributed.leave()
        # a rerun into the folder of a failed run: it no longer failed
        (Path(cfg.paths.run_dir) / "FAILED.json").unlink(missing_ok=True)
    except InputError as error:
        mark_failed(cfg, error)
        print(f"error: {error}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # Hydra records it, runs the sweep's other jobs, and fails at the end
        sys.exit(getattr(error, "exit_code", 2))
    except (Exception, KeyboardInterrupt) as error:
        mark_failed(cfg, error)
        raise
    finally:
        import wandb

        if wandb.run is not None:
            wandb.finish()  # one W&B run per job, also in multirun sweeps
    return info["metrics"].get("test/f1_macro")  # the value Hydra sweepers optimise


def mark_failed(cfg: DictConfig, error: BaseException) -> None:
    """``FAILED.json`` in the run folder: the run did not finish, and why (a complete run
    folder has its ``results.json`` or model instead)."""
    folder = Path(cfg.paths.run_dir)
    if folder.is_dir():
        write_json({"failed": True, "error": f"{type(error).__name__}: {error}",
                    "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                    "traceback": traceback.format_exception(error)[-6:]},
                   folder / "FAILED.json")


if __name__ == "__main__":
    keep_freed_memory()  # varying batch shapes otherwise fault freed memory in again, each step
    main()
