"""ONNX Runtime INT8 of one model in four forms, timed side by side: its attention exported as
plain matrix products (``eager``, the ONNX backend's default) or through SDPA (``sdpa``), each
run with and without ONNX Runtime's SkipLayerNormalization fusion (``fincompress.predict``
turns it off).

    python scripts/onnx_runtime_forms.py --output outputs/ort_forms [--model FOLDER] \\
        [--rounds 6] [--min-round-s 1] [--layers 2] [--prune 0.67,0.75] [--profile]

``--model``: a model folder (a trained student); without it, the frontier's pruned two-layer
shape with untrained weights (as ``benchmark_steadiness.py`` builds it). Exports already in
``--output`` are reused. Each form runs the PhraseBank test split at batch 32, the sentences
sorted by their length in characters, for at least ``--min-round-s`` a round; the forms take
turns, round after round. Prints each form's median sentences/s, its speed-up over ``sdpa``
with the fusion (what the project did before), and its labels' agreement with that form; with
``--profile``, ONNX Runtime's own profile of one more pass of each form (kernel time and nodes
by op type, in separate sessions). Writes ``forms.json`` to ``--output``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from benchmark_steadiness import LABELS, pruned_student


def sessions(folders: dict[str, Path], threads: int, profile_dir: Path | None = None) -> dict:
    """Each export with and without the SkipLayerNormalization fusion (profiled, with
    ``profile_dir``)."""
    from fincompress.predict import ORT_DISABLED_FUSIONS, onnx_session

    forms = {}
    for attention, folder in folders.items():
        for fused in (True, False):
            name = f"{attention}, {'fused' if fused else 'unfused'} SkipLayerNorm"
            prefix = (str(profile_dir / f"{attention}_{'fused' if fused else 'unfused'}")
                      if profile_dir else None)
            forms[name] = onnx_session(folder / "model.onnx", threads,
                                       [] if fused else ORT_DISABLED_FUSIONS, prefix)
    return forms


def op_times(session, feeds: list[dict]) -> list[dict]:
    """One profiled pass over ``feeds``: each op type's kernel time per batch and its share."""
    import json
    from collections import Counter

    for feed in feeds:
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    micros, calls = Counter(), Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            micros[event["args"]["op_name"]] += event["dur"]
            calls[event["args"]["op_name"]] += 1
    total = sum(micros.values())
    return [{"op": op, "nodes": round(calls[op] / len(feeds)),
             "ms_per_batch": round(us / len(feeds) / 1000, 2), "share": round(us / total, 3)}
            for op, us in micros.most_common(6)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--model", default=None, help="a model folder; default: the stand-in")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--min-round-s", type=float, default=1.0)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--prune", default="0.67,0.75", help="HEADS,FFN shares removed")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one pass of each form: kernel time by op type")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")

    import numpy as np
    from transformers import AutoTokenizer

    from fincompress.cli import data_folder_split, training_sentences
    from fincompress.files import write_json
    from fincompress.hardware import default_threads, machine_record

    folders = {attention: args.output / f"int8_{attention}" for attention in ("sdpa", "eager")}
    missing = [a for a, folder in folders.items() if not (folder / "model.onnx").is_file()]
    if missing:  # exports already in --output are timed again, not rebuilt
        from fincompress.compress.int8 import ONNXRuntimeBackend
        from fincompress.models.sources import load_classifier

        if args.model:
            model, tokenizer = load_classifier(args.model, LABELS)
        else:
            heads_share, ffn_share = (float(x) for x in args.prune.split(","))
            model, tokenizer = pruned_student("bundled:minilm-l6", args.layers, heads_share,
                                              ffn_share)
        for attention in missing:
            ONNXRuntimeBackend(attention=attention).export(model.eval(), tokenizer,
                                                           training_sentences(300),
                                                           folders[attention])
    tokenizer = AutoTokenizer.from_pretrained(folders["eager"])
    _, split = data_folder_split("no PhraseBank test split to time on", "set FINCOMPRESS_DATA")
    texts = sorted((row.text for row in split.splits["test"]), key=len)
    feeds = [{name: values.astype("int64") for name, values in
              tokenizer(texts[i:i + 32], padding=True, return_tensors="np",
                        return_token_type_ids=False).items()}
             for i in range(0, len(texts), 32)]
    threads = default_threads()
    forms = sessions(folders, threads)
    profiles = {}
    if args.profile:  # separate sessions: profiling slows the timed ones
        with tempfile.TemporaryDirectory() as folder:
            profiles = {name: op_times(session, feeds) for name, session in
                        sessions(folders, threads, Path(folder)).items()}
    before = next(iter(forms))  # sdpa with the fusion: the export and session used until now
    logits = {name: np.concatenate([s.run(None, feed)[0] for feed in feeds])
              for name, s in forms.items()}
    rates: dict[str, list[float]] = {name: [] for name in forms}
    for _ in range(args.rounds):
        for name, session in forms.items():
            started, passes = time.perf_counter(), 0
            while passes == 0 or time.perf_counter() - started < args.min_round_s:
                for feed in feeds:
                    session.run(None, feed)
                passes += 1
            rates[name].append(passes * len(texts) / (time.perf_counter() - started))
    rows = []
    for name, values in rates.items():
        row = {"form": name, "median_per_s": round(statistics.median(values), 1),
               "rounds_per_s": [round(v, 1) for v in values],
               "x_before": round(statistics.median(values) / statistics.median(rates[before]), 3),
               "agreement_with_before": float((logits[name].argmax(-1)
                                               == logits[before].argmax(-1)).mean()),
               "max_logit_difference": float(np.abs(logits[name] - logits[before]).max())}
        if name in profiles:
            row["kernel_time_by_op"] = profiles[name]
        rows.append(row)
        print(f"{name}: {row['median_per_s']:,.0f} sentences/s (median of {args.rounds}), "
              f"{row['x_before']:.2f}x {before}; labels agree {row['agreement_with_before']:.3f}",
              flush=True)
        for op in row.get("kernel_time_by_op", []):
            print(f"    {op['op']} ({op['nodes']} nodes): {op['ms_per_batch']:.2f} ms a batch "
                  f"({op['share']:.1%})")
    write_json({"machine": machine_record("32-true", "ONNX Runtime forms"), "threads": threads,
                "model": args.model or f"stand-in: {args.layers} layers, pruned {args.prune}",
                "sentences": len(texts), "rows": rows}, args.output / "forms.json")
    print(f"written: {args.output / 'forms.json'}")


if __name__ == "__main__":
    main()
