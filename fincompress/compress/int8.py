"""INT8 post-training quantization backends: one small object per engine, with one way in
(:meth:`export`: a PyTorch classifier and calibration texts -> an artifact folder); every
artifact opens with :func:`fincompress.predict.load`.

``OpenVINOBackend`` converts the model to an OpenVINO IR (dynamic batch and length, the
attention mask always passed) and quantizes it with NNCF's static post-training quantization
(``model_type=TRANSFORMER``, calibration one sentence at a time). On a CPU without VNNI, NNCF's
overflow fix is on (``overflow_fix: auto``), since 8-bit multiply-add without VNNI can saturate.
``ONNXRuntimeBackend`` exports an ONNX graph (``torch.onnx.export`` with ``dynamo=True``, one
file, attention as plain matrix products unless ``attention: sdpa``) and quantizes its weights
to INT8 with ONNX Runtime's dynamic quantization (activations are quantized at run time, so no
calibration set is needed).

``int8: false`` exports the fp32 artifact of either engine, for comparing engines.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from fincompress.hardware import cpu_info
from fincompress.models.sources import attention_implementation


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

    def __init__(self, int8: bool = True, overflow_fix: str = "auto", subset_size: int = 300,
                 max_drop: float | None = None):
        resolve_overflow_fix(overflow_fix)  # a bad setting fails here, not after the export
        if max_drop is not None and not 0 <= max_drop < 1:
            raise ValueError(f"max_drop is an accuracy drop in [0, 1), got {max_drop}")
        self.int8 = int8
        self.overflow_fix = overflow_fix
        self.subset_size = subset_size
        self.max_drop = max_drop

    def export(self, model: nn.Module, tokenizer, calibration: list[str], folder: Path,
               max_length: int = 128, validation: list[tuple[str, int]] | None = None) -> dict:
        """Write ``model.xml``/``model.bin`` and the tokenizer to ``folder``; returns what was
        done (for ``checkpoint_info.json``). With ``max_drop``, NNCF's accuracy-controlled
        quantization keeps in float the layers whose INT8 form costs the most, until accuracy
        on ``validation`` (labelled sentences: text, label index) is at most ``max_drop``
        below the float model's."""
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
            if self.max_drop is None:
                ov_model = nncf.quantize(ov_model, calibration_dataset(encoded),
                                         model_type=nncf.ModelType.TRANSFORMER,
                                         subset_size=len(encoded),
                                         advanced_parameters=nncf_parameters(fix))
            else:
                if not validation:
                    raise ValueError("accuracy-controlled INT8 (max_drop) needs labelled "
                                     "validation sentences")
                ov_model = quantize_with_accuracy_control(
                    ov_model, encoded, tokenizer, validation, max_length, self.max_drop, fix)
                record.update(max_drop=self.max_drop, validation_sentences=len(validation))
            record.update(nncf=nncf.__version__, calibration_sentences=len(encoded),
                          overflow_fix=fix)
        save_openvino(ov_model, model, tokenizer, folder)
        return record


def quantize_with_accuracy_control(ov_model, encoded: list, tokenizer,
                                   validation: list[tuple[str, int]], max_length: int,
                                   max_drop: float, fix: str):
    """NNCF's accuracy-controlled INT8: validation accuracy (absolute) at most ``max_drop``
    below the float model's."""
    import nncf
    import numpy as np

    items = [(tokenizer(text, truncation=True, max_length=max_length, return_tensors="np"), label)
             for text, label in validation]

    def accuracy(compiled, data) -> float:
        hits = [int(np.argmax(compiled({"input_ids": inputs["input_ids"],
                                        "attention_mask": inputs["attention_mask"]})[0]) == label)
                for inputs, label in data]
        return float(np.mean(hits))

    return nncf.quantize_with_accuracy_control(
        ov_model, calibration_dataset(encoded),
        nncf.Dataset(items, lambda item: {"input_ids": item[0]["input_ids"],
                                          "attention_mask": item[0]["attention_mask"]}),
        validation_fn=accuracy, max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE,
        model_type=nncf.ModelType.TRANSFORMER, subset_size=len(encoded),
        advanced_quantization_parameters=nncf_parameters(fix))


class ONNXRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, int8: bool = True, per_channel: bool = False, mode: str = "dynamic",
                 subset_size: int = 300, static_ops: tuple[str, ...] = ("MatMul", "Gemm"),
                 attention: str = "eager"):
        if mode not in ("dynamic", "static"):
            raise ValueError(f"ONNX Runtime INT8 mode must be dynamic or static, got {mode!r}")
        if attention not in ("eager", "sdpa"):
            raise ValueError(f"attention must be eager or sdpa, got {attention!r}")
        self.attention = attention
        self.int8 = int8
        self.per_channel = per_channel
        self.mode = mode
        self.subset_size = subset_size
        self.static_ops = list(static_ops)

    def export(self, model: nn.Module, tokenizer, calibration: list[str], folder: Path,
               max_length: int = 128) -> dict:
        """Write ``model.onnx`` and the tokenizer to ``folder``. ``dynamic``: weights INT8,
        activations quantized at run time (``calibration`` unused); ``static``: QDQ, with the
        activations' ranges measured on ``calibration`` (one sentence at a time, as OpenVINO's
        are), unsigned 8-bit activations and signed weights (ONNX Runtime's choice for x86)."""
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
        # eager (the default): attention as plain matrix products, without the IsNaN and Where
        # nodes of SDPA's mask handling (scripts/onnx_runtime_forms.py times both)
        with (warnings.catch_warnings(), torch.no_grad(),
              attention_implementation(model, self.attention)):
            warnings.simplefilter("ignore")  # the exporter's notes on renamed dynamic dimensions
            torch.onnx.export(_Logits(model), (example["input_ids"], example["attention_mask"]),
                              exported, dynamo=True, external_data=False,
                              input_names=["input_ids", "attention_mask"],
                              output_names=["logits"],
                              dynamic_shapes=({0: batch, 1: length}, {0: batch, 1: length}))
        record = {"engine": "onnxruntime", "int8": self.int8, "onnxruntime": onnxruntime.__version__,
                  "onnx": onnx.__version__, "attention": self.attention}
        # left out of the artifact: the exporter's notes on every node (stack traces with this
        # machine's paths, module names: 0.4 MB on a 4-layer model 32 wide), and its shape
        # annotations, which disagree with ONNX's own shape inference on some weights and stop
        # the quantizer (ONNX Runtime infers them again)
        graph = onnx.load(exported)
        for node in graph.graph.node:
            del node.metadata_props[:]
        del graph.graph.value_info[:]
        onnx.save(graph, exported)
        if self.int8:
            prepared = folder / "prepared.onnx"
            quant_pre_process(exported, prepared, skip_symbolic_shape=True)
            if self.mode == "static":
                if not calibration:
                    raise ValueError("static ONNX INT8 needs calibration sentences; the "
                                     "calibration set is empty")
                sentences = calibration[:self.subset_size]
                quantize_static_qdq(prepared, folder / "model.onnx", tokenizer, sentences,
                                    max_length, self.per_channel, self.static_ops)
                record.update(calibration_sentences=len(sentences), static_ops=self.static_ops)
            else:
                quantize_dynamic(prepared, folder / "model.onnx", weight_type=QuantType.QInt8,
                                 per_channel=self.per_channel)
            for leftover in folder.glob("*.onnx"):
                if leftover.name != "model.onnx":
                    leftover.unlink()
            record.update(mode=self.mode, per_channel=self.per_channel)
        else:
            exported.rename(folder / "model.onnx")
        _save_side_files(model, tokenizer, folder)
        return record


def quantize_static_qdq(source: Path, target: Path, tokenizer, sentences: list[str],
                        max_length: int, per_channel: bool, ops: list[str]) -> None:
    """ONNX Runtime's static quantization in QDQ format, its ranges calibrated (min-max) on
    ``sentences`` fed one at a time, of the ``ops`` only: quantizing every op also quantized
    MPNet's position-id arithmetic, whose Gather then read out of bounds."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Sentences(CalibrationDataReader):
        def __init__(self):
            self.items = iter([dict(tokenizer(text, truncation=True, max_length=max_length,
                                              return_tensors="np", return_token_type_ids=False))
                               for text in sentences])

        def get_next(self):
            item = next(self.items, None)
            return None if item is None else {"input_ids": item["input_ids"].astype("int64"),
                                              "attention_mask": item["attention_mask"].astype("int64")}

    quantize_static(source, target, Sentences(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=per_channel, op_types_to_quantize=ops)
