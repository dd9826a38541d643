"""Real pretrained models on the full PhraseBank split (minutes; run with ``pytest -m slow``)."""

import pytest

from fincompress.teacher.train import train_teacher

from .conftest import compose_config


@pytest.mark.slow
def test_minilm_teacher_reaches_the_issue_target(tmp_path, data_dir):
    cfg = compose_config(["+experiment=teacher"], tmp_path)
    info = train_teacher(cfg)
    assert info["data"]["agreement"] == "AllAgree"
    assert info["metrics"]["test/f1_macro"] >= 0.94
