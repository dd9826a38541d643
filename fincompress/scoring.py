"""Scoring and timing N models side by side: the project's one scorer.

Every artifact the project writes (a PyTorch folder, fp32, bf16 or pruned; an OpenVINO IR; an
ONNX graph) runs itself on a saved split through the one predictor interface
(:func:`fincompress.predict.load`), and all of them are timed on this machine in one run,
interleaved, so that drift falls on all alike. For each artifact, one row:
- parameters and bytes on disk;
- accuracy, macro-F1, per-class F1, ECE, KL to the first (reference) artifact, label agreement,
  the confusion matrix and each sentence's label;
- batch-32 throughput over the whole split, with length-sorted batches (and, when asked, with
  batches in input order), both padded to their own longest sentence; the best of ``repeats``
  interleaved rounds counts. In a round each model runs its pass again until ``min_round_s``
  have passed, and the round counts its mean pass: a small student's pass takes under 0.1 s,
  and one pass that short moved a two-layer student's rate by a quarter between two runs of
  the same benchmark, while the teacher's 8-second pass held within 2%;
- batch-1 latency, median and p95, over the split's first ``latency_sentences`` sentences
  after a warm-up: model only (tokenized beforehand) and end to end (tokenization included);
- its achieved rate in GFLOP/s (encoder FLOPs from the model's shape and the real padded token
  counts) and, given this machine's measured matmul peaks, its share of the peak for its
  precision (roofline);
- every figure also as a ratio to the first artifact.
Test scoring, the prune/PTQ/QAT/stacked tables, the benchmark and the main job's table all
come from :func:`score`.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fincompress.data.phrasebank import read_split_file
from fincompress.files import folder_size_bytes
from fincompress.hardware import busy_cpu_seconds, native_bf16
from fincompress.metrics import diagnostics
from fincompress.models.sources import count_parameters
from fincompress.predict import Predictor, StaticPredictor, TorchPredictor, holds_int8, load, softmax

OTHER_WORK_WARNING = 0.10  # of the CPUs' time, used by other processes while timing


def peak_rates(n: int = 1024, repeats: int = 10) -> dict[str, float]:
    """This machine's matmul peak (n x n, all threads) in GFLOP/s: fp32 and, where native, bf16
    in PyTorch; INT8 through OpenVINO (an INT8 GEMM, VNNI where the CPU has it)."""
    rates = {}
    a, b = torch.randn(n, n), torch.randn(n, n)
    dtypes = {"f32": torch.float32, **({"bf16": torch.bfloat16} if native_bf16()[0] else {})}
    for name, dtype in dtypes.items():
        x, y = a.to(dtype), b.to(dtype)
        rates[name] = _rate(lambda x=x, y=y: x @ y, n, repeats)
    try:
        import openvino as ov
        import openvino.opset13 as ops
    except ImportError:
        return rates
    x = ops.parameter([n, n], ov.Type.f32)
    limit = np.float32(4)
    activations = ops.fake_quantize(x, -limit, limit, -limit, limit, 256)  # INT8 activations
    weights = ops.multiply(ops.convert(ops.constant(
        np.random.default_rng(0).integers(-127, 127, (n, n)).astype(np.int8)), ov.Type.f32),
        np.float32(0.01))  # INT8 weights with a scale
    compiled = ov.Core().compile_model(
        ov.Model([ops.matmul(activations, weights, False, True)], [x]), "CPU",
        {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "INFERENCE_PRECISION_HINT": "f32"})
    request, data = compiled.create_infer_request(), a.numpy()
    rates["i8"] = _rate(lambda: request.infer({0: data}), n, repeats)
    return rates


def _rate(step, n: int, repeats: int) -> float:
    for _ in range(3):
        step()
    best = float("inf")
    for _ in range(repeats):
        clock = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - clock)
    return 2 * n**3 / best / 1e9


def encoder_flops(config: dict, batches: list[tuple[int, int]]) -> float:
    """FLOPs (2 per multiply-add) of the encoder layers for padded batches given as
    ``(sentences, padded length)``: the projections, the attention products and the FFN of
    every layer, with a pruned model's kept heads and FFN sizes (``fincompress_pruning``)."""
    layers, hidden = config["num_hidden_layers"], config["hidden_size"]
    head_size = hidden // config["num_attention_heads"]
    pruning = config.get("fincompress_pruning") or {}
    heads = [len(pruning["kept_heads"][str(i)]) if pruning else config["num_attention_heads"]
             for i in range(layers)]
    ffn = [pruning["intermediate_sizes"][str(i)] if pruning else config["intermediate_size"]
           for i in range(layers)]
    total = 0.0
    for count, length in batches:
        tokens = count * length
        for layer in range(layers):
            attention = heads[layer] * head_size
            total += 2 * tokens * hidden * attention * 4  # query, key, value, output
            total += 2 * 2 * count * length * length * attention  # scores and weighted sum
            total += 2 * 2 * tokens * hidden * ffn[layer]  # FFN in and out
    return total


