"""The benchmark stage behind ``python train.py +experiment=benchmark``: the artifacts of
``benchmark.artifacts`` (or the stored teacher) scored and timed side by side on the saved test
split by the one scorer (:func:`fincompress.scoring.score`: batch-1 latency model-only and end
to end, batch-32 throughput length-sorted and in input order, achieved GFLOP/s against this
machine's measured matmul peak), written as JSON, CSV, markdown, an accuracy-vs-throughput
plot and confusion matrices in the run folder. Published architectures are built with random
weights, timed here, and placed at their published accuracy, marked so."""

from __future__ import annotations

import csv
import time
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from fincompress.data.datamodule import phrasebank_split
from fincompress.data.phrasebank import calibration_texts
from fincompress.files import atomic_file, write_json, write_text
from fincompress.metrics import save_confusion_matrices
from fincompress.scoring import LIST_FIELDS, peak_rates, score, with_mib
from fincompress.stages.quantize import choose_backend, export_int8
from fincompress.stages.teacher import ensure_teacher
from fincompress.tables import f1_axis, markdown_table, pareto_front
from fincompress.training import choose_precision


def run_benchmark(cfg: DictConfig) -> dict:
    started = time.perf_counter()
    machine = choose_precision(cfg)
    settings = cfg.benchmark
    artifacts = dict(settings.artifacts or {}) or {"teacher": str(ensure_teacher(cfg))}
    for name, folder in artifacts.items():
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"benchmark.artifacts.{name}: {folder} is not a folder")
    output_dir = Path(cfg.paths.output_dir)
    split = phrasebank_split(cfg, output_dir / "split")
    labels = list(cfg.data.labels)
    runs = {name: (Path(folder), "32-true") for name, folder in artifacts.items()}
    published = {entry.name: entry for entry in settings.published or []}
    for name, entry in published.items():
        runs[name] = (build_published(entry, labels, output_dir / "published"), "32-true")
    first = next(iter(runs))
    references = {name: name for name in runs if name in published or name == first}
    if settings.reference_precisions:
        calibration = calibration_texts(split.splits["train"], cfg.quantize.calibration_sentences,
                                        cfg.seed)
        runs, references = in_every_precision(cfg, runs, published, calibration, machine,
                                              output_dir)
    print("measuring this machine's matmul peak ...")
    peaks = peak_rates()
    scored = score(runs, list(cfg.data.labels), output_dir / "split" / "test.csv", machine,
                   repeats=settings.repeats, latency_sentences=settings.latency_sentences,
                   warmup=settings.warmup, unsorted=True, peaks=peaks,
                   min_round_s=settings.min_round_s)
    rows = scored["models"]
    machine = {**machine, "other_work_share": scored["other_work_share"]}
    for row in rows:
        entry = published.get(references.get(row["model"], ""))
        row["reference_of"] = references.get(row["model"])
        row["published"] = entry is not None
        row["accuracy_from"] = "published (fp32, another split)" if entry else "measured here"
        if entry is not None:  # the published scores replace those of the random weights
            row.update(acc=entry.acc, f1_macro=entry.f1_macro, kl_teacher_student=None, predictions=None,
                       agreement_with_teacher=None, ece=None,
                       f1_macro_delta=round(entry.f1_macro - rows[0]["f1_macro"], 4),
                       **{key: None for key in row if key.startswith("f1_") and
                          key not in ("f1_macro", "f1_macro_delta")})
    add_speedups(rows)
    machine["min_round_s"] = scored["min_round_s"]
    markdown = write_outputs(rows, machine, peaks, output_dir)
    save_confusion_matrices({row["model"]: row["confusion_matrix"] for row in rows
                             if not row["published"]}, list(cfg.data.labels),
                            output_dir / "confusion_matrices.png")
    plot_pareto(rows, output_dir / "pareto.png", machine)
    log_wandb(cfg, rows, output_dir / "pareto.png")
    print(markdown)
    return {"metrics": {"benchmark/models": len(rows)}, "models": rows, "peaks_gflops": peaks,
            "machine": machine, "wall_time_s": round(time.perf_counter() - started, 1)}


