"""The study's report, written from the files its stages wrote (``scripts/reproduce.py``).

    python scripts/report.py outputs/reproduce/NAME [--readme README.md] [--seeds-study DIR]

Writes ``report.md`` in that folder: the machine, each stage's wall time, the benchmark table
and plot, the study table (mean ± std over seeds) and plots, and the INT8, QAT, pruning and
stacked tables. With ``--readme`` the same markdown replaces the README's text between
``<!-- results:begin -->`` and ``<!-- results:end -->``, so that every number there comes from
these files.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
from pathlib import Path

from fincompress.scoring import COMPARISON_COLUMNS, with_mib
from fincompress.tables import markdown_table

START, END = "<!-- results:begin -->", "<!-- results:end -->"


def compare_table(result: dict) -> str:
    """A scored-side-by-side result (prune, PTQ, QAT, stacked) as markdown."""
    return markdown_table(with_mib(result["models"]), COMPARISON_COLUMNS)


def loss_shares(study: Path) -> str | None:
    """Per distilled method (first seed) and stage-1 epoch: each weighted loss term's mean share
    of the loss (``train/share_*``, logged by the training module) and the validation macro-F1
    at the epoch's end; shows which term drove each student."""
    runs = json.loads((study / "study.json").read_text())["runs"]
    lines = []
    for method, seeds in runs.items():
        run = next((r for r in seeds.values() if r["status"] == "ok"), None)
        info = Path(run["student_dir"]) / "checkpoint_info.json" if run else None
        stage1 = json.loads(info.read_text()).get("stage1") if info and info.is_file() else None
        metrics = Path(stage1) / "csv" / "metrics.csv" if stage1 else None
        if not metrics or not metrics.is_file():
            continue
        with open(metrics) as f:
            rows = list(csv.DictReader(f))
        for epoch in sorted({r["stage1-epoch"] for r in rows if r.get("stage1-epoch")}, key=float):
            mine = [r for r in rows if r.get("stage1-epoch") == epoch]
            shares = {key.removeprefix("stage1-train/share_"): [float(r[key]) for r in mine if r[key]]
                      for key in rows[0] if key.startswith("stage1-train/share_")}
            text = ", ".join(f"{name} {sum(v) / len(v):.2f}" for name, v in shares.items() if v)
            val = [float(r["stage1-val/f1_macro"]) for r in mine if r.get("stage1-val/f1_macro")]
            lines.append({"method": method, "epoch": int(float(epoch)), "shares": text,
                          "val": val[-1] if val else None})
    columns = [("method", "method"), ("epoch", "stage-1 epoch"),
               ("shares", "share of the loss, by term"), ("val", "val macro-F1 after the epoch", ".4f")]
    return markdown_table(lines, columns) if lines else None


def pareto_claim(rows: list[dict]) -> str:
    """Which measured models beat every published row on macro-F1 (the Pareto plot's axis) and
    CPU throughput (the published architectures timed on this machine), and whether their
    accuracy beats every published accuracy too."""
    published = [r for r in rows if r.get("published")]
    if not published:
        return "No published rows were measured."
    winners = [r for r in rows if not r.get("published") and all(
        r["f1_macro"] > p["f1_macro"] and r["throughput_sorted"] > p["throughput_sorted"]
        for p in published)]
    names = "; ".join(f"{p['model']}: macro-F1 {p['f1_macro']:.4f}, accuracy {p['acc']:.4f} "
                      f"(published, on another split), {p['throughput_sorted']:,.1f} sentences/s "
                      "here" for p in published)
    if not winners:
        return f"No model measured here beats every published row ({names}) on both."

    def accuracy_note(row: dict) -> str:
        behind = [p for p in published if row["acc"] <= p["acc"]]
        if not behind:
            return "accuracy above every published row too"
        return "accuracy " + ", ".join(f"{p['acc'] - row['acc']:.4f} below {p['model']}'s"
                                       for p in behind)

    reference = rows[0].get("dir")  # the benchmark's first row

    def kind(row: dict) -> str:  # the reference's own rows (fp32, bf16) are not compressed
        return "the uncompressed reference; " if reference and row.get("dir") == reference else ""

    return ("Beating every published row (" + names + ") on macro-F1 and throughput: "
            + "; ".join(f"**{r['model']}** ({kind(r)}macro-F1 {r['f1_macro']:.4f}, accuracy {r['acc']:.4f}, "
                        f"{r['throughput_sorted']:,.1f} sentences/s, {r['size_bytes'] / 2**20:.1f} MiB; "
                        f"{accuracy_note(r)})" for r in winners) + ".")


