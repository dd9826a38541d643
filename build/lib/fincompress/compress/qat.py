"""Quantization-aware training (QAT) with NNCF's PyTorch backend.

:func:`prepare` puts NNCF's fake quantizers into a Hugging Face classifier: INT8 weights and
activations, the same scheme as NNCF's post-training quantization for OpenVINO, with ranges
initialised on calibration sentences. The model then trains like any other (straight-through
gradients; the quantizers' scales train too) and :func:`export_openvino` converts it to the same
deployable OpenVINO INT8 artifact as post-training quantization.

Why NNCF: torchao's QAT configs do not cover INT8 activations with INT8 weights, and its INT8
path runs BERT slower than fp32 on CPU (pytorch/ao issues 3157, 4365, 2992).
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from fincompress.compress.int8 import (
    calibration_dataset,
    convert_openvino,
    nncf_parameters,
    resolve_overflow_fix,
    save_openvino,
)


def build_extension() -> None:
    """Build NNCF's C++ quantization kernels now, once: PyTorch caches the build (under
    ``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``). The first build takes
    about 90 s on 2 cores, longer than NNCF's 60 s load timeout, so the timeout is lifted (unless
    NNCF_EXTENSION_LOAD_TIMEOUT is set); later calls load the cached build in seconds. If no
    compiler is found NNCF falls back to slower pure-PyTorch kernels and says so."""
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "0")
    try:
        import nncf.torch
    except ImportError as error:
        raise ModuleNotFoundError(f"QAT needs nncf ({error}): pip install -e '.[int8]'") from None
    nncf.torch.force_build_cpu_extensions()


def prepare(model: nn.Module, tokenizer, calibration: list[str], max_length: int = 128,
            overflow_fix: str = "auto") -> tuple[nn.Module, dict]:
    """The model with fake quantizers (same class, same forward), their ranges set on the
    calibration sentences one at a time; and a record of what was done."""
    if not calibration:
        raise ValueError("QAT needs calibration sentences to set the quantizers' ranges; the "
                         "calibration set is empty (quantize.calibration_sentences)")
    build_extension()
    import nncf

    encoded = [tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
               for text in calibration]
    fix = resolve_overflow_fix(overflow_fix)
    quantized = nncf.quantize(model.float().eval(), calibration_dataset(encoded),
                              model_type=nncf.ModelType.TRANSFORMER, subset_size=len(encoded),
                              advanced_parameters=nncf_parameters(fix))
    return quantized, {"nncf": nncf.__version__, "calibration_sentences": len(encoded),
                       "overflow_fix": fix}


def export_openvino(model: nn.Module, tokenizer, folder: Path) -> dict:
    """Write the trained QAT model as an OpenVINO INT8 IR (``model.xml``) with its tokenizer."""
    import openvino as ov

    save_openvino(convert_openvino(model.float().eval(), tokenizer), model, tokenizer, folder)
    return {"engine": "openvino", "int8": True, "openvino": ov.__version__}
