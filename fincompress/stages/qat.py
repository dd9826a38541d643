"""Quantization-aware training behind ``python train.py +experiment=qat``.

The source model (a teacher, a student, a pruned model) gets NNCF's fake quantizers
(:mod:`fincompress.compress.qat`), fine-tunes with KD against the teacher's logits on the
PhraseBank training sentences (:func:`fincompress.stages.recover.kd_finetune`), and becomes an
OpenVINO INT8 artifact (``outputs/stages/qat/<key>/model``). The run also builds post-training
INT8 of the same source with the same engine and calibration, and scores source, PTQ and QAT
on the saved test split, timed side by side.
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fincompress.compress.qat import export_openvino, prepare
from fincompress.models.sources import folder_size_bytes, load_classifier
from fincompress.pipeline import _data_settings, _trainer_settings, ensure_teacher
from fincompress.pseudo_label.label import teacher_fingerprint
from fincompress.runs import choose_precision, stage_config, write_json
from fincompress.scoring import compare, comparison_table
from fincompress.stages.quantize import calibration_texts, export_int8
from fincompress.stages.recover import kd_finetune, teacher_logits
from fincompress.store import ensure_stage


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
    calibration = calibration_texts(cfg, phrasebank)
    overflow_fix = cfg.quantize.engines.openvino.overflow_fix
    inputs = {"source": teacher_fingerprint(source_dir), "teacher": teacher_fingerprint(teacher_dir),
              "qat": {k: v for k, v in cfg.qat.items() if k != "source"},
              "calibration_sentences": cfg.quantize.calibration_sentences,
              "overflow_fix": overflow_fix, "data": _data_settings(cfg), "seed": cfg.seed,
              "trainer": _trainer_settings(cfg)}

    def build(staging: Path) -> None:
        logits = teacher_logits(teacher_dir, labels, phrasebank, cfg.trainer.precision)
        model, _ = load_classifier(str(source_dir), labels)
        model, record = prepare(model, tokenizer, calibration, cfg.data.max_length, overflow_fix)
        best_val = kd_finetune(cfg, cfg.qat, model, tokenizer, phrasebank, logits, staging,
                               prefix="qat")
        record = {**export_openvino(model, tokenizer, staging / "model"), **record,
                  "qat": OmegaConf.to_container(cfg.qat, resolve=True),
                  "teacher": str(teacher_dir), "best_val_f1_macro": best_val}
        write_json({"stage": "qat", "source": str(source_dir), "labels": labels,
                    "steps": [record], "machine": machine,
                    "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                    "size_on_disk_bytes": folder_size_bytes(staging / "model")},
                   staging / "model" / "checkpoint_info.json")

    folder, reused = ensure_stage(cfg.paths.output_root, "qat", inputs, build)
    artifact = folder / "model"
    print(f"{'reusing' if reused else 'stored'} QAT artifact {artifact}")
    ptq = export_int8(cfg, "openvino", source_dir, calibration, machine)
    result = compare({"source (torch fp32)": source_dir, "PTQ openvino int8": ptq,
                      "QAT openvino int8": artifact},
                     labels, output_dir / "split" / "test.csv", machine,
                     cfg.quantize.timing_repeats, cfg.quantize.latency_sentences)
    result["chosen"] = {"backend": "openvino (QAT)", "dir": str(artifact), "validation": {}}
    result["wall_time_s"] = round(time.perf_counter() - started, 1)
    write_json(result, output_dir / "results.json")
    print(comparison_table(result))
    return {"metrics": {"test/f1_macro": result["models"][-1]["f1_macro"]}, **result}
