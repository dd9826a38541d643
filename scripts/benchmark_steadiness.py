"""How steady is the benchmark's speed-up of a small student over the teacher, run after run?

    python scripts/benchmark_steadiness.py --output outputs/steadiness [--runs 2] \\
        [--min-round-s 0,1] [--teacher bundled:mpnet-base] [--student bundled:minilm-l6] \\
        [--layers 2] [--prune 0.67,0.75] [--backends openvino,onnxruntime,onnxruntime_static]

Builds stand-ins in the frontier's shapes, with weights that do not matter for timing (as the
benchmark's published rows): the teacher (``--teacher``), and an encoder (``--student``:
MiniLM-L6, or MPNet-base for a student cut from the teacher's encoder) cut to ``--layers``
layers with the given shares of heads and FFN neurons removed (the same number from each
layer), each also in INT8 through every backend of ``--backends`` (``quantize.engines``, as the
PTQ stage builds them). Then it runs the benchmark stage ``--runs`` times for each
``benchmark.min_round_s`` value, the values in turn (0, 1, 0, 1, ...), and prints the student's
throughput in each form and its fastest INT8 form's speed-ups over the teacher in fp32, in its
best PyTorch precision (bf16 where this CPU runs it natively, timed in the same run) and in its
fastest INT8 form for every run, with their spread over the runs of each value. Written
to ``--output``: the stand-ins, each run's benchmark folder and ``steadiness.json``.

Accuracy is not measured here (the weights are not trained); the frontier's figures come from
its own benchmark stage, which uses the same setting.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

LABELS = ["negative", "neutral", "positive"]


def pruned_student(source: str, layers: int, heads_share: float, ffn_share: float):
    """The encoder ``source`` cut to ``layers`` layers, the given shares of each layer's heads
    and FFN neurons removed (the last ones; untrained head): the frontier's pruned shape."""
    from fincompress.compress.prune import layer_parts, prune_ffn, prune_heads
    from fincompress.models.sources import load_classifier

    student, tokenizer = load_classifier(source, LABELS,
                                         config_overrides={"num_hidden_layers": layers})
    parts = layer_parts(student)
    heads, neurons = student.config.num_attention_heads, student.config.intermediate_size
    prune_heads(student, {i: list(range(round(heads * (1 - heads_share)), heads))
                          for i in range(len(parts))})
    prune_ffn(student, {i: list(range(round(neurons * (1 - ffn_share)), neurons))
                        for i in range(len(parts))})
    return student, tokenizer


def stand_ins(folder: Path, teacher: str, student: str, layers: int, heads_share: float,
              ffn_share: float, backends: list[str]) -> dict[str, Path]:
    """The teacher and the student in fp32 and in each backend's INT8 (``teacher_int8_openvino``
    ...), built once and reused by later calls."""
    from hydra.utils import instantiate

    from fincompress.artifacts import save_model_folder, write_checkpoint_info
    from fincompress.cli import compose_config, training_sentences
    from fincompress.config_checks import trusted_targets
    from fincompress.files import atomic_folder
    from fincompress.models.sources import load_classifier

    engines = compose_config(["+experiment=ptq"]).quantize.engines
    unknown = sorted(set(backends) - set(engines))
    if unknown:
        raise SystemExit(f"--backends: {', '.join(unknown)} not among quantize.engines "
                         f"({', '.join(engines)})")
    paths = {name: folder / name for model in ("teacher", "student")
             for name in (model, *(f"{model}_int8_{backend}" for backend in backends))}
    if all(path.is_dir() for path in paths.values()):
        return paths

    makers = {"teacher": lambda: load_classifier(teacher, LABELS),
              "student": lambda: pruned_student(student, layers, heads_share, ffn_share)}
    calibration = training_sentences(300)
    for name, make in makers.items():
        info = {"stage": "stand-in", "labels": LABELS, "note": "untrained weights, for timing"}
        if paths[name].is_dir():  # an earlier call's stand-in: new INT8 forms share its weights
            model, tokenizer = load_classifier(str(paths[name]), LABELS)
        else:
            model, tokenizer = make()
            save_model_folder(model, tokenizer, paths[name], info)
        for backend in backends:
            if paths[f"{name}_int8_{backend}"].is_dir():
                continue
            with atomic_folder(paths[f"{name}_int8_{backend}"]) as staging, trusted_targets():
                record = instantiate(engines[backend]).export(model, tokenizer, calibration,
                                                              staging)
                write_checkpoint_info(staging, {**info, "source": str(paths[name]),
                                                "steps": [record]})
    return paths


