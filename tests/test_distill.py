"""Distillation: one step of every method, every distill experiment end to end (tiny models,
small data), stage reuse, sweeps, and the errors a user can run into."""

import json
import os
import subprocess
import sys

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from fincompress.data.news import NewsCorpus
from fincompress.evaluate import predict
from fincompress.models.sources import load_classifier
from fincompress.module import ClassifierModule
from fincompress.pipeline import build_loss, run_distill
from fincompress.pseudo_label import label as pseudo_label_module
from fincompress.students.builders import encoder_from_config, truncated_student

from .conftest import DATA_DIR, ROOT, TINY, compose_config

LABELS = ["negative", "neutral", "positive"]
# tiny teacher (4 layers, width 32), 2-layer student, 120 news sentences
DISTILL_TINY = [*TINY, "news.max_sentences=120", "student.model.num_layers=2"]
METHODS = ["ce", "kd", "pkd", "tinybert", "finetune"]


@pytest.fixture(scope="module")
def tiny_pair():
    teacher, tokenizer = load_classifier("bundled:minilm-l6", LABELS, random_init=True,
                                         config_overrides={"num_hidden_layers": 4,
                                                           "hidden_size": 32,
                                                           "num_attention_heads": 2,
                                                           "intermediate_size": 64})
    return teacher, tokenizer


@pytest.mark.parametrize("method", METHODS)
def test_one_training_step_of_every_method(method, tiny_pair, tmp_path):
    teacher, tokenizer = tiny_pair
    cfg = compose_config([f"method={method}"], tmp_path)
    student, _ = encoder_from_config("bundled:minilm-l6", LABELS, num_hidden_layers=2,
                                     hidden_size=16, num_attention_heads=2, intermediate_size=32)
    loss = build_loss(cfg, student, teacher)
    if loss.needs_attentions:
        student.set_attn_implementation("eager")
        teacher.set_attn_implementation("eager")
    texts = ["Operating profit rose to EUR 13.1 mn .", "Sales fell sharply .",
             "The company is based in Espoo , Finland ."]
    teacher_logits, cls = predict(teacher, tokenizer, texts, cls_states=True)
    batch = dict(tokenizer(texts, return_tensors="pt", padding=True))
    batch.pop("token_type_ids", None)
    batch.update(labels=teacher_logits.argmax(-1), teacher_logits=teacher_logits,
                 teacher_cls=cls[:, loss.teacher_cls_layers] if loss.teacher_cls_layers else None)
    module = ClassifierModule(student, LABELS, instantiate(cfg.distill.stage1.optimizer),
                              loss=loss, teacher=teacher if loss.needs_teacher_model else None)
    optimizer = module.configure_optimizers()
    before = [p.detach().clone() for p in student.parameters()]
    value = module.training_step(batch, 0)
    value.backward()
    optimizer.step()
    assert torch.isfinite(value) and value > 0
    changed = sum(not torch.equal(b, p) for b, p in zip(before, student.parameters()))
    assert changed > len(before) // 2


@pytest.fixture(scope="module")
def shared_root(tmp_path_factory):
    """One output root for the end-to-end runs, so the teacher and pseudo-labels are shared."""
    return tmp_path_factory.mktemp("distill")


