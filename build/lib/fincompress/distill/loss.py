"""The contract between a distillation loss and the training module that calls it.

A loss is a plain ``nn.Module`` built from its config with the two models' shapes
(:class:`ModelShapes`, for losses that match layers) and called as
``loss(student_output, teacher, batch) -> (loss, parts)``. What it needs is declared, not
probed: the student's hidden states or attention maps, the frozen teacher running alongside,
or the teacher's cached [CLS] states of some layers in the batch. ``parts`` holds the values it
logs; the weighted terms that sum to the loss are named ``term_<name>`` (``terms`` lists them),
so each term's share of the loss can be logged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelShapes:
    """Depth and width of the student and the teacher (layer matching needs them)."""

    student_layers: int
    teacher_layers: int
    student_hidden: int
    teacher_hidden: int

    @classmethod
    def of(cls, student: nn.Module, teacher: nn.Module) -> ModelShapes:
        return cls(student.config.num_hidden_layers, teacher.config.num_hidden_layers,
                   student.config.hidden_size, teacher.config.hidden_size)


class DistillationLoss(nn.Module):
    """Base of every loss the training module takes.

    Class attributes (a subclass sets what differs):
        needs_hidden_states: the student's hidden states (and, with a frozen teacher, its own).
        needs_attentions: attention maps of both models (eager attention).
        needs_teacher_model: the teacher runs alongside the student on the same tokens; else
            its signals come cached in the batch (``teacher_logits``, ``teacher_cls``).
        terms: the weighted terms reported as ``term_<name>``; they sum to the loss.
    ``teacher_cls_layers``: the teacher layers whose cached [CLS] states the batch must carry,
    in the order of ``batch["teacher_cls"][:, i]``.
    """

    needs_hidden_states = False
    needs_attentions = False
    needs_teacher_model = False
    terms: tuple[str, ...] = ()

    def __init__(self, shapes: ModelShapes | None = None):
        super().__init__()
        self.teacher_cls_layers: list[int] = []

    def start_epoch(self, epoch: int, max_epochs: int) -> None:
        """Called at each training epoch's start; a loss with phases switches here."""

    def forward(self, student_output, teacher: dict, batch: dict
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError


def build_loss(factory, student: nn.Module, teacher: nn.Module) -> DistillationLoss:
    """The loss from its config factory (``instantiate(cfg.method.loss)``) and both models."""
    return factory(shapes=ModelShapes.of(student, teacher))


def require_shapes(shapes: ModelShapes | None, loss: str) -> ModelShapes:
    if shapes is None:
        raise ValueError(f"{loss} matches layers: it needs the models' shapes (ModelShapes)")
    return shapes
