"""Real pretrained models on the full PhraseBank split (minutes; run with ``pytest -m slow``)."""

import pytest
from omegaconf import open_dict

from fincompress.pipeline import run_distill
from fincompress.teacher.train import train_teacher

from .conftest import compose_config


@pytest.mark.slow
def test_minilm_teacher_reaches_the_issue_target(tmp_path, data_dir):
    cfg = compose_config(["+experiment=teacher"], tmp_path)
    info = train_teacher(cfg)
    assert info["data"]["agreement"] == "AllAgree"
    assert info["metrics"]["test/f1_macro"] >= 0.94


@pytest.mark.slow
def test_main_job_with_real_models(tmp_path, data_dir):
    """``python train.py +experiment=pkd`` as a user runs it (teacher, news, student)."""
    cfg = compose_config(["+experiment=pkd"], tmp_path)
    with open_dict(cfg):
        cfg.paths.run_dir = str(tmp_path / "pkd")
    result = run_distill(cfg)
    assert result["teacher"]["f1_macro"] >= 0.94
    assert result["student_parameters"] < result["teacher_parameters"]
    assert result["student"]["f1_macro"] >= 0.85
    assert result["student"]["agreement_with_teacher"] >= 0.85