def parameter_count(folder: Path, predictor: Predictor) -> int:
    """Parameters of the network behind any artifact (for OpenVINO and ONNX: of the model
    shape recorded beside it, built on the meta device)."""
    if isinstance(predictor, TorchPredictor):
        return count_parameters(predictor.model)
    if isinstance(predictor, StaticPredictor):
        return predictor.parameters
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from fincompress.compress.prune import rebuild_pruned

    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(folder))
        rebuild_pruned(model)
    return count_parameters(model)


def score(artifacts: dict, labels: list[str], split_file: Path, machine: dict | None = None,
          precision: str = "32-true", repeats: int = 3, latency_sentences: int = 0,
          warmup: int = 10, unsorted: bool = False, peaks: dict[str, float] | None = None,
          score_batch_size: int = 32, min_round_s: float = 0.0) -> dict:
    """Score and time ``artifacts`` (name -> folder, or name -> ``(folder, torch precision)``;
    a bare folder runs PyTorch models in ``precision``, fp32 by default: what INT8 is measured
    against) on ``split_file``. The first artifact is the reference for KL, agreement and
    ratios. ``latency_sentences`` 0 skips batch-1 timing; ``unsorted`` adds input-order
    batches; ``score_batch_size`` is the batch of the scoring pass (timing is at batch 32);
    ``min_round_s`` is how long each model's batch-32 passes run in each round (0: one pass).

    Returns ``{"machine", "split", "split_size", "repeats", "min_round_s", "models": rows}``.
    """
    runs = {name: (Path(v[0]), v[1]) if isinstance(v, tuple | list) else (Path(v), precision)
            for name, v in artifacts.items()}
    split = read_split_file(split_file)
    texts = [row.text for row in split]
    gold = torch.tensor([labels.index(row.label) for row in split])
    predictors = {name: load(folder, labels, run_precision)
                  for name, (folder, run_precision) in runs.items()}
    encoded = {name: p.encode(texts) for name, p in predictors.items()}
    logits = {name: torch.from_numpy(p.logits_ids(encoded[name], score_batch_size))
              for name, p in predictors.items()}
    singles = list(range(min(latency_sentences, len(texts))))
    model_ms = {name: [] for name in predictors}
    e2e_ms = {name: [] for name in predictors}
    sorted_s = {name: [] for name in predictors}
    unsorted_s = {name: [] for name in predictors}
    passes = {name: 0 for name in predictors}
    for p in predictors.values():  # warm-up of the batch-1 path (the scoring pass warmed batches)
        for i in singles[:warmup]:
            p.logits([texts[i]], batch_size=1)
    busy_before, own_before, wall_before = busy_cpu_seconds(), time.process_time(), time.perf_counter()
    for _ in tqdm(range(repeats), desc=f"timing {len(predictors)} models, interleaved"):
        for i in singles:  # batch 1, the models in turn on each sentence
            for name, p in predictors.items():
                clock = time.perf_counter()
                p.logits_ids([encoded[name][i]], batch_size=1)
                model_ms[name].append(1000 * (time.perf_counter() - clock))
                clock = time.perf_counter()
                softmax(p.logits([texts[i]], batch_size=1))
                e2e_ms[name].append(1000 * (time.perf_counter() - clock))
        for name, p in predictors.items():
            for sort, seconds in ((True, sorted_s), *(((False, unsorted_s),) if unsorted else ())):
                mean_s, count = mean_pass_seconds(
                    lambda p=p, ids=encoded[name], sort=sort: p.logits_ids(ids, 32, sort=sort),
                    min_round_s)
                seconds[name].append(mean_s)
                if sort:
                    passes[name] += count
    other_work = other_work_share(busy_before, own_before, wall_before)
    if other_work is not None and other_work > OTHER_WORK_WARNING:
        print(f"warning: other processes used {other_work:.0%} of the CPUs while timing; the "
              "throughputs are lower than on an idle machine (ratios, measured interleaved, "
              "suffer less)", flush=True)
    reference = logits[next(iter(logits))]
    rows = []
    for name, p in predictors.items():
        folder = runs[name][0]
        gflops = None  # a static model has no encoder
        if not isinstance(p, StaticPredictor):
            config = json.loads((folder / "config.json").read_text())
            lengths = sorted(len(ids) for ids in encoded[name])
            batches = [(len(lengths[i:i + 32]), max(lengths[i:i + 32]))
                       for i in range(0, len(lengths), 32)]
            gflops = encoder_flops(config, batches) / min(sorted_s[name]) / 1e9
        row_precision = _precision(p)
        scores = diagnostics(logits[name], gold, labels, reference)
        rows.append({
            "model": name, "dir": str(folder), "engine": p.engine, "precision": row_precision,
            "inference_precision": p.inference_precision,
            "parameters": parameter_count(folder, p),
            "size_bytes": folder_size_bytes(folder),
            "latency_model_ms_p50": _median(model_ms[name]),
            "latency_model_ms_p95": _p95(model_ms[name]),
            "latency_e2e_ms_p50": _median(e2e_ms[name]),
            "latency_e2e_ms_p95": _p95(e2e_ms[name]),
            "throughput_sorted": round(len(texts) / min(sorted_s[name]), 1),
            # how much slower the slowest repeat was than the best one, in %
            "throughput_spread_pct": round(100 * (max(sorted_s[name]) / min(sorted_s[name]) - 1), 1),
            "timing_passes": passes[name],
            "throughput_unsorted": (round(len(texts) / min(unsorted_s[name]), 1)
                                    if unsorted_s[name] else None),
            "achieved_gflops": None if gflops is None else round(gflops, 1),
            "peak_share": (round(gflops / peaks[row_precision], 3)
                           if gflops and peaks and row_precision in peaks else None),
            **scores,
            # each sentence's label, in split order (what fincompress.load must reproduce)
            "predictions": [labels[i] for i in logits[name].argmax(-1).tolist()],
        })
    first = rows[0]
    for row in rows:
        row["size_ratio"] = round(first["size_bytes"] / row["size_bytes"], 2)
        row["latency_speedup"] = (round(first["latency_model_ms_p50"] / row["latency_model_ms_p50"], 2)
                                  if singles else None)
        row["throughput_ratio"] = round(row["throughput_sorted"] / first["throughput_sorted"], 2)
        row["f1_macro_delta"] = round(row["f1_macro"] - first["f1_macro"], 4)
    return {"machine": machine, "split": Path(split_file).stem, "split_size": len(texts),
            "repeats": repeats, "min_round_s": min_round_s, "other_work_share": other_work,
            "models": rows}


