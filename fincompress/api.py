"""The Python API: open any artifact the project writes and predict.

    import fincompress
    model = fincompress.load("outputs/pkd/<run>/student")      # or an OpenVINO / ONNX folder
    model.predict(["Operating profit rose to EUR 13.1 mn."])
    # [{"label": "positive", "probabilities": {"negative": 0.01, ...}, "truncated": False, ...}]

Every answer is a dict that JSON serialises as is (the CLI and the HTTP service send them
unchanged). Hostile input has a documented result, never an exception:
- empty or whitespace-only text: ``label`` and ``probabilities`` are None, ``warning`` says why;
- text that is not valid Unicode (a lone surrogate such as ``"\\ud800"``, which JSON can carry
  but no tokenizer takes): the same, with a ``warning`` naming the character and where it is;
- text over ``max_length`` tokens (a 100,000-character text, say): the first ``max_length``
  tokens are scored and ``truncated`` is True (texts are first cut to ``max_length * 64``
  characters, so no text costs more than that to tokenize);
- text whose tokens are mostly unknown to the tokenizer (emoji, scripts it never saw): scored,
  with a ``warning`` that the model was trained on English financial text.
A folder that holds no model raises :class:`NotAModelError`, naming what it expected.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fincompress.errors import InputError, NotAModelError
from fincompress.predict import holds_int8, softmax
from fincompress.predict import load as load_predictor

CHARS_PER_TOKEN_CAP = 64


class Model:
    """A loaded artifact: ``predict`` gives labels and class probabilities."""

    def __init__(self, folder: Path, threads: int | None = None, batch_size: int = 32,
                 max_length: int = 128, precision: str = "auto"):
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be at least 1, got {threads}")
        if batch_size < 1 or max_length < 3:
            raise ValueError(f"batch_size must be >= 1 and max_length >= 3, got {batch_size} "
                             f"and {max_length}")
        self.folder = folder
        try:
            self.predictor = load_predictor(folder, precision=precision, threads=threads)
        except InputError:  # NotAModelError, a missing engine: already named
            raise
        except (OSError, ValueError, KeyError, RuntimeError) as error:  # what the engines raise
            raise NotAModelError(f"{folder} cannot be opened: {type(error).__name__}: "
                                 f"{error}") from None
        if threads is not None and "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)  # PyTorch's pool is process-wide
        self.labels = self.predictor.labels
        self.engine = self.predictor.engine
        # "int8 (float parts f32)" for an INT8 artifact, not the float parts' "f32" alone
        self.precision = self.predictor.inference_precision
        if holds_int8(folder):
            self.precision = f"int8 (float parts {self.precision})"
        self.batch_size = batch_size
        self.max_length = max_length
        info = folder / "checkpoint_info.json"
        self.info = json.loads(info.read_text()) if info.is_file() else {}

    def __repr__(self) -> str:
        return (f"fincompress.Model({str(self.folder)!r}, engine={self.engine}, "
                f"precision={self.precision}, labels={self.labels})")

    def predict(self, texts: str | list[str]) -> list[dict]:
        """One answer per text, in order: ``label``, ``probabilities`` (label -> probability),
        ``tokens`` (scored), ``truncated``, and ``warning`` where there is one. Texts run in
        length-sorted batches of ``batch_size``, each padded to its own longest text."""
        if isinstance(texts, str):
            texts = [texts]
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{index}] is {type(text).__name__}, not str")
        answers = [_unscorable(text) for text in texts]
        scored = [i for i, answer in enumerate(answers) if answer is None]
        if not scored:
            return answers
        ids, truncated = self.encode([texts[i] for i in scored])
        probabilities = softmax(self.predictor.logits_ids(ids, self.batch_size))
        unknown = self.predictor.unknown_token_id
        for row, i in enumerate(scored):
            values = probabilities[row].tolist()
            answer = {"label": self.labels[max(range(len(values)), key=values.__getitem__)],
                      "probabilities": dict(zip(self.labels, values)),
                      "tokens": len(ids[row]), "truncated": truncated[row]}
            words = ids[row][1:-1]  # without the special tokens at both ends
            if unknown is not None and words and words.count(unknown) * 2 > len(words):
                answer["warning"] = ("most tokens are unknown to the tokenizer; the model was "
                                     "trained on English financial text")
            answers[i] = answer
        return answers

    def encode(self, texts: list[str]) -> tuple[list[list[int]], list[bool]]:
        """Token ids cut to ``max_length`` (special tokens included, the final one kept), and
        whether each text was cut; each text is tokenized once."""
        cap = self.max_length * CHARS_PER_TOKEN_CAP
        full = self.predictor.encode([text[:cap] for text in texts], max_length=None)
        ids = [whole if len(whole) <= self.max_length else whole[:self.max_length - 1] + whole[-1:]
               for whole in full]
        return ids, [len(text) > cap or len(whole) > self.max_length
                     for text, whole in zip(texts, full)]


def _unscorable(text: str) -> dict | None:
    """The documented answer for a text no model can score (None: it can be scored)."""
    if not text.strip():
        return _no_prediction("empty text: no prediction")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return _no_prediction(f"not valid Unicode: a lone surrogate (U+{ord(text[error.start]):04X}) "
                              f"at character {error.start}: no prediction")
    return None


def _no_prediction(warning: str) -> dict:
    return {"label": None, "probabilities": None, "tokens": 0, "truncated": False,
            "warning": warning}


def load(path: str | Path, threads: int | None = None, batch_size: int = 32,
         max_length: int = 128, precision: str = "auto") -> Model:
    """Open an artifact folder: a Hugging Face model (fp32, or pruned), an OpenVINO IR or an
    ONNX graph, fp32 or INT8, or a model2vec static classifier. A run or stage folder whose
    model sits in a ``student/`` or ``model/`` subfolder opens that. ``threads`` sets the
    engine's thread count (PyTorch's is process-wide); ``precision`` (auto | 32-true |
    bf16-mixed) applies to PyTorch models."""
    folder = Path(path)
    if not folder.exists():
        raise NotAModelError(f"{folder} does not exist")
    if not folder.is_dir():
        raise NotAModelError(f"{folder} is a file; a model is a folder (Hugging Face, OpenVINO "
                             "or ONNX)")
    for child in ("student", "model"):
        if not _has_model(folder) and _has_model(folder / child):
            folder = folder / child
    if not _has_model(folder):
        raise NotAModelError(f"{folder} holds no model: expected model.xml (OpenVINO IR), "
                             "model.onnx (ONNX), head.safetensors (model2vec) or config.json "
                             "(Hugging Face), here or in a student/ or model/ subfolder")
    return Model(folder, threads, batch_size, max_length, precision)


def _has_model(folder: Path) -> bool:
    return any((folder / name).is_file()
               for name in ("model.xml", "model.onnx", "head.safetensors", "config.json"))
