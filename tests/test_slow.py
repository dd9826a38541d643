"""Real pretrained models on the full PhraseBank split (minutes; run with ``pytest -m slow``).

Each test's ``budget_s`` bounds it and lets CI skip it when too little time is left; the
budgets are three to five times what the test took on a 2-core CPU with PyTorch limited to
AVX2, in fp32 (main job 351 s; the teacher about 2 minutes).
"""

import pytest
from omegaconf import open_dict

from fincompress.stages.distill import run_distill
from fincompress.stages.teacher import train_teacher

from .conftest import compose_config


@pytest.mark.slow(budget_s=600)
def test_minilm_teacher_reaches_the_issue_target(tmp_path, data_dir):
    cfg = compose_config(["+experiment=teacher"], tmp_path)
    info = train_teacher(cfg)
    assert info["data"]["agreement"] == "AllAgree"
    assert info["metrics"]["test/f1_macro"] >= 0.94


@pytest.mark.slow(budget_s=1200)
def test_main_job_with_real_models(tmp_path, data_dir):
    """``python train.py +experiment=pkd`` as a user runs it: a good teacher and student, a
    fresh baseline trained to convergence, and a verdict that follows from the scores."""
    cfg = compose_config(["+experiment=pkd"], tmp_path)
    with open_dict(cfg):
        cfg.paths.run_dir = str(tmp_path / "pkd")
    result = run_distill(cfg)
    teacher, student, fresh = result["teacher"], result["student"], result["fresh"]
    assert teacher["f1_macro"] >= 0.94
    assert result["student_parameters"] < result["teacher_parameters"]
    # one seed on 339 sentences: the main job's student scored 0.9378 before the robustness
    # hold-out changed its news sample, 0.9270 (fp32) and 0.9166 (bf16) after it; the study's
    # PKD students spread by 0.0102 over seeds. 0.90 is a working student (the three-epoch
    # baseline scored 0.5370), not a seed's luck
    assert student["f1_macro"] >= 0.90
    assert fresh["best_val_f1_macro"] > 0.9  # converged (three epochs gave 0.5636)
    verdict = result["verdict"]
    assert verdict["beats_on_test"] == (student["f1_macro"] > fresh["f1_macro"])
    assert verdict["beats_on_validation"] == (student["best_val_f1_macro"] > fresh["best_val_f1_macro"])
