"""One predictor interface for every artifact the project writes.

:func:`load` opens a folder: a Hugging Face model (fp32, or pruned; run in bf16 where the CPU
has it natively, see :mod:`fincompress.hardware`), an OpenVINO IR (``model.xml``), an ONNX
graph (``model.onnx``), fp32 or INT8, or a model2vec static-embedding classifier
(``head.safetensors``). Every predictor turns texts into logits in length-sorted
batches padded to their own longest sentence, so scoring and timing treat every engine alike.
This is the project's one inference loop: scoring, the benchmark, pseudo-labelling (with the
teacher's [CLS] states) and the API all run through :meth:`Predictor.logits_ids`.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fincompress.errors import InputError, NotAModelError
from fincompress.hardware import cpu_info, default_threads, native_bf16


class Predictor:
    """Texts -> logits for one artifact. Subclasses set ``engine``, ``labels``, ``tokenizer``
    and ``inference_precision``, and run one padded batch (:meth:`run`). Batches and logits
    are numpy arrays, so that an OpenVINO or ONNX artifact runs without PyTorch."""

    engine: str
    inference_precision: str

    def encode(self, texts: list[str], max_length: int | None = 128) -> list[list[int]]:
        """Token ids, cut to ``max_length`` (None: whole)."""
        return self.tokenizer(list(texts), truncation=max_length is not None,
                              max_length=max_length)["input_ids"]

    @property
    def unknown_token_id(self) -> int | None:
        return self.tokenizer.unk_token_id

    def logits(self, texts: list[str], batch_size: int = 32, max_length: int = 128,
               sort: bool = True, description: str | None = None) -> np.ndarray:
        """(N, classes) float32, in input order."""
        return self.logits_ids(self.encode(texts, max_length), batch_size, sort,
                               description=description)

    def logits_ids(self, input_ids: list[list[int]], batch_size: int = 32, sort: bool = True,
                   description: str | None = None, cls_states: bool = False):
        """Logits of tokenized sentences, (N, classes) float32 numpy in input order; batches
        are padded to their own longest sentence, and with ``sort`` formed from sentences of
        similar length. ``description`` shows a progress bar.

        With ``cls_states`` (PyTorch models only) also the [CLS] state of every hidden layer,
        a (N, layers + 1, hidden) float16 torch tensor (index 0 = embeddings): ``(logits, cls)``."""
        order = list(range(len(input_ids)))
        if sort:  # as the evaluation batches are formed (LengthGroupedBatchSampler)
            order.sort(key=lambda i: len(input_ids[i]))
        logits = np.empty((len(input_ids), len(self.labels)), dtype=np.float32)
        cls = None
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc=description, disable=description is None, unit="batch"):
            index = order[start:start + batch_size]
            ids, mask = pad_batch([input_ids[i] for i in index], self.tokenizer.pad_token_id)
            if not cls_states:
                logits[index] = self.run(ids, mask)
                continue
            batch_logits, states = self.run_with_cls(ids, mask)
            logits[index] = batch_logits
            if cls is None:
                import torch

                cls = torch.empty(len(input_ids), *states.shape[1:], dtype=torch.float16)
            cls[index] = states.to(cls.dtype)
        return (logits, cls) if cls_states else logits

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """One padded batch, (batch, length) int64 each, to (batch, classes) float32 logits."""
        raise NotImplementedError

    def run_with_cls(self, input_ids: np.ndarray, attention_mask: np.ndarray):
        raise ValueError(f"{self.engine} artifacts give logits only, not [CLS] states; "
                         "label with the PyTorch model")


def pad_batch(input_ids: list[list[int]], pad_token_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids padded to the batch's longest sentence, and the attention mask: (batch,
    length) int64 each."""
    longest = max(map(len, input_ids))
    ids = np.full((len(input_ids), longest), pad_token_id, dtype=np.int64)
    mask = np.zeros((len(input_ids), longest), dtype=np.int64)
    for row, sentence in enumerate(input_ids):
        ids[row, :len(sentence)] = sentence
        mask[row, :len(sentence)] = 1
    return ids, mask


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities of (N, classes) logits, along the last axis."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


