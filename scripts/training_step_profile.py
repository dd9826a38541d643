"""Where a CPU's training time goes: the matmul peak, and one training step taken apart.

    python scripts/training_step_profile.py [--source bundled:minilm-l6] [--layers 6]
        [--batch 16] [--tokens 33] [--steps 20] [--output step_profile.json]

Prints and saves (``--output``): this machine's fp32 matmul peak on all threads and on one
(``fincompress.scoring.peak_rates``), the mean forward, backward and AdamW (fused, as the
stages step) times of a training step of ``--batch`` random sentences of ``--tokens`` tokens
through the classifier ``--source`` cut to ``--layers`` layers, and the operators that take
most of the step (PyTorch's profiler). The main job's defaults: MiniLM-L6, batches of 16,
PhraseBank's sentences about 33 tokens long.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

LABELS = ["negative", "neutral", "positive"]


def step_times(model, batch: int, tokens: int, steps: int) -> dict[str, float]:
    """Mean milliseconds of the forward pass, the backward pass and the AdamW step, over
    ``steps`` steps after three unmeasured ones."""
    import torch

    from fincompress.optim import fused_where_possible

    ids = torch.randint(1000, model.config.vocab_size - 1, (batch, tokens))
    mask, labels = torch.ones_like(ids), torch.randint(0, len(LABELS), (batch,))
    factory = functools.partial(torch.optim.AdamW, lr=1e-5, weight_decay=0.01)
    optimizer = factory(model.parameters(), **fused_where_possible(factory))  # as the stages
    totals = {"forward_ms": 0.0, "backward_ms": 0.0, "optimizer_ms": 0.0}
    model.train()
    for step in range(steps + 3):
        start = time.perf_counter()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        forward = time.perf_counter()
        loss.backward()
        backward = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= 3:
            totals["forward_ms"] += forward - start
            totals["backward_ms"] += backward - forward
            totals["optimizer_ms"] += time.perf_counter() - backward
    return {key: round(1000 * value / steps, 1) for key, value in totals.items()}


def operator_shares(model, batch: int, tokens: int, steps: int, top: int = 8) -> list[dict]:
    """The ``top`` operators by their own CPU time over ``steps`` training steps, with their
    share of all operators' time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        step_times(model, batch, tokens, steps)
    events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [{"operator": e.key, "share": round(e.self_cpu_time_total / total, 3)}
            for e in events[:top]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="bundled:minilm-l6")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=33)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--output", type=Path, default=Path("step_profile.json"))
    args = parser.parse_args()
    for name in ("layers", "batch", "tokens", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, not {getattr(args, name)}")

    import torch

    from fincompress.files import write_json
    from fincompress.hardware import cpu_info
    from fincompress.models.sources import load_classifier
    from fincompress.scoring import peak_rates

    threads = torch.get_num_threads()
    peaks = {f"{threads} threads": peak_rates()["f32"]}
    torch.set_num_threads(1)
    try:
        peaks["1 thread"] = peak_rates()["f32"]
    finally:
        torch.set_num_threads(threads)
    model, _ = load_classifier(args.source, LABELS,
                               config_overrides={"num_hidden_layers": args.layers})
    result = {"cpu": cpu_info(), "source": args.source, "layers": args.layers,
              "batch": args.batch, "tokens": args.tokens, "steps": args.steps,
              "fp32_matmul_peak_gflops": {k: round(v, 1) for k, v in peaks.items()},
              "step": step_times(model, args.batch, args.tokens, args.steps),
              "top_operators": operator_shares(model, args.batch, args.tokens,
                                               max(2, args.steps // 2))}
    write_json(result, args.output)
    print(json.dumps({k: v for k, v in result.items() if k != "cpu"}, indent=1))
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
