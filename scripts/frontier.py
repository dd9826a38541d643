"""The small-student frontier: small students distilled on all the text there is, quantized,
against the same students fine-tuned to convergence and quantized the same way, and a static
tier, all timed in one benchmark beside the teacher in every precision.

    python scripts/frontier.py --name NAME [--seeds 3] [--students minilm_l1,minilm_l2] \
        [--prune 0.67,0.75] -- [overrides]
    python scripts/frontier.py --name mpnet -- teacher=mpnet_base

Every run is a ``train.py`` run into ``outputs/frontier/NAME/...`` (stored stages are shared,
a finished run is not run again):

1. per seed and student: KD at T=2 (``+experiment=kd``) on the teacher's labels of the whole
   news corpus (``news.max_sentences=null``), labelled through the teacher's fastest faithful
   form (``distill.pseudo_label.engine=fastest``), with stage-1 sentences cut at the corpus's
   99th-percentile token length; the run also fine-tunes the same student on PhraseBank alone
   to convergence (the fresh baseline) and scores both on the robustness hold-out;
2. per seed and student: post-training INT8 of the distilled student and of the fresh baseline
   (``+experiment=ptq``, the backend chosen on validation): quantized the same way;
3. with ``--prune HEADS,FFN``, per seed and student: the distilled student pruned
   (``+experiment=prune``: that share of its heads and FFN neurons removed in 3 rounds, each
   recovered for 3 epochs with KD against it on PhraseBank), and the same size (heads and FFN
   neurons spread evenly over the layers) fine-tuned on PhraseBank alone (``+experiment=fresh``,
   20 epochs at 2e-4, the best on validation kept), both quantized as in 2;
4. per seed: the static tier (``+experiment=static``);
5. one benchmark (``+experiment=benchmark``) of the teacher (fp32, bf16 where native, its own
   INT8), the first seed's INT8 students and the static student, interleaved.

Writes ``frontier.json``, ``frontier.md`` (test macro-F1 mean ± std over seeds, speed against
the teacher in fp32, in its best PyTorch precision and in INT8, robustness, and the issue's
checks) and ``frontier.png`` (the Pareto front).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from fincompress.errors import stop_on_ctrl_c
from fincompress.stages.benchmark import artifacts_override
from fincompress.tables import markdown_table

ROOT = Path(__file__).resolve().parents[1]
# every frontier run: all the news, labelled through the teacher's fastest faithful form
SHARED = ["news.max_sentences=null", "distill.pseudo_label.engine=fastest", "news.batch_size=64",
          # the fresh baseline given a higher rate, more epochs and more patience (see
          # distill.fresh.lr in conf/distill/default.yaml)
          "distill.fresh.lr=2e-4", "distill.fresh.max_epochs=20", "distill.fresh.patience=3",
          "news.holdout.scored_per_group=null"]  # every held-out sentence
KD = ["+experiment=kd", "method.temperature=2"]
# the pruned student's rounds, and its same-size baseline fine-tuned to convergence
PRUNE = ["prune.rounds=3", "prune.recover.epochs=3"]
PRUNED_FRESH = ["student.stage2_epochs=20", "student.stage2_lr=2e-4"]


def train(folder: Path, overrides: list[str], label: str, results: str = "results.json") -> dict:
    """One ``train.py`` run into ``folder`` (skipped when its ``results`` file exists); what
    that file holds."""
    results = folder / results
    if results.is_file():
        print(f"[frontier] {label}: done earlier")
        return json.loads(results.read_text())
    folder.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "train.py", *overrides, f"hydra.run.dir={folder}"]
    print(f"[frontier] {label}: {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    with open(folder.with_suffix(".log"), "w") as log:
        code = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise RuntimeError(f"{label} failed (exit {code}); see {folder.with_suffix('.log')}")
    print(f"[frontier] {label}: {time.perf_counter() - started:.0f} s", flush=True)
    return json.loads(results.read_text())


# a student cut from an encoder: ENCODER_lN[_hH][_fF] (minilm: MiniLM-L6; mpnet: MPNet-base)
SHAPE = r"(minilm|mpnet)_l(\d+)(?:_h(\d+))?(?:_f(\d+))?"


def student_overrides(name: str) -> list[str]:
    """``minilm_lN``: the minilm_l2 config with N layers (``mpnet_lN``: mpnet_l2's);
    ``minilm_lN_hH_fF``: narrowed to H heads and F FFN neurons per layer (width-pruned before
    distillation); else a student config's name."""
    shape = re.fullmatch(SHAPE, name)
    if not shape:
        return [f"student={name}"]
    encoder, layers, heads, ffn = shape.groups()
    return [f"student={encoder}_l2", f"student.model.num_layers={layers}", f"student.name={name}",
            *([f"student.model.heads={heads}"] if heads else []),
            *([f"student.model.intermediate_size={ffn}"] if ffn else [])]


def prune_shares(text: str) -> tuple[float, float]:
    """``--prune HEADS,FFN``: the shares of heads and FFN neurons to remove."""
    try:
        heads, ffn = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--prune {text!r}: give two shares, HEADS,FFN "
                                         "(e.g. 0.67,0.75)") from None
    return heads, ffn


