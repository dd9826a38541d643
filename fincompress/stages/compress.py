"""Stacked compression behind ``python train.py +experiment=compress``: distil -> prune ->
quantize, from a teacher to one deployable INT8 artifact.

The steps are config (``compress.steps``), run in order, each feeding the next; each keeps its
own stored artifacts (teacher, pseudo-labels, stage-1 student, pruning rounds, INT8 artifact),
so a rerun reuses what is done. The run ends with every artifact of the chain scored on the
test split and timed side by side, interleaved, against the teacher in fp32 PyTorch.
"""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig, open_dict

from fincompress.files import write_json
from fincompress.scoring import score
from fincompress.stages.distill import run_distill
from fincompress.stages.prune import run_prune
from fincompress.stages.qat import run_qat
from fincompress.stages.quantize import run_ptq, table
from fincompress.training import choose_precision, stage_config

STEPS = {"prune": run_prune, "quantize": run_ptq, "qat": run_qat}


def run_compress(cfg: DictConfig) -> dict:
    started = time.perf_counter()
    unknown = [step for step in cfg.compress.steps if step not in STEPS]
    if unknown:
        raise ValueError(f"compress.steps: unknown steps {unknown}; known: {', '.join(STEPS)} "
                         "(distillation always runs first)")
    machine = choose_precision(cfg)
    output_dir = Path(cfg.paths.output_dir)
    distilled = run_distill(stage_config(cfg, output_dir / "distill"))
    teacher = Path(distilled["teacher_dir"])
    source = Path(distilled["student_dir"])
    chain = {"teacher": teacher, "distilled student": source}
    for step in cfg.compress.steps:
        stage = stage_config(cfg, output_dir / step)
        with open_dict(stage):
            stage.teacher_checkpoint = str(teacher)  # QAT's KD teacher; the stored teacher
            stage[step].source = str(source)
        if step == "prune":
            source = Path(run_prune(stage)["models"][-1]["dir"])
            chain["pruned student"] = source
        else:
            source = Path(STEPS[step](stage)["chosen"]["dir"])
            chain[f"int8 student ({step})"] = source
    result = score(chain, list(cfg.data.labels),
                   output_dir / "distill" / "stage2" / "split" / "test.csv", machine,
                   repeats=cfg.compress.timing_repeats,
                   latency_sentences=cfg.compress.latency_sentences,
                   min_round_s=cfg.benchmark.min_round_s)
    result["steps"] = ["distill", *cfg.compress.steps]
    result["wall_time_s"] = round(time.perf_counter() - started, 1)
    write_json(result, output_dir / "results.json")
    print(table(result))
    return {"metrics": {"test/f1_macro": result["models"][-1]["f1_macro"]}, **result}
