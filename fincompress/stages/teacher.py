"""The teacher stage: fine-tune a classifier on Financial PhraseBank, test it, save it.

``python train.py +experiment=teacher`` runs :func:`train_teacher` into its run folder: the
split files, CSV logs, the Hugging Face model with ``checkpoint_info.json`` and a
confusion-matrix figure (the best epoch by validation macro-F1 is kept, its Lightning
checkpoints deleted). Every other stage gets its teacher through :func:`ensure_teacher`: a
given ``teacher_checkpoint``, or the stored teacher of this config (``teacher_inputs``), trained
now if there is none.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fincompress.artifacts import save_model_folder
from fincompress.config_checks import check_teacher_folder
from fincompress.data.datamodule import data_settings
from fincompress.metrics import save_confusion_matrices
from fincompress.module import ClassifierModule
from fincompress.store import ensure_stage
from fincompress.training import best_score, choose_precision, fit, run_test, stage_config, trainer_settings

log = logging.getLogger(__name__)


def teacher_inputs(cfg: DictConfig) -> dict:
    """What decides a stored teacher: its config, the data, the seed (``teacher_seed``, else
    ``seed``) and the trainer (with the resolved precision)."""
    choose_precision(cfg)
    return {"teacher": cfg.teacher, "data": data_settings(cfg), "seed": teacher_seed(cfg),
            "trainer": trainer_settings(cfg)}


def teacher_seed(cfg: DictConfig) -> int:
    """The seed the teacher trains with: ``teacher_seed`` where set (a study's seeds then vary
    the students only), else the run's ``seed``."""
    return cfg.seed if cfg.get("teacher_seed") is None else cfg.teacher_seed


def ensure_teacher(cfg: DictConfig) -> Path:
    """The teacher's model folder: given, stored from an earlier run, or trained now."""
    if cfg.get("teacher_checkpoint"):
        folder = Path(cfg.teacher_checkpoint)
        check_teacher_folder(folder)  # train.py checked it already; callers in code may not have
        return folder
    folder, reused = ensure_stage(cfg.paths.output_root, "teacher", teacher_inputs(cfg),
                                  lambda staging: train_teacher(stage_config(
                                      cfg, staging, max_epochs=cfg.teacher.max_epochs)),
                                  collective=True)
    print(f"{'reusing' if reused else 'stored'} teacher {folder / 'model'}")
    return folder / "model"


def train_teacher(cfg: DictConfig) -> dict:
    """Fine-tune, test the best epoch, export. Returns the ``checkpoint_info`` dict."""
    started = time.perf_counter()
    machine = choose_precision(cfg)
    L.seed_everything(teacher_seed(cfg), workers=True)
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
    trainer = fit(cfg, module, datamodule=datamodule, ckpt_path=cfg.get("resume_from"))
    results = run_test(trainer, cfg, module, datamodule)  # the best epoch's weights

    output_dir = Path(cfg.paths.output_dir)
    info = save_model_folder(module.model, tokenizer, output_dir / "model", {
        "stage": "teacher",
        "source": cfg.teacher.model.source,
        "labels": labels,
        "metrics": results["metrics"],
        "best_val_f1_macro": best_score(trainer),
        "confusion_matrix": results["confusion_matrix"],
        "data": datamodule.info,
        "split_hash": datamodule.info["split_hash"],
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
