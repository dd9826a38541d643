"""Callbacks that tests add to a training run through config (``+callbacks.NAME={_target_:
tests.helpers.NAME, ...}``)."""

import os
import signal
import time
from pathlib import Path

import lightning as L


class SignalAt(L.Callback):
    """Send this process ``signal_name`` (SLURM's SIGUSR1 by default) once, at the end of
    training step ``step``, unless ``marker`` exists (it is created then): the rerun of the
    same command trains undisturbed."""

    def __init__(self, step: int, marker: str, signal_name: str = "SIGUSR1"):
        self.step = step
        self.marker = Path(marker)
        self.signum = signal.Signals[signal_name]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and not self.marker.exists():
            self.marker.write_text(f"{self.signum.name} at step {self.step}\n")
            os.kill(os.getpid(), self.signum)


class RankMarker(L.Callback):
    """Each training process writes ``<folder>/<rank>-<pid>-<steps>-<time>`` at the end of a
    fit: which processes trained, and how many optimizer steps each took."""

    def __init__(self, folder: str):
        self.folder = Path(folder)

    def on_fit_end(self, trainer, pl_module) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"{trainer.global_rank}-{os.getpid()}-{trainer.global_step}-"
         f"{time.time_ns()}").touch()


class PauseAt(L.Callback):
    """Rank 0 writes ``marker`` at the end of training step ``step`` and then waits ``seconds``
    (every DDP rank with it, at the next collective call), unless ``marker`` exists: a window in
    which a test sends a signal from outside, as SLURM would. The rerun trains undisturbed."""

    def __init__(self, step: int, marker: str, seconds: float = 2.0):
        self.step = step
        self.marker = Path(marker)
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and trainer.is_global_zero and not self.marker.exists():
            self.marker.write_text(f"{os.getpid()}\n")
            time.sleep(self.seconds)