def prune_student(root: Path, pinned: list[str], student: str, seed: int, distill: dict,
                  shares: tuple[float, float]) -> dict:
    """The distilled student pruned and quantized, and its same-size baseline fine-tuned to
    convergence and quantized the same way."""
    pruned = train(root / "pruned", [*pinned, "+experiment=prune",
                                     f"prune.source={distill['student_dir']}",
                                     f"prune.heads={shares[0]}", f"prune.ffn={shares[1]}",
                                     *PRUNE, f"seed={seed}"], f"{student} pruned seed {seed}")
    final = pruned["models"][-1]
    encoder, layers = re.fullmatch(SHAPE, student).group(1, 2)
    layers = int(layers)
    same_size = (f"{encoder}_l{layers}_h{round(final['heads'] / layers)}"
                 f"_f{round(final['ffn_neurons'] / layers)}")
    fresh = train(root / "pruned_fresh", [*pinned, "+experiment=fresh",
                                          *student_overrides(same_size), *PRUNED_FRESH,
                                          f"seed={seed}"], f"{same_size} fine-tuned seed {seed}")
    result = {"pruned": {"dir": final["dir"], "f1_macro": final["f1_macro"],
                         "heads": final["heads"], "ffn_neurons": final["ffn_neurons"],
                         "robustness": pruned.get("robustness")},
              "pruned_fresh": {"dir": fresh["student_dir"], "f1_macro": fresh["student"]["f1_macro"],
                               "student": same_size, "robustness": fresh.get("robustness")}}
    for who in ("pruned", "pruned_fresh"):
        quantized = train(root / f"{who}_int8", [*pinned, "+experiment=ptq",
                                                 f"quantize.source={result[who]['dir']}",
                                                 f"seed={seed}"],
                          f"{student} {who} INT8 seed {seed}")
        result[f"{who}_int8"] = ptq_f1(quantized)
    return result


def p99_length(overrides: list[str]) -> int:
    """The 99th percentile of the news corpus's token counts under the teacher's tokenizer."""
    from hydra import compose, initialize_config_module

    from fincompress.data.news import build_news_corpus
    from fincompress.models.sources import load_tokenizer

    with initialize_config_module("fincompress.conf", version_base="1.3"):
        cfg = compose("train", overrides=[o for o in overrides if not o.startswith("hydra.")])
    news = cfg.news
    corpus = build_news_corpus(news.sources, news.text_column, news.min_words, news.max_words,
                               max_sentences=news.max_sentences, seed=news.seed,
                               holdout=news.holdout)
    tokenizer = load_tokenizer(cfg.teacher.model.source, cfg.paths.model_cache_dir)
    lengths = sorted(len(ids) for ids in tokenizer(corpus.sentences)["input_ids"])
    return lengths[min(len(lengths) - 1, int(0.99 * len(lengths)))]


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def ptq_f1(result: dict) -> tuple[str, float]:
    """The chosen INT8 artifact of a PTQ run and its test macro-F1."""
    chosen = result["chosen"]["dir"]
    return chosen, next(row["f1_macro"] for row in result["models"] if row["dir"] == chosen)


