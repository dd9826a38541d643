"""A thin LightningModule that fine-tunes a Hugging Face sequence classifier on gold labels.

It wires the model, cross-entropy and torchmetrics together; the optimizer and schedule come
from config as partials. Logged names: ``train/loss``, ``val/f1_macro``, ``test/acc``, ...
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from fincompress.metrics import classification_metrics, scalar_metrics


class ClassifierModule(L.LightningModule):
    def __init__(self, model: torch.nn.Module, labels: list[str], optimizer, scheduler=None):
        super().__init__()
        self.model = model
        self.labels = list(labels)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        metrics = classification_metrics(len(self.labels))
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.test_results: dict = {}

    def forward(self, batch: dict) -> torch.Tensor:
        """Logits, shape (batch, num_labels), in float32."""
        output = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return output.logits.float()

    def training_step(self, batch: dict, batch_index: int) -> torch.Tensor:
        loss = F.cross_entropy(self(batch), batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["labels"]))
        return loss

    def validation_step(self, batch: dict, batch_index: int) -> None:
        logits = self(batch)
        self.log("val/loss", F.cross_entropy(logits, batch["labels"]),
                 batch_size=len(batch["labels"]))
        self.val_metrics.update(logits, batch["labels"])

    def on_validation_epoch_end(self) -> None:
        values = scalar_metrics(self.val_metrics.compute(), self.labels)
        self.log("val/f1_macro", values.pop("val/f1_macro"), prog_bar=True)
        self.log_dict(values)
        self.val_metrics.reset()

    def test_step(self, batch: dict, batch_index: int) -> None:
        self.test_metrics.update(self(batch), batch["labels"])

    def on_test_epoch_end(self) -> None:
        computed = self.test_metrics.compute()
        self.log_dict(scalar_metrics(computed, self.labels))
        self.test_results = {
            "metrics": scalar_metrics(computed, self.labels),
            "confusion_matrix": computed["test/confusion_matrix"].tolist(),
        }
        self.test_metrics.reset()

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.model.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
