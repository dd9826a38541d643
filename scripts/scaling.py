"""Pseudo-labelling with 1 and 2 worker processes on this machine, and a projection to more
machines from the measurements.

    python scripts/scaling.py --name NAME [--workers 1,2] [--sentences 3000] [--repeats 2] \\
        -- [train.py overrides, e.g. teacher=mpnet_base teacher_checkpoint=<teacher>]

Each measurement starts ``w`` processes of ``python train.py +experiment=label`` at once on a
fresh output root (the CPUs split between them: ``OMP_NUM_THREADS`` = cores / w), labelling the
first ``--sentences`` sentences of the news corpus in shards of ``--shard-size``; they share the
shards through the stage store as workers on several machines do over a shared file system.
The labelling throughput is the sentences over the span from the first shard's start to the
last one's end (process start-up and corpus reading left out; they are reported apart), and
the merge is the time from the last shard's end to the stored cache. Worker counts are
measured in turn, ``--repeats`` rounds (the best counts). Writes ``scaling.json`` and
``scaling.md`` under ``outputs/scaling/NAME``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from fincompress.tables import markdown_table

ROOT = Path(__file__).resolve().parents[1]


def measure(workers: int, root: Path, overrides: list[str]) -> dict:
    """``workers`` label processes at once into ``root``; their timings."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    cores = len(os.sched_getaffinity(0))
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // workers))}
    started = time.time()
    processes = [subprocess.Popen(
        [sys.executable, "train.py", "+experiment=label", *overrides, f"worker={i}",
         f"paths.output_root={root}", f"hydra.run.dir={root / f'worker{i}'}"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for i in range(workers)]
    errors = [process.communicate()[1] for process in processes]
    wall = time.time() - started
    for process, error in zip(processes, errors):
        if process.returncode != 0:
            raise RuntimeError(f"a label worker failed (exit {process.returncode}):\n{error[-3000:]}")
    shards = [json.loads(p.read_text())
              for p in (root / "stages" / "pseudo_label_shards").glob("[!.]*/report.json")]
    (cache,) = (root / "stages" / "pseudo_labels").glob("[!.]*/stage.json")
    first, last = min(s["started"] for s in shards), max(s["finished"] for s in shards)
    sentences = sum(s["sentences"] for s in shards)
    return {"workers": workers, "threads_per_worker": max(1, cores // workers),
            "sentences": sentences, "shards": len(shards),
            "shards_per_worker": sorted(Counter(s["pid"] for s in shards).values()),
            "labelling_s": round(last - first, 2),
            "sentences_per_s": round(sentences / (last - first), 1),
            "start_up_s": round(first - started, 1),
            "merge_s": round(cache.stat().st_mtime - last, 2), "wall_s": round(wall, 1),
            "labelled_by": ", ".join(sorted({str(s.get("labelled_by")) for s in shards}))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--sentences", type=int, default=3000)
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--corpus", type=int, default=140_595,
                        help="the corpus the projection labels (the frontier's: all the news "
                             "and the PhraseBank transfer text)")
    parser.add_argument("--machines", default="1,8", help="machine counts to project to")
    parser.add_argument("--output-root", default="outputs")
    parser.add_argument("overrides", nargs="*", help="train.py overrides, after --")
    args = parser.parse_args()
    folder = Path(args.output_root) / "scaling" / args.name
    overrides = [f"news.max_sentences={args.sentences}", "distill.pseudo_label.add_phrasebank=null",
                 f"distill.pseudo_label.shard_size={args.shard_size}", *args.overrides]
    best: dict[int, dict] = {}
    for round_number in range(args.repeats):
        for workers in map(int, args.workers.split(",")):
            row = measure(workers, folder / "runs" / f"w{workers}", overrides)
            print(f"[scaling] round {round_number + 1}, {workers} worker(s): "
                  f"{row['sentences_per_s']} sentences/s", flush=True)
            if workers not in best or row["sentences_per_s"] > best[workers]["sentences_per_s"]:
                best[workers] = row
    shutil.rmtree(folder / "runs", ignore_errors=True)
    rows = list(best.values())
    node = max(rows, key=lambda row: row["sentences_per_s"])
    merge_per_sentence = node["merge_s"] / node["sentences"]
    projection = [{"machines": m, "sentences": args.corpus,
                   "labelling_s": round(args.corpus / (m * node["sentences_per_s"]), 1),
                   "merge_s": round(merge_per_sentence * args.corpus, 1)} for m in
                  map(int, args.machines.split(","))]
    from fincompress.hardware import cpu_info

    machine = cpu_info(with_torch=False)
    text = (f"# Labelling scaling ({machine.get('cpu')}, {len(os.sched_getaffinity(0))} cores)\n\n"
            "Measured (best of the rounds):\n\n" + markdown_table(rows, [
                ("workers", "worker processes"), ("threads_per_worker", "threads each"),
                ("sentences", "sentences"), ("shards", "shards"),
                ("shards_per_worker", "shards per worker"), ("labelling_s", "labelling s", ".1f"),
                ("sentences_per_s", "sentences/s", ".1f"), ("start_up_s", "start-up s", ".1f"),
                ("merge_s", "merge s", ".2f")])
            + f"\n\nProjected from the best row ({node['workers']} worker(s) on one machine, "
            f"{node['sentences_per_s']} sentences/s per machine), assuming machines as fast as "
            "this one and shards that never wait (each is labelled independently; the only "
            "shared step is the merge, scaled from the one measured):\n\n"
            + markdown_table(projection, [("machines", "machines"), ("sentences", "sentences"),
                                          ("labelling_s", "labelling s", ",.0f"),
                                          ("merge_s", "merge s", ".1f")])
            + f"\nLabelled with: {node['labelled_by']}; overrides: {' '.join(overrides)}\n"
            + "\n")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scaling.md").write_text(text)
    (folder / "scaling.json").write_text(json.dumps(
        {"measured": rows, "projection": projection, "machine": machine,
         "overrides": overrides}, indent=2))
    print(text)


if __name__ == "__main__":
    main()