class SavedTokenizer:
    """A saved fast tokenizer (``tokenizer.json``) run by the tokenizers library alone: the ids
    of transformers' ``AutoTokenizer`` on the same folder (a test checks it on the real
    tokenizers), without importing transformers, which costs 2 s of every cold start."""

    def __init__(self, folder: Path):
        from tokenizers import Tokenizer

        path = folder / "tokenizer.json"
        if not path.is_file():
            raise NotAModelError(f"{folder} has no tokenizer.json: export the model again")
        self.backend = Tokenizer.from_file(str(path))
        self.backend.no_padding()
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        self.pad_token_id = self.token_id(config.get("pad_token")) or 0
        self.unk_token_id = self.token_id(config.get("unk_token"))

    def token_id(self, token) -> int | None:
        if isinstance(token, dict):  # an AddedToken as older transformers saved it
            token = token.get("content")
        return None if token is None else self.backend.token_to_id(token)

    def __call__(self, texts: list[str], truncation: bool = False,
                 max_length: int | None = None) -> dict:
        if truncation and max_length:
            self.backend.enable_truncation(max_length)
        else:
            self.backend.no_truncation()
        return {"input_ids": [encoding.ids for encoding in self.backend.encode_batch(texts)]}


class TorchPredictor(Predictor):
    """A Hugging Face folder run by PyTorch (eager), in bf16 autocast under a bf16 precision."""

    engine = "torch"

    def __init__(self, folder: str | Path | None, labels: list[str], precision: str = "auto",
                 model=None, tokenizer=None):
        """From ``folder``, or from a ``model`` and ``tokenizer`` already in memory (then
        ``folder`` may be None)."""
        self.folder = None if folder is None else Path(folder)
        self.labels = list(labels)
        self.precision = precision
        if model is None:
            from fincompress.models.sources import load_classifier

            model, tokenizer = load_classifier(str(folder), self.labels)
        from fincompress.hardware import autocast_dtype

        self.model, self.tokenizer = model.eval(), tokenizer
        self.dtype = autocast_dtype(precision)
        self.inference_precision = "bf16" if self.dtype else "f32"

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray, **options):
        import torch

        autocast = (torch.autocast("cpu", dtype=self.dtype) if self.dtype
                    else contextlib.nullcontext())
        with torch.no_grad(), autocast:
            return self.model(input_ids=torch.from_numpy(input_ids),
                              attention_mask=torch.from_numpy(attention_mask), **options)

    def run(self, input_ids, attention_mask):
        return self.forward(input_ids, attention_mask).logits.float().numpy()

    def run_with_cls(self, input_ids, attention_mask):
        import torch

        output = self.forward(input_ids, attention_mask, output_hidden_states=True)
        return (output.logits.float().numpy(),
                torch.stack([h[:, 0] for h in output.hidden_states], dim=1))


class OpenVINOPredictor(Predictor):
    """An OpenVINO IR folder (``model.xml`` + tokenizer) compiled for the CPU."""

    engine = "openvino"

    def __init__(self, folder: str | Path, labels: list[str], threads: int | None = None):
        import openvino as ov

        self.folder = Path(folder)
        self.labels = list(labels)
        self.tokenizer = SavedTokenizer(self.folder)
        config = {"INFERENCE_NUM_THREADS": threads or default_threads()}
        if not native_bf16(cpu_info(with_torch=False))[0]:
            # OpenVINO runs the layers INT8 leaves in float in bf16 wherever the CPU flags allow;
            # the same rule as PyTorch's: fp32 unless bf16 is native (and not capped by
            # ONEDNN_MAX_CPU_ISA, under which OpenVINO finds no bf16 kernels and fails)
            config["INFERENCE_PRECISION_HINT"] = "f32"
        self.compiled = ov.Core().compile_model(self.folder / "model.xml", "CPU", config)
        self.inference_precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()

    def run(self, input_ids, attention_mask):
        return self.compiled({"input_ids": input_ids, "attention_mask": attention_mask})[0]


# ONNX Runtime's fused residual-add + LayerNorm kernel (SkipLayerNormalization) took 2.2 ms a
# node of a batch where its LayerNormalization took 0.23-0.38 (two-layer MiniLM INT8, batch 32,
# 2 threads). Without the fusion the student ran 1.14-1.23x faster, on an AVX2-only AMD EPYC
# and on an AVX-512/AMX Xeon alike, with the same labels (scripts/onnx_runtime_forms.py
# --profile; README "Compression").
ORT_DISABLED_FUSIONS = ["SkipLayerNormFusion"]