def in_every_precision(cfg: DictConfig, runs: dict, published: dict, calibration: list[str],
                       machine: dict, output_dir: Path) -> tuple[dict, dict]:
    """``runs`` with every reference (the first artifact, if a PyTorch folder, and each
    published architecture) also in bf16 (where native) and, unless ``benchmark.reference_int8``
    is false, in INT8 through the backend chosen here; returns the runs and, per row name, the
    reference it is a form of."""
    first = next(iter(runs))
    expanded, references = {}, {}
    for name, (folder, precision) in runs.items():
        expanded[name] = (folder, precision)
        if name != first and name not in published:
            continue
        references[name] = name
        if not (folder / "config.json").is_file() or (folder / "model.xml").is_file() \
                or (folder / "model.onnx").is_file():
            continue  # already an OpenVINO or ONNX artifact: one form only
        if machine["precision"] == "bf16-mixed":
            expanded[f"{name} (bf16)"] = (folder, "bf16-mixed")
            references[f"{name} (bf16)"] = name
        if not cfg.benchmark.reference_int8:
            continue
        artifacts = {backend: export_int8(cfg, backend, folder, calibration, machine)
                     for backend in cfg.benchmark.int8_backends}
        chosen, _ = choose_backend(cfg, folder, artifacts, list(cfg.data.labels),
                                   output_dir / "split" / "val.csv", machine)
        expanded[f"{name} (int8, {chosen})"] = (artifacts[chosen], "32-true")
        references[f"{name} (int8, {chosen})"] = name
    return expanded, references


def add_speedups(rows: list[dict]) -> None:
    """Each row's batch-32 throughput against the first reference's fastest PyTorch form (fp32
    or bf16) and against its INT8 form: ``x_reference_torch``, ``x_reference_int8``."""
    first = rows[0]["model"]
    forms = [row for row in rows if row.get("reference_of") == first]
    torch_best = max((r["throughput_sorted"] for r in forms if r["engine"] == "torch"), default=None)
    int8 = max((r["throughput_sorted"] for r in forms if r["precision"] == "i8"), default=None)
    for row in rows:
        row["x_reference_torch"] = round(row["throughput_sorted"] / torch_best, 2) if torch_best else None
        row["x_reference_int8"] = round(row["throughput_sorted"] / int8, 2) if int8 else None


def artifacts_override(artifacts: dict[str, str | Path]) -> str:
    """The ``benchmark.artifacts={...}`` override for display names and folders: keys reduced to
    letters, digits and ``_`` (as Hydra's grammar needs), folders quoted."""
    def quoted(value) -> str:
        return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"

    keys = {name: "".join(c if c.isalnum() else "_" for c in name) for name in artifacts}
    # a key of digits (a timestamped run folder) would be read as a number
    keys = {name: key if key[:1].isalpha() else f"m_{key}" for name, key in keys.items()}
    if len(set(keys.values())) < len(keys):
        raise ValueError(f"artifact names {list(artifacts)} clash once reduced to {list(keys.values())}")
    return "benchmark.artifacts={" + ",".join(f"{keys[name]}:{quoted(folder)}"
                                              for name, folder in artifacts.items()) + "}"


COLUMNS = [("model", "model"), ("engine", "engine"), ("precision", "precision"),
           ("parameters", "parameters", ",d"), ("size_mib", "MiB", ",.1f"),
           ("latency_model_ms_p50", "batch-1 ms p50", ".2f"), ("latency_model_ms_p95", "p95", ".2f"),
           ("latency_e2e_ms_p50", "end-to-end ms p50", ".2f"), ("latency_e2e_ms_p95", "p95", ".2f"),
           ("throughput_sorted", "sent/s @32 sorted", ",.0f"),
           ("throughput_spread_pct", "spread %", ".1f"), ("throughput_unsorted", "unsorted", ",.0f"),
           ("throughput_ratio", "x ref fp32", ".1f"), ("x_reference_torch", "x ref best torch", ".1f"),
           ("x_reference_int8", "x ref int8", ".1f"), ("achieved_gflops", "GFLOP/s", ",.0f"),
           ("peak_share", "of peak", ".2f"), ("acc", "acc", ".4f"), ("f1_macro", "macro-F1", ".4f"),
           ("accuracy_from", "accuracy from"),
           ("kl_teacher_student", "KL to ref", ".4f"), ("agreement_with_teacher", "agreement", ".3f")]