def summary(runs: dict, statics: list[dict], bench: list[dict], seeds: list[int]) -> list[dict]:
    """One row per model family: test macro-F1 over seeds, batch-32 throughput from the one
    benchmark, speed-ups, robustness agreement."""
    by_dir = {row["dir"]: row for row in bench}
    teacher_fp32 = bench[0]
    rows = [{"model": row["model"], "seeds": 1, "f1_macro": row["f1_macro"], "f1_macro_std": 0.0,
             "throughput": row["throughput_sorted"]}
            for row in bench if row.get("reference_of") == teacher_fp32["model"]]
    for student, per_seed in runs.items():
        per = list(per_seed.values())
        # name: (folder, test macro-F1) per seed, and whose robustness it reports (the run's
        # part and the model's name there)
        families = {
            f"{student} KD, INT8": ([r["student_int8"] for r in per], None),
            f"{student} fine-tuned (converged), INT8": ([r["fresh_int8"] for r in per], None),
            f"{student} KD, fp32": ([(r["distill"]["student_dir"], r["distill"]["student"]["f1_macro"])
                                     for r in per], ("distill", "student")),
            f"{student} fine-tuned (converged), fp32": (
                [(r["distill"]["fresh"]["dir"], r["distill"]["fresh"]["f1_macro"]) for r in per],
                ("distill", "fresh")),
        }
        # each INT8 student's converged baseline, which the done-when checks compare it with
        baselines = {f"{student} KD, INT8": f"{student} fine-tuned (converged), INT8"}
        if "pruned" in per[0]:
            shape = f"{per[0]['pruned']['heads']} heads, {per[0]['pruned']['ffn_neurons']} FFN"
            baselines[f"{student} KD pruned ({shape}), INT8"] = \
                f"{per[0]['pruned_fresh']['student']} fine-tuned (converged), INT8"
            families.update({
                f"{student} KD pruned ({shape}), INT8": ([r["pruned_int8"] for r in per], None),
                f"{per[0]['pruned_fresh']['student']} fine-tuned (converged), INT8": (
                    [r["pruned_fresh_int8"] for r in per], None),
                f"{student} KD pruned ({shape}), fp32": (
                    [(r["pruned"]["dir"], r["pruned"]["f1_macro"]) for r in per],
                    ("pruned", "pruned")),
                f"{per[0]['pruned_fresh']['student']} fine-tuned (converged), fp32": (
                    [(r["pruned_fresh"]["dir"], r["pruned_fresh"]["f1_macro"]) for r in per],
                    ("pruned_fresh", "student"))})
        for name, (scored, who) in families.items():
            mean, std = mean_std([f1 for _, f1 in scored])
            timed = by_dir.get(scored[0][0])
            row = {"model": name, "seeds": len(scored), "f1_macro": mean, "f1_macro_std": std,
                   "throughput": timed["throughput_sorted"] if timed else None}
            if name in baselines:
                row["baseline"] = baselines[name]
            agreement = [r[who[0]].get("robustness") or {} for r in per] if who else []
            for group in (agreement[0] if agreement else {}):
                row[f"agreement_{group}"] = statistics.fmean(a[group][who[1]] for a in agreement)
            rows.append(row)
    if statics:
        mean, std = mean_std([s["models"][1]["f1_macro"] for s in statics])
        timed = by_dir.get(statics[0]["models"][1]["dir"])
        row = {"model": "static (model2vec)", "seeds": len(statics), "f1_macro": mean,
               "f1_macro_std": std, "throughput": timed["throughput_sorted"] if timed else None}
        for group in statics[0].get("robustness", {}):
            row[f"agreement_{group}"] = statistics.fmean(s["robustness"][group]["static"]
                                                         for s in statics)
        rows.append(row)
    teacher_int8 = next((r["throughput_sorted"] for r in bench
                         if r.get("reference_of") == teacher_fp32["model"]
                         and r["precision"] == "i8"), None)
    best_torch = max(r["throughput_sorted"] for r in bench
                     if r.get("reference_of") == teacher_fp32["model"] and r["precision"] != "i8")
    for row in rows:
        if row.get("throughput"):
            row["x_teacher_fp32"] = row["throughput"] / teacher_fp32["throughput_sorted"]
            row["x_teacher_best_torch"] = row["throughput"] / best_torch
            row["x_teacher_int8"] = row["throughput"] / teacher_int8 if teacher_int8 else None
        row["f1_below_teacher_points"] = 100 * (teacher_fp32["f1_macro"] - row["f1_macro"])
    return rows


def checks(rows: list[dict], student: str) -> list[str]:
    """The issue's done-when figures, each with its answer, for every INT8 student of
    ``student`` (distilled, and distilled then pruned) against its converged baseline."""
    lines = []
    by_name = {row["model"]: row for row in rows}
    for kd in (row for row in rows if row["model"].startswith(f"{student} KD")
               and "baseline" in row):
        lines += pair_checks(kd["model"].removesuffix(", INT8"), kd, by_name[kd["baseline"]])
    static = next((row for row in rows if row["model"] == "static (model2vec)"), None)
    if static:
        lines.append(f"static tier: {static['x_teacher_fp32']:.0f}x the teacher fp32 "
                     f"({'met' if static['x_teacher_fp32'] >= 500 else 'NOT met'}: at least "
                     f"500x), test macro-F1 {static['f1_macro']:.4f} ± {static['f1_macro_std']:.4f}"
                     " (goal 0.90)")
    return lines