def fastest(rates: dict[str, float], model: str) -> tuple[str, float]:
    """The name and rate of ``model``'s fastest INT8 form."""
    return max(((name, rate) for name, rate in rates.items()
                if name.startswith(f"{model}_int8_")), key=lambda item: item[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=2, help="benchmark runs per setting")
    parser.add_argument("--min-round-s", default="0,1",
                        help="benchmark.min_round_s values, taken in turn")
    parser.add_argument("--teacher", default="bundled:mpnet-base")
    parser.add_argument("--student", default="bundled:minilm-l6",
                        help="the encoder the student is cut from")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--prune", default="0.67,0.75", help="HEADS,FFN shares removed")
    parser.add_argument("--backends", default="openvino",
                        help="INT8 backends (quantize.engines), comma-separated")
    args = parser.parse_args()
    heads_share, ffn_share = (float(x) for x in args.prune.split(","))
    settings = [float(x) for x in args.min_round_s.split(",")]

    from fincompress.cli import compose_config
    from fincompress.config_checks import trusted_targets
    from fincompress.stages.benchmark import artifacts_override, run_benchmark

    paths = stand_ins(args.output / "models", args.teacher, args.student, args.layers,
                      heads_share, ffn_share, args.backends.split(","))
    runs = []
    for number in range(args.runs):
        for setting in settings:
            run_dir = args.output / f"run{number + 1}_min{setting:g}s"
            with trusted_targets():
                result = run_benchmark(compose_config([
                    "+experiment=benchmark",
                    artifacts_override({k: str(v) for k, v in paths.items()}),
                    f"paths.run_dir={run_dir.resolve()}", "benchmark.reference_int8=false",
                    "benchmark.published=[]", "benchmark.latency_sentences=0",
                    f"benchmark.min_round_s={setting}"]))
            rates = {row["model"]: row["throughput_sorted"] for row in result["models"]}
            student, student_rate = fastest(rates, "student")
            teacher, teacher_rate = fastest(rates, "teacher")
            # the teacher's best PyTorch precision: bf16 where this CPU runs it natively
            teacher_torch = max(rate for name, rate in rates.items()
                                if name in ("teacher", "teacher (bf16)"))
            run = {"min_round_s": setting, "rates": rates, "student_int8": student,
                   "teacher_int8": teacher, "student_int8_per_s": student_rate,
                   "x_teacher_fp32": round(student_rate / rates["teacher"], 1),
                   "x_teacher_best_torch": round(student_rate / teacher_torch, 1),
                   "x_teacher_int8": round(student_rate / teacher_rate, 1),
                   "other_work_share": result["machine"].get("other_work_share")}
            runs.append(run)
            forms = ", ".join(f"{name} {rate:,.1f}/s" for name, rate in rates.items())
            print(f"min_round_s={setting:g}: {forms}\n  fastest student INT8 ({student}) "
                  f"{run['x_teacher_fp32']}x teacher fp32, {run['x_teacher_best_torch']}x its best "
                  f"PyTorch precision, {run['x_teacher_int8']}x teacher's "
                  f"fastest INT8 ({teacher})", flush=True)
    summary = {}
    for setting in settings:
        mine = [run for run in runs if run["min_round_s"] == setting]
        summary[f"{setting:g}"] = {
            key: {"values": [run[key] for run in mine],
                  "range_pct": round(100 * (max(run[key] for run in mine)
                                            / min(run[key] for run in mine) - 1), 1)}
            for key in ("x_teacher_fp32", "x_teacher_best_torch", "x_teacher_int8")}
        summary[f"{setting:g}"]["student_int8_per_s"] = [run["student_int8_per_s"] for run in mine]
        print(f"min_round_s={setting:g}: x teacher fp32 {summary[f'{setting:g}']['x_teacher_fp32']}, "
              f"x its best PyTorch precision {summary[f'{setting:g}']['x_teacher_best_torch']}, "
              f"x teacher INT8 {summary[f'{setting:g}']['x_teacher_int8']}; median "
              f"{statistics.median(summary[f'{setting:g}']['x_teacher_fp32']['values'])}x")
    from fincompress.files import write_json
    write_json({"machine": result["machine"], "args": vars(args) | {
        "output": str(args.output)}, "runs": runs, "summary": summary},
        args.output / "steadiness.json")
    print(f"written: {args.output / 'steadiness.json'}")


if __name__ == "__main__":
    main()
