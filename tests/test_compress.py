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


@pytest.fixture(scope="module")
def compress_root(tmp_path_factory):
    """One output root for this file's runs, so that the QAT chain reuses the stored teacher,
    pseudo-labels and stage-1 student of the first (each test still runs alone)."""
    return tmp_path_factory.mktemp("compress")


@pytest.mark.slow(budget_s=300)
def test_distil_prune_quantize_end_to_end(compress_root, data_dir):
    tmp_path = compress_root
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


@pytest.mark.slow(budget_s=300)
def test_qat_as_the_last_step_of_stacked_compression(compress_root, data_dir):
    result = run_compress(compose_config([*COMPRESS_TINY, "compress.steps=[qat]", "qat.epochs=1",
                                          "distill.fresh_baseline=false"], compress_root))
    names = [row["model"] for row in result["models"]]
    assert names == ["teacher", "distilled student", "int8 student (qat)"]
    info = json.loads((Path(result["models"][2]["dir"]) / "checkpoint_info.json").read_text())
    assert info["source"] == result["models"][1]["dir"]  # QAT of the distilled student
    assert info["steps"][0]["teacher"] == result["models"][0]["dir"]  # KD from the teacher