def pair_checks(name: str, kd: dict, fresh: dict) -> list[str]:
    """The targets for one INT8 student (``name``, e.g. ``minilm_l2 KD``) and its baseline."""
    margin = kd["f1_macro"] - fresh["f1_macro"]
    spread = kd["f1_macro_std"] + fresh["f1_macro_std"]
    return [
        f"{name} INT8 vs teacher fp32 PyTorch: {kd['x_teacher_fp32']:.1f}x "
        f"({'met' if kd['x_teacher_fp32'] >= 100 else 'NOT met'}: at least 100x)",
        f"{name} INT8 vs teacher INT8: {kd['x_teacher_int8']:.1f}x "
        f"({'met' if (kd['x_teacher_int8'] or 0) >= 12 else 'NOT met'}: at least 12x)",
        f"{name} INT8 test macro-F1 {kd['f1_macro']:.4f} ± {kd['f1_macro_std']:.4f}, "
        f"{kd['f1_below_teacher_points']:.2f} points below the teacher "
        # judged as shown, to two decimals (0.94 - 0.93 is 1.0000000000000009 points in floats)
        f"({'met' if round(kd['f1_below_teacher_points'], 2) <= 1.0 else 'NOT met'}: at most 1.0)",
        f"{name} INT8 - {fresh['model']}: {margin:+.4f} against a spread of {spread:.4f} "
        f"({'met' if margin > spread else 'NOT met'}: beats it by more than the two standard "
        "deviations added)"]


