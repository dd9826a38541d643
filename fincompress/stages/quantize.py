"""The post-training quantization stage behind ``python train.py +experiment=ptq``.

The backend (config group ``quantize``: ``openvino``) exports the source model with a
calibration set of PhraseBank training sentences into a stored artifact
(``outputs/stages/int8/<key>/model``, with ``checkpoint_info.json``). The run then scores the
source (PyTorch) and the artifact itself on the saved test split and times both at batch 32
and batch 1, interleaved, on this machine. Sizes are the artifacts' bytes on disk.
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
    backend = instantiate(cfg.quantize.backend)
    output_dir = Path(cfg.paths.output_dir)
    split = instantiate(stage_config(cfg, output_dir).data, tokenizer=None)
    split.prepare_splits()
    calibration = [row.text for row in split.splits["train"]]
    random.Random(cfg.seed).shuffle(calibration)
    calibration = calibration[:cfg.quantize.calibration_sentences]

    inputs = {"source": teacher_fingerprint(source_dir), "backend": cfg.quantize.backend,
              "calibration_sentences": cfg.quantize.calibration_sentences,
              "data": _data_settings(cfg), "seed": cfg.seed}

    def build(staging: Path) -> None:
        model, tokenizer = load_classifier(str(source_dir), labels)
        record = backend.export(model, tokenizer, calibration, staging / "model",
                                cfg.data.max_length)
        write_json({"stage": "int8", "source": str(source_dir), "labels": labels,
                    "steps": [record], "machine": machine,
                    "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                    "size_on_disk_bytes": folder_size_bytes(staging / "model")},
                   staging / "model" / "checkpoint_info.json")

    folder, reused = ensure_stage(cfg.paths.output_root, "int8", inputs, build)
    artifact = folder / "model"
    print(f"{'reusing' if reused else 'stored'} {backend.name} artifact {artifact}")
    result = compare(cfg, {"source (torch fp32)": source_dir, f"{backend.name} int8": artifact},
                     labels, output_dir / "split" / "test.csv", machine)
    result["wall_time_s"] = round(time.perf_counter() - started, 1)
    write_json(result, output_dir / "results.json")
    print(comparison_table(result))
    return {"metrics": {"test/f1_macro": result["models"][-1]["f1_macro"]}, **result}


def compare(cfg, folders: dict[str, Path], labels: list[str], test_file: Path,
            machine: dict) -> dict:
    """Scores of every artifact on the test split (the artifact itself runs), with agreement
    and KL against the first; batch-32 and batch-1 speed, timed interleaved."""
    rows_ = read_split_file(test_file)
    texts = [row.text for row in rows_]
    gold = torch.tensor([labels.index(row.label) for row in rows_])
    # PyTorch models run in fp32 here: the reference INT8 is measured against
    predictors = {name: load(folder, labels, "32-true") for name, folder in folders.items()}
    logits = {name: p.logits(texts, batch_size=32) for name, p in predictors.items()}
    reference = next(iter(logits.values()))
    batch_seconds = {name: [] for name in predictors}
    single_ms = {name: [] for name in predictors}
    singles = texts[:cfg.quantize.latency_sentences]
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
            "latency_ms_batch1_p50": round(statistics.median(single_ms[name]), 2),
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
        f"{r['latency_ms_batch1_p50']:>8.2f}{r['acc']:>8.4f}{r['f1_macro']:>10.4f}"
        f"{r['agreement_with_teacher']:>8.3f}" for r in result["models"]]
    machine = result["machine"]
    isa = ",".join(machine["isa"] or [])
    return (f"\nPhraseBank test split ({result['test_size']} sentences), agreement with the first "
            f"row; {machine['cpu']}, {machine['torch_threads']} threads, ISA {isa}\n"
            + "\n".join(lines) + "\n")
