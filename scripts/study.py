"""A distillation study: fresh (same stage-2 settings, and converged) / CE / KD (T = 2, 5, 9) /
PKD / TinyBERT for one student, over several seeds.

    python scripts/study.py --name NAME [--methods fresh,ce,kd_t2,...] [--seeds 3] -- [train.py overrides]
    python scripts/study.py --name mpnet_minilm -- teacher=mpnet_base student=minilm news.max_sentences=20000

Each method runs once per seed as ``python train.py +experiment=... seed=S`` into
``outputs/study/NAME/<method>/seed<S>``. The teacher is trained (or found) by the first run and
pinned for every later one (``teacher_checkpoint``), so seeds vary the students only; stored
pseudo-labels are shared. A run whose folder already has results is not run again (resume after
a crash). Writes ``study.csv``, ``study.json`` and ``study.md`` (one row per model, the teacher
first, each score the mean over seeds with its standard deviation), ``confusion_matrices.png``
(fresh, CE, KD T=5, PKD; first seed), ``temperature_sweep.png`` (KD macro-F1 against T) and
``pkd_beta_sweep.png`` (PKD macro-F1 against beta).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from fincompress.tables import markdown_table

ROOT = Path(__file__).resolve().parents[1]
# each method's overrides, placed after the study's own (so a method's choice wins)
METHODS = {
    # the student fine-tuned on PhraseBank alone: with the distilled students' stage-2 settings,
    # and given up to 10 epochs with the best one on validation kept (the converged baseline
    # that a distillation gain must beat)
    "fresh": ["+experiment=fresh"],
    "fresh_converged": ["+experiment=fresh", "student.stage2_epochs=10"],
    "ce": ["+experiment=ce"],
    "kd_t2": ["+experiment=kd", "method.temperature=2"],
    "kd_t5": ["+experiment=kd", "method.temperature=5"],
    "kd_t9": ["+experiment=kd", "method.temperature=9"],
    "pkd": ["+experiment=pkd"],
    # PKD's beta against the T^2-scaled KD term: seed000's 0.02 (the default) and Sun et al.'s
    # range; each run logs train/share_pkd, the PKD term's share of the loss
    "pkd_b1": ["+experiment=pkd", "method.pkd_beta=1"],
    "pkd_b10": ["+experiment=pkd", "method.pkd_beta=10"],
    "pkd_b100": ["+experiment=pkd", "method.pkd_beta=100"],
    # the teacher runs on the student's tokens: a student cut from the teacher's pretrained
    # encoder (three layers), whatever the study's student
    "tinybert": ["+experiment=tinybert", "student=truncated"],
}
FIGURE = ["fresh", "ce", "kd_t5", "pkd"]
COLUMNS = ["model", "parameters_m", "acc", "f1_macro", "f1_negative", "f1_neutral", "f1_positive",
           "kl_teacher_student", "agreement_with_teacher", "ece", "stage1_s", "stage2_s"]


def run_method(name: str, folder: Path, study: str, overrides: list[str], output_root: str) -> dict:
    results = folder / "results.json"
    if results.is_file():
        print(f"[{study}] {name}: done earlier, reusing {results}")
        return {"status": "ok", **json.loads(results.read_text())}
    command = [sys.executable, "train.py", f"study_name={study}", f"hydra.run.dir={folder}",
               f"paths.output_root={output_root}", *overrides, *METHODS[name]]
    print(f"[{study}] {name}: {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    log = folder.with_suffix(".log")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode
    from fincompress.stages.distill import StudentMismatchError  # the training stack, on use

    if code == StudentMismatchError.exit_code:
        reason = [line for line in log.read_text(errors="replace").splitlines()
                  if line.startswith("error: ")][-1].removeprefix("error: ")
        print(f"[{study}] {name}: skipped: {reason}")
        return {"status": "skipped", "error": reason}
    if code != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:]
        print(f"[{study}] {name}: FAILED ({tail}); see {log}")
        return {"status": "failed", "error": tail[0] if tail else f"exit {code}"}
    print(f"[{study}] {name}: {time.perf_counter() - started:.0f} s")
    return {"status": "ok", **json.loads(results.read_text())}


def table_rows(runs: dict[str, dict[int, dict]]) -> list[dict]:
    """One row per model: each score the mean over the seeds that ran, with ``<score>_std``
    beside it (0 for one seed) and ``seeds`` counting them."""
    done = [r for seeds in runs.values() for r in seeds.values() if r["status"] == "ok"]
    rows = []
    if done:
        first = done[0]
        rows.append({"model": f"teacher {first['teacher_source']}", "seeds": 1,
                     "parameters_m": first["teacher_parameters"] / 1e6, **first["teacher"]})
    for name, seeds in runs.items():
        ok = [r for r in seeds.values() if r["status"] == "ok"]
        if not ok:
            result = next(iter(seeds.values()))
            rows.append({"model": f"{name} ({result['status']}: {result['error'][:80]})"})
            continue
        row = {"model": f"{name} {ok[0]['student_name']}", "seeds": len(ok),
               "parameters_m": ok[0]["student_parameters"] / 1e6}
        for key in COLUMNS[2:]:
            values = [r["student"].get(key, r["timings"].get(key)) for r in ok]
            values = [v for v in values if isinstance(v, (int, float))]
            if values:
                row[key] = statistics.fmean(values)
                row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    cells = [{"seeds": str(row.get("seeds", "")),
              **{c: cell_text(row.get(c, ""), row.get(f"{c}_std")) for c in COLUMNS}} for row in rows]
    return markdown_table(cells, ["seeds", *COLUMNS])


def cell_text(value, std=None) -> str:
    if isinstance(value, float):
        text = f"{value:.1f}" if value >= 10 else f"{value:.4f}"
        if std:  # spread over seeds
            text += f" ± {std:.1f}" if value >= 10 else f" ± {std:.4f}"
        return text
    return str(value)


# the swept settings with a plot each: the setting, its axis label, the file
SWEEPS = [("method.temperature", "KD temperature T", "temperature_sweep.png", "kd"),
          ("method.pkd_beta", "PKD beta (log scale)", "pkd_beta_sweep.png", "pkd")]


def swept_value(method: str, setting: str, experiment: str) -> float | None:
    """The value of ``setting`` a study method runs with: its own override, else the method
    config's default; None for methods of another experiment."""
    overrides = METHODS.get(method, [])
    if f"+experiment={experiment}" not in overrides:
        return None
    for override in overrides:
        if override.startswith(f"{setting}="):
            return float(override.partition("=")[2])
    config = OmegaConf.load(ROOT / "fincompress" / "conf" / "method" / f"{experiment}.yaml")
    return float(OmegaConf.select(config, setting.removeprefix("method.")))


