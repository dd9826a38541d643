"""Quantization-aware training with KD (NNCF): fake quantizers that train, an OpenVINO INT8
artifact that matches the trained model, and the experiment beside PTQ of the same model."""

import json
from pathlib import Path

import pytest
import torch

from fincompress.compress.qat import export_openvino, prepare
from fincompress.models.sources import load_classifier
from fincompress.predict import OpenVINOPredictor, load
from fincompress.stages.qat import run_qat

from .conftest import TINY, compose_config

LABELS = ["negative", "neutral", "positive"]
SENTENCES = ["Operating profit rose to EUR 13.1 mn .", "Net sales fell 5 % in the quarter .",
             "The company is based in Helsinki .", "Shares slumped after the warning ."] * 4


def tiny_model():
    return load_classifier("bundled:minilm-l6", LABELS, random_init=True,
                           config_overrides={"num_hidden_layers": 2, "hidden_size": 64,
                                             "num_attention_heads": 2, "intermediate_size": 128})


def test_fake_quantizers_change_the_output_train_and_export_to_the_same_int8(tmp_path):
    model, tokenizer = tiny_model()
    batch = tokenizer(SENTENCES[:4], padding=True, return_tensors="pt")
    with torch.no_grad():
        before = model(**batch).logits
    quantized, record = prepare(model, tokenizer, SENTENCES, overflow_fix="disable")
    assert record["calibration_sentences"] == len(SENTENCES)
    scales = {n: p for n, p in quantized.named_parameters() if "nncf" in n and p.requires_grad}
    assert scales  # the quantizers' ranges are parameters: they train
    with torch.no_grad():
        fake = quantized(**batch).logits
    assert not torch.allclose(fake, before, atol=1e-6)  # INT8 rounding reaches the output
    torch.testing.assert_close(fake, before, atol=0.1, rtol=0.1)  # but only as rounding
    loss = torch.nn.functional.cross_entropy(quantized(**batch).logits, torch.tensor([0, 1, 2, 0]))
    loss.backward()  # straight-through: weights and scales both get gradients
    assert all(p.grad is not None for p in scales.values())
    assert quantized.classifier.weight.grad.abs().sum() > 0
    export_openvino(quantized, tokenizer, tmp_path / "qat")
    int8 = load(tmp_path / "qat", LABELS)
    assert isinstance(int8, OpenVINOPredictor)
    with torch.no_grad():
        trained = quantized(**tokenizer(SENTENCES, padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(torch.from_numpy(int8.logits(SENTENCES)), trained, atol=0.05, rtol=0.05)


def test_empty_calibration_is_refused():
    model, tokenizer = tiny_model()
    with pytest.raises(ValueError, match="calibration set is empty"):
        prepare(model, tokenizer, [])


QAT_TINY = ["+experiment=qat", *TINY, "quantize.timing_repeats=1", "quantize.latency_sentences=3",
            "qat.epochs=1"]


@pytest.mark.slow(budget_s=200)
def test_qat_experiment_beside_ptq_end_to_end_and_reuse(tmp_path, data_dir):
    result = run_qat(compose_config(QAT_TINY, tmp_path))
    source, ptq, qat = result["models"]
    assert [r["model"] for r in result["models"]] == ["source (torch fp32)", "PTQ openvino int8",
                                                      "QAT openvino int8"]
    assert ptq["engine"] == qat["engine"] == "openvino"
    assert qat["size_bytes"] < source["size_bytes"]
    assert abs(qat["size_bytes"] - ptq["size_bytes"]) < 0.05 * ptq["size_bytes"]  # both INT8
    (folder,) = (tmp_path / "stages" / "qat").glob("*/model")
    assert qat["dir"] == str(folder)
    info = json.loads((folder / "checkpoint_info.json").read_text())
    step = info["steps"][0]
    assert step["qat"]["epochs"] == 1 and step["calibration_sentences"] == 48
    assert step["best_val_f1_macro"] is not None and Path(step["teacher"]).is_dir()
    again = run_qat(compose_config(QAT_TINY, tmp_path))  # from the store: no second training
    assert again["models"][2]["f1_macro"] == qat["f1_macro"]
    assert len(list((tmp_path / "stages" / "qat").glob("*/model"))) == 1


@pytest.mark.parametrize(("override", "message"), [
    ("qat.source=nowhere", "qat.source nowhere holds no model"),
    ("qat.epochs=0", "QAT needs at least 1 epoch"),
])
def test_bad_qat_settings_are_named_before_any_work(tmp_path, override, message):
    with pytest.raises((FileNotFoundError, ValueError), match=message):
        run_qat(compose_config([*QAT_TINY, override], tmp_path))
    assert not (tmp_path / "stages").exists()  # nothing trained, nothing half-written
