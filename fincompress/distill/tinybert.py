"""TinyBERT-style intermediate distillation (Jiao et al. 2020, "TinyBERT: Distilling BERT for
Natural Language Understanding").

``loss = KD + sum_m weight_m * MSE_m`` over layer matches of two features:
- ``hidden``: token states, the student's mapped to the teacher's width by a learned
  projection, averaged over **real tokens only** (padding would dilute the loss by the batch's
  padding fraction);
- ``attention``: attention maps averaged over heads (student and teacher head counts may
  differ), over real query/key pairs only.
The teacher runs alongside the student (``attn_implementation="eager"`` for attention maps), so
both must tokenize identically.
"""

from __future__ import annotations

import torch
from torch import nn

from fincompress.distill.kd import KDLoss
from fincompress.distill.layer_map import layer_matches


def masked_hidden_mse(student: torch.Tensor, teacher: torch.Tensor,
                      attention_mask: torch.Tensor) -> torch.Tensor:
    """MSE over real tokens; states (batch, tokens, hidden), mask (batch, tokens)."""
    mask = attention_mask.unsqueeze(-1).float()
    squared = (student.float() - teacher.float()).pow(2) * mask
    return squared.sum() / (mask.sum() * student.shape[-1])


def masked_attention_mse(student: torch.Tensor, teacher: torch.Tensor,
                         attention_mask: torch.Tensor) -> torch.Tensor:
    """MSE of head-averaged maps over real query/key pairs; maps (batch, heads, tokens, tokens)."""
    mask = attention_mask.float()
    pairs = mask.unsqueeze(2) * mask.unsqueeze(1)  # (batch, tokens, tokens)
    difference = student.float().mean(dim=1) - teacher.float().mean(dim=1)
    return (difference.pow(2) * pairs).sum() / pairs.sum()


class TinyBERTLoss(nn.Module):
    needs_hidden_states = True
    needs_teacher_model = True
    teacher_cls_layers: list[int] = []

    def __init__(self, student_layers: int, teacher_layers: int, student_hidden: int,
                 teacher_hidden: int, temperature: float = 4.0, alpha: float = 0.5,
                 feature_weight: float = 0.1, features: tuple[str, ...] = ("hidden", "attention"),
                 layer_map="uniform"):
        super().__init__()
        self.kd = KDLoss(temperature, alpha)
        self.matches = layer_matches(layer_map, student_layers, teacher_layers, list(features),
                                     "mse", feature_weight)
        unknown = {m.feature for m in self.matches} - {"hidden", "attention"}
        if unknown:
            raise ValueError(f"TinyBERT features are hidden and attention, not {sorted(unknown)}")
        self.needs_attentions = any(m.feature == "attention" for m in self.matches)
        self.projection = (
            nn.Linear(student_hidden, teacher_hidden)
            if student_hidden != teacher_hidden else nn.Identity()
        )

    def forward(self, student_output, teacher: dict, batch: dict):
        loss, parts = self.kd.kd_terms(student_output.logits, teacher["logits"], batch["labels"])
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
