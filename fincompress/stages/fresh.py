"""The fresh-baseline stage: the student fine-tuned on PhraseBank only, from its initial
weights, to convergence (the stage-2 optimizer, at ``distill.fresh.lr`` when set, for up to
``distill.fresh.max_epochs`` epochs,
stopped early on validation macro-F1 after ``distill.fresh.patience`` epochs without a gain,
the best epoch kept): the baseline a distilled student must beat. Stored, so a sweep over
distillation settings trains it once. ``+experiment=fresh`` runs the same fine-tuning as a
run of its own (:func:`fincompress.stages.distill.run_distill` with ``method.stage1: false``).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fincompress.artifacts import save_model_folder
from fincompress.data.datamodule import data_settings
from fincompress.store import ensure_stage, folder_fingerprint
from fincompress.training import choose_precision, finetune, trainer_settings


def fresh_inputs(cfg: DictConfig, teacher_dir: Path) -> dict:
    """What decides the fresh baseline (the teacher only through the split it was made with)."""
    return {"student": cfg.student, "teacher_fingerprint": folder_fingerprint(teacher_dir),
            "stage2": cfg.distill.stage2, "fresh": cfg.distill.fresh,
            "data": data_settings(cfg), "seed": cfg.seed,
            "trainer": trainer_settings(cfg)}


def ensure_fresh_baseline(cfg: DictConfig, teacher_dir: Path) -> Path:
    """The fresh baseline's model folder: stored, or trained now."""

    def build(staging: Path) -> None:
        L.seed_everything(cfg.seed, workers=True)
        model, tokenizer = instantiate(cfg.student.model)
        best_val = finetune(cfg, model, tokenizer, staging, cfg.distill.fresh.max_epochs,
                            cfg.distill.fresh.patience, cfg.distill.fresh.lr)
        save_model_folder(model, tokenizer, staging / "model", {
            "stage": "fresh_baseline", "student": cfg.student.name, "teacher": str(teacher_dir),
            "best_val_f1_macro": best_val, "machine": choose_precision(cfg),
            "config": OmegaConf.to_container(cfg, resolve=True)})

    folder, reused = ensure_stage(cfg.paths.output_root, "fresh", fresh_inputs(cfg, teacher_dir),
                                  build, collective=True)
    print(f"{'reusing' if reused else 'stored'} fresh baseline {folder / 'model'}")
    return folder / "model"
