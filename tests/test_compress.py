"""Stacked compression on tiny models: distil -> prune -> quantize, every artifact scored."""

import json
from pathlib import Path

import pytest

from fincompress.compress.prune import pruning_record
from fincompress.models.sources import load_classifier
from fincompress.stages.compress import run_compress

from .conftest import TINY, compose_config

COMPRESS_TINY = ["+experiment=compress", *TINY, "news.max_sentences=120",
                 "student.model.num_layers=2", "student.stage2_epochs=1", "prune.rounds=1",
                 "prune.timing_repeats=1", "quantize.timing_repeats=1",
                 "quantize.latency_sentences=3"]


def test_distil_prune_quantize_end_to_end(tmp_path, data_dir):
    result = run_compress(compose_config(COMPRESS_TINY, tmp_path))
    names = [row["model"] for row in result["models"]]
    assert names == ["teacher", "distilled student", "pruned student", "int8 student (quantize)"]
    assert result["steps"] == ["distill", "prune", "quantize"]
    teacher, student, pruned, int8 = result["models"]
    model, _ = load_classifier(pruned["dir"], ["negative", "neutral", "positive"])
    heads = sum(map(len, pruning_record(model)["kept_heads"].values()))
    assert heads == round(0.7 * 2 * model.config.num_attention_heads)  # 30% of a 2-layer student
    assert int8["engine"] in ("openvino", "onnxruntime") and int8["size_bytes"] < pruned["size_bytes"]
    info = json.loads((Path(int8["dir"]) / "checkpoint_info.json").read_text())
    assert info["source"] == pruned["dir"]  # lineage: the INT8 artifact came from the pruned one
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["models"][3]["dir"] == int8["dir"]


def test_unknown_steps_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown steps \\['distil'\\]"):
        run_compress(compose_config([*COMPRESS_TINY, "compress.steps=[distil,quantize]"], tmp_path))
