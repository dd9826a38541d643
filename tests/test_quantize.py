"""Post-training INT8 (OpenVINO + NNCF, ONNX Runtime): each artifact loads through the one
predictor interface, agrees with fp32 on the test labels, and its size comes from its files;
the backend is chosen by measurement."""

import functools
import json
import sys
from pathlib import Path

import pytest
import torch

from fincompress.compress.int8 import ONNXRuntimeBackend, OpenVINOBackend
from fincompress.files import folder_size_bytes
from fincompress.models.sources import load_classifier
from fincompress.predict import ONNXRuntimePredictor, OpenVINOPredictor, TorchPredictor, load
from fincompress.stages.quantize import run_ptq

from .conftest import TINY, compose_config

PTQ_TINY = ["+experiment=ptq", *TINY, "quantize.timing_repeats=1", "quantize.latency_sentences=3"]


# 34-39 s on a 2-core AVX2 CPU; the INT8 backends' own tests stay in the default suite
@pytest.mark.slow(budget_s=240)
def test_ptq_experiment_end_to_end(tmp_path, data_dir):
    result = run_ptq(compose_config(PTQ_TINY, tmp_path))
    source, openvino, onnx, onnx_static = result["models"]
    assert [r["engine"] for r in result["models"]] == ["torch", "openvino", "onnxruntime",
                                                       "onnxruntime"]
    assert source["inference_precision"] == "f32"  # the reference INT8 is measured against
    for int8, kind in ((openvino, OpenVINOPredictor), (onnx, ONNXRuntimePredictor),
                       (onnx_static, ONNXRuntimePredictor)):
        assert int8["agreement_with_teacher"] >= 0.9  # against the fp32 source, test split
        folder = Path(int8["dir"])
        assert int8["size_bytes"] == folder_size_bytes(folder) < source["size_bytes"]
        info = json.loads((folder / "checkpoint_info.json").read_text())
        assert info["steps"][0]["int8"] and info["steps"][0]["engine"] == int8["engine"]
        predictor = load(folder)
        assert isinstance(predictor, kind) and predictor.labels == info["labels"]
    for calibrated in (openvino, onnx_static):  # the same calibration sentences
        assert json.loads((Path(calibrated["dir"]) / "checkpoint_info.json").read_text()
                          )["steps"][0]["calibration_sentences"] == 48
    assert json.loads((Path(onnx_static["dir"]) / "checkpoint_info.json").read_text()
                      )["steps"][0]["mode"] == "static"
    # the choice: measured on validation, the fastest of those agreeing enough
    chosen = result["chosen"]
    measured = chosen["validation"]
    assert set(measured) == {"openvino", "onnxruntime", "onnxruntime_static"}
    assert all(m["faithful"] == (m["agreement"] >= 0.99) for m in measured.values())
    faithful = [n for n, m in measured.items() if m["agreement"] >= 0.99] or list(measured)
    key = ("throughput_sorted" if any(m["agreement"] >= 0.99 for m in measured.values())
           else "agreement")
    assert chosen["backend"] == max(faithful, key=lambda n: measured[n][key])
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["chosen"]["backend"] == chosen["backend"]


# the default suite keeps OpenVINO, the default backend; ONNX Runtime's dynamo export takes
# 20 s a variant on 2 AVX2 cores, so its two variants run with the slow tests
ONNX_SLOW = pytest.mark.slow(budget_s=120)


@pytest.mark.parametrize("backend", [
    OpenVINOBackend,
    pytest.param(ONNXRuntimeBackend, marks=ONNX_SLOW),
    pytest.param(functools.partial(ONNXRuntimeBackend, mode="static"), marks=ONNX_SLOW)],
    ids=["openvino", "onnxruntime", "onnxruntime_static"])
