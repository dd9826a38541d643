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

import time
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fincompress.artifacts import write_checkpoint_info
from fincompress.compress.int8 import resolve_overflow_fix
from fincompress.data.datamodule import data_settings, phrasebank_split
from fincompress.data.phrasebank import calibration_texts
from fincompress.files import write_json
from fincompress.models.sources import load_classifier
from fincompress.scoring import COMPARISON_COLUMNS, caption, score, with_mib
from fincompress.stages.teacher import ensure_teacher
from fincompress.store import ensure_stage, folder_fingerprint
from fincompress.tables import markdown_table
from fincompress.training import choose_precision


def run_ptq(cfg: DictConfig) -> dict:
    started = time.perf_counter()
    machine = choose_precision(cfg)
    labels = list(cfg.data.labels)
    check_backends(cfg.quantize)  # before any work
    source_dir = ensure_teacher(cfg) if cfg.quantize.source is None else Path(cfg.quantize.source)
    if not (source_dir / "config.json").is_file():
        raise FileNotFoundError(f"quantize.source {source_dir} holds no model (no config.json)")
    output_dir = Path(cfg.paths.output_dir)
    split = phrasebank_split(cfg, output_dir / "split")
    calibration = calibration_texts(split.splits["train"], cfg.quantize.calibration_sentences,
                                    cfg.seed)
    artifacts = {name: export_int8(cfg, name, source_dir, calibration, machine)
                 for name in cfg.quantize.backends}
    chosen, choice = choose_backend(cfg, source_dir, artifacts, labels,
                                    output_dir / "split" / "val.csv", machine)
    result = score({"source (torch fp32)": source_dir,
                    **{f"{name} int8": folder for name, folder in artifacts.items()}},
                   labels, output_dir / "split" / "test.csv", machine,
                   repeats=cfg.quantize.timing_repeats,
                   latency_sentences=cfg.quantize.latency_sentences,
                   min_round_s=cfg.benchmark.min_round_s)
    result["quantize"] = OmegaConf.to_container(cfg.quantize, resolve=True)
    result["chosen"] = {"backend": chosen, "dir": str(artifacts[chosen]), "validation": choice,
                        "min_agreement": cfg.quantize.min_agreement}
    result["wall_time_s"] = round(time.perf_counter() - started, 1)
    write_json(result, output_dir / "results.json")
    print(table(result))
    print(choice_line(result["chosen"]))
    chosen_row = next(row for row in result["models"] if row["dir"] == str(artifacts[chosen]))
    return {"metrics": {"test/f1_macro": chosen_row["f1_macro"]}, **result}


def table(result: dict) -> str:
    """The comparison table of a PTQ, QAT or stacked run."""
    return f"\n{caption(result)}\n" + markdown_table(with_mib(result["models"]),
                                                      COMPARISON_COLUMNS) + "\n"


def check_backends(quantize: DictConfig) -> None:
    if not quantize.backends:
        raise ValueError("quantize.backends is empty: name at least one of "
                         f"{', '.join(quantize.engines)}")
    unknown = [name for name in quantize.backends if name not in quantize.engines]
    if unknown:
        raise ValueError(f"quantize.backends: unknown backend(s) {unknown}; known: "
                         f"{', '.join(quantize.engines)}")


def int8_inputs(cfg: DictConfig, name: str, source_dir: Path) -> dict:
    """What decides a stored INT8 artifact: the source model, the backend's settings (an
    ``auto`` overflow fix as this CPU resolves it: a store shared by machines with and without
    VNNI keeps both artifacts), the calibration set (its size, and the data and seed it is
    drawn with)."""
    backend = OmegaConf.to_container(cfg.quantize.engines[name], resolve=True)
    if "overflow_fix" in backend:
        backend["overflow_fix"] = resolve_overflow_fix(backend["overflow_fix"])
    return {"source": folder_fingerprint(source_dir), "backend": backend,
            "calibration_sentences": cfg.quantize.calibration_sentences,
            "data": data_settings(cfg), "seed": cfg.seed}


def export_int8(cfg: DictConfig, name: str, source_dir: Path, calibration: list[str],
                machine: dict) -> Path:
    """The stored INT8 artifact of ``source_dir`` made by backend ``name`` (built once)."""
    backend = instantiate(cfg.quantize.engines[name])

    def build(staging: Path) -> None:
        labels = list(cfg.data.labels)
        model, tokenizer = load_classifier(str(source_dir), labels)
        validation = None
        if getattr(backend, "max_drop", None) is not None:  # accuracy control: on validation
            validation = [(row.text, labels.index(row.label))
                          for row in phrasebank_split(cfg).splits["val"]]
        record = backend.export(model, tokenizer, calibration, staging / "model",
                                cfg.data.max_length, **({"validation": validation}
                                                        if validation else {}))
        write_checkpoint_info(staging / "model", {
            "stage": "int8", "source": str(source_dir), "labels": list(cfg.data.labels),
            "steps": [record], "machine": machine})

    folder, reused = ensure_stage(cfg.paths.output_root, "int8", int8_inputs(cfg, name, source_dir),
                                  build)
    print(f"{'reusing' if reused else 'stored'} {name} artifact {folder / 'model'}")
    return folder / "model"


def choose_backend(cfg, source_dir: Path, artifacts: dict[str, Path], labels: list[str],
                   val_file: Path, machine: dict) -> tuple[str, dict]:
    """The fastest artifact (batch-32 on the validation split, on this machine) whose labels
    agree with the fp32 source on at least ``quantize.min_agreement`` of the validation
    sentences; when none does, the most faithful. Each measured backend says whether it
    reached that share (``faithful``). One artifact: itself, unmeasured."""
    if len(artifacts) == 1:
        return next(iter(artifacts)), {}
    measured = score({"source": source_dir, **artifacts}, labels, val_file, machine,
                     repeats=cfg.quantize.timing_repeats,
                     min_round_s=cfg.benchmark.min_round_s)["models"][1:]
    rows = {name: {"agreement": row["agreement_with_teacher"],
                   "throughput_sorted": row["throughput_sorted"],
                   "faithful": row["agreement_with_teacher"] >= cfg.quantize.min_agreement}
            for name, row in zip(artifacts, measured)}
    faithful = [name for name, row in rows.items() if row["faithful"]]
    if faithful:
        chosen = max(faithful, key=lambda name: rows[name]["throughput_sorted"])
    else:
        chosen = max(rows, key=lambda name: rows[name]["agreement"])
    return chosen, rows


def choice_line(chosen: dict) -> str:
    if not chosen["validation"]:
        return f"INT8 backend: {chosen['backend']} (the only one configured)"
    measured = "; ".join(f"{name} {row['throughput_sorted']:.1f} sent/s, agreement "
                         f"{row['agreement']:.3f}" for name, row in chosen["validation"].items())
    line = (f"INT8 backend chosen on this machine: {chosen['backend']} (validation split: "
            f"{measured})")
    if not any(row["faithful"] for row in chosen["validation"].values()):
        line += (f"\n  no backend's labels agree with the fp32 source on quantize.min_agreement="
                 f"{chosen['min_agreement']} of the validation split: {chosen['backend']} is "
                 "only the most faithful")
    return line
