"""The post-training quantization stage behind ``python train.py +experiment=ptq``.

Each backend in ``quantize.backends`` (OpenVINO + NNCF static INT8, ONNX Runtime dynamic INT8)
exports the source model, with a calibration set of PhraseBank training sentences, into a
stored artifact (``outputs/stages/int8/<key>/model``, with ``checkpoint_info.json``). With more
than one, the backend for this machine is chosen by measurement on the validation split
(:func:`choose_backend`). The run then scores the source (PyTorch fp32) and every artifact
itself on the saved test split and times them at batch 32 and batch 1, interleaved, on this
machine. Sizes are the artifacts' bytes on disk.
"""

from __future__ import annotations

import datetime
import random
import time
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fincompress.models.sources import folder_size_bytes, load_classifier
from fincompress.pipeline import _data_settings, ensure_teacher
from fincompress.pseudo_label.label import teacher_fingerprint
from fincompress.runs import choose_precision, stage_config, write_json
from fincompress.scoring import compare, comparison_table
from fincompress.store import ensure_stage


def run_ptq(cfg: DictConfig) -> dict:
    started = time.perf_counter()
    machine = choose_precision(cfg)
    labels = list(cfg.data.labels)
    check_backends(cfg.quantize)  # before any work
    source_dir = ensure_teacher(cfg) if cfg.quantize.source is None else Path(cfg.quantize.source)
    if not (source_dir / "config.json").is_file():
        raise FileNotFoundError(f"quantize.source {source_dir} holds no model (no config.json)")
    output_dir = Path(cfg.paths.output_dir)
    split = instantiate(stage_config(cfg, output_dir).data, tokenizer=None)
    split.prepare_splits()
    calibration = calibration_texts(cfg, split)
    artifacts = {name: export_int8(cfg, name, source_dir, calibration, machine)
                 for name in cfg.quantize.backends}
    chosen, choice = choose_backend(cfg, source_dir, artifacts, labels,
                                    output_dir / "split" / "val.csv", machine)
    result = compare({"source (torch fp32)": source_dir,
                      **{f"{name} int8": folder for name, folder in artifacts.items()}},
                     labels, output_dir / "split" / "test.csv", machine,
                     cfg.quantize.timing_repeats, cfg.quantize.latency_sentences)
    result["quantize"] = OmegaConf.to_container(cfg.quantize, resolve=True)
    result["chosen"] = {"backend": chosen, "dir": str(artifacts[chosen]), "validation": choice}
    result["wall_time_s"] = round(time.perf_counter() - started, 1)
    write_json(result, output_dir / "results.json")
    print(comparison_table(result))
    print(choice_line(result["chosen"]))
    chosen_row = next(row for row in result["models"] if row["dir"] == str(artifacts[chosen]))
    return {"metrics": {"test/f1_macro": chosen_row["f1_macro"]}, **result}


def calibration_texts(cfg: DictConfig, split) -> list[str]:
    """``quantize.calibration_sentences`` training sentences, shuffled by the seed."""
    texts = [row.text for row in split.splits["train"]]
    random.Random(cfg.seed).shuffle(texts)
    return texts[:cfg.quantize.calibration_sentences]


def check_backends(quantize: DictConfig) -> None:
    if not quantize.backends:
        raise ValueError("quantize.backends is empty: name at least one of "
                         f"{', '.join(quantize.engines)}")
    unknown = [name for name in quantize.backends if name not in quantize.engines]
    if unknown:
        raise ValueError(f"quantize.backends: unknown backend(s) {unknown}; known: "
                         f"{', '.join(quantize.engines)}")


def export_int8(cfg: DictConfig, name: str, source_dir: Path, calibration: list[str],
                machine: dict) -> Path:
    """The stored INT8 artifact of ``source_dir`` made by backend ``name`` (built once)."""
    backend = instantiate(cfg.quantize.engines[name])
    inputs = {"source": teacher_fingerprint(source_dir), "backend": cfg.quantize.engines[name],
              "calibration_sentences": cfg.quantize.calibration_sentences,
              "data": _data_settings(cfg), "seed": cfg.seed}

    def build(staging: Path) -> None:
        model, tokenizer = load_classifier(str(source_dir), list(cfg.data.labels))
        record = backend.export(model, tokenizer, calibration, staging / "model",
                                cfg.data.max_length)
        write_json({"stage": "int8", "source": str(source_dir), "labels": list(cfg.data.labels),
                    "steps": [record], "machine": machine,
                    "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                    "size_on_disk_bytes": folder_size_bytes(staging / "model")},
                   staging / "model" / "checkpoint_info.json")

    folder, reused = ensure_stage(cfg.paths.output_root, "int8", inputs, build)
    print(f"{'reusing' if reused else 'stored'} {name} artifact {folder / 'model'}")
    return folder / "model"


def choose_backend(cfg, source_dir: Path, artifacts: dict[str, Path], labels: list[str],
                   val_file: Path, machine: dict) -> tuple[str, dict]:
    """The fastest artifact (batch-32 on the validation split, on this machine) whose labels
    agree with the fp32 source on at least ``quantize.min_agreement`` of the validation
    sentences; when none does, the most faithful. One artifact: itself, unmeasured."""
    if len(artifacts) == 1:
        return next(iter(artifacts)), {}
    measured = compare({"source": source_dir, **artifacts}, labels, val_file, machine,
                       cfg.quantize.timing_repeats)["models"][1:]
    rows = dict(zip(artifacts, measured))
    faithful = [n for n, r in rows.items() if r["agreement_with_teacher"] >= cfg.quantize.min_agreement]
    if faithful:
        chosen = max(faithful, key=lambda n: rows[n]["sentences_per_s_batch32"])
    else:
        chosen = max(rows, key=lambda n: rows[n]["agreement_with_teacher"])
    return chosen, {name: {"agreement": row["agreement_with_teacher"],
                           "sentences_per_s_batch32": row["sentences_per_s_batch32"]}
                    for name, row in rows.items()}


def choice_line(chosen: dict) -> str:
    if not chosen["validation"]:
        return f"INT8 backend: {chosen['backend']} (the only one configured)"
    measured = "; ".join(f"{name} {row['sentences_per_s_batch32']:.1f} sent/s, agreement "
                         f"{row['agreement']:.3f}" for name, row in chosen["validation"].items())
    return (f"INT8 backend chosen on this machine: {chosen['backend']} (validation split: "
            f"{measured})")
