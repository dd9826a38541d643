"""INT8 post-training quantization backends: one small object per engine, with one way in
(:meth:`export`: a PyTorch classifier and calibration texts -> an artifact folder); every
artifact opens with :func:`fincompress.predict.load`.

``OpenVINOBackend`` converts the model to an OpenVINO IR (dynamic batch and length, the
attention mask always passed) and quantizes it with NNCF's static post-training quantization
(``model_type=TRANSFORMER``, calibration one sentence at a time). On a CPU without VNNI, NNCF's
overflow fix is on (``overflow_fix: auto``), since 8-bit multiply-add without VNNI can saturate.
``ONNXRuntimeBackend`` exports an ONNX graph (``torch.onnx.export`` with ``dynamo=True``, one
file) and quantizes its weights to INT8 with ONNX Runtime's dynamic quantization (activations
are quantized at run time, so no calibration set is needed).

``int8: false`` exports the fp32 artifact of either engine, for comparing engines.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from fincompress.hardware import cpu_info


class _Logits(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def _example(tokenizer) -> dict:
    return tokenizer(["Operating profit rose to EUR 13.1 mn .", "Sales fell ."], padding=True,
                     return_tensors="pt")


def _save_side_files(model: nn.Module, tokenizer, folder: Path) -> None:
    tokenizer.save_pretrained(folder)
    model.config.save_pretrained(folder)


def convert_openvino(model: nn.Module, tokenizer):
    """The model as an OpenVINO graph with dynamic batch and length; the attention mask is
    always an input. NNCF's fake quantizers in a QAT model become INT8 operations."""
    import openvino as ov

    example = _example(tokenizer)
    with torch.no_grad():
        return ov.convert_model(
            _Logits(model).eval(),
            example_input={"input_ids": example["input_ids"],
                           "attention_mask": example["attention_mask"]},
            input=[("input_ids", [-1, -1], ov.Type.i64), ("attention_mask", [-1, -1], ov.Type.i64)])


def save_openvino(ov_model, model: nn.Module, tokenizer, folder: Path) -> None:
    import openvino as ov

    folder.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov_model, folder / "model.xml", compress_to_fp16=False)
    _save_side_files(model, tokenizer, folder)


def calibration_dataset(encoded: list):
    """NNCF's view of tokenized calibration sentences (one sentence per item)."""
    import nncf

    return nncf.Dataset(encoded, lambda item: {"input_ids": item["input_ids"],
                                               "attention_mask": item["attention_mask"]})


def resolve_overflow_fix(setting: str) -> str:
    """``auto``: NNCF's overflow fix on where the CPU lacks VNNI (8-bit multiply-add without
    VNNI can saturate), else off."""
    if setting not in ("auto", "enable", "disable"):
        raise ValueError(f"overflow_fix must be auto, enable or disable; got {setting!r}")
    if setting == "auto":
        return "disable" if has_vnni() else "enable"
    return setting


def nncf_parameters(fix: str):
    import nncf

    return nncf.AdvancedQuantizationParameters(
        overflow_fix=nncf.OverflowFix.ENABLE if fix == "enable" else nncf.OverflowFix.DISABLE)


def has_vnni(info: dict | None = None) -> bool:
    isa = (info or cpu_info())["isa"] or []
    return "avx512_vnni" in isa or "avx_vnni" in isa or "amx_int8" in isa


class OpenVINOBackend:
    name = "openvino"

    def __init__(self, int8: bool = True, overflow_fix: str = "auto", subset_size: int = 300):
        resolve_overflow_fix(overflow_fix)  # a bad setting fails here, not after the export
        self.int8 = int8
        self.overflow_fix = overflow_fix
        self.subset_size = subset_size

    def export(self, model: nn.Module, tokenizer, calibration: list[str], folder: Path,
               max_length: int = 128) -> dict:
        """Write ``model.xml``/``model.bin`` and the tokenizer to ``folder``; returns what was
        done (for ``checkpoint_info.json``)."""
        try:
            import nncf
            import openvino as ov
        except ImportError as error:
            raise ModuleNotFoundError(
                f"the OpenVINO INT8 backend needs openvino and nncf ({error}): "
                "pip install -e '.[int8]'") from None
        if self.int8 and not calibration:
            raise ValueError("INT8 quantization needs calibration sentences; the calibration set "
                             "is empty (quantize.calibration_sentences, or the data split)")
        model = model.float().eval()
        ov_model = convert_openvino(model, tokenizer)
        record = {"engine": "openvino", "int8": self.int8, "openvino": ov.__version__}
        if self.int8:
            encoded = [tokenizer(text, truncation=True, max_length=max_length, return_tensors="np")
                       for text in calibration[:self.subset_size]]
            fix = resolve_overflow_fix(self.overflow_fix)
            ov_model = nncf.quantize(ov_model, calibration_dataset(encoded),
                                     model_type=nncf.ModelType.TRANSFORMER,
                                     subset_size=len(encoded),
                                     advanced_parameters=nncf_parameters(fix))
            record.update(nncf=nncf.__version__, calibration_sentences=len(encoded),
                          overflow_fix=fix)
        save_openvino(ov_model, model, tokenizer, folder)
        return record


class ONNXRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, int8: bool = True, per_channel: bool = False):
        self.int8 = int8
        self.per_channel = per_channel

    def export(self, model: nn.Module, tokenizer, calibration: list[str], folder: Path,
               max_length: int = 128) -> dict:
        """Write ``model.onnx`` and the tokenizer to ``folder``; ``calibration`` is unused (the
        activations' ranges are measured at run time)."""
        try:
            import onnx
            import onnxruntime
            from onnxruntime.quantization import QuantType, quantize_dynamic
            from onnxruntime.quantization.shape_inference import quant_pre_process
        except ImportError as error:
            raise ModuleNotFoundError(
                f"the ONNX Runtime backend needs onnxruntime, onnx and onnxscript ({error}): "
                "pip install -e '.[int8]'") from None
        model = model.float().eval()
        example = _example(tokenizer)
        folder.mkdir(parents=True, exist_ok=True)
        exported = folder / "exported.onnx"
        batch, length = torch.export.Dim("batch"), torch.export.Dim("sequence")
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's notes on renamed dynamic dimensions
            torch.onnx.export(_Logits(model), (example["input_ids"], example["attention_mask"]),
                              exported, dynamo=True, external_data=False,
                              input_names=["input_ids", "attention_mask"],
                              output_names=["logits"],
                              dynamic_shapes=({0: batch, 1: length}, {0: batch, 1: length}))
        record = {"engine": "onnxruntime", "int8": self.int8, "onnxruntime": onnxruntime.__version__,
                  "onnx": onnx.__version__}
        if self.int8:
            # the exporter's shape annotations disagree with ONNX's own shape inference on some
            # weights, which stops the quantizer; they are dropped and inferred again
            graph = onnx.load(exported)
            del graph.graph.value_info[:]
            onnx.save(graph, exported)
            prepared = folder / "prepared.onnx"
            quant_pre_process(exported, prepared, skip_symbolic_shape=True)
            quantize_dynamic(prepared, folder / "model.onnx", weight_type=QuantType.QInt8,
                             per_channel=self.per_channel)
            exported.unlink()
            prepared.unlink()
            record.update(mode="dynamic", per_channel=self.per_channel)
        else:
            exported.rename(folder / "model.onnx")
        _save_side_files(model, tokenizer, folder)
        return record
