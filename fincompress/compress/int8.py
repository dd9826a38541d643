"""INT8 post-training quantization backends: one small object per engine, with one way in
(:meth:`export`: a PyTorch classifier and calibration texts -> an artifact folder) and one way
out (:meth:`predictor`).

``OpenVINOBackend`` converts the model to an OpenVINO IR (dynamic batch and length, the
attention mask always passed) and quantizes it with NNCF's static post-training quantization
(``model_type=TRANSFORMER``, calibration one sentence at a time). On a CPU without VNNI, NNCF's
overflow fix is on (``overflow_fix: auto``), since 8-bit multiply-add without VNNI can saturate.
``int8: false`` exports the fp32 IR, for comparing engines.
"""

from __future__ import annotations

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


def has_vnni(info: dict | None = None) -> bool:
    isa = (info or cpu_info())["isa"] or []
    return "avx512_vnni" in isa or "avx_vnni" in isa or "amx_int8" in isa


class OpenVINOBackend:
    name = "openvino"

    def __init__(self, int8: bool = True, overflow_fix: str = "auto", subset_size: int = 300):
        if overflow_fix not in ("auto", "enable", "disable"):
            raise ValueError(f"overflow_fix must be auto, enable or disable; got {overflow_fix!r}")
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
        example = tokenizer(["Operating profit rose to EUR 13.1 mn ."], return_tensors="pt")
        with torch.no_grad():
            ov_model = ov.convert_model(
                _Logits(model),
                example_input={"input_ids": example["input_ids"],
                               "attention_mask": example["attention_mask"]},
                input=[("input_ids", [-1, -1], ov.Type.i64),
                       ("attention_mask", [-1, -1], ov.Type.i64)])
        record = {"engine": "openvino", "int8": self.int8, "openvino": ov.__version__}
        if self.int8:
            encoded = [tokenizer(text, truncation=True, max_length=max_length, return_tensors="np")
                       for text in calibration[:self.subset_size]]
            fix = self.overflow_fix
            if fix == "auto":
                fix = "disable" if has_vnni() else "enable"
            ov_model = nncf.quantize(
                ov_model,
                nncf.Dataset(encoded, lambda item: {"input_ids": item["input_ids"],
                                                    "attention_mask": item["attention_mask"]}),
                model_type=nncf.ModelType.TRANSFORMER, subset_size=len(encoded),
                advanced_parameters=nncf.AdvancedQuantizationParameters(
                    overflow_fix=nncf.OverflowFix.ENABLE if fix == "enable"
                    else nncf.OverflowFix.DISABLE))
            record.update(nncf=nncf.__version__, calibration_sentences=len(encoded),
                          overflow_fix=fix)
        folder.mkdir(parents=True, exist_ok=True)
        ov.save_model(ov_model, folder / "model.xml", compress_to_fp16=False)
        tokenizer.save_pretrained(folder)
        model.config.save_pretrained(folder)
        return record

    def predictor(self, folder: Path, labels: list[str]):
        from fincompress.predict import OpenVINOPredictor

        return OpenVINOPredictor(folder, labels)
