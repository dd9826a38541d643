"""The Python API (fincompress.load / predict) and its answers to hostile input."""

import pytest
import torch

import fincompress
from fincompress.api import NotAModelError
from fincompress.predict import load as load_predictor
from fincompress.predict import softmax

LABELS = ["negative", "neutral", "positive"]
TEXTS = ["Sales rose .", "Operating profit fell to EUR 3.1 mn from EUR 5.2 mn a year earlier .",
         "The company is based in Espoo , Finland ."]


def test_predict_gives_labels_and_probabilities_equal_to_the_predictor(tiny_classifier):
    model = fincompress.load(tiny_classifier.parent, threads=1, precision="32-true")  # the run folder
    assert model.folder == tiny_classifier and model.engine == "torch" and model.labels == LABELS
    answers = model.predict(TEXTS)
    expected = softmax(load_predictor(tiny_classifier, LABELS, "32-true").logits(TEXTS))
    for answer, row in zip(answers, expected):
        assert answer["label"] == LABELS[int(row.argmax())]
        assert list(answer["probabilities"]) == LABELS
        assert [answer["probabilities"][k] for k in LABELS] == pytest.approx(row.tolist(), abs=1e-5)
        assert answer["truncated"] is False and "warning" not in answer
    assert model.predict(TEXTS[0]) == answers[:1]  # one string is one text
    assert torch.get_num_threads() == 1


def test_hostile_texts_get_documented_answers(tiny_classifier):
    model = fincompress.load(tiny_classifier, precision="32-true", max_length=16)
    empty, blank, long, emoji, foreign, normal = model.predict(
        ["", " \n\t ", "Profit rose . " * 10_000, "🚀🚀🚀 📉📉", "株価が大幅に上昇した", TEXTS[0]])
    for answer in (empty, blank):
        assert answer == {"label": None, "probabilities": None, "tokens": 0, "truncated": False,
                          "warning": "empty text: no prediction"}
    assert long["truncated"] is True and long["tokens"] == 16 and long["label"] in LABELS
    assert emoji["label"] in LABELS and "unknown to the tokenizer" in emoji["warning"]
    # MiniLM's vocabulary has most CJK characters: scored, no warning (4 of 10 tokens unknown)
    assert foreign["label"] in LABELS and "warning" not in foreign
    assert normal["truncated"] is False and normal["label"] in LABELS
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        model.predict(["fine", 3])


def test_a_folder_that_is_not_a_model_is_refused_by_name(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(NotAModelError, match="holds no model: expected model.xml"):
        fincompress.load(tmp_path)
    with pytest.raises(NotAModelError, match="is a file"):
        fincompress.load(tmp_path / "notes.txt")
    with pytest.raises(NotAModelError, match="does not exist"):
        fincompress.load(tmp_path / "missing")
