"""The benchmark stage behind ``python train.py +experiment=benchmark``: the artifacts of
``benchmark.artifacts`` (or the stored teacher) measured side by side on the saved test split
(:mod:`fincompress.benchmark`), written as JSON, CSV, markdown and an accuracy-vs-throughput
plot in the run folder."""

from __future__ import annotations

import time
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from fincompress.benchmark import LIST_FIELDS, benchmark, peak_rates, plot_pareto, write_outputs
from fincompress.metrics import save_confusion_matrices
from fincompress.pipeline import ensure_teacher
from fincompress.runs import choose_precision, stage_config


def run_benchmark(cfg: DictConfig) -> dict:
    started = time.perf_counter()
    machine = choose_precision(cfg)
    settings = cfg.benchmark
    artifacts = dict(settings.artifacts or {}) or {"teacher": str(ensure_teacher(cfg))}
    for name, folder in artifacts.items():
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"benchmark.artifacts.{name}: {folder} is not a folder")
    output_dir = Path(cfg.paths.output_dir)
    split = instantiate(stage_config(cfg, output_dir).data, tokenizer=None)
    split.prepare_splits()
    runs = {name: (Path(folder), "32-true") for name, folder in artifacts.items()}
    published = {entry.name: entry for entry in settings.published or []}
    for name, entry in published.items():
        runs[name] = (build_published(entry, list(cfg.data.labels), output_dir / "published"),
                      "32-true")
    if settings.reference_bf16 and machine["precision"] == "bf16-mixed":
        first, (folder, _) = next(iter(runs.items()))
        runs = {first: runs[first], f"{first} (bf16)": (folder, "bf16-mixed"),
                **{k: v for k, v in runs.items() if k != first}}
    print("measuring this machine's matmul peak ...")
    peaks = peak_rates()
    rows = benchmark(runs, list(cfg.data.labels), output_dir / "split" / "test.csv",
                     settings.latency_sentences, settings.repeats, settings.warmup, peaks)
    for row in rows:
        entry = published.get(row["model"])
        row["published"] = entry is not None
        if entry is not None:  # the published scores replace those of the random weights
            row.update(acc=entry.acc, f1_macro=entry.f1_macro, kl_teacher_student=None, predictions=None,
                       agreement_with_teacher=None, ece=None,
                       f1_macro_delta=round(entry.f1_macro - rows[0]["f1_macro"], 4),
                       **{key: None for key in row if key.startswith("f1_") and
                          key not in ("f1_macro", "f1_macro_delta")})
    markdown = write_outputs(rows, machine, peaks, output_dir)
    save_confusion_matrices({row["model"]: row["confusion_matrix"] for row in rows
                             if not row["published"]}, list(cfg.data.labels),
                            output_dir / "confusion_matrices.png")
    plot_pareto(rows, output_dir / "pareto.png", machine)
    log_wandb(cfg, rows, output_dir / "pareto.png")
    print(markdown)
    return {"metrics": {"benchmark/models": len(rows)}, "models": rows, "peaks_gflops": peaks,
            "machine": machine, "wall_time_s": round(time.perf_counter() - started, 1)}


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
