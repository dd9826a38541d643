"""Distillation: one step of every method, every distill experiment end to end (tiny models,
small data), stage reuse, sweeps, and the errors a user can run into."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from fincompress.artifacts import save_model_folder
from fincompress.data.datamodule import phrasebank_split
from fincompress.data.news import NewsCorpus
from fincompress.data.phrasebank import comparable, read_split_file
from fincompress.distill.loss import build_loss
from fincompress.errors import InputError
from fincompress.metrics import diagnostics
from fincompress.models.sources import load_classifier
from fincompress.module import ClassifierModule
from fincompress.predict import TorchPredictor
from fincompress.predict import load as load_predictor
from fincompress.stages import distill
from fincompress.stages import pseudo_labels as pseudo_label_module
from fincompress.stages.distill import StudentMismatchError, run_distill
from fincompress.students.builders import encoder_from_config, truncated_student

from .conftest import DATA_DIR, DISTILL_TINY, ROOT, TINY, compose_config

LABELS = ["negative", "neutral", "positive"]
# tiny teacher (4 layers, width 32), 2-layer student, 120 news sentences
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
    loss = build_loss(instantiate(cfg.method.loss), student, teacher)
    if loss.needs_attentions:
        student.set_attn_implementation("eager")
        teacher.set_attn_implementation("eager")
    texts = ["Operating profit rose to EUR 13.1 mn .", "Sales fell sharply .",
             "The company is based in Espoo , Finland ."]
    predictor = TorchPredictor(None, LABELS, "32-true", teacher, tokenizer)
    teacher_logits, cls = predictor.logits_ids(predictor.encode(texts), cls_states=True)
    teacher_logits = torch.from_numpy(teacher_logits)
    batch = dict(tokenizer(texts, return_tensors="pt", padding=True))
    batch.pop("token_type_ids", None)
    batch.update(labels=teacher_logits.argmax(-1), teacher_logits=teacher_logits,
                 teacher_cls=cls[:, loss.teacher_cls_layers] if loss.teacher_cls_layers else None)
    module = ClassifierModule(student, LABELS, instantiate(cfg.distill.stage1.optimizer),
                              loss=loss, teacher=teacher if loss.needs_teacher_model else None)
    optimizer = module.configure_optimizers()
    before = [p.detach().clone() for p in student.parameters()]
    logged = {}
    module.log = lambda name, value, **_: logged.update({name: value})
    module.log_dict = lambda values, **_: logged.update(values)
    value = module.training_step(batch, 0)
    shares = {k: float(v) for k, v in logged.items() if k.startswith("train/share_")}
    assert shares and sum(shares.values()) == pytest.approx(1, rel=1e-4)  # each term's share
    value.backward()
    optimizer.step()
    assert torch.isfinite(value) and value > 0
    changed = sum(not torch.equal(b, p) for b, p in zip(before, student.parameters()))
    assert changed > len(before) // 2


@pytest.fixture(scope="module")
def shared_root(tiny_store):
    """The end-to-end runs' output root: the store the README's main job shares."""
    return tiny_store


@pytest.fixture(scope="module")
def teacher_dir(shared_root):
    (folder,) = (shared_root / "stages" / "teacher").glob("*/model")
    return folder


@pytest.fixture(scope="module")
def distill_run(shared_root):
    """Runs an experiment into ``shared_root/<name>`` once per module; returns its folder."""
    done = {}

    def run(experiment: str):
        if experiment not in done:
            cfg = compose_config([f"+experiment={experiment}", *DISTILL_TINY], shared_root)
            with open_dict(cfg):
                cfg.paths.run_dir = str(shared_root / experiment)
            done[experiment] = run_distill(cfg)
        return shared_root / experiment

    return run


def stage_folders(root, stage):
    return [p for p in (root / "stages" / stage).iterdir() if not p.name.startswith(".")]


@pytest.mark.parametrize("experiment", [
    # pkd, the main job, runs in the default suite as the README's command
    # (tests/test_readme.py), with these checks; the other methods run the same code path with
    # another loss, and fresh skips stage 1: slow (CI runs them)
    *[pytest.param(name, marks=pytest.mark.slow(budget_s=200))
      for name in ("pkd", "fresh", "kd", "ce", "tinybert")]])
def test_distill_experiment_end_to_end(experiment, distill_run, capsys):
    run = distill_run(experiment)
    check_distill_run(run, capsys.readouterr().out, experiment, scored_per_group=1000)


def check_distill_run(run: Path, out: str, experiment: str, scored_per_group: int) -> None:
    """What ``+experiment=<experiment>`` with ``DISTILL_TINY`` must leave in ``run`` and print
    (``out``), robustness scored on ``scored_per_group`` market posts."""
    saved = json.loads((run / "results.json").read_text())
    assert sum(map(sum, saved["student"]["confusion_matrix"])) == saved["test_size"] == 48
    student = run / "student"
    info = json.loads((student / "checkpoint_info.json").read_text())
    assert info["method"] == saved["method"] and info["split_hash"] == saved["split_hash"]
    assert info["machine"]["precision"] in ("32-true", "bf16-mixed")
    assert saved["machine"]["isa"] == info["machine"]["isa"]
    assert saved["teacher_split_unknown"] is False  # the teacher trained here records its split
    assert (student / "test_split.csv").read_text().count("\n") == 49

    # the saved scores are those of the saved models on the saved test split
    test_rows = read_split_file(student / "test_split.csv")
    gold = torch.tensor([LABELS.index(row.label) for row in test_rows])
    texts = [row.text for row in test_rows]
    precision = saved["machine"]["precision"]
    reloaded, tokenizer = load_classifier(str(student), LABELS)
    assert reloaded.config.num_hidden_layers == 2
    teacher_logits = load_predictor(saved["teacher_dir"], LABELS, precision).logits(texts, 64)
    scores = diagnostics(torch.from_numpy(load_predictor(student, LABELS, precision).logits(texts, 64)),
                         gold, LABELS, torch.from_numpy(teacher_logits))
    for key in ("acc", "f1_macro", "agreement_with_teacher"):
        assert scores[key] == pytest.approx(saved["student"][key], abs=1e-6), key
    assert scores["kl_teacher_student"] == pytest.approx(saved["student"]["kl_teacher_student"],
                                                         rel=1e-3, abs=1e-5)
    assert (experiment == "fresh") == (info["stage1"] is None) == (saved["fresh"] is None)
    # stage 1, stage 2 and the fresh baseline keep their saved models, not Lightning checkpoints
    fresh_stage = saved["fresh"] and Path(saved["fresh"]["dir"]).parent  # <stage>/model
    kept = [run, *(Path(folder) for folder in (info["stage1"], fresh_stage) if folder)]
    assert not [c for folder in kept for c in folder.glob("**/*.ckpt")]
    if saved["fresh"]:  # the baseline is the same student, not distilled
        fresh, _ = load_classifier(saved["fresh"]["dir"], LABELS)
        assert fresh.config.to_dict()["num_hidden_layers"] == 2
        assert not torch.equal(fresh.classifier.weight, reloaded.classifier.weight)
    assert f"{saved['method']} " in out and "kl_teacher_student" in out
    # the log names the precision chosen and why (the machine line of the table)
    assert f"{saved['machine']['precision']} ({saved['machine']['precision_reason']})" in out
    (f1_row,) = [line.strip("|").split("|") for line in out.splitlines()
                 if line.startswith("| f1_macro ")]
    assert len(f1_row) == (3 if experiment == "fresh" else 4)  # teacher, student (, fresh)
    assert float(f1_row[2]) == pytest.approx(saved["student"]["f1_macro"], abs=1e-4)
    # speed rows, measured by the benchmark's code
    speed = saved["speed"]
    assert set(speed) == ({"teacher", "student"} | ({"fresh"} if saved["fresh"] else set()))
    assert speed["teacher"]["throughput_ratio"] == 1 and speed["student"]["throughput_sorted"] > 0
    assert "sentences/s at batch 32" in out and "batch-1 ms (median)" in out
    # agreement with the teacher on the robustness hold-out, per group, printed
    robust = saved["robustness"]
    assert set(robust) == {"market_posts", "seeking_alpha"}
    # the configured sample of each group (of the 2,347 held-out market posts), all 166
    # Seeking Alpha sentences when fewer
    assert robust["market_posts"]["sentences"] == scored_per_group
    assert 50 < robust["seeking_alpha"]["sentences"] <= max(scored_per_group, 166)
    for group, scores in robust.items():
        assert set(scores) == {"sentences", "student", *(["fresh"] if saved["fresh"] else [])}
        assert f"agreement on held-out {group} ({scores['sentences']})" in out
    held = distill.robustness_holdout(
        [str(DATA_DIR / "news")], {"fraction": 0.1, "seed": 0, "groups": {
            "seeking_alpha": "seeking_alpha*"}})["seeking_alpha"]
    agree = (load_predictor(student, LABELS, precision).logits(held, 64).argmax(-1)
             == load_predictor(saved["teacher_dir"], LABELS, precision).logits(held, 64).argmax(-1))
    assert robust["seeking_alpha"]["student"] == pytest.approx(float(agree.mean()), abs=0.01)
    if saved["fresh"]:  # the verdict against the converged fresh baseline, printed and saved
        margin = saved["student"]["f1_macro"] - saved["fresh"]["f1_macro"]
        assert saved["verdict"]["beats_on_test"] == (margin > 0)
        assert f"test {margin:+.4f}" in out and "converged fresh baseline" in out


@pytest.mark.slow(budget_s=200)
def test_stages_are_reused_on_a_second_run(shared_root, distill_run, capsys, monkeypatch):
    """Teacher, pseudo-labels, stage 1 and the fresh baseline all come from the store on a
    second run, even with other stage-2 settings."""
    distill_run("pkd")

    def no_labelling(*args, **kwargs):
        raise AssertionError("pseudo-labels were recomputed")

    monkeypatch.setattr(pseudo_label_module, "TorchPredictor", no_labelling)
    labels_before = set(stage_folders(shared_root, "pseudo_labels"))
    capsys.readouterr()
    # a different stage 2 does not invalidate stage 1 (it does make a new fresh baseline)
    cfg = compose_config(["+experiment=pkd", *DISTILL_TINY, "student.stage2_lr=7e-5"], shared_root)
    with open_dict(cfg):
        cfg.paths.run_dir = str(shared_root / "pkd_again")
    run_distill(cfg)
    out = capsys.readouterr().out
    assert "reusing teacher" in out and "reusing stage-1 student" in out
    assert "stored fresh baseline" in out
    assert len(stage_folders(shared_root, "teacher")) == 1
    # the news labels and the teacher's labels of the two robustness hold-out groups (and of
    # any other sample of them that runs sharing this store scored) are reused, none added
    assert set(stage_folders(shared_root, "pseudo_labels")) == labels_before
    assert len(labels_before) >= 3
    assert not list((shared_root / "stages").glob("*/.*.partial"))
    reports = [json.loads(path.read_text()) for path in
               (shared_root / "stages" / "pseudo_labels").glob("*/report.json")]
    (report,) = [r for r in reports if r["corpus_counts"]]  # the hold-out's have no counts
    assert report["sentences"] == 120 and sum(report["label_counts"].values()) == 120
    record = json.loads(next((shared_root / "stages" / "stage1").glob("*/stage.json")).read_text())
    assert record["inputs"]["news"]["batch_size"] == 32  # what decides the stage is listed


@pytest.mark.slow(budget_s=120)  # 20 s on 2 AVX2 cores
def test_the_fresh_baseline_stops_once_validation_stops_improving(teacher_dir, tmp_path):
    """With a learning rate of 0 validation never improves: patience 1 stops the fit after its
    second epoch of the four allowed; the verdict compares the student with that baseline."""
    import csv

    from fincompress.stages.distill import verdict
    from fincompress.stages.fresh import ensure_fresh_baseline
    from fincompress.training import choose_precision

    cfg = compose_config(["+experiment=pkd", *DISTILL_TINY, "student.stage2_lr=0",
                          "distill.fresh.max_epochs=4", "distill.fresh.patience=1",
                          f"teacher_checkpoint={teacher_dir}"], tmp_path)
    choose_precision(cfg)
    folder = ensure_fresh_baseline(cfg, teacher_dir)
    with open(folder.parent / "csv" / "metrics.csv") as handle:
        epochs = {row["stage2-epoch"] for row in csv.DictReader(handle) if row.get("stage2-val/f1_macro")}
    assert len(epochs) == 2
    record = json.loads((folder.parent / "stage.json").read_text())
    assert record["inputs"]["fresh"] == {"max_epochs": 4, "patience": 1, "lr": None}  # the key
    # distill.fresh.lr replaces the stage-2 rate for the baseline alone: at 0 the head keeps its
    # initial weights, at 1e-3 it learns
    heads = {}
    for lr in ("null", "1e-3"):
        cfg = compose_config(["+experiment=pkd", *DISTILL_TINY, "student.stage2_lr=0",
                              "distill.fresh.max_epochs=1", f"distill.fresh.lr={lr}",
                              f"teacher_checkpoint={teacher_dir}"], tmp_path)
        choose_precision(cfg)
        model, _ = load_classifier(str(ensure_fresh_baseline(cfg, teacher_dir)), LABELS)
        heads[lr] = model.classifier.weight.detach()
    import lightning as L

    L.seed_everything(cfg.seed, workers=True)
    initial, _ = instantiate(cfg.student.model)
    assert torch.equal(heads["null"], initial.classifier.weight.detach())
    assert not torch.allclose(heads["1e-3"], initial.classifier.weight.detach())
    best = json.loads((folder / "checkpoint_info.json").read_text())["best_val_f1_macro"]
    student = {"best_val_f1_macro": best + 0.01, "f1_macro": 0.5}
    assert verdict(student, {"best_val_f1_macro": best, "f1_macro": 0.6}) == {
        "margin_validation": 0.01, "margin_test": -0.1,
        "beats_on_validation": True, "beats_on_test": False}


def test_kd_in_stage_2_learns_from_the_teachers_logits(tmp_path, data_dir):
    """``distill.stage2.kd``: stage 2 learns from the teacher's logits on the training sentences.
    A teacher that calls every sentence negative, learnt from alone (alpha 1), makes the student
    call the validation sentences negative; with the gold labels alone (the default) it does not,
    since few of them are."""
    from fincompress.training import choose_precision, finetune

    from .conftest import save_tiny_classifier

    teacher = save_tiny_classifier(tmp_path / "teacher", seed=0, label_bias=[20.0, 0.0, 0.0])
    shares = {}
    for kd in ("{temperature:1,alpha:1.0}", "null"):
        cfg = compose_config(["+experiment=kd", *DISTILL_TINY, "student.stage2_epochs=4",
                              "student.stage2_lr=1e-2", f"distill.stage2.kd={kd}"], tmp_path)
        choose_precision(cfg)
        model, tokenizer = instantiate(cfg.student.model)
        folder = tmp_path / f"stage2_{kd}"
        settings = distill.stage2_kd_settings(cfg)
        if settings is not None:
            distill.kd_stage2(cfg, settings, model, tokenizer, teacher, folder)
        else:
            finetune(cfg, model, tokenizer, folder)
        val = read_split_file(folder / "split" / "val.csv")
        logits = TorchPredictor(None, LABELS, "32-true", model, tokenizer).logits(
            [row.text for row in val])
        shares[kd] = float((logits.argmax(-1) == 0).mean())
        gold_negative = sum(row.label == "negative" for row in val) / len(val)
    assert gold_negative < 0.3
    assert shares["{temperature:1,alpha:1.0}"] > 0.9 > 0.5 > shares["null"]
    # a malformed value is refused, naming it, before any work
    cfg = compose_config(["+experiment=kd", *DISTILL_TINY, "distill.stage2.kd={temperature:2}",
                          f"teacher_checkpoint={teacher}"], tmp_path / "refused")
    with pytest.raises(InputError, match=r"distill.stage2.kd=\{'temperature': 2\}: give"):
        run_distill(cfg)
    assert not (tmp_path / "refused" / "stages").exists()


def test_pseudo_label_cache_is_keyed_by_corpus(teacher_dir, tmp_path, monkeypatch):
    corpus = NewsCorpus(["Profit rose strongly this year .", "Sales fell ."])
    first = pseudo_label_module.pseudo_label(teacher_dir, corpus, tmp_path, LABELS)
    assert not first.reused and first.cls.shape[:2] == (2, 5)  # embeddings + 4 layers
    monkeypatch.setattr(pseudo_label_module, "TorchPredictor", lambda *a, **k: 1 / 0)
    again = pseudo_label_module.pseudo_label(teacher_dir, corpus, tmp_path, LABELS)
    assert again.reused and torch.equal(again.logits, first.logits)
    with pytest.raises(ZeroDivisionError):  # another corpus is labelled anew
        pseudo_label_module.pseudo_label(teacher_dir, NewsCorpus(["Other news ."]), tmp_path, LABELS)


def test_a_grown_corpus_labels_only_its_new_sentences(teacher_dir, tmp_path, monkeypatch):
    """More news or more transfer text: sentences an earlier cache of the same teacher labelled are
    copied, only the new ones go through the teacher; another max_length copies nothing."""
    first = pseudo_label_module.pseudo_label(
        teacher_dir, NewsCorpus(["Profit rose strongly .", "Sales fell .", "Costs were flat ."]),
        tmp_path, LABELS)
    labelled = []

    class Recording(TorchPredictor):
        def encode(self, texts, max_length=128):
            labelled.append(list(texts))
            return super().encode(texts, max_length)

    monkeypatch.setattr(pseudo_label_module, "TorchPredictor", Recording)
    grown = NewsCorpus(["Orders doubled .", "Sales fell .", "Profit rose strongly .", "Sales fell ."])
    second = pseudo_label_module.pseudo_label(teacher_dir, grown, tmp_path, LABELS)
    assert labelled == [["Orders doubled ."]] and not second.reused
    assert torch.equal(second.logits[1:], first.logits[[1, 0, 1]])
    assert torch.equal(second.cls[1:], first.cls[[1, 0, 1]])
    fresh = load_predictor(teacher_dir, LABELS, "32-true").logits(["Orders doubled ."])
    assert torch.allclose(second.logits[0], torch.from_numpy(fresh[0]), atol=1e-2)
    report = json.loads((second.folder / "report.json").read_text())
    assert report["copied_from_earlier_caches"] == 3 and report["sentences"] == 4

    labelled.clear()
    pseudo_label_module.pseudo_label(teacher_dir, grown, tmp_path / "other", LABELS)
    pseudo_label_module.pseudo_label(teacher_dir, grown, tmp_path, LABELS, max_length=16)
    assert labelled == [grown.sentences, grown.sentences]  # other store, other max_length


def test_teacher_trained_on_another_split_is_refused_before_stage_1(teacher_dir, tmp_path,
                                                                   monkeypatch):
    def no_stage1(*args, **kwargs):
        raise AssertionError("stage 1 started before the split check")

    monkeypatch.setattr(distill, "ensure_stage1", no_stage1)
    cfg = compose_config(["+experiment=pkd", *DISTILL_TINY, "data.seed=7",
                          f"teacher_checkpoint={teacher_dir}"], tmp_path)
    with pytest.raises(ValueError, match="trained on PhraseBank split"):
        run_distill(cfg)


def test_missing_teacher_checkpoint_is_a_clear_error(tmp_path, data_dir):
    cfg = compose_config(["+experiment=pkd", *DISTILL_TINY,
                          f"teacher_checkpoint={tmp_path / 'no-teacher'}"], tmp_path)
    with pytest.raises(FileNotFoundError, match="not a saved model folder"):
        run_distill(cfg)


@pytest.mark.slow(budget_s=150)
def test_tinybert_refuses_a_student_with_another_tokenizer_before_labelling(
        teacher_dir, data_dir, tmp_path, monkeypatch):
    def no_labelling(*args, **kwargs):
        raise AssertionError("the teacher labelled news before the tokenizer check")

    monkeypatch.setattr(pseudo_label_module, "TorchPredictor", no_labelling)
    cfg = compose_config(["+experiment=tinybert", *TINY, "news.max_sentences=120", "student=tiny",
                          f"teacher_checkpoint={teacher_dir}",
                          "student.model.tokenizer_source=bundled:mpnet-base"], tmp_path)
    with pytest.raises(StudentMismatchError, match="tokenize differently"):
        run_distill(cfg)
    assert not list((tmp_path / "stages").glob("[!.]*/*"))  # nothing half-made was stored


def test_students_are_built_as_configured(teacher_dir, tmp_path):
    teacher, teacher_tokenizer = load_classifier(str(teacher_dir), LABELS)
    student, _ = truncated_student(str(teacher_dir), LABELS, num_layers=2, strategy="every_other")
    for kept, original in zip(student.bert.encoder.layer, [1, 3]):
        torch.testing.assert_close(kept.state_dict(),
                                   teacher.bert.encoder.layer[original].state_dict())
    with pytest.raises(ValueError, match="cannot keep 3 layers"):
        truncated_student(str(teacher_dir), LABELS, num_layers=3, strategy="every_other")
    # narrow: each kept layer keeps its loudest head and FFN neurons, and reloads as saved
    with torch.no_grad():
        teacher.bert.encoder.layer[3].intermediate.dense.weight[7] *= 50
    save_model_folder(teacher, teacher_tokenizer, tmp_path / "louder", {"labels": LABELS})
    narrow, tokenizer = truncated_student(str(tmp_path / "louder"), LABELS, num_layers=2,
                                          heads=1, intermediate_size=16)
    layers = narrow.bert.encoder.layer
    assert [layer.attention.self.num_attention_heads for layer in layers] == [1, 1]
    assert [layer.intermediate.dense.out_features for layer in layers] == [16, 16]
    torch.testing.assert_close(layers[1].intermediate.dense.weight.abs().amax(),
                               teacher.bert.encoder.layer[3].intermediate.dense.weight[7].abs().max())
    save_model_folder(narrow, tokenizer, tmp_path / "narrow", {"labels": LABELS})
    reloaded, _ = load_classifier(str(tmp_path / "narrow"), LABELS)
    ids = tokenizer(["Profit rose."], return_tensors="pt")
    torch.testing.assert_close(reloaded.eval()(**ids).logits, narrow.eval()(**ids).logits)
    with pytest.raises(ValueError, match="student.model.heads=3: each layer has 2"):
        truncated_student(str(teacher_dir), LABELS, num_layers=2, heads=3)
    tiny, _ = encoder_from_config(str(teacher_dir), LABELS, num_hidden_layers=4, hidden_size=384,
                                  num_attention_heads=6, intermediate_size=1536)
    config = tiny.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
            config.intermediate_size) == (4, 384, 6, 1536)
    albert, _ = encoder_from_config(str(teacher_dir), LABELS, model_type="albert",
                                    num_hidden_layers=2, embedding_size=16, hidden_size=32,
                                    num_attention_heads=2, intermediate_size=64)
    assert type(albert).__name__ == "AlbertForSequenceClassification"


@pytest.mark.slow(budget_s=500)
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

    from fincompress.stages.distill import news_loader
    from fincompress.stages.pseudo_labels import PseudoLabels

    logits = torch.tensor([[5.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.0, 4.0]])
    cls = torch.arange(3 * 5 * 8, dtype=torch.float16).reshape(3, 5, 8)
    pseudo = PseudoLabels(["Profit rose .", "Maybe .", "Sales fell ."], logits, cls, LABELS,
                          tmp_path)
    loss = SimpleNamespace(teacher_cls_layers=[2, 4])
    cfg = compose_config(["distill.pseudo_label.confidence_threshold=0.6"], tmp_path)
    news = SimpleNamespace(max_length=128, cache_dir=None, batch_size=32, num_workers=0)
    loader, kept = news_loader(cfg, news, pseudo, loss, minilm_tokenizer)
    batches = list(loader)
    assert kept == 2 and sorted(torch.cat([b["labels"] for b in batches]).tolist()) == [0, 2]
    batch = batches[0]
    source = batch["teacher_logits"].argmax(-1)  # rows stay aligned with their own sentence
    torch.testing.assert_close(batch["teacher_cls"][:, 0], cls[[0 if s == 0 else 2 for s in source]][:, 2])
    cfg = compose_config(["distill.pseudo_label.confidence_threshold=0.999"], tmp_path)
    with pytest.raises(ValueError, match="confidence >= 0.999"):
        news_loader(cfg, news, pseudo, loss, minilm_tokenizer)


# 13 s on 2 AVX2 cores; the default suite keeps the leakage check on the whole corpus
# (tests/test_leakage.py), which covers the transfer text and its variants
@pytest.mark.slow(budget_s=120)
def test_phrasebank_transfer_sentences_never_include_val_or_test(tmp_path, data_dir, minilm_tokenizer):
    from fincompress.data.datamodule import NewsDataModule
    from fincompress.stages.distill import transfer_sentences

    cfg = compose_config(["distill.pseudo_label.add_phrasebank=null"], tmp_path)
    split = phrasebank_split(cfg)
    rows = split.splits["val"] + split.splits["test"]
    assert transfer_sentences(cfg, None, None, rows) == {}
    cfg = compose_config(["distill.pseudo_label.add_phrasebank=50"], tmp_path)
    added = transfer_sentences(cfg, None, None, rows)["phrasebank"]
    held_out = {r.text for r in rows}
    assert len(held_out) == 678 and not {comparable(t) for t in held_out} & {comparable(t) for t in added}
    assert {r.text for r in split.splits["train"]} <= set(added)
    # 50Agree's distinct sentences less val and test, and one more that differs from a test
    # sentence only in punctuation and spacing
    assert len(added) == 4838 - 678 - 1

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


@pytest.mark.slow(budget_s=150)
def test_an_outside_teacher_is_flagged_as_possibly_trained_on_the_test_split(tiny_pair, tmp_path,
                                                                              data_dir, capsys):
    """A teacher with no recorded split (like ProsusAI/finbert, fine-tuned on PhraseBank)."""
    teacher, tokenizer = tiny_pair
    outside = tmp_path / "outside-teacher"
    teacher.save_pretrained(outside)
    tokenizer.save_pretrained(outside)
    cfg = compose_config(["+experiment=fresh", *DISTILL_TINY, f"teacher_checkpoint={outside}"],
                         tmp_path)
    result = run_distill(cfg)
    assert result["teacher_split_unknown"]
    assert "WARNING: the teacher" in capsys.readouterr().out
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["teacher_split_unknown"] is True


@pytest.mark.parametrize("overrides, fused", [([], True),
                                               (["+distill.stage2.optimizer.fused=false"], False),
                                               (["+distill.stage2.optimizer.foreach=true"], None)])
def test_every_stage_steps_adamw_fused_unless_its_config_chooses(overrides, fused, tmp_path):
    """The configured AdamW, as a training stage builds it: the fused kernel by default (the same
    update, several times faster on a CPU), a config's own fused or foreach choice kept."""
    cfg = compose_config(["+experiment=kd", *DISTILL_TINY, *overrides], tmp_path)
    student, _ = encoder_from_config("bundled:minilm-l6", LABELS, num_hidden_layers=1,
                                     hidden_size=16, num_attention_heads=2, intermediate_size=32)
    module = ClassifierModule(student, LABELS, instantiate(cfg.distill.stage2.optimizer))
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["fused"] is fused
    before = [p.detach().clone() for p in student.parameters()]
    student(input_ids=torch.tensor([[101, 2000, 102]]), labels=torch.tensor([1])).loss.backward()
    if fused:  # Lightning's mixed-precision plugin refuses to clip for it; the module clips
        module.configure_gradient_clipping(optimizer, 1e-3, "norm")
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in student.parameters()
                                                     if p.grad is not None]))
        assert norm <= 1e-3 * 1.001
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, student.parameters()))
