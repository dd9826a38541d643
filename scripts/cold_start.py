"""Cold start: how long the commands a user runs first take, each in a fresh process, from
start to exit (interpreter start, imports, loading the model, one prediction).

    python scripts/cold_start.py INT8_MODEL [MORE_MODELS ...] [--repeats 5] [--output FILE]

For each model: ``fincompress info MODEL`` and ``fincompress predict MODEL "text"``; once:
``python -c "import fincompress"``. The runs go round-robin (every command once, then again),
so that drift falls on all alike; the median and the range over ``--repeats`` rounds are
printed and written to ``--output`` (JSON), with the machine and its load average (a warning
when other work was running before the runs began: a load over half the cores).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

TEXT = "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn ."


def commands(models: list[str]) -> dict[str, list[str]]:
    command = shutil.which("fincompress") or "fincompress"
    runs = {"import fincompress": [sys.executable, "-c", "import fincompress"]}
    for model in models:
        name = Path(model).name if Path(model).name != "model" else Path(model).parent.name
        runs[f"info {name}"] = [command, "info", model]
        runs[f"predict {name}"] = [command, "predict", model, TEXT]
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default="outputs/cold_start.json")
    args = parser.parse_args()
    from fincompress.hardware import cpu_info

    runs = commands(args.models)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    load_before = os.getloadavg()[0]
    for _ in range(args.repeats):
        for name, command in runs.items():
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True)
            seconds[name].append(time.perf_counter() - started)
            if done.returncode != 0:
                sys.exit(f"{name} failed (exit {done.returncode}): {done.stderr[-2000:]}")
    load_after = os.getloadavg()[0]
    machine = cpu_info(with_torch=False)
    rows = [{"command": name, "median_s": round(statistics.median(values), 2),
             "min_s": round(min(values), 2), "max_s": round(max(values), 2)}
            for name, values in seconds.items()]
    print(f"cold start on {machine['cpu']} ({machine['cores']} cores), {args.repeats} rounds, "
          f"load average {load_before:.2f} before, {load_after:.2f} after")
    width = max(len(row["command"]) for row in rows)
    print(f"{'command':{width}}  median s  range s")
    for row in rows:
        print(f"{row['command']:{width}}  {row['median_s']:8.2f}  {row['min_s']:.2f}-{row['max_s']:.2f}")
    # the load before the first run is other work's (the runs' own raise it afterwards)
    busy = load_before > 0.5 * (os.cpu_count() or 1)
    if busy:
        print(f"warning: the load average was {load_before:.2f} before the runs: other work "
              "was running, and these times are longer than on an idle machine")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(
        {"machine": machine, "repeats": args.repeats, "models": args.models, "rows": rows,
         "load_average": [load_before, load_after], "busy": busy}, indent=2) + "\n")


if __name__ == "__main__":
    main()
