"""DDP ranks that an external launcher starts: one process per rank, each running the whole
job (SLURM's tasks: ``srun``, or Hydra's submitit launcher with ``tasks_per_node`` > 1 and
``nodes`` > 1; or ``torchrun``). This is how DDP runs on several machines.

On one machine ``trainer=ddp`` needs none of this: Lightning forks the ranks for each fit and
only the job's own process runs the pipeline. Under an external launcher every rank runs the
pipeline, so that every rank joins each fit, and:

- :func:`join` opens the ranks' process group (gloo; gloo and nccl where CUDA is) before the
  first stage, from the launcher's variables as Lightning reads them (``SLURMEnvironment``,
  ``TorchElasticEnvironment``); Lightning's fits then use that group;
- only rank 0 writes the stage store and the job's run folder: a stage's build runs on rank 0,
  and on the other ranks too where it holds a fit (``ensure_stage(..., collective=True)``),
  into a scratch folder; every rank then reads the stored stage rank 0 wrote (the store and
  the outputs must be on a file system every node sees);
- rank 0 decides (is a stage stored, is there a checkpoint to resume) and the other ranks
  follow (:func:`broadcast`), so that all ranks take the same path;
- ranks above 0 write their run folder's files to ``<run folder>/rank<N>/``, and stop once the
  job's fits are done (:func:`leave`); rank 0 then scores and reports alone.

If a rank fails, the others fail at their next collective call (the launcher ends the job:
``srun --kill-on-bad-exit=1``, torchrun by default).
"""

from __future__ import annotations

import datetime
import logging
import os
from pathlib import Path

import torch.distributed as dist
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)

# how long a rank waits at a collective call for the others: rank 0 may label a corpus or wait
# for another job's build of a stage while the other ranks wait
TIMEOUT = datetime.timedelta(hours=24)


def launcher_environment(cfg: DictConfig):
    """The Lightning cluster environment of an external launcher that started this process as
    one rank of ``cfg``'s DDP job; None for one process, or where Lightning forks the ranks."""
    strategy = cfg.trainer.get("strategy")
    target = strategy.get("_target_", "") if isinstance(strategy, DictConfig) else str(strategy)
    if "ddp" not in target.lower():
        return None
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    for environment in (TorchElasticEnvironment, SLURMEnvironment):  # Lightning's order
        if environment.detect():
            found = environment()
            return found if found.world_size() > 1 else None
    return None


def join(cfg: DictConfig) -> int:
    """Under an external launcher: open the process group of the job's ranks and, on ranks
    above 0, point the run folder (and the log file) at ``<run folder>/rank<N>``. Returns this
    process's rank (0 without an external launcher)."""
    environment = launcher_environment(cfg)
    if environment is None:
        return 0
    expected = int(cfg.trainer.get("num_nodes") or 1) * int(cfg.trainer.devices)
    if environment.world_size() != expected:
        from fincompress.errors import InputError

        raise InputError(
            f"the launcher started {environment.world_size()} processes, but trainer.num_nodes="
            f"{cfg.trainer.get('num_nodes') or 1} x trainer.devices={cfg.trainer.devices} makes "
            f"{expected}: start one task per process (srun --ntasks-per-node=<devices>)")
    rank = environment.global_rank()
    if not dist.is_initialized():
        os.environ["MASTER_ADDR"] = environment.main_address
        os.environ["MASTER_PORT"] = str(environment.main_port)
        import torch

        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=environment.world_size(),
                                timeout=TIMEOUT)
    if isinstance(cfg.trainer.strategy, DictConfig):
        with open_dict(cfg):
            # the processes exist: Lightning must not fork more (it forks whatever the
            # environment under any start method but "popen", which leaves them alone)
            cfg.trainer.strategy.start_method = "popen"
    if rank > 0:
        folder = Path(cfg.paths.run_dir) / f"rank{rank}"
        folder.mkdir(parents=True, exist_ok=True)
        with open_dict(cfg):
            cfg.paths.run_dir = str(folder)
            cfg.paths.output_dir = str(folder)
        for handler in logging.getLogger().handlers:  # Hydra's <run folder>/<job>.log
            if isinstance(handler, logging.FileHandler):
                handler.close()
                handler.baseFilename = str(folder / Path(handler.baseFilename).name)
    log.info("DDP rank %d of %d (started by %s)", rank, environment.world_size(),
             type(environment).__name__)
    return rank


def rank() -> int:
    """This process's rank in the job's process group (0 outside one)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def ranks() -> int:
    """How many ranks the job's process group has (1 outside one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def broadcast(value):
    """Rank 0's ``value`` on every rank (``value`` itself outside a process group)."""
    if ranks() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait until every rank of the job's process group gets here (nothing outside one)."""
    if ranks() > 1:
        dist.barrier()


def leave() -> bool:
    """Every rank calls this once the job's fits are done: the process group closes, rank 0
    goes on alone (scoring, saving: transformers writes model weights on rank 0 of a process
    group only) and the other ranks stop. Returns True on those ranks; False without a group."""
    if ranks() == 1:
        return False
    follower = rank() > 0
    dist.barrier()
    dist.destroy_process_group()
    return follower