def write_outputs(rows: list[dict], machine: dict, peaks: dict, folder: Path) -> str:
    """``benchmark.json``, ``benchmark.csv`` and ``benchmark.md`` in ``folder``; returns the
    markdown."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json({"machine": machine, "peaks_gflops": peaks, "models": rows},
               folder / "benchmark.json")
    fields = [k for k in rows[0] if k not in LIST_FIELDS]
    with atomic_file(folder / "benchmark.csv", newline="") as handle:
        writer = csv.DictWriter(handle, fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    isa = ", ".join(machine.get("isa") or [])
    peak_text = ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items())
    busy = machine.get("other_work_share")
    markdown = (f"Machine: {machine['cpu']}, {machine['torch_threads']} threads, ISA {isa}; "
                f"matmul peak: {peak_text}. Throughput: the best of the interleaved repeats"
                + (f", each model's passes repeated for at least {machine['min_round_s']:g} s per "
                   "round" if machine.get("min_round_s") else "")
                + "; "
                "spread: how much slower the slowest repeat was"
                + (f"; other processes used {busy:.0%} of the CPUs while timing" if busy else "")
                + ".\n\n"
                + markdown_table(with_mib(rows), COLUMNS) + "\n")
    write_text(folder / "benchmark.md", markdown)
    return markdown


def build_published(entry: DictConfig, labels: list[str], folder: Path) -> Path:
    """A published architecture with random weights, saved for timing."""
    from fincompress.models.sources import resolve_source
    from fincompress.students.builders import encoder_from_config

    target = folder / entry.model_type / "_".join(f"{k}{v}" for k, v in entry.config.items())
    if not (target / "config.json").is_file():
        model, tokenizer = encoder_from_config(resolve_source("bundled:minilm-l6"), labels,
                                               entry.model_type, **entry.config)
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
    return target


def log_wandb(cfg: DictConfig, rows: list[dict], plot: Path) -> None:
    """With a W&B logger configured: the rows as a W&B Table (runs of one study compare side by
    side in a dashboard), each model's headline figures as metrics, and the plot."""
    if "wandb" not in (cfg.get("logger") or {}):
        return
    logger = instantiate(cfg.logger.wandb)
    columns = [key for key in rows[0] if key not in LIST_FIELDS]
    logger.log_table("benchmark", columns=columns, data=[[row[k] for k in columns] for row in rows])
    logger.log_metrics({f"benchmark/{row['model']}/{key}": row[key] for row in rows
                        for key in ("f1_macro", "throughput_sorted", "latency_model_ms_p50",
                                    "size_bytes")})
    logger.log_image("benchmark/pareto", [str(plot)])
    logger.experiment.finish()


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
        note = ("published accuracy (another split), timed here" if published
                else f"{row['size_bytes'] / 2**20:.0f} MiB")
        axes.annotate(f"{row['model']}\n{note}",
                      (row["throughput_sorted"], row["f1_macro"]), fontsize=7,
                      xytext=(6, 4), textcoords="offset points")
    front = sorted((row["throughput_sorted"], row["f1_macro"])
                   for row, on in zip(rows, pareto_front(rows)) if on)
    axes.step(*zip(*front), where="post", color="tab:red", alpha=0.5, linewidth=1,
              label="Pareto front (none both faster and more accurate)")
    axes.legend(fontsize=7, loc="lower left")
    axes.set_ylim(*f1_axis(rows))
    axes.set_xscale("log")
    axes.set_xlabel("sentences/s at batch 32 (log scale)")
    axes.set_ylabel("test macro-F1")
    axes.set_title(f"Accuracy vs throughput on {machine['cpu']}, {machine['torch_threads']} "
                   "threads (area: size on disk)", fontsize=9)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
