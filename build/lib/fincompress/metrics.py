"""Classification metrics (torchmetrics), test diagnostics and the confusion-matrix figure.

Diagnostics compare a model with a reference (its teacher) on the same sentences: accuracy,
macro-F1, per-class F1, confusion matrix, mean KL(teacher || student), agreement with the
teacher's labels, and expected calibration error (15 equal-width confidence bins).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_calibration_error,
    multiclass_confusion_matrix,
    multiclass_f1_score,
)

from fincompress.distill.kd import kl_teacher_student


def classification_metrics(num_classes: int) -> MetricCollection:
    return MetricCollection({
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "f1_macro": MulticlassF1Score(num_classes, average="macro"),
        "f1_per_class": MulticlassF1Score(num_classes, average=None),
        "confusion_matrix": MulticlassConfusionMatrix(num_classes),
    })


def scalar_metrics(values: dict[str, torch.Tensor], labels: list[str]) -> dict[str, float]:
    """Flatten computed metrics to loggable scalars: per-class F1 becomes ``<prefix>f1_<label>``;
    the confusion matrix is left out (see :func:`confusion_matrix_lists`)."""
    scalars = {}
    for name, value in values.items():
        if name.endswith("f1_per_class"):
            prefix = name.removesuffix("f1_per_class")
            scalars.update({f"{prefix}f1_{label}": float(v) for label, v in zip(labels, value)})
        elif not name.endswith("confusion_matrix"):
            scalars[name] = float(value)
    return scalars


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


def save_confusion_matrices(matrices: dict[str, list[list[int]]], labels: list[str],
                            path: str | Path) -> Path:
    """Row-normalised confusion matrices side by side (one panel per title), with counts, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes_row = plt.subplots(1, len(matrices), figsize=(4.0 * len(matrices) + 0.6, 3.6),
                                    squeeze=False)
    for panel, (axes, (title, matrix)) in enumerate(zip(axes_row[0], matrices.items())):
        counts = torch.tensor(matrix, dtype=torch.float)
        normalised = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
        image = axes.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(labels)):
            for j in range(len(labels)):
                colour = "white" if normalised[i, j] > 0.6 else "black"
                axes.text(j, i, f"{normalised[i, j]:.2f}\n({int(counts[i, j])})", ha="center",
                          va="center", fontsize=8, color=colour)
        axes.set_xticks(range(len(labels)), labels, fontsize=8)
        axes.set_yticks(range(len(labels)), labels if panel == 0 else [], fontsize=8)
        axes.set_xlabel("predicted")
        if panel == 0:
            axes.set_ylabel("gold")
        axes.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axes_row[0].tolist(), fraction=0.03)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return Path(path)