def report(root: Path, link_base: Path, figures: Path | None = None,
           seeds_study: Path | None = None) -> str:
    """The markdown; figures are linked relative to ``link_base`` (the folder of the file the
    markdown goes into), after being copied into ``figures`` when given (a committed folder,
    since run folders are not). ``seeds_study``: a ``scripts/study.py`` folder run with more
    seeds, shown after the reproduction's own study."""
    stages = json.loads((root / "stages.json").read_text())
    seeds = stages.get("study", {}).get("command", [])
    seeds = seeds[seeds.index("--seeds") + 1] if "--seeds" in seeds else "?"
    parts = [f"Generated by `python scripts/report.py` from the files of one run of "
             f"`scripts/reproduce.py` (`{root.name}`; {seeds} seed(s) per study method; PhraseBank "
             "AllAgree test split, 339 sentences; selection on validation). Each stage's command "
             "is in its `stages.json`."]
    benchmark = root / "benchmark" / "benchmark.json"
    if benchmark.is_file():
        machine = json.loads(benchmark.read_text())["machine"]
        isa = ", ".join(machine.get("isa") or [])
        parts.append(f"Machine: {machine['cpu']}, {machine['torch_threads']} threads, ISA {isa}; "
                     f"torch {machine.get('torch', '')}, precision {machine['precision']} "
                     f"({machine['precision_reason']}).")
    lines = [{"stage": stage, "status": entry["status"],
              "time": f"{entry['wall_time_s'] / 60:.1f} min"}
             for stage, entry in stages.items() if isinstance(entry, dict) and "wall_time_s" in entry]
    if "total_wall_time_s" in stages:
        lines.append({"stage": "**all**", "time": f"**{stages['total_wall_time_s'] / 60:.1f} min**"})
    parts.append("**Wall time per stage**\n\n"
                 + markdown_table(lines, [("stage", "stage"), ("status", "status"), ("time", "wall time")]))
    if "best_student" in stages:
        best = stages["best_student"]
        parts.append(f"Best distilled student on validation: `{best['method']}` (validation "
                     f"macro-F1 {best['val_f1_macro']:.4f}); PTQ, QAT and the benchmark use it.")
    if benchmark.is_file():
        parts.append("**Benchmark** (every artifact measured side by side on this machine)\n\n"
                     + (root / "benchmark" / "benchmark.md").read_text().strip())
        rows = json.loads(benchmark.read_text())["models"]
        parts.append(pareto_claim(rows))
        parts.append(_figure(root / "benchmark" / "pareto.png", link_base, "accuracy vs throughput",
                             figures))
        parts.append(_figure(root / "benchmark" / "confusion_matrices.png", link_base,
                             "benchmark confusion matrices", figures))
    frontier = _script_folder(stages, "frontier")
    if frontier and (frontier / "frontier.md").is_file():
        parts.append("**The small-student frontier** (`scripts/frontier.py`: test macro-F1 mean ± "
                     "std over seeds, throughput from its own interleaved benchmark)\n\n"
                     + (frontier / "frontier.md").read_text().split("\n", 1)[1].strip())
        parts.append(_figure(frontier / "frontier.png", link_base, "frontier (Pareto)", figures,
                             "frontier.png"))
    study = _script_folder(stages, "study")
    if study and (study / "study.md").is_file():
        parts += study_section(study, f"{seeds} seed(s)", link_base, figures, "study_")
        shares = loss_shares(study)
        if shares:
            parts.append("**What drove each student in stage 1** (mean share of the loss per "
                         "weighted term, from the training logs; TinyBERT trains features in "
                         "epoch 0 and soft labels in epoch 1)\n\n" + shares)
    if seeds_study is not None:
        runs = json.loads((seeds_study / "study.json").read_text())["runs"]
        count = max(len(per_seed) for per_seed in runs.values())
        parts += study_section(seeds_study, f"{count} seeds", link_base, figures, "seeds_")
    for stage, title in (("ptq", "Post-training INT8 of the best student"),
                         ("qat", "QAT with KD beside PTQ, same student"),
                         ("teacher_int8", "The teacher in INT8 (post-training)"),
                         ("prune30", "30% of the teacher's heads removed"),
                         ("prune30_int8", "The 30%-pruned teacher in INT8"),
                         ("prune50", "Half the teacher's heads and FFN neurons removed"),
                         ("compress", "Stacked: distil -> prune -> INT8")):
        results = root / stage / "results.json"
        if results.is_file():
            parts.append(f"**{title}**\n\n" + compare_table(json.loads(results.read_text())))
            curve = root / stage / "pruning_curve.png"
            if curve.is_file():
                parts.append(_figure(curve, link_base, f"{stage} pruning curve", figures,
                                     f"{stage}_pruning_curve.png"))
    return "\n\n".join(parts) + "\n"


