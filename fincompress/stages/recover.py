"""KD fine-tuning on the PhraseBank training sentences, shared by the prune-recover loop and
quantization-aware training: the model learns from a teacher's logits on those sentences
(computed once per run, the cache) plus CE on the gold labels, and keeps its best epoch on
validation macro-F1. The LightningModule is the project's one ``ClassifierModule`` with a
``KDLoss``; what differs between the two uses is the model handed in (pruned, or carrying
NNCF's fake quantizers) and the settings group (``prune.recover`` or ``qat``)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from fincompress.data.datamodule import LengthGroupedBatchSampler, TokenizedDataset, pad_collate
from fincompress.distill.kd import KDLoss
from fincompress.evaluate import predict
from fincompress.models.sources import load_classifier
from fincompress.module import ClassifierModule
from fincompress.runs import best_score, build_trainer, load_best_weights, stage_config


def teacher_logits(teacher_dir: Path, labels: list[str], phrasebank, precision: str) -> torch.Tensor:
    """The teacher's logits on the training split, in its order (the teacher's own tokenizer:
    a student's vocabulary may differ)."""
    teacher, tokenizer = load_classifier(str(teacher_dir), labels)
    texts = [row.text for row in phrasebank.splits["train"]]
    return predict(teacher, tokenizer, texts, precision=precision,
                   description="teacher logits on the training split")[0]


def kd_finetune(cfg: DictConfig, settings: DictConfig, model, tokenizer, phrasebank,
                logits: torch.Tensor, folder: Path, prefix: str) -> float | None:
    """Train ``model`` in place for ``settings.epochs`` with ``KDLoss(settings.temperature,
    settings.alpha)`` against ``logits``; returns the best validation macro-F1."""
    stage = stage_config(cfg, folder, max_epochs=settings.epochs)
    L.seed_everything(cfg.seed, workers=True)
    train = phrasebank.datasets["train"]
    dataset = TokenizedDataset(train.input_ids, train.labels, {"teacher_logits": logits})
    loader = DataLoader(dataset, collate_fn=pad_collate(tokenizer.pad_token_id),
                        batch_sampler=LengthGroupedBatchSampler(dataset.lengths,
                                                                phrasebank.batch_size, True,
                                                                cfg.seed))
    module = ClassifierModule(model, list(cfg.data.labels), instantiate(settings.optimizer),
                              instantiate(settings.scheduler),
                              loss=KDLoss(settings.temperature, settings.alpha))
    trainer = build_trainer(stage, prefix=prefix)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=phrasebank.val_dataloader())
    load_best_weights(trainer, module)
    return best_score(trainer)