def mean_pass_seconds(run_pass, min_seconds: float) -> tuple[float, int]:
    """Run ``run_pass`` until ``min_seconds`` have passed (at least once); return the mean
    seconds per pass and the number of passes."""
    count = 0
    clock = time.perf_counter()
    while True:
        run_pass()
        count += 1
        elapsed = time.perf_counter() - clock
        if elapsed >= min_seconds:
            return elapsed / count, count


def other_work_share(busy_before: float | None, own_before: float, wall_before: float) -> float | None:
    """The share of all CPUs' time that other processes were busy since the three readings
    (every process's busy CPU seconds, this process's, the wall clock); None where unknown."""
    busy_after = busy_cpu_seconds()
    if busy_before is None or busy_after is None:
        return None
    wall = time.perf_counter() - wall_before
    others = (busy_after - busy_before) - (time.process_time() - own_before)
    return round(max(0.0, others) / (wall * (os.cpu_count() or 1)), 3) if wall > 0 else None


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _p95(values: list[float]) -> float | None:
    return round(float(np.percentile(values, 95)), 3) if values else None


def _precision(predictor: Predictor) -> str:
    """The peak an artifact is measured against: INT8 if it holds INT8 weights, else the
    precision its float work runs in."""
    if holds_int8(predictor.folder):
        return "i8"
    return "bf16" if predictor.inference_precision == "bf16" else "f32"


# per-row lists, kept in JSON only
LIST_FIELDS = ("confusion_matrix", "predictions")

# the columns of a comparison table (prune, PTQ, QAT, stacked): key, title, format
COMPARISON_COLUMNS = [("model", "model"), ("engine", "engine"),
                      ("inference_precision", "float parts"), ("size_mib", "MiB", ",.1f"),
                      ("throughput_sorted", "sentences/s at batch 32", ",.1f"),
                      ("throughput_ratio", "vs first", ".2f"),
                      ("latency_model_ms_p50", "batch-1 ms", ".2f"), ("acc", "test accuracy", ".4f"),
                      ("f1_macro", "test macro-F1", ".4f"),
                      ("agreement_with_teacher", "agreement with first", ".3f")]


def with_mib(rows: list[dict]) -> list[dict]:
    """Rows with ``size_mib`` added (bytes on disk in MiB), for tables."""
    return [{**row, "size_mib": row["size_bytes"] / 2**20} for row in rows]


def caption(result: dict) -> str:
    """What a comparison table was measured on: the split and the machine."""
    machine = result.get("machine") or {}
    isa = ",".join(machine.get("isa") or [])
    return (f"PhraseBank {result['split']} split ({result['split_size']} sentences), agreement "
            f"with the first row; best of {result['repeats']} interleaved rounds"
            + (f" of at least {result['min_round_s']:g} s per model" if result.get("min_round_s") else "")
            + "; "
            f"{machine.get('cpu', '?')}, {machine.get('torch_threads', '?')} threads, ISA {isa}")