def plot(rows: list[dict], path: Path, caption: str) -> None:
    """Test macro-F1 (mean ± std over seeds) against batch-32 throughput, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [row for row in rows if row.get("throughput")]
    figure, axes = plt.subplots(figsize=(7.5, 4.8))
    for index, row in enumerate(sorted(timed, key=lambda r: r["throughput"])):
        axes.errorbar(row["throughput"], row["f1_macro"], yerr=row["f1_macro_std"], fmt="o",
                      capsize=3)
        axes.annotate(row["model"], (row["throughput"], row["f1_macro"]), fontsize=7,
                      xytext=[(4, -11), (4, 5), (-30, 14)][index % 3], textcoords="offset points")
    front, best = [], -1.0
    for row in sorted(timed, key=lambda r: -r["throughput"]):
        if row["f1_macro"] > best:
            front.append(row)
            best = row["f1_macro"]
    axes.plot([r["throughput"] for r in front], [r["f1_macro"] for r in front], "--",
              color="grey", alpha=0.6, label="Pareto front")
    teacher = next((row for row in timed if row.get("x_teacher_fp32") == 1.0), None)
    if teacher:  # the speed target
        axes.axvline(100 * teacher["throughput"], color="red", linestyle=":", alpha=0.6,
                     label="100x the teacher's fp32")
    axes.set_xscale("log")
    axes.set_xlabel("sentences/s at batch 32 (log scale)")
    axes.set_ylabel("test macro-F1 (mean ± std over seeds)")
    axes.set_title(caption, fontsize=8)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


COLUMNS = [("model", "model"), ("seeds", "seeds"), ("f1", "test macro-F1"),
           ("f1_below_teacher_points", "points below teacher", ".2f"),
           ("throughput", "sent/s @32", ",.0f"), ("x_teacher_fp32", "x teacher fp32", ".1f"),
           ("x_teacher_best_torch", "x teacher best torch", ".1f"),
           ("x_teacher_int8", "x teacher int8", ".1f"),
           ("agreement_market_posts", "agreement with teacher, held-out market posts", ".3f"),
           ("agreement_seeking_alpha", "agreement with teacher, held-out Seeking Alpha", ".3f")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--students", default="minilm_l2",
                        help="students, comma-separated: minilm_lN (N of MiniLM-L6's layers, "
                             "every other one from the 2nd; mpnet_lN: of MPNet-base's), "
                             "minilm_lN_hH_fF (each layer narrowed to H heads and F FFN "
                             "neurons) or any student config name")
    parser.add_argument("--prune", type=prune_shares, default=None, metavar="HEADS,FFN",
                        help="also prune each distilled student: these shares of its heads and "
                             "FFN neurons removed (e.g. 0.67,0.75)")
    parser.add_argument("--no-static", action="store_true", help="leave out the static tier")
    parser.add_argument("--output-root", default="outputs")
    parser.add_argument("overrides", nargs="*", help="train.py overrides, after --")
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    root = Path(args.output_root) / "frontier" / args.name
    overrides = [*SHARED, f"paths.output_root={args.output_root}", *args.overrides]
    started = time.perf_counter()
    students = {name: student_overrides(name) for name in args.students.split(",")}
    unsized = [name for name in students if not re.fullmatch(SHAPE, name)]
    if args.prune and unsized:  # the same-size baseline is built as ENCODER_lN_hH_fF
        parser.error(f"--prune needs minilm_lN or mpnet_lN students (their same-size baseline "
                     f"is built in the same shape); got {', '.join(unsized)}")
    seeds = list(range(42, 42 + args.seeds))
    pinned = list(overrides)
    length = p99_length(pinned)
    print(f"[frontier] news max length: {length} tokens (the corpus's 99th percentile)")
    pinned.append(f"news.max_length={length}")
    runs: dict[str, dict[int, dict]] = {}
    for seed in seeds:
        for student, choice in students.items():
            folder = root / student / f"seed{seed}"
            distill = train(folder / "kd", [*pinned, *KD, *choice, f"seed={seed}"],
                            f"{student} KD seed {seed}")
            if not any(o.startswith("teacher_checkpoint=") for o in pinned):
                pinned.append(f"teacher_checkpoint={distill['teacher_dir']}")  # stored; pin it
            quantized = {}
            for who, source in (("student", distill["student_dir"]),
                                ("fresh", distill["fresh"]["dir"])):
                result = train(folder / f"{who}_int8", [*pinned, "+experiment=ptq",
                                                        f"quantize.source={source}",
                                                        f"seed={seed}"],
                               f"{student} {who} INT8 seed {seed}")
                quantized[f"{who}_int8"] = ptq_f1(result)
            if args.prune:
                quantized.update(prune_student(folder, pinned, student, seed, distill, args.prune))
            runs.setdefault(student, {})[seed] = {"distill": distill, **quantized}
    statics = [] if args.no_static else [
        train(root / "static" / f"seed{seed}", [*pinned, "+experiment=static", f"seed={seed}"],
              f"static seed {seed}") for seed in seeds]
    first = {f"{s} {who}": per_seed[seeds[0]][key][0] for s, per_seed in runs.items()
             for who, key in (("kd int8", "student_int8"), ("fresh int8", "fresh_int8"))}
    first.update({f"{s} kd fp32": per_seed[seeds[0]]["distill"]["student_dir"]
                  for s, per_seed in runs.items()})
    first.update({f"{s} {who}": per_seed[seeds[0]][key][0] for s, per_seed in runs.items()
                  for who, key in (("pruned int8", "pruned_int8"),
                                   ("pruned fresh int8", "pruned_fresh_int8"))
                  if key in per_seed[seeds[0]]})
    if statics:
        first["static"] = statics[0]["models"][1]["dir"]
    teacher_dir = next(iter(runs.values()))[seeds[0]]["distill"]["teacher_dir"]
    override = artifacts_override({"teacher": teacher_dir, **first})
    # one benchmark per set of artifacts: adding a student measures them all again, together
    tag = hashlib.sha256(override.encode()).hexdigest()[:8]
    benchmark = train(root / f"benchmark_{tag}", [*pinned, "+experiment=benchmark",
                                                   "benchmark.published=null", override],
                      "benchmark", results="benchmark.json")
    bench, machine = benchmark["models"], benchmark["machine"]
    rows = summary(runs, statics, bench, seeds)
    lines = [line for student in runs for line in checks(rows, student)]
    cells = [{**row, "f1": f"{row['f1_macro']:.4f} ± {row['f1_macro_std']:.4f}"} for row in rows]
    caption = (f"{machine.get('cpu', '?')}, {machine.get('torch_threads', '?')} threads; "
               f"{len(seeds)} seeds; PhraseBank test split; throughput from one interleaved run")
    text = (f"# Frontier {args.name}\n\n{caption}\n\n" + markdown_table(cells, COLUMNS)
            + "\n\n" + "\n".join(f"- {line}" for line in lines) + "\n")
    root.mkdir(parents=True, exist_ok=True)
    (root / "frontier.md").write_text(text)
    (root / "frontier.json").write_text(json.dumps(
        {"rows": rows, "checks": lines, "news_max_length": length, "seeds": seeds,
         "machine": machine, "runs": runs, "wall_time_s": round(time.perf_counter() - started, 1)},
        indent=2))
    plot(rows, root / "frontier.png", caption)
    print(text)


if __name__ == "__main__":
    stop_on_ctrl_c(main, "[frontier] stopped; the runs that finished are kept, and the same command "
                   "resumes from the run that was running")
