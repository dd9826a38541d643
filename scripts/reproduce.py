"""The whole study in one command, with the wall time of every stage.

    python scripts/reproduce.py [--name repro] [--seeds 1] [--output-root outputs] -- [overrides]
    python scripts/reproduce.py -- teacher=mpnet_base student=minilm news.max_sentences=20000
    python scripts/reproduce.py --stages teacher,teacher_int8,benchmark    # a subset

Stages, in order; each is a ``train.py`` run (or the study script) into
``<output-root>/reproduce/<name>/<stage>``, and everything they train is a stored stage, so a
rerun after a crash resumes where it stopped (``--redo STAGE`` runs a finished stage again):

1. ``teacher``: the teacher (MPNet-base offline with ``teacher=mpnet_base``);
2. ``study``: fresh, converged fresh, CE, KD T=2/5/9, PKD and TinyBERT students (pseudo-labels
   made once), ``--seeds`` runs each;
3. ``ptq`` and ``qat``: INT8 of the best distilled student (chosen on validation);
   ``teacher_int8``: the teacher itself in INT8 (post-training);
4. ``prune30``, ``prune30_int8`` and ``prune50``: 30% of the teacher's heads, then that model
   in INT8; half its heads and FFN neurons;
5. ``compress``: distil -> prune -> QAT INT8, stacked;
6. ``benchmark``: every artifact above measured side by side on this CPU;
7. ``frontier``: the small-student frontier (``scripts/frontier.py``: two-layer students
   distilled on all the news, INT8, against the same students fine-tuned to convergence and
   quantized the same way, and the static tier; ``--seeds`` seeds, its own benchmark);
8. the report: ``report.md`` (tables and figures) from the files the stages wrote.

``stages.json`` records each stage's command, status and wall time, and their sum (a resumed run
counts the stages that ran earlier at their recorded times). The overrides after ``--``
go to every stage; ``--stage-overrides STAGE=OVERRIDE`` adds one to one stage only (for
``frontier``, one that starts with ``--`` is a flag of ``scripts/frontier.py``, such as
``frontier=--no-static``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from fincompress.errors import stop_on_ctrl_c
from fincompress.stages.benchmark import artifacts_override

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["teacher", "study", "ptq", "qat", "teacher_int8", "prune30", "prune30_int8", "prune50",
          "compress", "benchmark", "frontier"]


def run(stage: str, command: list[str], folder: Path, record: dict) -> dict:
    """Run one stage unless it finished earlier; its log goes to ``<stage>.log``."""
    done = record.get(stage, {})
    if done.get("status") == "ok":
        print(f"[reproduce] {stage}: done earlier ({done['wall_time_s']} s)")
        return done
    folder.parent.mkdir(parents=True, exist_ok=True)
    print(f"[reproduce] {stage}: {' '.join(command)}", flush=True)
    started = time.perf_counter()
    with open(folder.parent / f"{stage}.log", "w") as log:
        code = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    result = {"command": command, "status": "ok" if code == 0 else f"failed (exit {code})",
              "wall_time_s": round(time.perf_counter() - started, 1)}
    print(f"[reproduce] {stage}: {result['status']}, {result['wall_time_s']} s", flush=True)
    return result


def train(folder: Path, *overrides: str) -> list[str]:
    return [sys.executable, "train.py", *overrides, f"hydra.run.dir={folder}"]


def best_student(study_json: Path) -> dict:
    """The distilled method whose students score best on validation (mean over seeds), and its
    first seed's student folder."""
    runs = json.loads(study_json.read_text())["runs"]
    scores = {}
    for method, seeds in runs.items():
        ok = [r for r in seeds.values() if r["status"] == "ok" and not method.startswith("fresh")]
        if ok:
            scores[method] = sum(r["student"]["best_val_f1_macro"] for r in ok) / len(ok)
    if not scores:
        raise RuntimeError(f"no distilled student finished in {study_json}")
    method = max(scores, key=scores.get)
    first = next(r for r in runs[method].values() if r["status"] == "ok")
    return {"method": method, "val_f1_macro": scores[method], "dir": first["student_dir"],
            "teacher_dir": first["teacher_dir"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="repro")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--output-root", default="outputs")
    parser.add_argument("--methods", help="the study's methods (default: all of them, the "
                                          "study_method config group)")
    parser.add_argument("--stage-overrides", action="append", default=[], metavar="STAGE=OVERRIDE",
                        help="an override for one stage only (repeatable)")
    parser.add_argument("--redo", action="append", default=[], choices=STAGES,
                        help="run this stage again although it finished earlier (repeatable)")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help="the stages to run, comma-separated (the teacher always; ptq and qat "
                             "need the study); default: all")
    parser.add_argument("overrides", nargs="*", help="train.py overrides for every stage, after --")
    args = parser.parse_args()
    wanted = [stage for stage in args.stages.split(",") if stage]
    if set(wanted) - set(STAGES) or "teacher" not in wanted:
        parser.error(f"--stages {args.stages!r}: a comma-separated subset of {', '.join(STAGES)} "
                     "that holds teacher")
    if {"ptq", "qat"} & set(wanted) and "study" not in wanted:
        parser.error("--stages: ptq and qat quantize the study's best student; add study")
    extra: dict[str, list[str]] = {}
    for item in args.stage_overrides:
        stage, _, override = item.partition("=")
        if stage not in STAGES or not override:
            parser.error(f"--stage-overrides {item!r}: expected STAGE=OVERRIDE with STAGE one of "
                         f"{', '.join(STAGES)}")
        extra.setdefault(stage, []).append(override)
    root = (Path(args.output_root) / "reproduce" / args.name).resolve()
    output_root = str(Path(args.output_root).resolve())
    common = [*args.overrides, f"paths.output_root={output_root}"]
    state_file = root / "stages.json"
    record = json.loads(state_file.read_text()) if state_file.is_file() else {}

    for stage in args.redo:
        record.pop(stage, None)

    def step(stage: str, command: list[str]) -> bool:
        if stage not in wanted:
            return False
        record[stage] = run(stage, command, root / stage, record)
        for name in STAGES:  # stages.json lists the stages in their order
            if name in record:
                record[name] = record.pop(name)
        root.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps(record, indent=2))
        return record[stage]["status"] == "ok"

    started = time.perf_counter()
    if not step("teacher", train(root / "teacher", "+experiment=teacher", *common,
                                 *extra.get("teacher", []))):
        sys.exit(f"the teacher failed; see {root / 'teacher.log'}")
    pin = [f"teacher_checkpoint={root / 'teacher' / 'model'}"]  # every later stage uses it
    best = None
    methods = ["--methods", args.methods] if args.methods else []
    if step("study", [sys.executable, "scripts/study.py", "--name", args.name, *methods,
                      "--seeds", str(args.seeds), "--output-root", output_root, "--",
                      *common, *pin, *extra.get("study", [])]):
        best = best_student(Path(output_root) / "study" / args.name / "study.json")
        record["best_student"] = best
        print(f"[reproduce] best distilled student on validation: {best['method']} "
              f"({best['val_f1_macro']:.4f}), {best['dir']}")
        step("ptq", train(root / "ptq", "+experiment=ptq", f"quantize.source={best['dir']}",
                          *common, *pin, *extra.get("ptq", [])))
        step("qat", train(root / "qat", "+experiment=qat", f"qat.source={best['dir']}", *common,
                          *pin, *extra.get("qat", [])))
    step("teacher_int8", train(root / "teacher_int8", "+experiment=ptq",
                               f"quantize.source={root / 'teacher' / 'model'}", *common, *pin,
                               *extra.get("teacher_int8", [])))
    step("prune30", train(root / "prune30", "+experiment=prune", "prune.heads=0.3", "prune.ffn=0",
                          *common, *pin, *extra.get("prune30", [])))
    prune30 = root / "prune30" / "results.json"
    if prune30.is_file():
        pruned = json.loads(prune30.read_text())["models"][-1]["dir"]
        step("prune30_int8", train(root / "prune30_int8", "+experiment=ptq",
                                   f"quantize.source={pruned}", *common, *pin,
                                   *extra.get("prune30_int8", [])))
    step("prune50", train(root / "prune50", "+experiment=prune", "prune.heads=0.5",
                          "prune.ffn=0.5", *common, *pin, *extra.get("prune50", [])))
    step("compress", train(root / "compress", "+experiment=compress", "compress.steps=[prune,qat]",
                           *common, *pin,
                           *extra.get("compress", [])))
    artifacts = {"teacher": str(root / "teacher" / "model")}
    if best:
        artifacts[f"{best['method']} student"] = best["dir"]
    for stage in ("ptq", "qat", "teacher_int8", "prune30_int8"):
        results = root / stage / "results.json"
        if results.is_file():
            name = f"{best['method']} {stage} int8" if stage in ("ptq", "qat") and best else stage
            artifacts[name] = json.loads(results.read_text())["chosen"]["dir"]
    for stage in ("prune30", "prune50", "compress"):
        results = root / stage / "results.json"
        if results.is_file():
            artifacts[f"{stage} final"] = json.loads(results.read_text())["models"][-1]["dir"]
    step("benchmark", train(root / "benchmark", "+experiment=benchmark",
                            artifacts_override(artifacts), *common, *pin,
                            *extra.get("benchmark", [])))
    frontier_flags = [item for item in extra.get("frontier", []) if item.startswith("--")]
    step("frontier", [sys.executable, "scripts/frontier.py", "--name", args.name,
                      "--seeds", str(args.seeds), "--output-root", output_root, *frontier_flags,
                      "--", *common, *pin,
                      *[item for item in extra.get("frontier", []) if item not in frontier_flags]])
    record["total_wall_time_s"] = round(sum(record[s]["wall_time_s"] for s in STAGES if s in record), 1)
    record["this_invocation_s"] = round(time.perf_counter() - started, 1)
    state_file.write_text(json.dumps(record, indent=2))
    report = subprocess.run([sys.executable, "scripts/report.py", str(root)], cwd=ROOT)
    failed = [s for s in wanted if record.get(s, {}).get("status") != "ok"]
    print(f"[reproduce] done: stages {record['total_wall_time_s']} s in all, this invocation "
          f"{record['this_invocation_s']} s; "
          + (f"failed stages: {failed}" if failed else "every stage ok"))
    if failed or report.returncode:
        sys.exit(1)


if __name__ == "__main__":
    stop_on_ctrl_c(main, "[reproduce] stopped; stages.json keeps the stages that finished, and the same "
                   "command resumes from the stage that was running")
