"""Print a markdown table of every saved model under a folder (default: outputs/).

    python scripts/collect_results.py [outputs] [--json results.json]

Reads each ``checkpoint_info.json`` that records test metrics (final students, teachers):
a quick overview of what a machine has trained. The README's results come from
``scripts/report.py``.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from fincompress.tables import markdown_table


def machine() -> str:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def collect(root: Path) -> list[dict]:
    rows = []
    for path in sorted(root.rglob("checkpoint_info.json")):
        info = json.loads(path.read_text())
        metrics = info.get("metrics")
        if not metrics:  # a stage-1 student: scored only after stage 2
            continue
        rows.append({
            "run": str(path.parent.parent.relative_to(root)),
            "stage": info.get("method") or info.get("stage"),
            "source": info.get("source"),
            "agreement": info.get("data", {}).get("agreement"),
            "test_size": info.get("data", {}).get("test_size"),
            "stage1_val_f1_macro": _stage1_val_score(info),
            "val_f1_macro": info.get("best_val_f1_macro"),
            "acc": metrics["test/acc"],
            "f1_macro": metrics["test/f1_macro"],
            "parameters_m": round(info.get("parameters", 0) / 1e6, 1),
            "size_mib": round(info.get("size_on_disk_bytes", 0) / 2**20),
            "epochs": info.get("epochs_run"),
            "wall_time_s": info.get("wall_time_s"),
            "split_hash": info.get("split_hash"),
        })
    return rows


def _stage1_val_score(info: dict) -> float | None:
    """A distilled student's stage-1 validation macro-F1, from its stored stage-1 model."""
    stage1 = info.get("stage1")
    path = Path(stage1) / "model" / "checkpoint_info.json" if stage1 else None
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text()).get("best_val_f1_macro")


def markdown(rows: list[dict]) -> str:
    cells = [{**r, "test set": f"{r['agreement']} ({r['test_size']})",
              "val": f"{_score(r['stage1_val_f1_macro'])} / {_score(r['val_f1_macro'])}",
              "wall": "-" if r["wall_time_s"] is None else round(r["wall_time_s"])} for r in rows]
    return markdown_table(cells, [("run", "run"), ("stage", "stage"), ("source", "model"),
                                  ("test set", "test set"), ("val", "val macro-F1 (stage 1 / final)"),
                                  ("acc", "accuracy", ".4f"), ("f1_macro", "macro-F1", ".4f"),
                                  ("parameters_m", "params (M)"), ("size_mib", "size (MiB)"),
                                  ("wall", "wall time (s)")])


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default="outputs", type=Path)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args()
    rows = collect(args.root)
    if not rows:
        raise SystemExit(f"no checkpoint_info.json under {args.root}")
    print(markdown(rows))
    print(f"\nmachine: {machine()}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
