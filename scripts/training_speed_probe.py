"""Training speed under the two process settings every training stage gets, side by side:
:func:`fincompress.hardware.keep_freed_memory` and the fused AdamW step
(:func:`fincompress.optim.fused_where_possible`).

    python scripts/training_speed_probe.py [--rounds 2] [--steps 60] [--layers 3]
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python scripts/training_speed_probe.py

Each round runs one fresh process per setting (``neither``, ``keep_freed_memory``, ``both``),
in an order that turns every round. Each trains a randomly initialised MiniLM-sized classifier
(``--layers`` layers, 384 wide, BERT vocabulary) in fp32 for ``--steps`` batches of 32 with
lengths drawn between 16 and 90 tokens, after one untimed pass over the same batches, and
reports wall, user and system seconds, page faults and the mean optimizer step. Prints a table
and writes ``outputs/training_speed_probe/results.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from fincompress.hardware import cpu_info
from fincompress.tables import markdown_table

CHILD = """
import functools, json, random, resource, sys, time
from fincompress.hardware import keep_freed_memory
from fincompress.optim import fused_where_possible
setting, steps, layers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
kept = keep_freed_memory() if setting in ("keep_freed_memory", "both") else False
import torch
from transformers import BertConfig, BertForSequenceClassification
torch.manual_seed(0)
random.seed(0)
config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=layers,
                    num_attention_heads=12, intermediate_size=1536, num_labels=3)
model = BertForSequenceClassification(config)
factory = functools.partial(torch.optim.AdamW, lr=1e-5, weight_decay=0.01)
options = fused_where_possible(factory) if setting == "both" else {}
optimizer = factory(model.parameters(), **options)
lengths = [random.randint(16, 90) for _ in range(steps)]
def one_pass():
    step_s = 0.0
    for length in lengths:
        loss = model(input_ids=torch.randint(1000, 30000, (32, length)),
                     labels=torch.randint(0, 3, (32,))).loss
        loss.backward()
        clock = time.perf_counter()
        optimizer.step()
        step_s += time.perf_counter() - clock
        optimizer.zero_grad()
    return step_s
one_pass()
before, clock = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
step_s = one_pass()
after = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"kept_freed_memory": kept, "fused": bool(options),
                  "wall_s": time.perf_counter() - clock,
                  "user_s": after.ru_utime - before.ru_utime,
                  "system_s": after.ru_stime - before.ru_stime,
                  "page_faults": after.ru_minflt - before.ru_minflt,
                  "optimizer_step_ms": 1000 * step_s / len(lengths)}))
"""
SETTINGS = ("neither", "keep_freed_memory", "both")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--output", default="outputs/training_speed_probe")
    args = parser.parse_args()
    rows = []
    for round_number in range(args.rounds):
        turn = round_number % len(SETTINGS)
        for setting in SETTINGS[turn:] + SETTINGS[:turn]:
            text = subprocess.run([sys.executable, "-c", CHILD, setting, str(args.steps),
                                   str(args.layers)],
                                  check=True, capture_output=True, text=True).stdout
            rows.append({"round": round_number + 1, "setting": setting,
                         **json.loads(text.strip().splitlines()[-1])})
            print(rows[-1], flush=True)
    info = cpu_info()
    print(f"{info['cpu']}, {info['torch_threads']} threads, PyTorch {info['torch_cpu_capability']}, "
          f"{args.layers} layers, {args.steps} steps")
    print(markdown_table(rows, [("round", "round"), ("setting", "setting"),
                                ("wall_s", "wall s", ".2f"), ("user_s", "user s", ".1f"),
                                ("system_s", "system s", ".1f"),
                                ("page_faults", "page faults", ","),
                                ("optimizer_step_ms", "optimizer step ms", ".1f")]))
    folder = Path(args.output)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps({"machine": info, "layers": args.layers,
                                                     "steps": args.steps, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
