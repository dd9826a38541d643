"""Batch inference and test-split diagnostics.

Diagnostics compare a student with its teacher on the same sentences: accuracy, macro-F1,
per-class F1, confusion matrix, mean KL(teacher || student), agreement with the teacher's
labels, and expected calibration error (15 equal-width confidence bins).
"""

from __future__ import annotations

import contextlib

import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_calibration_error,
    multiclass_confusion_matrix,
    multiclass_f1_score,
)
from tqdm.auto import tqdm

from fincompress.data.datamodule import LengthGroupedBatchSampler, pad_collate
from fincompress.distill.kd import kl_teacher_student
from fincompress.hardware import autocast_dtype


@torch.no_grad()
def predict(model, tokenizer, texts: list[str], batch_size: int = 64, max_length: int = 128,
            cls_states: bool = False, description: str | None = None,
            input_ids: list[list[int]] | None = None, precision: str = "auto"):
    """Logits for ``texts``, batched by length, returned in input order, in bf16 autocast
    under a bf16 ``precision`` (``auto``: where the CPU runs bf16 natively), else in fp32.

    Returns:
        ``logits`` (N, classes) float32, and with ``cls_states`` the [CLS] state of every
        hidden layer, (N, layers + 1, hidden) float16 (index 0 = embeddings), else None.
    """
    if input_ids is None:
        input_ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    was_training = model.training
    model.eval()
    collate = pad_collate(tokenizer.pad_token_id)
    sampler = LengthGroupedBatchSampler([len(ids) for ids in input_ids], batch_size, shuffle=False)
    logits = torch.empty(len(input_ids), model.config.num_labels)
    cls = None
    dtype = autocast_dtype(precision)
    for indices in tqdm(list(sampler), desc=description, disable=description is None,
                        unit="batch"):
        batch = collate([{"input_ids": input_ids[i], "index": i} for i in indices])
        with torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext():
            output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           output_hidden_states=cls_states)
        logits[batch["index"]] = output.logits.float()
        if cls_states:
            states = torch.stack([h[:, 0] for h in output.hidden_states], dim=1)
            if cls is None:
                cls = torch.empty(len(input_ids), *states.shape[1:], dtype=torch.float16)
            cls[batch["index"]] = states.to(torch.float16)
    model.train(was_training)
    return logits, cls


def diagnostics(logits: torch.Tensor, gold: torch.Tensor, labels: list[str],
                teacher_logits: torch.Tensor | None = None) -> dict:
    """Test-split diagnostics; ``gold`` (N,) label ids, logits (N, classes)."""
    classes = len(labels)
    probabilities = logits.float().softmax(dim=-1)
    per_class = multiclass_f1_score(probabilities, gold, classes, average=None)
    result = {
        "acc": float(multiclass_accuracy(probabilities, gold, classes, average="micro")),
        "f1_macro": float(multiclass_f1_score(probabilities, gold, classes, average="macro")),
        **{f"f1_{label}": float(v) for label, v in zip(labels, per_class)},
        "ece": float(multiclass_calibration_error(probabilities, gold, classes, n_bins=15)),
        "confusion_matrix": multiclass_confusion_matrix(probabilities, gold, classes).tolist(),
    }
    if teacher_logits is not None:
        result["kl_teacher_student"] = float(kl_teacher_student(logits, teacher_logits))
        result["agreement_with_teacher"] = float(
            (logits.argmax(-1) == teacher_logits.argmax(-1)).float().mean())
    return result
