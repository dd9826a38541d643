"""A distillation study: fresh (same stage-2 settings, and converged) / CE / KD (T = 2, 5, 9) /
PKD / TinyBERT for one student, over several seeds, as one Hydra multirun.

    python scripts/study.py --name NAME [--methods fresh,ce,kd_t2,...] [--seeds 3]
        [--launcher local|slurm] [--collect] -- [train.py overrides]
    python scripts/study.py --name mpnet_minilm -- teacher=mpnet_base student=minilm news.max_sentences=20000

It runs ``python train.py -m +experiment=study study_name=NAME study_method=... seed=...``: one
job per method and seed, into ``outputs/study/NAME/<method>/seed<S>``, in this process's
turn by default, as local processes (``--launcher local``) or SLURM jobs (``--launcher slurm``,
the ``hydra/launcher`` configs). The methods are the ``study_method`` config group. One teacher
serves every job (``teacher_seed``): the first job trains and stores it and the others reuse it,
so seeds vary the students only; stored pseudo-labels are shared. A job whose folder already
has results returns them (a rerun after a crash trains only what is missing). Then, from the
jobs' folders: ``study.csv``, ``study.json`` and ``study.md`` (one row per model, the teacher
first, each score the mean over seeds with its standard deviation), ``confusion_matrices.png``
(fresh, CE, KD T=5, PKD; first seed), ``temperature_sweep.png`` (KD macro-F1 against T) and
``pkd_beta_sweep.png`` (PKD macro-F1 against beta). ``--collect`` writes them from the folders
of a multirun that ran elsewhere (say, on a cluster) without running anything.
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

from fincompress.errors import stop_on_ctrl_c
from fincompress.tables import markdown_table

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "fincompress" / "conf"
# the study's methods: the study_method config group (each file selects an experiment and sets
# what the method changes), in the order of +experiment=study's sweep
METHODS = OmegaConf.load(CONF / "experiment" / "study.yaml").hydra.sweeper.params.study_method.split(",")
FIGURE = ["fresh", "ce", "kd_t5", "pkd"]
COLUMNS = ["model", "parameters_m", "acc", "f1_macro", "f1_negative", "f1_neutral", "f1_positive",
           "kl_teacher_student", "agreement_with_teacher", "ece", "stage1_s", "stage2_s"]


def collect(folder: Path) -> dict:
    """One job's outcome from its folder: its results (``ok``), or why it has none: ``skipped``
    (a method this student cannot do, said in FAILED.json), ``failed`` or ``missing``."""
    results, failed = folder / "results.json", folder / "FAILED.json"
    if results.is_file():
        return {"status": "ok", **json.loads(results.read_text())}
    if failed.is_file():
        error = json.loads(failed.read_text())["error"]
        kind, _, message = error.partition(": ")
        return {"status": "skipped" if kind == "StudentMismatchError" else "failed",
                "error": message if kind == "StudentMismatchError" else error}
    return {"status": "missing", "error": f"no results in {folder}"}


def own_student(method: str) -> str | None:
    """The student a study method's config chooses (``override /student: NAME``), or None."""
    for entry in OmegaConf.load(CONF / "study_method" / f"{method}.yaml").defaults:
        if "override /student" in entry:  # a defaults entry ``override /student: NAME``
            return entry["override /student"]
    return None


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
    """The value of ``setting`` a study method runs with: its own setting, else the method
    config's default; None for unknown methods and methods of another experiment."""
    path = CONF / "study_method" / f"{method}.yaml"
    if not path.is_file():
        return None
    study_method = OmegaConf.load(path)
    if f"/experiment/{experiment}" not in study_method.defaults:
        return None
    value = OmegaConf.select(study_method, setting)
    if value is None:
        value = OmegaConf.select(OmegaConf.load(CONF / "method" / f"{experiment}.yaml"),
                                 setting.removeprefix("method."))
    return float(value)


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
    parser.add_argument("--launcher", choices=["local", "slurm"],
                        help="run the jobs as local processes or SLURM jobs (hydra/launcher); "
                             "default: one after another in the multirun's process")
    parser.add_argument("--collect", action="store_true",
                        help="only write the table and plots from the jobs' folders")
    parser.add_argument("overrides", nargs="*", help="train.py overrides, after --")
    args = parser.parse_args()
    methods = args.methods.split(",")
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; known: {', '.join(METHODS)}")
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    root = Path(args.output_root) / "study" / args.name
    seeds = list(range(42, 42 + args.seeds))
    if args.collect and not root.is_dir():
        parser.error(f"--collect: {root} does not exist (no multirun wrote there)")
    if not args.collect:
        # a method whose config picks its own student (TinyBERT: one cut from the teacher's
        # encoder) runs in a multirun of its own with that student last: a student=... among
        # the study's overrides would otherwise replace the config's choice
        groups: dict[str | None, list[str]] = {}
        for method in methods:
            groups.setdefault(own_student(method), []).append(method)
        for student, group in groups.items():
            command = [sys.executable, "train.py", "-m", "+experiment=study",
                       f"study_name={args.name}", f"paths.output_root={args.output_root}",
                       f"study_method={','.join(group)}", f"seed={','.join(map(str, seeds))}",
                       *([f"hydra/launcher={args.launcher}"] if args.launcher else []),
                       *args.overrides, *([f"student={student}"] if student else [])]
            print(f"[{args.name}] {' '.join(command[1:])}", flush=True)
            started = time.perf_counter()
            # a failed job fails the multirun only after the others ran; the table says which
            code = subprocess.run(command, cwd=ROOT).returncode
            print(f"[{args.name}] multirun ended (exit {code}) after "
                  f"{time.perf_counter() - started:.0f} s")
    runs: dict[str, dict[int, dict]] = {}
    for method in methods:
        for seed in seeds:
            runs.setdefault(method, {})[seed] = result = collect(root / method / f"seed{seed}")
            if result["status"] != "ok":
                print(f"[{args.name}] {method} seed {seed}: {result['status']}: {result['error']}")
    root.mkdir(parents=True, exist_ok=True)
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
    if any(r["status"] in ("failed", "missing") for seeds in runs.values() for r in seeds.values()):
        sys.exit(1)


if __name__ == "__main__":
    stop_on_ctrl_c(main, "[study] stopped; the jobs that finished are kept, and the same command runs "
                   "only what is missing")
