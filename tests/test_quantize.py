"""Post-training INT8 (OpenVINO + NNCF): the artifact loads through the one predictor interface,
agrees with fp32 on the test labels, and its size comes from its files."""

import json
import sys

import pytest
import torch

from fincompress.compress.int8 import OpenVINOBackend
from fincompress.models.sources import folder_size_bytes, load_classifier
from fincompress.predict import OpenVINOPredictor, TorchPredictor, load
from fincompress.stages.quantize import run_ptq

from .conftest import TINY, compose_config

PTQ_TINY = ["+experiment=ptq", *TINY, "quantize.timing_repeats=1", "quantize.latency_sentences=3"]


def test_ptq_experiment_end_to_end(tmp_path, data_dir):
    result = run_ptq(compose_config(PTQ_TINY, tmp_path))
    source, int8 = result["models"]
    assert (source["engine"], int8["engine"]) == ("torch", "openvino")
    assert source["inference_precision"] == "f32"  # the reference INT8 is measured against
    assert int8["agreement_with_teacher"] >= 0.9  # against the fp32 source on the test split
    artifact = tmp_path / "stages" / "int8"
    (folder,) = artifact.glob("*/model")
    assert int8["size_bytes"] == folder_size_bytes(folder) < source["size_bytes"]
    info = json.loads((folder / "checkpoint_info.json").read_text())
    assert info["steps"][0]["int8"] and info["steps"][0]["calibration_sentences"] == 48
    predictor = load(folder)
    assert isinstance(predictor, OpenVINOPredictor) and predictor.labels == info["labels"]
    assert (tmp_path / "run" / "results.json").is_file()


def test_int8_agrees_with_fp32_on_real_sentences(tmp_path, data_dir):
    from fincompress.data.phrasebank import read_phrasebank

    labels = ["negative", "neutral", "positive"]
    model, tokenizer = load_classifier("bundled:minilm-l6", labels, random_init=True,
                                       config_overrides={"num_hidden_layers": 2, "hidden_size": 64,
                                                         "num_attention_heads": 2,
                                                         "intermediate_size": 128})
    texts = [row.text for row in read_phrasebank(data_dir / "financial_phrasebank", "all")][:300]
    OpenVINOBackend().export(model, tokenizer, texts[:100], tmp_path / "int8")
    OpenVINOBackend(int8=False).export(model, tokenizer, [], tmp_path / "fp32")
    model.save_pretrained(tmp_path / "torch")
    tokenizer.save_pretrained(tmp_path / "torch")
    reference = TorchPredictor(tmp_path / "torch", labels, "32-true").logits(texts)
    fp32 = load(tmp_path / "fp32", labels).logits(texts)
    int8 = load(tmp_path / "int8", labels).logits(texts)
    torch.testing.assert_close(fp32, reference, atol=1e-3, rtol=1e-3)  # same model, other engine
    assert (int8.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.95
    assert not torch.allclose(int8, reference, atol=1e-5)  # it is quantized
    assert folder_size_bytes(tmp_path / "int8") < folder_size_bytes(tmp_path / "fp32")


def test_bad_inputs_are_named(tmp_path, minilm_tokenizer, monkeypatch):
    model, _ = load_classifier("bundled:minilm-l6", ["a", "b", "c"], random_init=True,
                               config_overrides={"num_hidden_layers": 1})
    with pytest.raises(ValueError, match="calibration set is empty"):
        OpenVINOBackend().export(model, minilm_tokenizer, [], tmp_path / "x")
    monkeypatch.setitem(sys.modules, "nncf", None)  # as if it were not installed
    with pytest.raises(ModuleNotFoundError, match=r"pip install -e '\.\[int8\]'"):
        OpenVINOBackend().export(model, minilm_tokenizer, ["Sales rose ."], tmp_path / "x")
    assert not (tmp_path / "x").exists()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "checkpoint_info.json").write_text('{"labels": ["a"]}')
    with pytest.raises(FileNotFoundError, match="holds no model"):
        load(tmp_path / "empty")
    with pytest.raises(ValueError, match="overflow_fix must be"):
        OpenVINOBackend(overflow_fix="sometimes")
