"""The thin LightningModule every stage trains with: a classifier, a loss, torchmetrics.

The method lives in the loss (a plain ``nn.Module`` chosen by the ``method`` config group):
cross-entropy on gold labels (teacher, stage-2 fine-tuning), on hard pseudo-labels (``ce``),
KD, PKD or TinyBERT. A loss gets the student's output, the teacher's signals (cached logits
and [CLS] states from the batch, or hidden states and attention maps from a frozen teacher
that runs alongside), and the batch. Logged names: ``train/loss``, ``val/f1_macro``,
``test/acc``, ...
"""

from __future__ import annotations

import lightning as L
import torch

from fincompress.distill.kd import CrossEntropyLoss
from fincompress.distill.loss import DistillationLoss
from fincompress.metrics import classification_metrics, scalar_metrics
from fincompress.optim import fused_where_possible


class ClassifierModule(L.LightningModule):
    def __init__(self, model: torch.nn.Module, labels: list[str], optimizer, scheduler=None,
                 loss: DistillationLoss | None = None, teacher: torch.nn.Module | None = None):
        super().__init__()
        self.model = model.train()  # from_pretrained returns eval mode: dropout would stay off
        self.labels = list(labels)
        self.loss = loss if loss is not None else CrossEntropyLoss()
        self.teacher = teacher.eval().requires_grad_(False) if teacher is not None else None
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        metrics = classification_metrics(len(self.labels))
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.test_results: dict = {}

    def train(self, mode: bool = True):
        """Lightning switches the whole module to training mode each epoch; the frozen teacher
        must stay in eval mode (no dropout in the targets it gives)."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def on_train_epoch_start(self) -> None:
        self.loss.start_epoch(self.current_epoch, self.trainer.max_epochs)

    def forward(self, batch: dict) -> torch.Tensor:
        """Logits, shape (batch, num_labels), in float32."""
        output = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return output.logits.float()

    def training_step(self, batch: dict, batch_index: int) -> torch.Tensor:
        output = self.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            output_hidden_states=self.loss.needs_hidden_states,
            output_attentions=self.loss.needs_attentions,
        )
        teacher = {"logits": batch.get("teacher_logits"), "cls": batch.get("teacher_cls")}
        if self.loss.needs_teacher_model:
            with torch.no_grad():
                teacher_output = self.teacher(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    output_hidden_states=True, output_attentions=self.loss.needs_attentions,
                )
            teacher.update(hidden_states=teacher_output.hidden_states,
                           attentions=teacher_output.attentions)
        loss, parts = self.loss(output, teacher, batch)
        size = len(batch["input_ids"])
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log_dict({f"train/{name}": value for name, value in parts.items()}, batch_size=size)
        # each weighted term's share of the loss (the "term_" parts sum to it), so that a weight
        # such as PKD's beta can be judged by how much of the gradient signal its term carries
        self.log_dict({f"train/share_{name.removeprefix('term_')}": value / loss.detach()
                       for name, value in parts.items() if name.startswith("term_")},
                      batch_size=size)
        return loss

    def validation_step(self, batch: dict, batch_index: int) -> None:
        self.val_metrics.update(self(batch), batch["labels"])

    def on_validation_epoch_end(self) -> None:
        values = scalar_metrics(self.val_metrics.compute(), self.labels)
        self.log("val/f1_macro", values.pop("val/f1_macro"), prog_bar=True)
        self.log_dict(values)
        self.val_metrics.reset()

    def on_test_start(self) -> None:
        # a single-process test in a rank of a multi-process job (run_test after a DDP fit)
        # must not gather the other ranks' counts
        for metric in self.test_metrics.values():
            metric.sync_on_compute = self.trainer.world_size > 1

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

    def grad_scaler(self):
        """The fp16 gradient scaler of the trainer's precision, if any (None off a trainer)."""
        try:
            return getattr(self.trainer.precision_plugin, "scaler", None)
        except RuntimeError:  # not attached to a trainer
            return None

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None,
                                    gradient_clip_algorithm=None) -> None:
        if not gradient_clip_val or not optimizer.defaults.get("fused"):
            return super().configure_gradient_clipping(optimizer, gradient_clip_val,
                                                       gradient_clip_algorithm)
        # Lightning's mixed-precision plugin refuses to clip for any fused optimizer, because one
        # fed by an fp16 GradScaler unscales inside its step. Fused steps are only chosen where
        # no scaler is (bf16, fp32): the gradients here are the true ones, clipped as Lightning
        # clips them
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(parameters, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(parameters, gradient_clip_val)

    def configure_optimizers(self):
        # the loss may own parameters too (PKD/TinyBERT projections)
        parameters = [*self.model.parameters(), *self.loss.parameters()]
        factory = self.optimizer_factory
        # an fp16 GradScaler needs the unfused step (Lightning cannot clip before a fused one)
        optimizer = factory(parameters, **({} if self.grad_scaler() else fused_where_possible(factory)))
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