def onnx_session(path: Path, threads: int | None = None,
                 disabled_optimizers: list[str] = ORT_DISABLED_FUSIONS,
                 profile_prefix: str | None = None):
    """An ONNX Runtime CPU session as the predictors open one (``threads`` default: PyTorch's
    count, else the CPUs this process may use); ``profile_prefix``: ONNX Runtime's own profile
    of every node, written to ``<prefix>_<time>.json`` when the session ends profiling."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                        disabled_optimizers=disabled_optimizers)


class ONNXRuntimePredictor(Predictor):
    """An ONNX folder (``model.onnx`` + tokenizer) run by ONNX Runtime on the CPU."""

    engine = "onnxruntime"
    inference_precision = "f32"  # the float parts of a dynamic INT8 graph run in fp32

    def __init__(self, folder: str | Path, labels: list[str], threads: int | None = None):
        self.folder = Path(folder)
        self.labels = list(labels)
        self.tokenizer = SavedTokenizer(self.folder)
        self.session = onnx_session(self.folder / "model.onnx", threads)

    def run(self, input_ids, attention_mask):
        return self.session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})[0]


class StaticPredictor(Predictor):
    """A model2vec static-embedding classifier (a ``StaticModelPipeline`` folder): each sentence
    is the mean of its tokens' vectors (weighted where the model has token weights), normalised
    where the model says so, then an MLP head (ReLU between layers, softmax out). The vectors,
    weights and head are model2vec's own; the forward pass runs here in PyTorch (one
    ``embedding_bag`` over token ids, then the head's layers), so that tokenizing stays outside
    the timed model as for every engine, and so that no batch alternates between PyTorch's and
    numpy's thread pools (model2vec's numpy head after a PyTorch mean cost 20 ms a batch of 32
    here, against 1 ms in PyTorch alone)."""

    engine = "model2vec"
    inference_precision = "f32"

    def __init__(self, folder: str | Path, labels: list[str]):
        import torch
        from model2vec.inference import StaticModelPipeline

        self.folder = Path(folder)
        self.labels = list(labels)
        self.pipeline = StaticModelPipeline.from_pretrained(self.folder)
        model = self.pipeline.model
        self.tokenizer = model.tokenizer
        self.vectors = torch.from_numpy(np.asarray(model.embedding, dtype=np.float32))
        self.token_weights = (None if model.weights is None
                              else torch.from_numpy(np.asarray(model.weights, dtype=np.float32)))
        self.mapping = (None if model.token_mapping is None
                        else torch.as_tensor(np.asarray(model.token_mapping), dtype=torch.long))
        self.normalize = model.normalize
        classes = [str(c) for c in self.pipeline.classes_]
        missing = sorted(set(self.labels) - set(classes))
        if missing:
            raise ValueError(f"{self.folder}: the static classifier has classes {classes}, "
                             f"not {missing}")
        if self.pipeline.head.activation.value != "softmax":
            raise ValueError(f"{self.folder}: a {self.pipeline.head.activation.value} head is not "
                             "a single-label classifier")
        columns = [classes.index(label) for label in self.labels]  # in our label order
        layers = [(torch.from_numpy(np.asarray(layer.weight, dtype=np.float32)),
                   torch.from_numpy(np.asarray(layer.bias, dtype=np.float32)))
                  for layer in self.pipeline.head.layers]
        *self.hidden, (weight, bias) = layers
        self.output = (weight[columns], bias[columns])
        self.parameters = self.vectors.numel() + sum(w.numel() + b.numel() for w, b in layers)

    def encode(self, texts: list[str], max_length: int | None = 128) -> list[list[int]]:
        return [ids[:max_length] for ids in self.pipeline.model.tokenize(list(texts))]

    @property
    def unknown_token_id(self) -> None:
        return None  # model2vec drops unknown tokens as it tokenizes

    def logits_ids(self, input_ids: list[list[int]], batch_size: int = 32, sort: bool = True,
                   description: str | None = None, cls_states: bool = False):
        if cls_states:
            return self.run_with_cls(None, None)
        logits = np.empty((len(input_ids), len(self.labels)), dtype=np.float32)
        starts = range(0, len(input_ids), batch_size)
        for start in tqdm(starts, desc=description, disable=description is None, unit="batch"):
            logits[start:start + batch_size] = self.run_ids(input_ids[start:start + batch_size]).numpy()
        return logits

    def run_ids(self, batch: list[list[int]]):
        """(batch, classes) float32 torch logits of a batch of token ids."""
        import torch

        flat = torch.tensor([i for ids in batch for i in ids], dtype=torch.long)
        lengths = torch.tensor([len(ids) for ids in batch], dtype=torch.float32)
        offsets = torch.cumsum(torch.tensor([0, *map(len, batch[:-1])]), 0)
        rows = flat if self.mapping is None else self.mapping[flat]
        weights = None if self.token_weights is None else self.token_weights[flat]
        sums = torch.nn.functional.embedding_bag(rows, self.vectors, offsets, mode="sum",
                                                 per_sample_weights=weights)
        out = sums / lengths.clamp(min=1).unsqueeze(1)  # a sentence of no known token: zeros
        if self.normalize:
            out = torch.nn.functional.normalize(out, dim=1, eps=1e-32)
        for weight, bias in self.hidden:
            out = torch.relu(torch.nn.functional.linear(out, weight, bias))
        return torch.nn.functional.linear(out, *self.output)


def load(path: str | Path, labels: list[str] | None = None, precision: str = "auto",
         threads: int | None = None):
    """The predictor for an artifact folder: OpenVINO IR if it has ``model.xml``, ONNX if it has
    ``model.onnx``, else a Hugging Face folder. ``labels`` default to those recorded in the
    folder; ``threads`` (OpenVINO, ONNX Runtime) defaults to PyTorch's thread count."""
    folder = Path(path)
    if not folder.is_dir():
        raise NotAModelError(f"model folder {folder} does not exist")
    check_model_files(folder)
    labels = labels or recorded_labels(folder)
    if (folder / "head.safetensors").is_file():
        check_installed(folder, "a model2vec static classifier", "torch", "model2vec", extra="static")
        return StaticPredictor(folder, labels)
    if (folder / "model.xml").is_file():
        check_installed(folder, "an OpenVINO artifact", "openvino", extra="runtime")
        return OpenVINOPredictor(folder, labels, threads)
    if (folder / "model.onnx").is_file():
        check_installed(folder, "an ONNX artifact", "onnxruntime", extra="runtime")
        return ONNXRuntimePredictor(folder, labels, threads)
    if (folder / "config.json").is_file():
        check_installed(folder, "a PyTorch model folder", "torch", "transformers", extra="train")
        return TorchPredictor(folder, labels, precision)
    raise NotAModelError(f"{folder} holds no model: expected model.xml (an OpenVINO IR), "
                         "model.onnx (ONNX), head.safetensors (a model2vec classifier) or "
                         "config.json (a Hugging Face folder)")


