"""The teacher stage: fine-tune a classifier on Financial PhraseBank, test it, save it.

``python train.py +experiment=teacher`` runs :func:`train_teacher`. The run folder gets the
split files, the Lightning checkpoint of the best epoch (by validation macro-F1), the exported
Hugging Face model with ``checkpoint_info.json``, CSV logs and a confusion-matrix figure.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fincompress.metrics import save_confusion_matrices
from fincompress.module import ClassifierModule
from fincompress.runs import (
    best_score,
    build_trainer,
    choose_precision,
    save_model_folder,
)
from fincompress.store import stage_key

log = logging.getLogger(__name__)


def train_teacher(cfg: DictConfig) -> dict:
    """Fine-tune, test the best epoch, export. Returns the ``checkpoint_info`` dict."""
    started = time.perf_counter()
    machine = choose_precision(cfg)
    L.seed_everything(cfg.seed, workers=True)
    labels = list(cfg.data.labels)
    model, tokenizer = instantiate(cfg.teacher.model)
    datamodule = instantiate(cfg.data, tokenizer=tokenizer)
    datamodule.prepare_splits()
    log.info("PhraseBank %s", datamodule.info)

    module = ClassifierModule(
        model,
        labels,
        optimizer=instantiate(cfg.teacher.optimizer),
        scheduler=instantiate(cfg.teacher.scheduler) if cfg.teacher.get("scheduler") else None,
    )
    trainer = build_trainer(cfg)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("resume_from"))
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)

    output_dir = Path(cfg.paths.output_dir)
    results = module.test_results
    info = save_model_folder(module.model, tokenizer, output_dir / "model", {
        "stage": "teacher",
        "source": cfg.teacher.model.source,
        "labels": labels,
        "metrics": results["metrics"],
        "best_val_f1_macro": best_score(trainer),
        "confusion_matrix": results["confusion_matrix"],
        "data": datamodule.info,
        "split_hash": datamodule.info["split_hash"],
        "config_hash": stage_key({"teacher": cfg.teacher, "data": cfg.data,
                                  "trainer": cfg.trainer, "seed": cfg.seed}),
        "epochs_run": trainer.current_epoch,
        "machine": machine,
        "wall_time_s": round(time.perf_counter() - started, 1),
        "config": OmegaConf.to_container(cfg, resolve=True),
    })
    title = f"teacher {cfg.teacher.model.source}: macro-F1 {results['metrics']['test/f1_macro']:.3f}"
    save_confusion_matrices({title: results["confusion_matrix"]}, labels,
                            output_dir / "confusion_matrix.png")
    print(format_report(info, output_dir))
    return info


def format_report(info: dict, output_dir: Path) -> str:
    metrics = info["metrics"]
    per_class = "  ".join(f"{label} {metrics[f'test/f1_{label}']:.3f}" for label in info["labels"])
    return (
        f"\n{info['stage']} {info['source']} on PhraseBank {info['data']['agreement']} "
        f"test split ({info['data']['test_size']} sentences, split {info['split_hash']})\n"
        f"  test accuracy {metrics['test/acc']:.4f}   test macro-F1 {metrics['test/f1_macro']:.4f}\n"
        f"  per-class F1: {per_class}\n"
        f"  {info['parameters'] / 1e6:.1f}M parameters, {info['size_on_disk_bytes'] / 2**20:.0f} MiB, "
        f"{info['wall_time_s']:.0f} s, {info['machine']['precision']} on {info['machine']['cpu']}\n"
        f"  saved: {output_dir / 'model'}\n"
    )
