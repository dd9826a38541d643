"""How steady is the benchmark's speed-up of a small student over the teacher, run after run?

    python scripts/benchmark_steadiness.py --output outputs/steadiness [--runs 2] \\
        [--min-round-s 0,1] [--teacher bundled:mpnet-base] [--layers 2] [--prune 0.67,0.75]

Builds stand-ins in the frontier's shapes, with weights that do not matter for timing (as the
benchmark's published rows): the teacher (``--teacher``), and a MiniLM cut to ``--layers``
layers with the given shares of heads and FFN neurons removed (the same number from each
layer), each also in OpenVINO INT8. Then it runs the benchmark stage ``--runs`` times for each
``benchmark.min_round_s`` value, the values in turn (0, 1, 0, 1, ...), and prints the student's
throughput and its speed-ups over the teacher in fp32 and in INT8 for every run, with their
spread over the runs of each value. Written to ``--output``: the stand-ins, each run's
benchmark folder and ``steadiness.json``.

Accuracy is not measured here (the weights are not trained); the frontier's figures come from
its own benchmark stage, which uses the same setting.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

LABELS = ["negative", "neutral", "positive"]


def stand_ins(folder: Path, teacher: str, layers: int, heads_share: float,
              ffn_share: float) -> dict[str, Path]:
    """The four artifacts, built once and reused by later calls."""
    from fincompress.artifacts import save_model_folder, write_checkpoint_info
    from fincompress.cli import training_sentences
    from fincompress.compress.int8 import OpenVINOBackend
    from fincompress.compress.prune import layer_parts, prune_ffn, prune_heads
    from fincompress.files import atomic_folder
    from fincompress.models.sources import load_classifier

    paths = {name: folder / name for name in ("teacher", "teacher_int8", "student", "student_int8")}
    if all(path.is_dir() for path in paths.values()):
        return paths
    student, student_tokenizer = load_classifier("bundled:minilm-l6", LABELS,
                                                 config_overrides={"num_hidden_layers": layers})
    parts = layer_parts(student)
    heads, neurons = student.config.num_attention_heads, student.config.intermediate_size
    prune_heads(student, {i: list(range(round(heads * (1 - heads_share)), heads))
                          for i in range(len(parts))})
    prune_ffn(student, {i: list(range(round(neurons * (1 - ffn_share)), neurons))
                        for i in range(len(parts))})
    models = {"teacher": load_classifier(teacher, LABELS),
              "student": (student, student_tokenizer)}
    calibration = training_sentences(300)
    for name, (model, tokenizer) in models.items():
        info = {"stage": "stand-in", "labels": LABELS, "note": "untrained weights, for timing"}
        save_model_folder(model, tokenizer, paths[name], info)
        with atomic_folder(paths[f"{name}_int8"]) as staging:
            record = OpenVINOBackend().export(model, tokenizer, calibration, staging)
            write_checkpoint_info(staging, {**info, "source": str(paths[name]), "steps": [record]})
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=2, help="benchmark runs per setting")
    parser.add_argument("--min-round-s", default="0,1",
                        help="benchmark.min_round_s values, taken in turn")
    parser.add_argument("--teacher", default="bundled:mpnet-base")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--prune", default="0.67,0.75", help="HEADS,FFN shares removed")
    args = parser.parse_args()
    heads_share, ffn_share = (float(x) for x in args.prune.split(","))
    settings = [float(x) for x in args.min_round_s.split(",")]

    from fincompress.cli import compose_config
    from fincompress.config_checks import trusted_targets
    from fincompress.stages.benchmark import artifacts_override, run_benchmark

    paths = stand_ins(args.output / "models", args.teacher, args.layers, heads_share, ffn_share)
    runs = []
    for number in range(args.runs):
        for setting in settings:
            run_dir = args.output / f"run{number + 1}_min{setting:g}s"
            with trusted_targets():
                result = run_benchmark(compose_config([
                    "+experiment=benchmark",
                    artifacts_override({k: str(v) for k, v in paths.items()}),
                    f"paths.run_dir={run_dir.resolve()}", "benchmark.reference_precisions=false",
                    "benchmark.published=[]", "benchmark.latency_sentences=0",
                    f"benchmark.min_round_s={setting}"]))
            rates = {row["model"]: row["throughput_sorted"] for row in result["models"]}
            run = {"min_round_s": setting, "rates": rates,
                   "x_teacher_fp32": round(rates["student_int8"] / rates["teacher"], 1),
                   "x_teacher_int8": round(rates["student_int8"] / rates["teacher_int8"], 1),
                   "other_work_share": result["machine"].get("other_work_share")}
            runs.append(run)
            print(f"min_round_s={setting:g}: student INT8 {rates['student_int8']:,.0f}/s, "
                  f"{run['x_teacher_fp32']}x teacher fp32 ({rates['teacher']:.1f}/s), "
                  f"{run['x_teacher_int8']}x teacher INT8 ({rates['teacher_int8']:.1f}/s)",
                  flush=True)
    summary = {}
    for setting in settings:
        mine = [run for run in runs if run["min_round_s"] == setting]
        summary[f"{setting:g}"] = {
            key: {"values": [run[key] for run in mine],
                  "range_pct": round(100 * (max(run[key] for run in mine)
                                            / min(run[key] for run in mine) - 1), 1)}
            for key in ("x_teacher_fp32", "x_teacher_int8")}
        summary[f"{setting:g}"]["student_int8_per_s"] = [run["rates"]["student_int8"] for run in mine]
        print(f"min_round_s={setting:g}: x teacher fp32 {summary[f'{setting:g}']['x_teacher_fp32']}, "
              f"x teacher INT8 {summary[f'{setting:g}']['x_teacher_int8']}; median "
              f"{statistics.median(summary[f'{setting:g}']['x_teacher_fp32']['values'])}x")
    from fincompress.files import write_json
    from fincompress.hardware import machine_record
    write_json({"machine": machine_record("32-true", "steadiness"), "args": vars(args) | {
        "output": str(args.output)}, "runs": runs, "summary": summary},
        args.output / "steadiness.json")
    print(f"written: {args.output / 'steadiness.json'}")


if __name__ == "__main__":
    main()