@pytest.mark.parametrize("experiment", ["pkd", "kd", "ce", "tinybert", "fresh"])
def test_distill_experiment_end_to_end(experiment, shared_root, data_dir, capsys):
    cfg = compose_config([f"+experiment={experiment}", *DISTILL_TINY], shared_root)
    with open_dict(cfg):
        cfg.paths.run_dir = str(shared_root / experiment)
    result = run_distill(cfg)
    run = shared_root / experiment
    saved = json.loads((run / "results.json").read_text())
    for scores in (saved["teacher"], saved["student"]):
        for key in ("acc", "f1_macro", "f1_negative", "kl_teacher_student",
                    "agreement_with_teacher", "ece"):
            assert 0 <= scores[key] <= (1 if key != "kl_teacher_student" else 50), key
    assert saved["teacher"]["kl_teacher_student"] == pytest.approx(0, abs=1e-6)
    assert saved["teacher"]["agreement_with_teacher"] == 1
    assert sum(map(sum, saved["student"]["confusion_matrix"])) == saved["test_size"] == 48
    student = run / "student"
    info = json.loads((student / "checkpoint_info.json").read_text())
    assert info["method"] == cfg.method.name and info["split_hash"] == saved["split_hash"]
    assert (student / "test_split.csv").read_text().count("\n") == 49
    reloaded, _ = load_classifier(str(student), LABELS)
    assert reloaded.config.num_hidden_layers == 2
    assert (experiment == "fresh") == (info["stage1"] is None)
    assert 0 <= info["best_val_f1_macro"] <= 1
    out = capsys.readouterr().out
    assert "teacher" in out and "kl_teacher_student" in out and result["metrics"]["test/f1_macro"] >= 0


def test_stages_are_reused_on_a_second_run(shared_root, data_dir, capsys, monkeypatch):
    """Run after the end-to-end tests: teacher, pseudo-labels and stage 1 all come from the store,
    even with other stage-2 settings."""
    def no_labelling(*args, **kwargs):
        raise AssertionError("pseudo-labels were recomputed")

    monkeypatch.setattr(pseudo_label_module, "predict", no_labelling)
    # a different stage 2 does not invalidate stage 1
    cfg = compose_config(["+experiment=pkd", *DISTILL_TINY, "student.stage2_lr=7e-5"], shared_root)
    with open_dict(cfg):
        cfg.paths.run_dir = str(shared_root / "pkd_again")
    run_distill(cfg)
    out = capsys.readouterr().out
    assert "reusing teacher" in out and "reusing stage-1 student" in out
    assert len(list((shared_root / "stages" / "teacher").iterdir())) == 1
    assert len(list((shared_root / "stages" / "pseudo_labels").iterdir())) == 1
    report = json.loads(next((shared_root / "stages" / "pseudo_labels").glob("*/report.json")).read_text())
    assert report["sentences"] == 120 and sum(report["label_counts"].values()) == 120


def test_pseudo_label_cache_is_keyed_by_corpus(shared_root, tmp_path, monkeypatch):
    teacher_dir = next((shared_root / "stages" / "teacher").glob("*/model"))
    corpus = NewsCorpus(["Profit rose strongly this year .", "Sales fell ."])
    first = pseudo_label_module.pseudo_label(teacher_dir, corpus, tmp_path, LABELS)
    assert not first.reused and first.cls.shape[:2] == (2, 5)  # embeddings + 4 layers
    monkeypatch.setattr(pseudo_label_module, "predict", lambda *a, **k: 1 / 0)
    again = pseudo_label_module.pseudo_label(teacher_dir, corpus, tmp_path, LABELS)
    assert again.reused and torch.equal(again.logits, first.logits)
    with pytest.raises(ZeroDivisionError):  # another corpus is labelled anew
        pseudo_label_module.pseudo_label(teacher_dir, NewsCorpus(["Other news ."]), tmp_path, LABELS)


def test_a_grown_corpus_labels_only_its_new_sentences(shared_root, tmp_path, monkeypatch):
    """More news or more transfer text: sentences an earlier cache of the same teacher labelled are
    copied, only the new ones go through the teacher; another max_length copies nothing."""
    teacher_dir = next((shared_root / "stages" / "teacher").glob("*/model"))
    first = pseudo_label_module.pseudo_label(
        teacher_dir, NewsCorpus(["Profit rose strongly .", "Sales fell .", "Costs were flat ."]),
        tmp_path, LABELS)
    labelled = []

    def recording_predict(model, tokenizer, texts, *args, **kwargs):
        labelled.append(list(texts))
        return predict(model, tokenizer, texts, *args, **kwargs)

    monkeypatch.setattr(pseudo_label_module, "predict", recording_predict)
    grown = NewsCorpus(["Orders doubled .", "Sales fell .", "Profit rose strongly .", "Sales fell ."])
    second = pseudo_label_module.pseudo_label(teacher_dir, grown, tmp_path, LABELS)
    assert labelled == [["Orders doubled ."]] and not second.reused
    assert torch.equal(second.logits[1:], first.logits[[1, 0, 1]])
    assert torch.equal(second.cls[1:], first.cls[[1, 0, 1]])
    fresh, _ = predict(*load_classifier(str(teacher_dir), LABELS), ["Orders doubled ."])
    assert torch.allclose(second.logits[0], fresh[0], atol=1e-2)
    report = json.loads((second.folder / "report.json").read_text())
    assert report["copied_from_earlier_caches"] == 3 and report["sentences"] == 4

    labelled.clear()
    pseudo_label_module.pseudo_label(teacher_dir, grown, tmp_path / "other", LABELS)
    pseudo_label_module.pseudo_label(teacher_dir, grown, tmp_path, LABELS, max_length=16)
    assert labelled == [grown.sentences, grown.sentences]  # other store, other max_length


