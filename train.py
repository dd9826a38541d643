"""Hydra entry point: ``python train.py +experiment=NAME [overrides]``.

The configs live inside the package (``fincompress/conf``), so an installed fincompress
composes them wherever it runs.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from fincompress.stages.benchmark import run_benchmark
from fincompress.stages.compress import run_compress
from fincompress.stages.distill import StudentMismatchError, run_distill
from fincompress.stages.prune import run_prune
from fincompress.stages.qat import run_qat
from fincompress.stages.quantize import run_ptq
from fincompress.stages.static import run_static
from fincompress.stages.teacher import train_teacher

TASKS = {"teacher": train_teacher, "distill": run_distill, "prune": run_prune,
         "ptq": run_ptq, "qat": run_qat, "static": run_static,
         "compress": run_compress, "benchmark": run_benchmark}


@hydra.main(version_base="1.3", config_path="pkg://fincompress.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    if cfg.task not in TASKS:
        raise ValueError(f"unknown task {cfg.task!r}; known: {sorted(TASKS)}")
    try:
        info = TASKS[cfg.task](cfg)
    except StudentMismatchError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(StudentMismatchError.exit_code)
    finally:
        import wandb

        if wandb.run is not None:
            wandb.finish()  # one W&B run per job, also in multirun sweeps
    return info["metrics"].get("test/f1_macro")  # the value Hydra sweepers optimise


if __name__ == "__main__":
    main()
