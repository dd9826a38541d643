"""TinyBERT-style intermediate distillation (Jiao et al. 2020, "TinyBERT: Distilling BERT for
Natural Language Understanding").

``loss = KD + sum_m weight_m * MSE_m`` over layer matches of two features:
- ``hidden``: token states, the student's mapped to the teacher's width by a learned
  projection, averaged over **real tokens only** (padding would dilute the loss by the batch's
  padding fraction);
- ``attention``: attention maps per head when student and teacher have as many heads (as in
  the paper), averaged over heads when they differ; over real query/key pairs only.

Two phases, as in the paper (``intermediate_epochs``): the first epochs learn the features
only (intermediate-layer distillation), the later ones the teacher's soft labels only
(prediction-layer distillation, the KD loss). ``intermediate_epochs=0`` trains both at once.

One difference from the paper: it matches the unnormalised attention scores (before the
softmax); transformers v5 returns only the normalised maps (``attn_implementation="eager"``),
so the MSE here is on attention probabilities.

The teacher runs alongside the student, so both must tokenize identically.
"""

from __future__ import annotations

import torch
from torch import nn

from fincompress.distill.kd import KDLoss
from fincompress.distill.layer_map import layer_matches
from fincompress.distill.loss import DistillationLoss, ModelShapes, require_shapes


def masked_hidden_mse(student: torch.Tensor, teacher: torch.Tensor,
                      attention_mask: torch.Tensor) -> torch.Tensor:
    """MSE over real tokens; states (batch, tokens, hidden), mask (batch, tokens)."""
    mask = attention_mask.unsqueeze(-1).float()
    squared = (student.float() - teacher.float()).pow(2) * mask
    return squared.sum() / (mask.sum() * student.shape[-1])


def masked_attention_mse(student: torch.Tensor, teacher: torch.Tensor,
                         attention_mask: torch.Tensor) -> torch.Tensor:
    """MSE of attention maps over real query/key pairs, per head when the head counts match and
    of the head-averaged maps when not; maps (batch, heads, tokens, tokens)."""
    mask = attention_mask.float()
    pairs = (mask.unsqueeze(2) * mask.unsqueeze(1)).unsqueeze(1)  # (batch, 1, tokens, tokens)
    student, teacher = student.float(), teacher.float()
    if student.shape[1] != teacher.shape[1]:
        student, teacher = student.mean(dim=1, keepdim=True), teacher.mean(dim=1, keepdim=True)
    squared = (student - teacher).pow(2) * pairs
    return squared.sum() / (pairs.sum() * student.shape[1])


class TinyBERTLoss(DistillationLoss):
    needs_hidden_states = True
    needs_teacher_model = True
    terms = ("kd", "ce", "hidden", "attention")

    def __init__(self, shapes: ModelShapes | None = None, temperature: float = 4.0,
                 alpha: float = 0.5, feature_weight: float = 0.1,
                 features: tuple[str, ...] = ("hidden", "attention"), layer_map="uniform",
                 intermediate_epochs: int = 0):
        super().__init__(shapes)
        shapes = require_shapes(shapes, "TinyBERT")
        self.intermediate_epochs = intermediate_epochs
        self.phase = "intermediate" if intermediate_epochs else "joint"
        self.kd = KDLoss(temperature=temperature, alpha=alpha)
        self.matches = layer_matches(layer_map, shapes.student_layers, shapes.teacher_layers,
                                     list(features), feature_weight)
        unknown = {m.feature for m in self.matches} - {"hidden", "attention"}
        if unknown:
            raise ValueError(f"TinyBERT features are hidden and attention, not {sorted(unknown)}")
        self.needs_attentions = any(m.feature == "attention" for m in self.matches)
        self.projection = (
            nn.Linear(shapes.student_hidden, shapes.teacher_hidden)
            if shapes.student_hidden != shapes.teacher_hidden else nn.Identity()
        )

    def start_epoch(self, epoch: int, max_epochs: int) -> None:
        """Sets the phase: features first, then soft labels."""
        if not self.intermediate_epochs:
            return
        if max_epochs <= self.intermediate_epochs:
            raise ValueError(f"TinyBERT's intermediate_epochs={self.intermediate_epochs} leaves no "
                             f"prediction-layer epoch of the stage's {max_epochs}; give stage 1 more "
                             "epochs (distill.stage1.max_epochs) or set method.intermediate_epochs lower")
        self.phase = "intermediate" if epoch < self.intermediate_epochs else "prediction"

    def forward(self, student_output, teacher: dict, batch: dict):
        loss, parts = self.kd.kd_terms(student_output.logits, teacher["logits"], batch["labels"])
        if self.phase == "prediction":
            return loss, parts
        if self.phase == "intermediate":  # the features only; the KD terms are logged, not trained
            loss = torch.zeros((), device=loss.device)
            parts.update(term_kd=loss, term_ce=loss)
        mask = batch["attention_mask"]
        totals = {"hidden": torch.zeros((), device=loss.device),
                  "attention": torch.zeros((), device=loss.device)}
        for m in self.matches:
            if m.feature == "hidden":
                student = self.projection(student_output.hidden_states[m.student_layer])
                value = masked_hidden_mse(student, teacher["hidden_states"][m.teacher_layer], mask)
            else:
                value = masked_attention_mse(student_output.attentions[m.student_layer - 1],
                                             teacher["attentions"][m.teacher_layer - 1], mask)
            totals[m.feature] = totals[m.feature] + m.weight * value
        parts.update({f"{name}_mse": value.detach() for name, value in totals.items()})
        parts.update({f"term_{name}": value.detach() for name, value in totals.items()})
        return loss + totals["hidden"] + totals["attention"], parts
