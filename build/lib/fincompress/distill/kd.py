"""Vanilla knowledge distillation (Hinton, Vinyals, Dean 2015) and plain cross-entropy.

``loss = alpha * KL(softmax(t / T) || softmax(s / T)) * T^2 + (1 - alpha) * CE(s, y)``; the T^2
keeps the soft-target gradients' scale independent of the temperature. ``y`` is the teacher's
hard pseudo-label on news and the gold label on PhraseBank.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fincompress.distill.loss import DistillationLoss, ModelShapes


def kl_teacher_student(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                       temperature: float = 1.0) -> torch.Tensor:
    """Mean over the batch of KL(teacher || student) at ``temperature``; logits (batch, classes)."""
    return F.kl_div(
        F.log_softmax(student_logits.float() / temperature, dim=-1),
        F.log_softmax(teacher_logits.float() / temperature, dim=-1),
        log_target=True,
        reduction="batchmean",
    )


class CrossEntropyLoss(DistillationLoss):
    """Cross-entropy on ``batch["labels"]``: hard pseudo-labels (method ``ce``) or gold labels;
    ``shapes`` is unused."""

    terms = ("ce",)

    def forward(self, student_output, teacher: dict, batch: dict):
        loss = F.cross_entropy(student_output.logits.float(), batch["labels"])
        return loss, {"ce": loss.detach(), "term_ce": loss.detach()}


class KDLoss(DistillationLoss):
    """KD on the teacher's cached logits (``teacher["logits"]``); ``shapes`` is unused."""

    terms = ("kd", "ce")

    def __init__(self, shapes: ModelShapes | None = None, temperature: float = 5.0,
                 alpha: float = 0.7):
        super().__init__(shapes)
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.temperature = float(temperature)
        self.alpha = float(alpha)

    def kd_terms(self, student_logits, teacher_logits, labels):
        kl = kl_teacher_student(student_logits, teacher_logits, self.temperature)
        ce = F.cross_entropy(student_logits.float(), labels)
        soft = self.alpha * kl * self.temperature**2
        hard = (1 - self.alpha) * ce
        return soft + hard, {"kl": kl.detach(), "ce": ce.detach(), "term_kd": soft.detach(),
                             "term_ce": hard.detach()}

    def forward(self, student_output, teacher: dict, batch: dict):
        return self.kd_terms(student_output.logits, teacher["logits"], batch["labels"])
