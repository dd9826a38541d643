"""What every training stage does around Lightning: build the Trainer, fit a
``ClassifierModule`` and keep its best epoch, and the two fits that several stages share
(fine-tuning on PhraseBank gold labels, and KD fine-tuning against a teacher's logits).

Preemption: a fit inside a stored stage's build keeps its checkpoints in the stage's resume
folder (:func:`fincompress.store.resume_folder`). SIGUSR1 or SIGUSR2 (what SLURM sends ahead
of a time limit: ``--signal=USR1@90`` in an sbatch script, USR2 through Hydra's submitit
launcher) makes :class:`Preemption` save a checkpoint at the end of the current batch, with
the position in the epoch's batches and the random states, ask SLURM to requeue the job, and
stop; SIGTERM (a preemption, or ``scancel``) saves and stops without requeueing. The rerun of
the same command resumes from the checkpoint and ends as the uninterrupted run would. A run
killed outright resumes from the last epoch's checkpoint.

DDP (``trainer=ddp``): Lightning forks the ranks for each fit; the best checkpoint's weights,
score and the epochs run come back to this process (:func:`restore_fit_state`), which alone
writes the stage store, and tests in a single process (:func:`run_test`). Ranks that an
external launcher started (several machines, :mod:`fincompress.distributed`) each run the
fit; rank 0 chooses the checkpoint to resume from and alone deletes checkpoints.
"""

from __future__ import annotations

import contextlib
import copy
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from fincompress import distributed
from fincompress.data.batching import TokenizedDataset, length_grouped_loader
from fincompress.distill.kd import KDLoss
from fincompress.hardware import machine_record, resolve_precision
from fincompress.module import ClassifierModule
from fincompress.store import resume_folder

REQUEUE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


class Preemption(L.Callback):
    """On SIGUSR1, SIGUSR2 or SIGTERM: a checkpoint at the end of the current batch
    (``path``), SLURM asked to requeue the job (not on SIGTERM, which ``scancel`` sends too),
    and the process stopped. The checkpoint carries how many of the
    epoch's batches were trained and the random states, so that a resumed fit skips exactly
    those batches and draws the same dropout masks.

    Lightning's own SLURM handler saves from inside the signal handler, possibly in the middle
    of an optimizer step, and its loaders restart the epoch from the first batch; submitit's
    requeues without a checkpoint. So this one replaces them while the fit runs (Lightning
    restores the handlers afterwards)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.received: int | None = None
        self.position: dict = {}

    def on_fit_start(self, trainer, pl_module) -> None:
        def note(signum, frame):
            self.received = signum

        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only; a fit elsewhere keeps its own
        for signum in (*REQUEUE_SIGNALS, signal.SIGTERM):
            signal.signal(signum, note)

    def on_train_start(self, trainer, pl_module) -> None:
        sampler = getattr(trainer.train_dataloader, "batch_sampler", None)
        if self.position and hasattr(sampler, "skip"):
            sampler.skip = self.position["batches_done"]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.agreed(trainer) is not None:
            self.stop(trainer, {"batches_done": batch_idx + 1})

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.agreed(trainer) is not None:  # it came during the last validation: the fit is done
            self.stop(trainer, {})

    def agreed(self, trainer) -> int | None:
        """The signal received, by any DDP rank: every rank stops at the same batch, whichever
        the signal reached first (SLURM signals each task; a forked rank gets it from the job's
        process, :func:`forward_signals`)."""
        if trainer.world_size == 1:
            return self.received
        signum = torch.tensor(float(self.received or 0))
        agreed = int(trainer.strategy.reduce(signum, reduce_op="max").item())
        if agreed:  # a signal that arrived during the reduction itself stays for the next batch
            self.received = agreed
        return agreed or None

    def stop(self, trainer, position: dict) -> None:
        """Save the checkpoint (``position``: the batches of this epoch already trained), ask
        SLURM to requeue on its warning signals, and end the process."""
        self.position = position
        trainer.save_checkpoint(self.path.with_suffix(".partial"))  # written by rank 0
        if trainer.is_global_zero:
            os.replace(self.path.with_suffix(".partial"), self.path)
        job = None
        if self.received in REQUEUE_SIGNALS and trainer.is_global_zero:
            array = os.environ.get("SLURM_ARRAY_JOB_ID")
            job = (f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array
                   else os.environ.get("SLURM_JOB_ID"))
        if job:
            subprocess.run(["scontrol", "requeue", job], check=False)
        raise SystemExit(f"stopped by signal {signal.Signals(self.received).name}: checkpoint "
                         f"{self.path}; run the same command again to resume"
                         + (f" (SLURM job {job} requeued)" if job else ""))

    def state_dict(self) -> dict:
        return {**self.position, "torch": torch.get_rng_state(), "python": random.getstate()}

    def load_state_dict(self, state: dict) -> None:
        if "batches_done" in state:
            self.position = {"batches_done": state["batches_done"]}
        torch.set_rng_state(state["torch"])
        random.setstate(state["python"])


@contextlib.contextmanager
def forward_signals(active: bool):
    """While a fit runs in processes Lightning forked (``trainer=ddp`` on one machine), pass
    SLURM's signals on to them (their :class:`Preemption` saves and stops them); yields the
    list of signals passed on. Does nothing unless ``active``."""
    forwarded: list[signal.Signals] = []
    if not active or threading.current_thread() is not threading.main_thread():
        yield forwarded
        return

    def forward(signum, frame):
        forwarded.append(signal.Signals(signum))
        for child in multiprocessing.active_children():
            os.kill(child.pid, signum)

    signals = (*REQUEUE_SIGNALS, signal.SIGTERM)
    previous = {signum: signal.signal(signum, forward) for signum in signals}
    try:
        yield forwarded
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


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


def trainer_settings(cfg: DictConfig) -> dict:
    """Trainer fields that decide a stage's result (not where it writes)."""
    return {key: value for key, value in cfg.trainer.items() if key != "default_root_dir"}


