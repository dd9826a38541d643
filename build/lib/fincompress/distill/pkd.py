"""Patient knowledge distillation (Sun, Cheng, Gan, Liu 2019, "Patient Knowledge Distillation
for BERT Model Compression").

``loss = KD + sum_m weight_m * mean_batch || s_m / ||s_m|| - t_m / ||t_m|| ||^2`` where ``s_m`` and
``t_m`` are the [CLS] states of matched student and teacher layers (``weight`` = PKD's beta).
When widths differ, a learned linear projection maps student states to the teacher's width.
Teacher [CLS] states come precomputed from the pseudo-label cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fincompress.distill.kd import KDLoss
from fincompress.distill.layer_map import layer_matches
from fincompress.distill.loss import DistillationLoss, ModelShapes, require_shapes


def normalized_cls_distance(student_cls: torch.Tensor, teacher_cls: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the squared distance of L2-normalised states, (batch, hidden)."""
    difference = F.normalize(student_cls.float(), dim=-1) - F.normalize(teacher_cls.float(), dim=-1)
    return difference.pow(2).sum(dim=-1).mean()


class PKDLoss(DistillationLoss):
    needs_hidden_states = True
    terms = ("kd", "ce", "pkd")

    def __init__(self, shapes: ModelShapes | None = None, temperature: float = 5.0,
                 alpha: float = 0.7, pkd_beta: float = 0.02, layer_map="skip"):
        super().__init__(shapes)
        shapes = require_shapes(shapes, "PKD")
        self.kd = KDLoss(temperature=temperature, alpha=alpha)
        self.matches = layer_matches(layer_map, shapes.student_layers, shapes.teacher_layers,
                                     ["cls"], pkd_beta)
        self.teacher_cls_layers = sorted({m.teacher_layer for m in self.matches})
        self.projection = (
            nn.Linear(shapes.student_hidden, shapes.teacher_hidden, bias=False)
            if shapes.student_hidden != shapes.teacher_hidden else nn.Identity()
        )

    def forward(self, student_output, teacher: dict, batch: dict):
        loss, parts = self.kd.kd_terms(student_output.logits, teacher["logits"], batch["labels"])
        # teacher["cls"]: (batch, len(teacher_cls_layers), teacher_hidden)
        pkd = torch.zeros((), device=loss.device)
        for match in self.matches:
            student_cls = self.projection(student_output.hidden_states[match.student_layer][:, 0])
            teacher_cls = teacher["cls"][:, self.teacher_cls_layers.index(match.teacher_layer)]
            pkd = pkd + match.weight * normalized_cls_distance(student_cls, teacher_cls)
        parts["pkd"] = parts["term_pkd"] = pkd.detach()
        return loss + pkd, parts
