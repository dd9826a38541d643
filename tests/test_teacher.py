"""The teacher experiment end to end on a tiny random BERT and a small PhraseBank slice."""

import json

import pytest
import torch

from fincompress.data.phrasebank import read_split_file
from fincompress.metrics import diagnostics
from fincompress.models.sources import load_classifier
from fincompress.predict import load as load_predictor
from fincompress.stages.teacher import train_teacher

from .conftest import TINY, compose_config


def test_teacher_experiment_runs_and_its_model_reloads(tmp_path, data_dir):
    cfg = compose_config(["+experiment=teacher", *TINY], tmp_path)
    info = train_teacher(cfg)
    run = tmp_path / "run"

    saved = json.loads((run / "model" / "checkpoint_info.json").read_text())
    assert saved["metrics"] == info["metrics"]
    for key in ("config", "metrics", "parameters", "size_on_disk_bytes", "wall_time_s",
                "timestamp", "git_commit", "split_hash", "confusion_matrix"):
        assert saved[key] is not None, key
    test_rows = read_split_file(run / "split" / "test.csv")
    assert len(test_rows) == 48 == sum(map(sum, saved["confusion_matrix"]))
    assert saved["machine"]["precision"] == cfg.trainer.precision != "auto"
    assert (run / "confusion_matrix.png").stat().st_size > 1000
    assert (run / "csv" / "metrics.csv").read_text().count("val/f1_macro") == 1

    # the best epoch's weights are exported; the Lightning checkpoints are not kept
    assert not list(run.glob("**/*.ckpt"))
    _, tokenizer = load_classifier(str(run / "model"), list(cfg.data.labels))
    assert tokenizer("Profit rose .")["input_ids"][0] == tokenizer.cls_token_id

    # the recorded test scores are those of the exported model on the written test split
    gold = torch.tensor([cfg.data.labels.index(row.label) for row in test_rows])
    logits = load_predictor(run / "model", list(cfg.data.labels),
                            saved["machine"]["precision"]).logits([row.text for row in test_rows])
    scores = diagnostics(torch.from_numpy(logits), gold, list(cfg.data.labels))
    assert scores["acc"] == pytest.approx(saved["metrics"]["test/acc"], abs=1e-6)
    assert scores["f1_macro"] == pytest.approx(saved["metrics"]["test/f1_macro"], abs=1e-6)
    assert scores["confusion_matrix"] == saved["confusion_matrix"]

