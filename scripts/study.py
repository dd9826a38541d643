"""A distillation study: fresh / CE / KD (T = 2, 5, 9) / PKD / TinyBERT for one student.

    python scripts/study.py --name NAME [--methods fresh,ce,kd_t2,...] -- [train.py overrides]
    python scripts/study.py --name mpnet_minilm -- teacher=mpnet_base student=minilm news.max_sentences=20000

Each method runs as ``python train.py +experiment=...`` into ``outputs/study/NAME/<method>``,
sharing the stored teacher and pseudo-labels; a method whose folder already has results is not
run again (resume after a crash). Writes ``study.csv``, ``study.json`` and ``study.md`` (one row
per model, the teacher first) and ``confusion_matrices.png`` (fresh, CE, KD T=5, PKD).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

from fincompress.metrics import save_confusion_matrices
from fincompress.pipeline import StudentMismatchError

METHODS = {
    "fresh": ["+experiment=fresh"],
    "ce": ["+experiment=ce"],
    "kd_t2": ["+experiment=kd", "method.temperature=2"],
    "kd_t5": ["+experiment=kd", "method.temperature=5"],
    "kd_t9": ["+experiment=kd", "method.temperature=9"],
    "pkd": ["+experiment=pkd"],
    "tinybert": ["+experiment=tinybert"],
}
FIGURE = ["fresh", "ce", "kd_t5", "pkd"]
COLUMNS = ["model", "parameters_m", "acc", "f1_macro", "f1_negative", "f1_neutral", "f1_positive",
           "kl_teacher_student", "agreement_with_teacher", "ece", "stage1_s", "stage2_s"]


def run_method(name: str, folder: Path, study: str, overrides: list[str], output_root: str) -> dict:
    results = folder / "results.json"
    if results.is_file():
        print(f"[{study}] {name}: done earlier, reusing {results}")
        return {"status": "ok", **json.loads(results.read_text())}
    command = [sys.executable, "train.py", *METHODS[name], f"study_name={study}",
               f"hydra.run.dir={folder}", f"paths.output_root={output_root}", *overrides]
    print(f"[{study}] {name}: {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    log = folder.with_suffix(".log")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode
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


def table_rows(runs: dict[str, dict]) -> list[dict]:
    done = {name: r for name, r in runs.items() if r["status"] == "ok"}
    rows = []
    if done:
        first = next(iter(done.values()))
        rows.append({"model": f"teacher {first['teacher_source']}",
                     "parameters_m": first["teacher_parameters"] / 1e6, **first["teacher"]})
    for name, result in runs.items():
        if result["status"] != "ok":
            rows.append({"model": f"{name} ({result['status']}: {result['error'][:80]})"})
            continue
        rows.append({"model": f"{name} {result['student_name']}",
                     "parameters_m": result["student_parameters"] / 1e6, **result["student"],
                     **result["timings"]})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [row.get(c, "") for c in COLUMNS]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.1f}" if value >= 10 else f"{value:.4f}"
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="study name: folder and W&B group")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--output-root", default="outputs")
    parser.add_argument("overrides", nargs="*", help="train.py overrides, after --")
    args = parser.parse_args()
    methods = args.methods.split(",")
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; known: {', '.join(METHODS)}")
    root = Path(args.output_root) / "study" / args.name
    runs = {m: run_method(m, root / m, args.name, args.overrides, args.output_root)
            for m in methods}
    rows = table_rows(runs)
    with open(root / "study.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (root / "study.json").write_text(json.dumps({"overrides": args.overrides, "rows": rows,
                                                 "runs": runs}, indent=2, default=str))
    table = markdown(rows)
    (root / "study.md").write_text(table + "\n")
    matrices = {f"{m}: macro-F1 {runs[m]['student']['f1_macro']:.3f}":
                runs[m]["student"]["confusion_matrix"]
                for m in FIGURE if m in runs and runs[m]["status"] == "ok"}
    if matrices:
        labels = ["negative", "neutral", "positive"]
        save_confusion_matrices(matrices, labels, root / "confusion_matrices.png")
    print(table)
    print(f"\nwritten: {root}/study.{{csv,json,md}}, confusion_matrices.png")
    if any(r["status"] == "failed" for r in runs.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
