"""Training speed with and without :func:`fincompress.hardware.keep_freed_memory`, side by side.

    python scripts/malloc_probe.py [--rounds 2] [--steps 60]
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python scripts/malloc_probe.py

Each round runs two fresh processes in turn, one with the setting and one without (the order
alternates). Each trains a randomly initialised MiniLM-L6-sized classifier (6 layers, 384
wide) in fp32 for ``--steps`` batches of 32 with lengths drawn between 16 and 90 tokens, after
one untimed pass over the same batches, and reports wall, user and system seconds and page
faults. Prints a table and writes ``outputs/malloc_probe/results.json``.
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
import json, random, resource, sys, time
from fincompress.hardware import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "on" else False
import torch
from transformers import BertConfig, BertForSequenceClassification
torch.manual_seed(0)
random.seed(0)
config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                    intermediate_size=1536, num_labels=3)
model = BertForSequenceClassification(config)
optimizer = torch.optim.AdamW(model.parameters(), 1e-5)
lengths = [random.randint(16, 90) for _ in range(int(sys.argv[2]))]
def one_pass():
    for length in lengths:
        loss = model(input_ids=torch.randint(1000, 30000, (32, length)),
                     labels=torch.randint(0, 3, (32,))).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
one_pass()
before, clock = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
one_pass()
after = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"applied": applied, "wall_s": time.perf_counter() - clock,
       "user_s": after.ru_utime - before.ru_utime, "system_s": after.ru_stime - before.ru_stime,
       "page_faults": after.ru_minflt - before.ru_minflt}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--output", default="outputs/malloc_probe")
    args = parser.parse_args()
    rows = []
    for round_number in range(args.rounds):
        for setting in (("on", "off") if round_number % 2 else ("off", "on")):
            text = subprocess.run([sys.executable, "-c", CHILD, setting, str(args.steps)],
                                  check=True, capture_output=True, text=True).stdout
            result = json.loads(text.strip().splitlines()[-1])
            rows.append({"round": round_number + 1, "keep_freed_memory": setting, **result})
            print(rows[-1], flush=True)
    info = cpu_info()
    print(f"{info['cpu']}, {info['torch_threads']} threads, PyTorch {info['torch_cpu_capability']}")
    print(markdown_table(rows, [("round", "round"), ("keep_freed_memory", "keep_freed_memory"),
                                ("wall_s", "wall s", ".2f"), ("user_s", "user s", ".1f"),
                                ("system_s", "system s", ".1f"),
                                ("page_faults", "page faults", ",")]))
    folder = Path(args.output)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
