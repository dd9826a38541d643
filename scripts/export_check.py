"""Export a model to INT8 with the CLI, benchmark it beside its source, and check that
``fincompress.load`` reopens the artifact with the benchmark's labels.

    python scripts/export_check.py outputs/pkd/<run>/student [--format openvino] [--output DIR]

Runs ``fincompress export MODEL --format F --int8 --output DIR/int8`` and
``fincompress bench MODEL DIR/int8 --output DIR/bench``, then predicts the benchmark's test split
with ``fincompress.load(DIR/int8)`` and compares its labels with those the benchmark measured
for the artifact. Writes ``DIR/export_check.json`` and exits 1 below ``--min-agreement``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fincompress_cli(*args: str) -> float:
    started = time.perf_counter()
    command = [sys.executable, "-m", "fincompress.cli", *args]
    print("$ fincompress " + " ".join(args), flush=True)
    if subprocess.run(command, cwd=ROOT).returncode:
        sys.exit(f"failed: {' '.join(command)}")
    return round(time.perf_counter() - started, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--format", choices=["openvino", "onnx"], default="openvino")
    parser.add_argument("--output", default="outputs/export_check")
    parser.add_argument("--min-agreement", type=float, default=0.99)
    parser.add_argument("--repeats", default="3", help="the benchmark's interleaved rounds")
    parser.add_argument("--latency-sentences", default="200", help="the benchmark's batch-1 sentences")
    args = parser.parse_args()

    import fincompress
    from fincompress.data.phrasebank import read_split_file

    output = Path(args.output)
    artifact, bench = output / "int8", output / "bench"
    if artifact.exists():
        sys.exit(f"{artifact} exists; give a new --output")
    export_s = fincompress_cli("export", args.model, "--format", args.format, "--int8",
                               "--output", str(artifact))
    bench_s = fincompress_cli("bench", args.model, str(artifact), "--output", str(bench),
                              "--repeats", args.repeats, "--latency-sentences", args.latency_sentences)
    rows = json.loads((bench / "benchmark.json").read_text())["models"]
    measured = next(row for row in rows if row["dir"] == str(artifact.resolve()))
    texts = [row.text for row in read_split_file(bench / "split" / "test.csv")]
    labels = [a["label"] for a in fincompress.load(artifact).predict(texts)]
    agreement = sum(a == b for a, b in zip(labels, measured["predictions"])) / len(texts)
    result = {"model": args.model, "artifact": str(artifact), "format": args.format,
              "export_s": export_s, "bench_s": bench_s, "test_sentences": len(texts),
              "agreement_load_vs_benchmark": agreement,
              "benchmark_rows": [{k: row[k] for k in ("model", "engine", "precision", "size_bytes",
                                                      "throughput_sorted", "latency_model_ms_p50",
                                                      "acc", "f1_macro", "agreement_with_teacher")}
                                 for row in rows]}
    (output / "export_check.json").write_text(json.dumps(result, indent=2))
    for row in result["benchmark_rows"]:
        print(f"{row['model']}: {row['engine']} {row['precision']}, "
              f"{row['size_bytes'] / 2**20:.1f} MiB, {row['throughput_sorted']:,.1f} sentences/s, "
              f"batch-1 {row['latency_model_ms_p50']:.2f} ms, macro-F1 {row['f1_macro']:.4f}, "
              f"agreement with the source {row['agreement_with_teacher']:.3f}")
    print(f"fincompress.load({artifact}) agrees with the benchmark's labels on "
          f"{agreement:.1%} of {len(texts)} test sentences; written {output / 'export_check.json'}")
    if agreement < args.min_agreement:
        sys.exit(1)


if __name__ == "__main__":
    main()