def check_installed(folder: Path, what: str, *modules: str, extra: str) -> None:
    """A named error, not a traceback, when running ``folder`` needs a package that is not
    installed (the runtime extra has no PyTorch)."""
    import importlib.util

    missing = []
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:
            found = False
        if not found:
            missing.append(module)
    if missing:
        raise InputError(f"{folder} is {what}; running it needs {' and '.join(missing)}, which "
                         f"is not installed: pip install 'fincompress[{extra}]'")


def check_model_files(folder: Path) -> None:
    """Fail early, naming the file, on a damaged model folder: a JSON file that is not JSON, or
    a safetensors file cut short or not safetensors (its header checked against its size;
    cheap, nothing is loaded)."""
    from safetensors import safe_open

    for path in sorted(folder.glob("*.json")):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
            raise NotAModelError(f"{path}: not valid JSON ({error}); the model folder is "
                                 "damaged: copy or export it again") from None
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), "numpy"):
                pass
        except Exception as error:  # safetensors' own error type is not importable by name
            raise NotAModelError(f"{path}: not a complete safetensors file ({error}); the model "
                                 "folder is damaged: copy or export it again") from None


def holds_int8(folder: str | Path) -> bool:
    """Whether an artifact holds INT8 weights, by the steps its ``checkpoint_info.json``
    records (the float parts still run in the predictor's ``inference_precision``)."""
    info = Path(folder) / "checkpoint_info.json"
    return info.is_file() and any(step.get("int8") for step in
                                  json.loads(info.read_text()).get("steps", []))


def recorded_labels(folder: Path) -> list[str]:
    for name in ("checkpoint_info.json", "config.json"):
        path = folder / name
        if path.is_file():
            data = json.loads(path.read_text())
            if name == "checkpoint_info.json" and data.get("labels"):
                return list(data["labels"])
            if name == "config.json" and data.get("id2label"):
                return [data["id2label"][str(i)] for i in range(len(data["id2label"]))]
    raise NotAModelError(f"{folder} records no labels (checkpoint_info.json or config.json)")