def test_int8_agrees_with_fp32_on_real_sentences(tmp_path, data_dir, backend):
    from fincompress.data.phrasebank import read_phrasebank

    labels = ["negative", "neutral", "positive"]
    model, tokenizer = load_classifier("bundled:minilm-l6", labels, random_init=True,
                                       config_overrides={"num_hidden_layers": 2, "hidden_size": 64,
                                                         "num_attention_heads": 2,
                                                         "intermediate_size": 128})
    texts = [row.text for row in read_phrasebank(data_dir / "financial_phrasebank", "all")][:300]
    backend().export(model, tokenizer, texts[:100], tmp_path / "int8")
    backend(int8=False).export(model, tokenizer, [], tmp_path / "fp32")
    assert model.config._attn_implementation == "sdpa"  # the export's eager attention is undone
    if (tmp_path / "fp32" / "model.onnx").is_file():
        import onnx

        # attention exported as plain products: no SDPA mask handling (IsNaN, Where) in the graph
        nodes = onnx.load(tmp_path / "fp32" / "model.onnx").graph.node
        assert "Softmax" in {node.op_type for node in nodes} and "IsNaN" not in {
            node.op_type for node in nodes}
        for form in ("fp32", "int8"):  # no exporter notes (stack traces naming local paths)
            graph = onnx.load(tmp_path / form / "model.onnx").graph
            assert not any(node.metadata_props for node in graph.node)
    model.save_pretrained(tmp_path / "torch")
    tokenizer.save_pretrained(tmp_path / "torch")
    reference = torch.from_numpy(TorchPredictor(tmp_path / "torch", labels, "32-true").logits(texts))
    fp32 = torch.from_numpy(load(tmp_path / "fp32", labels).logits(texts))
    int8 = torch.from_numpy(load(tmp_path / "int8", labels).logits(texts))
    torch.testing.assert_close(fp32, reference, atol=1e-3, rtol=1e-3)  # same model, other engine
    assert (int8.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.95
    assert not torch.allclose(int8, reference, atol=1e-5)  # it is quantized
    assert folder_size_bytes(tmp_path / "int8") < folder_size_bytes(tmp_path / "fp32")


def test_auto_overflow_fix_follows_the_cpu_into_the_store_key(tmp_path, data_dir, monkeypatch,
                                                              tiny_classifier):
    from fincompress.compress import int8
    from fincompress.stages.qat import qat_inputs
    from fincompress.stages.quantize import int8_inputs
    from fincompress.store import stage_key

    cfg = compose_config(PTQ_TINY, tmp_path)
    qat = compose_config(["+experiment=qat", *TINY], tmp_path)
    keys, qat_fixes = {}, {}
    for isa in (["avx2"], ["avx2", "avx512_vnni"]):
        monkeypatch.setattr(int8, "cpu_info", lambda isa=isa: {"isa": isa})
        keys[isa[-1]] = int8_inputs(cfg, "openvino", tiny_classifier)
        qat_fixes[isa[-1]] = qat_inputs(qat, tiny_classifier, tiny_classifier)["overflow_fix"]
    assert qat_fixes == {"avx2": "enable", "avx512_vnni": "disable"}
    assert keys["avx2"]["backend"]["overflow_fix"] == "enable"
    assert keys["avx512_vnni"]["backend"]["overflow_fix"] == "disable"
    assert keys["avx2"]["backend"]["subset_size"] == cfg.quantize.engines.openvino.subset_size
    # an INT8 artifact built on one kind of CPU is not reused on the other
    assert stage_key(keys["avx2"]) != stage_key(keys["avx512_vnni"])


def test_the_choice_says_plainly_when_no_backend_is_faithful():
    from fincompress.stages.quantize import choice_line

    # the MPNet teacher's measurements on an AVX2-only CPU: none reaches 0.99
    measured = {"openvino": {"agreement": 0.985, "throughput_sorted": 18.1, "faithful": False},
                "onnxruntime": {"agreement": 0.947, "throughput_sorted": 33.3, "faithful": False}}
    line = choice_line({"backend": "openvino", "validation": measured, "min_agreement": 0.99})
    assert "quantize.min_agreement=0.99" in line and "openvino is only the most faithful" in line
    faithful = {**measured,
                "onnxruntime": {"agreement": 0.997, "throughput_sorted": 33.3, "faithful": True}}
    line = choice_line({"backend": "onnxruntime", "validation": faithful, "min_agreement": 0.99})
    assert line.startswith("INT8 backend chosen on this machine: onnxruntime")
    assert "most faithful" not in line


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
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ModuleNotFoundError, match="needs onnxruntime"):
        ONNXRuntimeBackend().export(model, minilm_tokenizer, [], tmp_path / "y")
    assert not (tmp_path / "y").exists()


@pytest.mark.parametrize(("override", "message"), [
    ("quantize.backends=[]", "quantize.backends is empty"),
    ("quantize.backends=[tensorrt]", r"unknown backend\(s\) \['tensorrt'\]"),
])
def test_bad_backend_lists_are_named(tmp_path, data_dir, override, message):
    with pytest.raises(ValueError, match=message):
        run_ptq(compose_config([*PTQ_TINY, override], tmp_path))
    assert not (tmp_path / "stages").exists()  # refused before any teacher was trained


@pytest.mark.slow(budget_s=120)  # 18 s on 2 AVX2 cores
def test_accuracy_controlled_int8_keeps_validation_accuracy(tmp_path, data_dir):
    """With max_drop 0 and the float model's own labels as the validation labels (its accuracy
    is 1.0), NNCF keeps layers in float until the INT8 model gives every validation sentence
    the float model's label."""
    from fincompress.data.phrasebank import read_phrasebank

    labels = ["negative", "neutral", "positive"]
    torch.manual_seed(3)
    model, tokenizer = load_classifier("bundled:minilm-l6", labels, random_init=True,
                                       config_overrides={"num_hidden_layers": 2, "hidden_size": 64,
                                                         "num_attention_heads": 2,
                                                         "intermediate_size": 128})
    texts = [row.text for row in read_phrasebank(data_dir / "financial_phrasebank", "all")][:140]
    model.save_pretrained(tmp_path / "torch")
    tokenizer.save_pretrained(tmp_path / "torch")
    own = TorchPredictor(tmp_path / "torch", labels, "32-true").logits(texts[40:]).argmax(-1)
    validation = list(zip(texts[40:], own.tolist()))
    record = OpenVINOBackend(max_drop=0.0).export(model, tokenizer, texts[:40], tmp_path / "int8",
                                                  validation=validation)
    assert record["max_drop"] == 0.0 and record["validation_sentences"] == 100
    int8 = load(tmp_path / "int8", labels).logits(texts[40:]).argmax(-1)
    assert (int8 == own).all()
    with pytest.raises(ValueError, match="needs labelled validation sentences"):
        OpenVINOBackend(max_drop=0.01).export(model, tokenizer, texts[:40], tmp_path / "x")
    with pytest.raises(ValueError, match="max_drop is an accuracy drop in"):
        OpenVINOBackend(max_drop=5)