def plot_sweep(rows: list[dict], setting: str, label: str, path: Path, experiment: str) -> bool:
    """Students' test macro-F1 (mean ± std over seeds) against a swept setting; False when
    fewer than two of its values ran."""
    points = sorted((value, row) for row in rows if "f1_macro" in row
                    for value in [swept_value(row["model"].split()[0], setting, experiment)]
                    if value is not None)
    if len(points) < 2:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 3.5))
    axes.errorbar([v for v, _ in points], [r["f1_macro"] for _, r in points],
                  yerr=[r.get("f1_macro_std", 0) for _, r in points], fmt="o-", capsize=4)
    if "log" in label:
        axes.set_xscale("log")
    axes.set_xlabel(label)
    axes.set_ylabel("test macro-F1 (mean ± std over seeds)")
    axes.set_xticks([v for v, _ in points], [f"{v:g}" for v, _ in points])
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="study name: folder and W&B group")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--output-root", default="outputs")
    parser.add_argument("--seeds", type=int, default=3, help="runs per method (seeds 42, 43, ...)")
    parser.add_argument("overrides", nargs="*", help="train.py overrides, after --")
    args = parser.parse_args()
    methods = args.methods.split(",")
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; known: {', '.join(METHODS)}")
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    root = Path(args.output_root) / "study" / args.name
    overrides = list(args.overrides)
    runs: dict[str, dict[int, dict]] = {}
    for seed in range(42, 42 + args.seeds):
        for method in methods:
            result = run_method(method, root / method / f"seed{seed}", args.name,
                                [*overrides, f"seed={seed}"], args.output_root)
            runs.setdefault(method, {})[seed] = result
            if result["status"] == "ok" and not any(o.startswith("teacher_checkpoint=")
                                                    for o in overrides):
                overrides.append(f"teacher_checkpoint={result['teacher_dir']}")  # pin it
    rows = table_rows(runs)
    with open(root / "study.csv", "w", newline="") as f:
        fields = ["seeds", *[k for c in COLUMNS for k in (c, f"{c}_std")]]
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (root / "study.json").write_text(json.dumps({"overrides": args.overrides, "rows": rows,
                                                 "runs": runs}, indent=2, default=str))
    table = markdown(rows)
    (root / "study.md").write_text(table + "\n")
    firsts = {m: next(iter(seeds.values())) for m, seeds in runs.items()}
    matrices = {f"{m}: macro-F1 {firsts[m]['student']['f1_macro']:.3f}":
                firsts[m]["student"]["confusion_matrix"]
                for m in FIGURE if m in firsts and firsts[m]["status"] == "ok"}
    if matrices:
        labels = ["negative", "neutral", "positive"]
        from fincompress.metrics import save_confusion_matrices

        save_confusion_matrices(matrices, labels, root / "confusion_matrices.png")
    print(table)
    plots = [name for setting, label, name, experiment in SWEEPS
             if plot_sweep(rows, setting, label, root / name, experiment)]
    print(f"\nwritten: {root}/study.{{csv,json,md}}, confusion_matrices.png"
          + "".join(f", {name}" for name in plots))
    if any(r["status"] == "failed" for seeds in runs.values() for r in seeds.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