def stage_config(cfg: DictConfig, output_dir: str | Path, **trainer_overrides) -> DictConfig:
    """A copy of ``cfg`` writing to ``output_dir`` (splits, checkpoints, logs) with trainer
    fields replaced, so each stage of a pipeline keeps its own folder."""
    stage = copy.deepcopy(cfg)
    stage.paths.output_dir = str(output_dir)
    for key, value in trainer_overrides.items():
        stage.trainer[key] = value
    return stage


def build_trainer(cfg: DictConfig, prefix: str = "", callbacks: list | None = None) -> L.Trainer:
    """The configured Trainer (``precision: auto`` resolved for this machine), with the
    configured callbacks and ``callbacks``; ``prefix`` keeps each stage's metrics apart in a
    shared logger."""
    choose_precision(cfg)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()] + (callbacks or [])
    loggers = [instantiate(c, prefix=prefix) for c in (cfg.get("logger") or {}).values()]
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def fit(cfg: DictConfig, module: ClassifierModule, prefix: str = "", datamodule=None,
        train=None, val=None, ckpt_path: str | None = None) -> L.Trainer:
    """Fit ``module`` with the Trainer ``cfg`` describes, then put the best epoch's weights (by
    validation macro-F1) back into it and delete the checkpoints: a stage keeps its saved model,
    not the epochs (an MPNet checkpoint with optimizer state is over 1 GB). Returns the Trainer
    (its ``checkpoint_callback`` still knows the best score).

    Inside a stored stage's build, the checkpoints go to its resume folder, and a checkpoint
    left there by a preempted or killed run of the same stage is resumed from."""
    extra = []
    resume = resume_folder()
    if resume is not None:
        folder = resume / (prefix or "fit")
        cfg = copy.deepcopy(cfg)
        with open_dict(cfg):
            cfg.trainer.default_root_dir = str(folder)
            if (cfg.get("callbacks") or {}).get("model_checkpoint"):
                cfg.callbacks.model_checkpoint.dirpath = str(folder / "checkpoints")
        extra.append(Preemption(folder / "preempted.ckpt"))
        for saved in (folder / "preempted.ckpt", folder / "checkpoints" / "last.ckpt"):
            if ckpt_path is None and saved.is_file():
                ckpt_path = str(saved)
                print(f"resuming from {saved}, left by an interrupted run", flush=True)
    ckpt_path = distributed.broadcast(ckpt_path)  # ranks of an external launcher: rank 0's
    trainer = build_trainer(cfg, prefix=prefix, callbacks=extra)
    # Lightning forks the ranks: SLURM's signals reach this process, which passes them on
    forks = trainer.world_size > 1 and distributed.ranks() == 1
    with forward_signals(resume is not None and forks) as forwarded:
        try:
            trainer.fit(module, datamodule=datamodule, train_dataloaders=train,
                        val_dataloaders=val, ckpt_path=ckpt_path)
        except Exception as error:
            if not forwarded:
                raise
            raise SystemExit(f"stopped by signal {forwarded[0].name}: the DDP ranks saved "
                             f"{folder / 'preempted.ckpt'}; run the same command again to "
                             "resume") from error
    callback = trainer.checkpoint_callback
    if callback is not None and callback.best_model_path:
        saved = torch.load(callback.best_model_path, weights_only=False)
        module.load_state_dict(saved["state_dict"])
        if callback.best_model_score is None:  # a DDP fit sends back the path only
            restore_fit_state(trainer, saved, Path(callback.best_model_path).with_name("last.ckpt"))
    distributed.barrier()  # every rank has read the best checkpoint before rank 0 deletes it
    if distributed.rank() == 0 and callback is not None and callback.dirpath:
        shutil.rmtree(callback.dirpath, ignore_errors=True)
    if resume is not None and distributed.rank() == 0:
        # done: a later failure of the stage must not resume this fit
        (folder / "preempted.ckpt").unlink(missing_ok=True)
    return trainer