def study_section(study: Path, seeds: str, link_base: Path, figures: Path | None,
                  prefix: str) -> list[str]:
    """A study's table (each score the mean ± std over its seeds) and plots."""
    parts = [f"**Distillation study, {seeds}** (`{study.name}`; test split; mean ± std over "
             "seeds)\n\n" + (study / "study.md").read_text().strip()]
    for name in ("temperature_sweep.png", "pkd_beta_sweep.png", "confusion_matrices.png"):
        if (study / name).is_file():
            parts.append(_figure(study / name, link_base, f"{prefix}{name.removesuffix('.png')}",
                                 figures, f"{prefix}{name}"))
    return parts


def _script_folder(stages: dict, stage: str) -> Path | None:
    """The folder a script stage (``study``, ``frontier``) wrote, from its command's
    ``--output-root`` and ``--name``."""
    command = stages.get(stage, {}).get("command", [])
    if "--output-root" in command and "--name" in command:
        return (Path(command[command.index("--output-root") + 1]) / stage
                / command[command.index("--name") + 1])
    return None


def _figure(path: Path, link_base: Path, title: str, figures: Path | None = None,
            name: str | None = None) -> str:
    if figures is not None:
        figures.mkdir(parents=True, exist_ok=True)
        path = Path(shutil.copy(path, figures / (name or path.name)))
    return f"![{title}]({os.path.relpath(path, link_base)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="outputs/reproduce/NAME")
    parser.add_argument("--readme", type=Path, help="replace this file's results section too")
    parser.add_argument("--figures", type=Path, default=Path("docs/results"),
                        help="with --readme: where the figures are copied (committed)")
    parser.add_argument("--seeds-study", type=Path,
                        help="a scripts/study.py folder (outputs/study/NAME) run over several "
                             "seeds, added after the reproduction's study")
    args = parser.parse_args()
    if args.seeds_study is not None and not (args.seeds_study / "study.md").is_file():
        parser.error(f"{args.seeds_study} has no study.md: run scripts/study.py first")
    if not (args.root / "stages.json").is_file():
        parser.error(f"{args.root} has no stages.json: run scripts/reproduce.py first")
    markdown = report(args.root, args.root, seeds_study=args.seeds_study)
    (args.root / "report.md").write_text(markdown)
    print(f"written: {args.root / 'report.md'}")
    if args.readme:
        text = args.readme.read_text()
        if START not in text or END not in text:
            parser.error(f"{args.readme} lacks the markers {START} and {END}")
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        body = report(args.root, args.readme.parent, args.figures, args.seeds_study)
        args.readme.write_text(f"{head}{START}\n{body}{END}{tail}")
        print(f"written: the results section of {args.readme}")


if __name__ == "__main__":
    main()
