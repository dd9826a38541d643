"""Pseudo-labelling with 1 and 2 worker processes, and stage-1 training in 1 and 2 DDP
processes, on this machine; and a projection to more machines from the measurements.

    python scripts/scaling.py --name NAME [--workers 1,2] [--sentences 3000] [--repeats 2] \\
        [--train-sentences 4000] -- [train.py overrides, e.g. teacher=mpnet_base teacher_checkpoint=<teacher>]

Each measurement starts ``w`` processes of ``python train.py +experiment=label`` at once on a
fresh output root (the CPUs split between them: ``OMP_NUM_THREADS`` = cores / w), labelling the
first ``--sentences`` sentences of the news corpus in shards of ``--shard-size``; they share the
shards through the stage store as workers on several machines do over a shared file system.
The labelling throughput is the sentences over the span from the first shard's start to the
last one's end (process start-up and corpus reading left out; they are reported apart), and
the merge is the time from the last shard's end to the stored cache. Worker counts are
measured in turn, ``--repeats`` rounds (the best counts).

With ``--train-sentences N``: the first N news sentences are labelled once, then ``python
train.py +experiment=kd`` trains stage 1 on them in one process and with ``trainer=ddp
trainer.devices=2``, in turn for ``--repeats`` rounds (the stored stage 1 removed before each,
the labels kept); the training throughput is N x epochs over the stage-1 time (loading,
tokenizing and the fit; the labels are read from the store). The projection to more machines
adds each step's gradient all-reduce (a ring: 2 (n-1)/n x the student's fp32 gradient bytes per
machine per step) at ``--network-gbit-s``. Writes ``scaling.json`` and ``scaling.md`` under
``outputs/scaling/NAME``.
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

from omegaconf import OmegaConf

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


def measure_training(processes: int, root: Path, overrides: list[str]) -> dict:
    """Stage 1 trained anew in ``root`` (its labels stored there) by ``processes`` DDP
    processes (1: the default trainer); its time and throughput."""
    shutil.rmtree(root / "stages" / "stage1", ignore_errors=True)
    ddp = ["trainer=ddp", f"trainer.devices={processes}"] if processes > 1 else []
    run = root / f"train{processes}"
    shutil.rmtree(run, ignore_errors=True)
    done = subprocess.run([sys.executable, "train.py", "+experiment=kd", *overrides, *ddp,
                           "distill.fresh_baseline=false", "student.stage2_epochs=1",
                           f"paths.output_root={root}", f"hydra.run.dir={run}"],
                          cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"training with {processes} process(es) failed:\n{done.stderr[-3000:]}")
    results = json.loads((run / "results.json").read_text())
    (stage,) = (root / "stages" / "stage1").glob("[!.]*")
    epochs = json.loads((stage / "stage.json").read_text())["inputs"]["stage1"]["max_epochs"]
    sentences = json.loads((stage / "model" / "checkpoint_info.json").read_text())["news_sentences"]
    seconds = results["timings"]["stage1_s"]
    return {"processes": processes, "threads_each": max(1, len(os.sched_getaffinity(0)) // processes),
            "sentences": sentences, "epochs": epochs, "stage1_s": seconds,
            "sentences_per_s": round(sentences * epochs / seconds, 1),
            "student_parameters": results["student_parameters"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--workers", default="1,2", help="label worker counts (\"\": no labelling)")
    parser.add_argument("--sentences", type=int, default=3000)
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--corpus", type=int, default=140_595,
                        help="the corpus the projection labels (the frontier's: all the news "
                             "and the PhraseBank transfer text)")
    parser.add_argument("--machines", default="1,8", help="machine counts to project to")
    parser.add_argument("--output-root", default="outputs")
    parser.add_argument("--train-sentences", type=int, default=0,
                        help="also measure stage-1 training on this many sentences (0: no)")
    parser.add_argument("--network-gbit-s", type=float, default=10.0,
                        help="the network the training projection assumes between machines")
    parser.add_argument("overrides", nargs="*", help="train.py overrides, after --")
    args = parser.parse_args()
    folder = Path(args.output_root) / "scaling" / args.name
    overrides = [f"news.max_sentences={args.sentences}", "distill.pseudo_label.add_phrasebank=null",
                 f"distill.pseudo_label.shard_size={args.shard_size}", *args.overrides]
    from fincompress.hardware import cpu_info

    machine = cpu_info(with_torch=False)
    cores = len(os.sched_getaffinity(0))
    machines = list(map(int, args.machines.split(",")))
    text = f"# Scaling ({machine.get('cpu')}, {cores} cores)\n\n"
    report: dict = {"machine": machine, "overrides": overrides}
    best: dict[int, dict] = {}
    for round_number in range(args.repeats):
        for workers in [int(w) for w in args.workers.split(",") if w]:
            row = measure(workers, folder / "runs" / f"w{workers}", overrides)
            print(f"[scaling] round {round_number + 1}, {workers} worker(s): "
                  f"{row['sentences_per_s']} sentences/s", flush=True)
            if workers not in best or row["sentences_per_s"] > best[workers]["sentences_per_s"]:
                best[workers] = row
    if best:
        text += labelling_section(list(best.values()), args.corpus, machines, overrides, report)
    if args.train_sentences:
        root = folder / "runs" / "train"
        shutil.rmtree(root, ignore_errors=True)
        train_overrides = [f"news.max_sentences={args.train_sentences}",
                           "distill.pseudo_label.add_phrasebank=null", *args.overrides]
        print(f"[scaling] labelling {args.train_sentences} sentences for the training runs", flush=True)
        subprocess.run([sys.executable, "train.py", "+experiment=label", *train_overrides,
                        f"paths.output_root={root}", f"hydra.run.dir={root / 'label'}"],
                       cwd=ROOT, check=True, capture_output=True)
        trained: dict[int, dict] = {}
        for round_number in range(args.repeats):
            for processes in (1, 2):
                row = measure_training(processes, root, train_overrides)
                print(f"[scaling] round {round_number + 1}, training in {processes} process(es): "
                      f"{row['sentences_per_s']} sentences/s", flush=True)
                if processes not in trained or row["stage1_s"] < trained[processes]["stage1_s"]:
                    trained[processes] = row
        batch = OmegaConf.load(root / "train1" / ".hydra" / "config.yaml").news.batch_size
        text += training_section(list(trained.values()), batch, machines, args.network_gbit_s,
                                 train_overrides, report)
    shutil.rmtree(folder / "runs", ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scaling.md").write_text(text)
    (folder / "scaling.json").write_text(json.dumps(report, indent=2))
    print(text)


def labelling_section(rows: list[dict], corpus: int, machines: list[int], overrides: list[str],
                      report: dict) -> str:
    node = max(rows, key=lambda row: row["sentences_per_s"])
    merge_per_sentence = node["merge_s"] / node["sentences"]
    projection = [{"machines": m, "sentences": corpus,
                   "labelling_s": round(corpus / (m * node["sentences_per_s"]), 1),
                   "merge_s": round(merge_per_sentence * corpus, 1)} for m in machines]
    report.update(measured=rows, projection=projection)
    return ("## Labelling\n\nMeasured (best of the rounds):\n\n" + markdown_table(rows, [
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
            + f"\nLabelled with: {node['labelled_by']}; overrides: {' '.join(overrides)}\n\n")


def training_section(rows: list[dict], batch: int, machines: list[int], gbit_s: float,
                     overrides: list[str], report: dict) -> str:
    """The measured training rows, and a projection to ``machines`` machines with the same
    global batch: each machine computes its share of every step (at the best measured rate),
    then the ring all-reduce of the fp32 gradients crosses the network."""
    node = min(rows, key=lambda row: row["stage1_s"])
    compute_s = batch / node["sentences_per_s"]  # one step's compute on one machine
    gradient_bytes = 4 * node["student_parameters"]
    projection = []
    for m in machines:
        network_s = 2 * (m - 1) / m * gradient_bytes / (gbit_s * 1e9 / 8)
        step_s = compute_s / m + network_s
        projection.append({"machines": m, "compute_ms": round(1000 * compute_s / m, 1),
                           "all_reduce_ms": round(1000 * network_s, 1),
                           "sentences_per_s": round(batch / step_s, 1),
                           "speed_up": round(compute_s / step_s, 2)})
    report.update(training=rows, training_projection=projection, global_batch=batch,
                  network_gbit_s=gbit_s)
    return ("## Training (stage 1)\n\nMeasured (best of the rounds; stage-1 time: loading, "
            "tokenizing and the fit, the labels read from the store):\n\n"
            + markdown_table(rows, [("processes", "processes"), ("threads_each", "threads each"),
                                    ("sentences", "sentences"), ("epochs", "epochs"),
                                    ("stage1_s", "stage-1 s", ".1f"),
                                    ("sentences_per_s", "sentences/s", ".1f")])
            + f"\n\nProjected, not measured: the same global batch ({batch} sentences) shared "
            f"by machines as fast as this one at its best ({node['sentences_per_s']} "
            f"sentences/s with {node['processes']} process(es)), each step ending in a ring "
            f"all-reduce of the student's fp32 gradients ({gradient_bytes / 2**20:.0f} MiB; "
            f"2 (n-1)/n of it crosses each machine's link) at {gbit_s:g} Gbit/s, with no "
            "overlap of the two:\n\n"
            + markdown_table(projection, [("machines", "machines"),
                                          ("compute_ms", "compute ms/step", ".1f"),
                                          ("all_reduce_ms", "all-reduce ms/step", ".1f"),
                                          ("sentences_per_s", "sentences/s", ".1f"),
                                          ("speed_up", "speed-up", ".2f")])
            + f"\nOverrides: {' '.join(overrides)}\n")


if __name__ == "__main__":
    main()
