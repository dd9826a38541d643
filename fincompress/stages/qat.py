"""Quantization-aware training behind ``python train.py +experiment=qat``.

The source model (a teacher, a student, a pruned model) gets NNCF's fake quantizers
(:mod:`fincompress.compress.qat`), fine-tunes with KD against the teacher's logits on the
PhraseBank training sentences (:func:`fincompress.training.kd_finetune`), and becomes an
OpenVINO INT8 artifact (``outputs/stages/qat/<key>/model``, keyed by :func:`qat_inputs`). The
run also builds post-training INT8 of the same source with the same engine and calibration
(the PTQ stage's artifact), and scores source, PTQ and QAT on the saved test split, timed side
by side. Settings: the ``qat`` config group.
"""

from __future__ import annotations

import time
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fincompress.artifacts import write_checkpoint_info
from fincompress.compress.int8 import resolve_overflow_fix
from fincompress.compress.qat import export_openvino, prepare
from fincompress.data.datamodule import data_settings
from fincompress.data.phrasebank import calibration_texts
from fincompress.files import write_json
from fincompress.models.sources import load_classifier
from fincompress.scoring import score
from fincompress.stages.quantize import export_int8, table
from fincompress.stages.teacher import ensure_teacher
from fincompress.store import ensure_stage, folder_fingerprint
from fincompress.training import (
    choose_precision,
    kd_finetune,
    stage_config,
    trainer_settings,
    training_split_logits,
)

# settings of the qat group that do not decide the model, or enter the key under their own name
NOT_IN_KEY = ("source", "calibration_sentences", "overflow_fix", "timing_repeats",
              "latency_sentences")


def qat_inputs(cfg: DictConfig, source_dir: Path, teacher_dir: Path) -> dict:
    """What decides a stored QAT artifact: the source, the teacher, the QAT settings, the
    calibration, the data, the seed and the trainer."""
    return {"source": folder_fingerprint(source_dir), "teacher": folder_fingerprint(teacher_dir),
            "qat": {k: v for k, v in cfg.qat.items() if k not in NOT_IN_KEY},
            "calibration_sentences": cfg.qat.calibration_sentences,
            # as this CPU resolves it: an artifact built with VNNI is not reused without
            "overflow_fix": resolve_overflow_fix(cfg.qat.overflow_fix),
            "data": data_settings(cfg), "seed": cfg.seed,
            "trainer": trainer_settings(cfg)}


def run_qat(cfg: DictConfig) -> dict:
    started = time.perf_counter()
    machine = choose_precision(cfg)
    labels = list(cfg.data.labels)
    if cfg.qat.source is not None and not (Path(cfg.qat.source) / "config.json").is_file():
        raise FileNotFoundError(f"qat.source {cfg.qat.source} holds no model (no config.json); "
                                "give a model folder (a teacher, a student, a pruned model)")
    if cfg.qat.epochs < 1:
        raise ValueError(f"qat.epochs={cfg.qat.epochs}: QAT needs at least 1 epoch")
    teacher_dir = ensure_teacher(cfg)
    source_dir = teacher_dir if cfg.qat.source is None else Path(cfg.qat.source)
    output_dir = Path(cfg.paths.output_dir)
    _, tokenizer = load_classifier(str(source_dir), labels)
    phrasebank = instantiate(stage_config(cfg, output_dir).data, tokenizer=tokenizer)
    phrasebank.setup()
    calibration = calibration_texts(phrasebank.splits["train"], cfg.qat.calibration_sentences,
                                    cfg.seed)

    def build(staging: Path) -> None:
        logits = training_split_logits(teacher_dir, labels, cfg.trainer.precision, phrasebank,
                                       "teacher logits on the training split")
        model, _ = load_classifier(str(source_dir), labels)
        model, record = prepare(model, tokenizer, calibration, cfg.data.max_length,
                                cfg.qat.overflow_fix)
        best_val = kd_finetune(cfg, cfg.qat, model, tokenizer, phrasebank, logits, staging,
                               prefix="qat")
        record = {**export_openvino(model, tokenizer, staging / "model"), **record,
                  "qat": OmegaConf.to_container(cfg.qat, resolve=True),
                  "teacher": str(teacher_dir), "best_val_f1_macro": best_val}
        write_checkpoint_info(staging / "model", {"stage": "qat", "source": str(source_dir),
                                                  "labels": labels, "steps": [record],
                                                  "machine": machine})

    folder, reused = ensure_stage(cfg.paths.output_root, "qat",
                                  qat_inputs(cfg, source_dir, teacher_dir), build,
                                  collective=True)
    artifact = folder / "model"
    print(f"{'reusing' if reused else 'stored'} QAT artifact {artifact}")
    ptq = export_int8(cfg, "openvino", source_dir, calibration, machine)
    result = score({"source (torch fp32)": source_dir, "PTQ openvino int8": ptq,
                    "QAT openvino int8": artifact},
                   labels, output_dir / "split" / "test.csv", machine,
                   repeats=cfg.qat.timing_repeats, latency_sentences=cfg.qat.latency_sentences,
                   min_round_s=cfg.benchmark.min_round_s)
    result["chosen"] = {"backend": "openvino (QAT)", "dir": str(artifact), "validation": {}}
    result["wall_time_s"] = round(time.perf_counter() - started, 1)
    write_json(result, output_dir / "results.json")
    print(table(result))
    return {"metrics": {"test/f1_macro": result["models"][-1]["f1_macro"]}, **result}
