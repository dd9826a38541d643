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
import statistics
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fincompress.data.phrasebank import read_split_file
from fincompress.evaluate import diagnostics
from fincompress.models.sources import folder_size_bytes, load_classifier
from fincompress.pipeline import _data_settings, ensure_teacher
from fincompress.predict import load
from fincompress.pseudo_label.label import teacher_fingerprint
from fincompress.runs import choose_precision, stage_config, write_json
from fincompress.store import ensure_stage


def run_ptq(cfg: DictConfig) -> dict:
    started = time.perf_counter()
    machine = choose_precision(cfg)
    labels = list(cfg.data.labels)
    source_dir = ensure_teacher(cfg) if cfg.quantize.source is None else Path(cfg.quantize.source)
    if not (source_dir / "config.json").is_file():
        raise FileNotFoundError(f"quantize.source {source_dir} holds no model (no config.json)")
    check_backends(cfg.quantize)
    output_dir = Path(cfg.paths.output_dir)
    split = instantiate(stage_config(cfg, output_dir).data, tokenizer=None)
    split.prepare_splits()
    calibration = calibration_texts(cfg, split)
    artifacts = {name: export_int8(cfg, name, source_dir, calibration, machine)
                 for name in cfg.quantize.backends}
    chosen, choice = choose_backend(cfg, source_dir, artifacts, labels,
                                    output_dir / "split" / "val.csv", machine)
    result = compare(cfg, {"source (torch fp32)": source_dir,
                           **{f"{name} int8": folder for name, folder in artifacts.items()}},
                     labels, output_dir / "split" / "test.csv", machine)
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
    measured = compare(cfg, {"source": source_dir, **artifacts}, labels, val_file, machine,
                       latency=False)["models"][1:]
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


def compare(cfg, folders: dict[str, Path], labels: list[str], split_file: Path,
            machine: dict, latency: bool = True) -> dict:
    """Scores of every artifact on a saved split (the artifact itself runs), with agreement
    and KL against the first; batch-32 and (with ``latency``) batch-1 speed, timed
    interleaved."""
    rows_ = read_split_file(split_file)
    texts = [row.text for row in rows_]
    gold = torch.tensor([labels.index(row.label) for row in rows_])
    # PyTorch models run in fp32 here: the reference INT8 is measured against
    predictors = {name: load(folder, labels, "32-true") for name, folder in folders.items()}
    logits = {name: p.logits(texts, batch_size=32) for name, p in predictors.items()}
    reference = next(iter(logits.values()))
    batch_seconds = {name: [] for name in predictors}
    single_ms = {name: [] for name in predictors}
    singles = texts[:cfg.quantize.latency_sentences] if latency else []
    for _ in range(cfg.quantize.timing_repeats):
        for name, predictor in predictors.items():
            clock = time.perf_counter()
            predictor.logits(texts, batch_size=32)
            batch_seconds[name].append(time.perf_counter() - clock)
        for text in singles:  # batch 1, models alternating sentence by sentence
            for name, predictor in predictors.items():
                clock = time.perf_counter()
                predictor.logits([text], batch_size=1)
                single_ms[name].append(1000 * (time.perf_counter() - clock))
    rows = []
    first = next(iter(predictors))
    for name, folder in folders.items():
        scores = diagnostics(logits[name], gold, labels, reference)
        throughput = len(texts) / min(batch_seconds[name])
        rows.append({
            "model": name, "dir": str(folder), "engine": predictors[name].engine,
            "inference_precision": predictors[name].inference_precision,
            "size_bytes": folder_size_bytes(folder),
            "sentences_per_s_batch32": round(throughput, 1),
            "throughput_ratio": round(min(batch_seconds[first]) / min(batch_seconds[name]), 2),
            "latency_ms_batch1_p50": (round(statistics.median(single_ms[name]), 2)
                                      if single_ms[name] else None),
            **{k: v for k, v in scores.items() if k != "confusion_matrix"},
        })
    return {"machine": machine, "test_size": len(texts), "models": rows,
            "quantize": OmegaConf.to_container(cfg.quantize, resolve=True)}


def comparison_table(result: dict) -> str:
    header = (f"{'model':18}{'engine':>10}{'MiB':>8}{'sent/s@32':>11}{'ratio':>8}{'ms@1':>8}"
              f"{'acc':>8}{'f1_macro':>10}{'agree':>8}")
    lines = [header] + [
        f"{r['model']:18}{r['engine']:>10}{r['size_bytes'] / 2**20:>8.1f}"
        f"{r['sentences_per_s_batch32']:>11.1f}{r['throughput_ratio']:>7.2f}x"
        f"{r['latency_ms_batch1_p50'] or float('nan'):>8.2f}{r['acc']:>8.4f}{r['f1_macro']:>10.4f}"
        f"{r['agreement_with_teacher']:>8.3f}" for r in result["models"]]
    machine = result["machine"]
    isa = ",".join(machine["isa"] or [])
    return (f"\nPhraseBank test split ({result['test_size']} sentences), agreement with the first "
            f"row; {machine['cpu']}, {machine['torch_threads']} threads, ISA {isa}\n"
            + "\n".join(lines) + "\n")