def test_teacher_trained_on_another_split_is_refused(shared_root, data_dir, tmp_path):
    teacher_dir = next((shared_root / "stages" / "teacher").glob("*/model"))
    cfg = compose_config(["+experiment=fresh", *DISTILL_TINY, "data.seed=7",
                          f"teacher_checkpoint={teacher_dir}"], tmp_path)
    with pytest.raises(ValueError, match="trained on PhraseBank split"):
        run_distill(cfg)


def test_missing_teacher_checkpoint_is_a_clear_error(tmp_path, data_dir):
    cfg = compose_config(["+experiment=pkd", *DISTILL_TINY,
                          f"teacher_checkpoint={tmp_path / 'no-teacher'}"], tmp_path)
    with pytest.raises(FileNotFoundError, match="not a saved model folder"):
        run_distill(cfg)


def test_tinybert_refuses_a_student_with_another_tokenizer(shared_root, data_dir, tmp_path):
    teacher_dir = next((shared_root / "stages" / "teacher").glob("*/model"))
    cfg = compose_config(["+experiment=tinybert", *TINY, "news.max_sentences=120", "student=tiny",
                          f"teacher_checkpoint={teacher_dir}",
                          "student.model.tokenizer_source=bundled:mpnet-base"], shared_root)
    with open_dict(cfg):
        cfg.paths.run_dir = str(tmp_path / "run")
    with pytest.raises(ValueError, match="tokenize differently"):
        run_distill(cfg)


def test_students_are_built_as_configured(shared_root):
    teacher_dir = next((shared_root / "stages" / "teacher").glob("*/model"))
    teacher, _ = load_classifier(str(teacher_dir), LABELS)
    student, _ = truncated_student(str(teacher_dir), LABELS, num_layers=2, strategy="every_other")
    for kept, original in zip(student.bert.encoder.layer, [1, 3]):
        torch.testing.assert_close(kept.state_dict(),
                                   teacher.bert.encoder.layer[original].state_dict())
    with pytest.raises(ValueError, match="cannot keep 3 layers"):
        truncated_student(str(teacher_dir), LABELS, num_layers=3, strategy="every_other")
    tiny, _ = encoder_from_config(str(teacher_dir), LABELS, num_hidden_layers=4, hidden_size=384,
                                  num_attention_heads=6, intermediate_size=1536)
    config = tiny.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
            config.intermediate_size) == (4, 384, 6, 1536)
    albert, _ = encoder_from_config(str(teacher_dir), LABELS, model_type="albert",
                                    num_hidden_layers=2, embedding_size=16, hidden_size=32,
                                    num_attention_heads=2, intermediate_size=64)
    assert type(albert).__name__ == "AlbertForSequenceClassification"


