"""Scoring N models side by side: every artifact the project writes (a PyTorch folder, an
OpenVINO IR, an ONNX graph) runs itself on a saved split through the one predictor interface,
and is timed interleaved with the others on this machine. The prune, PTQ, QAT and stacked
experiments all score with :func:`compare`."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

from fincompress.data.phrasebank import read_split_file
from fincompress.evaluate import diagnostics
from fincompress.models.sources import count_parameters, folder_size_bytes
from fincompress.predict import load


def compare(folders: dict[str, Path], labels: list[str], split_file: Path, machine: dict,
            repeats: int = 3, latency_sentences: int = 0, precision: str = "32-true") -> dict:
    """Scores of every artifact on a saved split (the artifact itself runs), with agreement and
    KL against the first; batch-32 throughput over the split and batch-1 latency over its first
    ``latency_sentences`` sentences, the models timed in turn within each of ``repeats`` rounds
    (interleaved, so machine drift falls on all alike; the best round counts). PyTorch models
    run in ``precision`` (fp32 by default: the reference INT8 is measured against)."""
    split = read_split_file(split_file)
    texts = [row.text for row in split]
    gold = torch.tensor([labels.index(row.label) for row in split])
    predictors = {name: load(folder, labels, precision) for name, folder in folders.items()}
    logits = {name: p.logits(texts, batch_size=32) for name, p in predictors.items()}
    reference = next(iter(logits.values()))
    batch_seconds = {name: [] for name in predictors}
    single_ms = {name: [] for name in predictors}
    for _ in tqdm(range(repeats), desc=f"timing {len(predictors)} models, interleaved"):
        for name, predictor in predictors.items():
            clock = time.perf_counter()
            predictor.logits(texts, batch_size=32)
            batch_seconds[name].append(time.perf_counter() - clock)
        for text in texts[:latency_sentences]:  # batch 1, models alternating sentence by sentence
            for name, predictor in predictors.items():
                clock = time.perf_counter()
                predictor.logits([text], batch_size=1)
                single_ms[name].append(1000 * (time.perf_counter() - clock))
    rows = []
    first = next(iter(predictors))
    for name, folder in folders.items():
        predictor = predictors[name]
        scores = diagnostics(logits[name], gold, labels, reference)
        rows.append({
            "model": name, "dir": str(folder), "engine": predictor.engine,
            "inference_precision": predictor.inference_precision,
            "parameters": (count_parameters(predictor.model) if hasattr(predictor, "model")
                           else None),
            "size_bytes": folder_size_bytes(folder),
            "sentences_per_s_batch32": round(len(texts) / min(batch_seconds[name]), 1),
            "throughput_ratio": round(min(batch_seconds[first]) / min(batch_seconds[name]), 3),
            "latency_ms_batch1_p50": (round(statistics.median(single_ms[name]), 2)
                                      if single_ms[name] else None),
            **{k: v for k, v in scores.items() if k != "confusion_matrix"},
        })
    return {"machine": machine, "split": split_file.stem, "split_size": len(texts),
            "repeats": repeats, "models": rows}


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
    return (f"\nPhraseBank {result['split']} split ({result['split_size']} sentences), agreement "
            f"with the first row; {machine['cpu']}, {machine['torch_threads']} threads, ISA {isa}\n"
            + "\n".join(lines) + "\n")