def restore_fit_state(trainer: L.Trainer, best: dict, last: Path) -> None:
    """After a fit in forked DDP processes, what the Trainer of this process lacks (Lightning
    sends back the weights and the best checkpoint's path): the best score, from that
    checkpoint's ModelCheckpoint state, and the epochs run, from the last checkpoint."""
    for state in best.get("callbacks", {}).values():
        if isinstance(state, dict) and state.get("best_model_score") is not None:
            trainer.checkpoint_callback.best_model_score = state["best_model_score"]
    if last.is_file():
        # mapped, not read: only its epoch is needed (with optimizer state it can pass 1 GB)
        epoch = torch.load(last, weights_only=False, map_location="cpu", mmap=True)["epoch"]
        trainer.fit_loop.epoch_progress.current.completed = epoch + 1


def single_process(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg`` whose Trainer runs in this process alone, whatever launched it."""
    single = copy.deepcopy(cfg)
    with open_dict(single):
        single.trainer.devices = 1
        single.trainer.num_nodes = 1
        single.trainer.strategy = "auto"
        # not the launcher's environment, which would ask for all its processes
        single.trainer.plugins = [
            {"_target_": "lightning.fabric.plugins.environments.LightningEnvironment"}]
    return single


def run_test(trainer: L.Trainer, cfg: DictConfig, module: ClassifierModule, datamodule) -> dict:
    """Test ``module`` with the fit's ``trainer`` and return its ``test_results`` (metrics and
    confusion matrix). After a DDP fit, in a single-process Trainer instead: the forked
    processes' results would not come back to this one."""
    if trainer.world_size > 1:
        trainer = build_trainer(single_process(cfg))
    trainer.test(module, datamodule=datamodule, verbose=False)
    return module.test_results


def best_score(trainer: L.Trainer) -> float | None:
    callback = trainer.checkpoint_callback
    if callback is None or callback.best_model_score is None:
        return None
    return float(callback.best_model_score)


def finetune(cfg: DictConfig, model, tokenizer, folder: Path, max_epochs: int | None = None,
             patience: int | None = None, lr: float | None = None) -> float | None:
    """Stage 2: fine-tune ``model`` in place on PhraseBank gold labels with the stage-2 optimizer
    (``distill.stage2``, the same for every student and the fresh baseline; ``lr`` replaces its
    rate) for ``max_epochs`` (default ``distill.stage2.max_epochs``), stopping early once
    validation macro-F1 has not improved for ``patience`` epochs (None: never), and keep the
    best epoch on validation macro-F1; split files, checkpoints and logs go to ``folder``.
    Returns that best validation macro-F1."""
    stage = stage_config(cfg, folder, max_epochs=max_epochs or cfg.distill.stage2.max_epochs)
    if patience is not None:
        with open_dict(stage):
            stage.callbacks = {**(stage.get("callbacks") or {}), "early_stopping": {
                "_target_": "lightning.pytorch.callbacks.EarlyStopping",
                "monitor": "val/f1_macro", "mode": "max", "patience": patience}}
    L.seed_everything(cfg.seed, workers=True)
    phrasebank = instantiate(stage.data, tokenizer=tokenizer)
    phrasebank.setup()
    module = ClassifierModule(model, labels=list(cfg.data.labels),
                              optimizer=instantiate(cfg.distill.stage2.optimizer,
                                                    **({"lr": lr} if lr is not None else {})),
                              scheduler=instantiate(cfg.distill.stage2.scheduler))
    return best_score(fit(stage, module, prefix="stage2", datamodule=phrasebank))


def training_split_logits(model_dir: Path, labels: list[str], precision: str, phrasebank,
                          description: str) -> torch.Tensor:
    """The logits, shaped (sentences, labels), of the model in ``model_dir`` on the PhraseBank
    training sentences in the split's order: what :func:`kd_finetune` learns from."""
    from fincompress.predict import load

    texts = [row.text for row in phrasebank.splits["train"]]
    return torch.from_numpy(load(model_dir, labels, precision).logits(
        texts, batch_size=64, description=description))


def kd_finetune(cfg: DictConfig, settings: DictConfig, model, tokenizer, phrasebank,
                logits: torch.Tensor, folder: Path, prefix: str) -> float | None:
    """Train ``model`` in place on the PhraseBank training sentences for ``settings.epochs``
    with ``KDLoss(settings.temperature, settings.alpha)`` against a teacher's ``logits`` on
    them (in the split's order), plus CE on the gold labels; returns the best validation
    macro-F1. The prune-recover loop and QAT both recover this way."""
    stage = stage_config(cfg, folder, max_epochs=settings.epochs)
    L.seed_everything(cfg.seed, workers=True)
    train = phrasebank.datasets["train"]
    dataset = TokenizedDataset(train.input_ids, train.labels, {"teacher_logits": logits})
    loader = length_grouped_loader(dataset, phrasebank.batch_size, tokenizer.pad_token_id,
                                   shuffle=True, seed=cfg.seed)
    module = ClassifierModule(model, list(cfg.data.labels), instantiate(settings.optimizer),
                              instantiate(settings.scheduler),
                              loss=KDLoss(temperature=settings.temperature, alpha=settings.alpha))
    trainer = fit(stage, module, prefix=prefix, train=loader, val=phrasebank.val_dataloader())
    return best_score(trainer)