def test_sweep_runs_three_jobs_with_separate_folders_and_wandb_runs(tmp_path, data_dir):
    result = subprocess.run(
        [sys.executable, "train.py", "-m", "+experiment=kd", "method.temperature=2,5,9",
         "logger=csv_wandb", *DISTILL_TINY, f"paths.data_dir={DATA_DIR}",
         f"paths.output_root={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
        env={**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = sorted(tmp_path.glob("multirun/*/*/results.json"))
    assert [json.loads(p.read_text())["method"] for p in results] == ["kd_t2", "kd_t5", "kd_t9"]
    wandb_runs = sorted(tmp_path.glob("multirun/*/*/wandb/offline-run-*"))
    assert len(wandb_runs) == 3  # one W&B run per job
    assert len(list((tmp_path / "stages" / "teacher").iterdir())) == 1  # trained once, reused


def test_confidence_threshold_keeps_only_confident_pseudo_labels(tmp_path, minilm_tokenizer):
    from types import SimpleNamespace

    from fincompress.pipeline import news_loader
    from fincompress.pseudo_label.label import PseudoLabels

    logits = torch.tensor([[5.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.0, 4.0]])
    cls = torch.arange(3 * 5 * 8, dtype=torch.float16).reshape(3, 5, 8)
    pseudo = PseudoLabels(["Profit rose .", "Maybe .", "Sales fell ."], logits, cls, LABELS,
                          tmp_path)
    loss = SimpleNamespace(teacher_cls_layers=[2, 4])
    cfg = compose_config(["distill.pseudo_label.confidence_threshold=0.6"], tmp_path)
    loader, kept = news_loader(cfg, pseudo, loss, minilm_tokenizer)
    batches = list(loader)
    assert kept == 2 and sorted(torch.cat([b["labels"] for b in batches]).tolist()) == [0, 2]
    batch = batches[0]
    source = batch["teacher_logits"].argmax(-1)  # rows stay aligned with their own sentence
    torch.testing.assert_close(batch["teacher_cls"][:, 0], cls[[0 if s == 0 else 2 for s in source]][:, 2])
    cfg = compose_config(["distill.pseudo_label.confidence_threshold=0.999"], tmp_path)
    with pytest.raises(ValueError, match="confidence >= 0.999"):
        news_loader(cfg, pseudo, loss, minilm_tokenizer)


def test_phrasebank_transfer_sentences_never_include_val_or_test(tmp_path, data_dir, minilm_tokenizer):
    from fincompress.data.datamodule import NewsDataModule
    from fincompress.pipeline import phrasebank_transfer

    assert phrasebank_transfer(compose_config([], tmp_path)) is None  # off by default
    cfg = compose_config(["distill.pseudo_label.add_phrasebank=50"], tmp_path)
    added = phrasebank_transfer(cfg)
    split = instantiate(cfg.data, tokenizer=None, split_dir=None)
    split.prepare_splits()
    held_out = {r.text for r in split.splits["val"] + split.splits["test"]}
    assert len(held_out) == 678 and not held_out & set(added)
    assert {r.text for r in split.splits["train"]} <= set(added)
    assert len(added) == 4838 - 678  # 50Agree's distinct sentences less val and test

    news = NewsDataModule([str(data_dir / "news")], max_sentences=50, tokenizer=minilm_tokenizer,
                          exclude_phrasebank=cfg.data.source,
                          extra_sentences={"phrasebank": added[:30],
                                           "augmented": ["Profit fell .", "profit  fell ."]})
    news.setup()
    counts = news.corpus.counts
    assert counts["phrasebank_added"] == 30 and counts["augmented_added"] == 1  # a repeat dropped
    assert list(counts)[-1] == "total" and counts["total"] == len(news.dataset) == 81
    assert news.corpus.sentences[50:] == [*added[:30], "Profit fell ."]


def test_frozen_teacher_stays_in_eval_mode_when_lightning_switches_to_training(tiny_pair):
    teacher, _ = tiny_pair
    student, _ = encoder_from_config("bundled:minilm-l6", LABELS, num_hidden_layers=1,
                                     hidden_size=16, num_attention_heads=2, intermediate_size=32)
    module = ClassifierModule(student, LABELS, torch.optim.AdamW, teacher=teacher)
    module.eval()
    module.train()  # what Lightning's fit loop does at the start of training
    assert module.model.training and not module.teacher.training
    assert not any(m.training for m in module.teacher.modules())
