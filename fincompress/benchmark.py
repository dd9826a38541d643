"""CPU benchmark of model artifacts on a saved split, every model measured on this machine in
one run, interleaved, so that drift falls on all alike.

For each artifact (any folder :func:`fincompress.predict.load` opens):
- parameters and bytes on disk;
- batch-1 latency, median and p95, over real sentences after a warm-up: model only (tokenized
  beforehand) and end to end (text in, probabilities out, tokenization included);
- batch-32 throughput over the whole split, with length-sorted batches and with batches in
  input order (both padded to their own longest sentence);
- accuracy, macro-F1, per-class F1, KL to the first (reference) artifact, label agreement;
- its achieved rate in GFLOP/s (encoder FLOPs from the model's shape and the real padded token
  counts) as a share of this machine's measured matmul peak for its precision (roofline).
Every figure is also given as a ratio to the first artifact.
"""

from __future__ import annotations

import csv
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fincompress.data.phrasebank import read_split_file
from fincompress.evaluate import diagnostics
from fincompress.hardware import native_bf16
from fincompress.models.sources import count_parameters, folder_size_bytes
from fincompress.predict import Predictor, load


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
    if hasattr(predictor, "model"):
        return count_parameters(predictor.model)
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from fincompress.compress.prune import rebuild_pruned

    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(folder))
        rebuild_pruned(model)
    return count_parameters(model)


def benchmark(artifacts: dict[str, tuple[Path, str]], labels: list[str], split_file: Path,
              latency_sentences: int = 200, repeats: int = 3, warmup: int = 10,
              peaks: dict[str, float] | None = None) -> list[dict]:
    """Rows of measurements, one per artifact ``name: (folder, torch precision)``; the first
    is the reference for KL, agreement and ratios."""
    split = read_split_file(split_file)
    texts = [row.text for row in split]
    gold = torch.tensor([labels.index(row.label) for row in split])
    predictors = {name: load(folder, labels, precision)
                  for name, (folder, precision) in artifacts.items()}
    encoded = {name: p.encode(texts) for name, p in predictors.items()}
    logits = {name: p.logits_ids(encoded[name]) for name, p in predictors.items()}
    singles = list(range(min(latency_sentences, len(texts))))
    model_ms = {name: [] for name in predictors}
    e2e_ms = {name: [] for name in predictors}
    sorted_s = {name: [] for name in predictors}
    unsorted_s = {name: [] for name in predictors}
    for p in predictors.values():  # warm-up
        for i in singles[:warmup]:
            p.logits([texts[i]], batch_size=1)
    for _ in tqdm(range(repeats), desc=f"benchmark of {len(predictors)} models, interleaved"):
        for i in singles:  # batch 1, the models in turn on each sentence
            for name, p in predictors.items():
                clock = time.perf_counter()
                p.logits_ids([encoded[name][i]], batch_size=1)
                model_ms[name].append(1000 * (time.perf_counter() - clock))
                clock = time.perf_counter()
                p.logits([texts[i]], batch_size=1).softmax(-1)
                e2e_ms[name].append(1000 * (time.perf_counter() - clock))
        for name, p in predictors.items():
            for sort, seconds in ((True, sorted_s), (False, unsorted_s)):
                clock = time.perf_counter()
                p.logits_ids(encoded[name], 32, sort=sort)
                seconds[name].append(time.perf_counter() - clock)
    reference = next(iter(logits))
    rows = []
    for name, p in predictors.items():
        folder = artifacts[name][0]
        config = json.loads((Path(folder) / "config.json").read_text())
        lengths = sorted(len(ids) for ids in encoded[name])
        batches = [(len(lengths[i:i + 32]), max(lengths[i:i + 32]))
                   for i in range(0, len(lengths), 32)]
        gflops = encoder_flops(config, batches) / min(sorted_s[name]) / 1e9
        precision = _precision(p)
        scores = diagnostics(logits[name], gold, labels, logits[reference])
        rows.append({
            "model": name, "dir": str(folder), "engine": p.engine, "precision": precision,
            "parameters": parameter_count(Path(folder), p),
            "size_bytes": folder_size_bytes(Path(folder)),
            "latency_model_ms_p50": round(statistics.median(model_ms[name]), 3),
            "latency_model_ms_p95": round(_p95(model_ms[name]), 3),
            "latency_e2e_ms_p50": round(statistics.median(e2e_ms[name]), 3),
            "latency_e2e_ms_p95": round(_p95(e2e_ms[name]), 3),
            "throughput_sorted": round(len(texts) / min(sorted_s[name]), 1),
            "throughput_unsorted": round(len(texts) / min(unsorted_s[name]), 1),
            "achieved_gflops": round(gflops, 1),
            "peak_share": round(gflops / peaks[precision], 3) if peaks and precision in peaks else None,
            **{k: v for k, v in scores.items() if k != "confusion_matrix"},
            "confusion_matrix": scores["confusion_matrix"],
            # each test sentence's label, in split order (what fincompress.load must reproduce)
            "predictions": [labels[i] for i in logits[name].argmax(-1).tolist()],
        })
    first = rows[0]
    for row in rows:
        row["size_ratio"] = round(first["size_bytes"] / row["size_bytes"], 2)
        row["latency_speedup"] = round(first["latency_model_ms_p50"] / row["latency_model_ms_p50"], 2)
        row["throughput_ratio"] = round(row["throughput_sorted"] / first["throughput_sorted"], 2)
        row["f1_macro_delta"] = round(row["f1_macro"] - first["f1_macro"], 4)
    return rows


