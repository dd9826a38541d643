"""Hydra entry point: ``python train.py +experiment=NAME [overrides]``.

The configs live inside the package (``fincompress/conf``), so an installed fincompress
composes them wherever it runs.
"""

from __future__ import annotations

import datetime
import json
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from fincompress import distributed
from fincompress.config_checks import check_config
from fincompress.errors import InputError
from fincompress.files import write_json
from fincompress.hardware import keep_freed_memory
from fincompress.stages.benchmark import run_benchmark
from fincompress.stages.compress import run_compress
from fincompress.stages.distill import run_distill
from fincompress.stages.label import run_label
from fincompress.stages.prune import run_prune
from fincompress.stages.qat import run_qat
from fincompress.stages.quantize import run_ptq
from fincompress.stages.static import run_static
from fincompress.stages.teacher import train_teacher

TASKS = {"teacher": train_teacher, "distill": run_distill, "prune": run_prune,
         "ptq": run_ptq, "qat": run_qat, "static": run_static,
         "compress": run_compress, "benchmark": run_benchmark, "label": run_label}


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
        distributed.join(cfg)  # DDP ranks started by srun or torchrun: every rank runs the job
        info = TASKS[cfg.task](cfg)
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