def _precision(predictor: Predictor) -> str:
    """The peak an artifact is measured against: INT8 if it holds INT8 weights, else the
    precision its float work runs in."""
    folder = Path(predictor.folder)
    info = folder / "checkpoint_info.json"
    if info.is_file() and any(step.get("int8") for step in
                              json.loads(info.read_text()).get("steps", [])):
        return "i8"
    return "bf16" if predictor.inference_precision == "bf16" else "f32"


def _p95(values: list[float]) -> float:
    return float(np.percentile(values, 95))


COLUMNS = [("model", "model"), ("engine", "engine"), ("precision", "precision"),
           ("parameters", "parameters"), ("size_bytes", "bytes"),
           ("latency_model_ms_p50", "batch-1 ms p50"), ("latency_model_ms_p95", "p95"),
           ("latency_e2e_ms_p50", "end-to-end ms p50"), ("latency_e2e_ms_p95", "p95"),
           ("throughput_sorted", "sent/s @32 sorted"), ("throughput_unsorted", "unsorted"),
           ("throughput_ratio", "x ref"), ("achieved_gflops", "GFLOP/s"),
           ("peak_share", "of peak"), ("acc", "acc"), ("f1_macro", "macro-F1"),
           ("kl_teacher_student", "KL to ref"), ("agreement_with_teacher", "agreement")]


# per-row lists, kept in benchmark.json only
LIST_FIELDS = ("confusion_matrix", "predictions")


def write_outputs(rows: list[dict], machine: dict, peaks: dict, folder: Path) -> str:
    """``benchmark.json``, ``benchmark.csv`` and ``benchmark.md`` in ``folder``; returns the
    markdown."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "benchmark.json").write_text(json.dumps(
        {"machine": machine, "peaks_gflops": peaks, "models": rows}, indent=2))
    fields = [k for k in rows[0] if k not in LIST_FIELDS]
    with open(folder / "benchmark.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    isa = ", ".join(machine.get("isa") or [])
    peak_text = ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items())
    lines = [f"Machine: {machine['cpu']}, {machine['torch_threads']} threads, ISA {isa}; "
             f"matmul peak: {peak_text}.", "",
             "| " + " | ".join(title for _, title in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[key]) for key, _ in COLUMNS) + " |")
    markdown = "\n".join(lines) + "\n"
    (folder / "benchmark.md").write_text(markdown)
    return markdown


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def plot_pareto(rows: list[dict], path: Path, machine: dict) -> None:
    """Macro-F1 against batch-32 throughput (log scale), marker area proportional to the bytes
    on disk, each point named; published models (grey squares) at their published accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    largest = max(row["size_bytes"] for row in rows)
    for row in rows:
        published = row.get("published")
        axes.scatter(row["throughput_sorted"], row["f1_macro"], s=40 + 800 * row["size_bytes"] / largest,
                     alpha=0.6, edgecolors="black", marker="s" if published else "o",
                     color="lightgrey" if published else None)
        note = "published accuracy, timed here" if published else f"{row['size_bytes'] / 2**20:.0f} MiB"
        axes.annotate(f"{row['model']}\n{note}",
                      (row["throughput_sorted"], row["f1_macro"]), fontsize=7,
                      xytext=(6, 4), textcoords="offset points")
    axes.set_xscale("log")
    axes.set_xlabel("sentences/s at batch 32 (log scale)")
    axes.set_ylabel("test macro-F1")
    axes.set_title(f"Accuracy vs throughput on {machine['cpu']}, {machine['torch_threads']} "
                   "threads (area: size on disk)", fontsize=9)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
