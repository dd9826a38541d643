"""The distillation stage behind ``python train.py +experiment=pkd`` (and ce, kd, tinybert,
fresh): teacher -> pseudo-labelled news -> stage 1 (student on news) -> stage 2 (student
fine-tuned on PhraseBank) -> test diagnostics side by side with the teacher and the fresh
baseline (the same student fine-tuned on PhraseBank only).

Stage 1 is stored (:func:`ensure_stage1`, keyed by :func:`stage1_inputs`), as are its
upstream stages (teacher, pseudo-labels) and the fresh baseline; a later run whose configs
match reuses them. The run folder holds the final student (Hugging Face folder +
``checkpoint_info.json`` + the scored test split) and ``results.json``.
"""

from __future__ import annotations

import json
import random
import time
from functools import partial
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fincompress import distributed
from fincompress.artifacts import read_checkpoint_info, save_model_folder, write_checkpoint_info
from fincompress.data.augment import WordNeighbourAugmenter
from fincompress.data.batching import TokenizedDataset, length_grouped_loader
from fincompress.data.datamodule import (
    data_settings,
    phrasebank_split,
    tokenize_cached,
    tokenizer_fingerprint,
)
from fincompress.data.news import NewsCorpus, robustness_holdout
from fincompress.data.phrasebank import calibration_texts, unlabelled_sentences
from fincompress.distill.loss import DistillationLoss, build_loss
from fincompress.errors import InputError
from fincompress.files import folder_size_bytes, write_json
from fincompress.metrics import save_confusion_matrices
from fincompress.models.sources import load_classifier
from fincompress.module import ClassifierModule
from fincompress.predict import load
from fincompress.scoring import score
from fincompress.stages.fresh import ensure_fresh_baseline
from fincompress.stages.pseudo_labels import (
    PseudoLabels,
    fastest_faithful_teacher,
    pseudo_label,
    pseudo_label_inputs,
)
from fincompress.stages.teacher import ensure_teacher
from fincompress.store import ensure_stage, stage_key
from fincompress.tables import markdown_table
from fincompress.training import (
    best_score,
    choose_precision,
    finetune,
    fit,
    kd_finetune,
    stage_config,
    trainer_settings,
    training_split_logits,
)

# the scoring pass's batch (the side-by-side table's figures have always been scored so)
SCORE_BATCH = 64


class StudentMismatchError(InputError):
    """A method that cannot train this student with this teacher (say, TinyBERT with a
    student on another tokenizer): ``train.py`` exits with ``exit_code``, and
    ``scripts/study.py`` skips the method and says why."""

    exit_code = 3


def run_distill(cfg: DictConfig) -> dict:
    started = time.perf_counter()
    machine = choose_precision(cfg)
    stage2_kd = stage2_kd_settings(cfg)  # a malformed value is refused before any work
    labels = list(cfg.data.labels)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    split = phrasebank_split(cfg)  # read once: the held-out sentences and the split's hash
    timings: dict[str, float] = {}

    clock = time.perf_counter()
    teacher_dir = ensure_teacher(cfg)
    timings["teacher_s"] = round(time.perf_counter() - clock, 1)
    cfg.teacher_checkpoint = str(teacher_dir)  # student configs interpolate it
    teacher_info = read_checkpoint_info(teacher_dir)
    teacher_split = teacher_info.get("split_hash")
    check_same_split(teacher_dir, teacher_split, split.info["split_hash"])

    clock = time.perf_counter()
    if cfg.method.stage1:
        stage1_dir = ensure_stage1(cfg, teacher_dir, split)
        model, tokenizer = load_classifier(str(stage1_dir / "model"), labels)
    else:  # the "fresh" experiment: stage 2 only, from the student's initial weights
        stage1_dir = None
        L.seed_everything(cfg.seed, workers=True)
        model, tokenizer = instantiate(cfg.student.model)
    timings["stage1_s"] = round(time.perf_counter() - clock, 1)

    clock = time.perf_counter()
    if stage2_kd is not None:
        best_val = kd_stage2(cfg, stage2_kd, model, tokenizer, teacher_dir, output_dir / "stage2")
    else:
        best_val = finetune(cfg, model, tokenizer, output_dir / "stage2")
    timings["stage2_s"] = round(time.perf_counter() - clock, 1)

    fresh_dir = None
    if cfg.method.stage1 and cfg.distill.fresh_baseline:
        clock = time.perf_counter()
        fresh_dir = ensure_fresh_baseline(cfg, teacher_dir)
        timings["fresh_baseline_s"] = round(time.perf_counter() - clock, 1)

    if distributed.leave():  # a rank above 0 of an external launcher: its fits are done
        return {"metrics": {}}
    split_file = output_dir / "stage2" / "split" / "test.csv"
    student_dir = output_dir / "student"
    info = save_model_folder(model, tokenizer, student_dir, {
        "stage": "stage2",
        "method": cfg.method.name,
        "student": cfg.student.name,
        "source": cfg.student.name,
        "teacher": str(teacher_dir),
        "stage1": str(stage1_dir) if stage1_dir else None,
        "labels": labels,
        "best_val_f1_macro": best_val,
        "split_hash": teacher_split or split.info["split_hash"],
        "machine": machine,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }, extra_files={"test_split.csv": split_file})
    scored = score({"teacher": teacher_dir, "student": student_dir,
                    **({"fresh": fresh_dir} if fresh_dir else {})},
                   labels, split_file, machine, precision=cfg.trainer.precision, repeats=1,
                   latency_sentences=cfg.distill.speed_sentences, warmup=3,
                   score_batch_size=SCORE_BATCH)
    rows = {row["model"]: row for row in scored["models"]}
    result = results(cfg, rows, info, teacher_dir, teacher_info, best_val, machine)
    clock = time.perf_counter()
    result["robustness"] = robustness(cfg, teacher_dir, {
        "student": student_dir, **({"fresh": fresh_dir} if fresh_dir else {})})
    timings["robustness_s"] = round(time.perf_counter() - clock, 1)
    result["teacher_split_unknown"] = teacher_split is None
    result["verdict"] = verdict(result["student"], result["fresh"])
    info["metrics"] = {f"test/{k}": v for k, v in result["student"].items() if isinstance(v, float)}
    info["confusion_matrix"] = result["student"]["confusion_matrix"]
    info["wall_time_s"] = round(time.perf_counter() - started, 1)  # reused stages excluded
    write_checkpoint_info(student_dir, info)
    title = f"{cfg.method.name} {cfg.student.name}: macro-F1 {result['student']['f1_macro']:.3f}"
    save_confusion_matrices({title: result["student"]["confusion_matrix"]}, labels,
                            output_dir / "confusion_matrix.png")
    timings["total_s"] = round(time.perf_counter() - started, 1)
    result["timings"] = timings
    write_json(result, output_dir / "results.json")
    print(side_by_side(result))
    return {"metrics": {f"test/{k}": v for k, v in result["student"].items()
                        if isinstance(v, float)}, **result}


def stage2_kd_settings(cfg: DictConfig) -> DictConfig | None:
    """``distill.stage2.kd`` as :func:`fincompress.training.kd_finetune`'s settings, with the
    stage-2 epochs, optimizer and schedule; None when it is off or the student has no stage 1
    (the fresh baseline learns from the gold labels alone)."""
    stage2 = OmegaConf.to_container(cfg.distill.stage2, resolve=True)
    if stage2["kd"] is None or not cfg.method.stage1:
        return None
    if not isinstance(stage2["kd"], dict) or set(stage2["kd"]) != {"temperature", "alpha"}:
        raise InputError(f"distill.stage2.kd={stage2['kd']}: give {{temperature: T, alpha: A}} "
                         "(alpha on the teacher's soft labels, 1 - alpha on the gold ones) or null")
    return OmegaConf.create({"epochs": stage2["max_epochs"], **stage2["kd"],
                             "optimizer": stage2["optimizer"], "scheduler": stage2["scheduler"]})


def kd_stage2(cfg: DictConfig, settings: DictConfig, model, tokenizer, teacher_dir: Path,
              folder: Path) -> float | None:
    """Stage 2 with the teacher (``distill.stage2.kd``, as :func:`stage2_kd_settings` reads
    it): the distilled student fine-tuned on the PhraseBank training sentences against the
    teacher's logits on them and their gold labels; the best epoch on validation kept and its
    macro-F1 returned. Split files, checkpoints and logs go to ``folder``."""
    phrasebank = instantiate(stage_config(cfg, folder).data, tokenizer=tokenizer)
    phrasebank.setup()
    logits = training_split_logits(teacher_dir, list(cfg.data.labels), cfg.trainer.precision,
                                   phrasebank, "teacher logits on the training split")
    return kd_finetune(cfg, settings, model, tokenizer, phrasebank, logits, folder, prefix="stage2")


DIAGNOSTIC_KEYS = ("acc", "f1_macro", "ece", "kl_teacher_student", "agreement_with_teacher",
                   "confusion_matrix")
SPEED_KEYS = ("latency_model_ms_p50", "throughput_sorted", "throughput_ratio")


def results(cfg: DictConfig, rows: dict[str, dict], info: dict, teacher_dir: Path,
            teacher_info: dict, best_val: float | None, machine: dict) -> dict:
    """``results.json``: the teacher's, the student's and the fresh baseline's test diagnostics
    (scored in the run's precision), sizes and speed."""
    labels = list(cfg.data.labels)

    def diagnostics(row: dict, best: float | None) -> dict:
        keys = (*DIAGNOSTIC_KEYS, *(f"f1_{label}" for label in labels))
        return {**{key: row[key] for key in keys}, "best_val_f1_macro": best}

    fresh = rows.get("fresh")
    if fresh is not None:
        fresh_scores = diagnostics(fresh, read_checkpoint_info(fresh["dir"]).get("best_val_f1_macro"))
        fresh = {**fresh_scores, "parameters": fresh["parameters"], "dir": fresh["dir"]}
    speed = {}
    if cfg.distill.speed_sentences:
        speed = {name: {key: row[key] for key in SPEED_KEYS} for name, row in rows.items()}
    return {
        "method": cfg.method.name,
        "student_name": cfg.student.name,
        "teacher_dir": str(teacher_dir),
        "teacher_source": teacher_info.get("source") or str(teacher_dir),
        "student_dir": rows["student"]["dir"],
        "split_hash": info["split_hash"],
        "test_size": sum(map(sum, rows["student"]["confusion_matrix"])),
        "teacher_parameters": rows["teacher"]["parameters"],
        "student_parameters": info["parameters"],
        "teacher_size_bytes": folder_size_bytes(teacher_dir),
        "student_size_bytes": info["size_on_disk_bytes"],
        "machine": machine,
        "teacher": diagnostics(rows["teacher"], teacher_info.get("best_val_f1_macro")),
        "student": diagnostics(rows["student"], best_val),
        "fresh": fresh,
        "speed": speed,
    }


def robustness(cfg: DictConfig, teacher_dir: Path, models: dict[str, Path]) -> dict:
    """Each model's label agreement with the teacher on text unlike PhraseBank: the robustness
    hold-out (``news.holdout``), which no training corpus holds, per group (at most
    ``scored_per_group`` sentences of each, a seeded sample). The teacher's labels are stored (a
    pseudo-label stage); ``{}`` without a hold-out."""
    holdout = cfg.news.get("holdout")
    if not holdout or not holdout.fraction:
        return {}
    groups = robustness_holdout(cfg.news.sources, holdout, cfg.news.text_column,
                                cfg.news.min_words, cfg.news.max_words,
                                cfg.news.corpus_cache_dir)
    labels = list(cfg.data.labels)
    predictors = {name: load(folder, labels, cfg.trainer.precision)
                  for name, folder in models.items()}
    result = {}
    cap = holdout.get("scored_per_group")
    for group, texts in groups.items():
        if cap and len(texts) > cap:  # a seeded sample, the same for every run
            texts = random.Random(holdout.seed).sample(texts, cap)
        if not texts:
            continue
        teacher = pseudo_label(teacher_dir, NewsCorpus(texts), cfg.paths.output_root, labels,
                               cfg.distill.pseudo_label.batch_size, cfg.news.max_length,
                               precision=cfg.trainer.precision).hard_labels
        result[group] = {"sentences": len(texts)}
        for name, predictor in predictors.items():
            predicted = torch.from_numpy(predictor.logits(texts, SCORE_BATCH, cfg.news.max_length).argmax(-1))
            result[group][name] = round(float((predicted == teacher).float().mean()), 4)
    return result


def verdict(student: dict, fresh: dict | None) -> dict | None:
    """Whether the distilled student beats the converged fresh baseline, on validation (best
    epoch) and on test (macro-F1): the margins, and the answer for each."""
    if fresh is None:
        return None
    margins = {"validation": student["best_val_f1_macro"] - fresh["best_val_f1_macro"]
               if None not in (student["best_val_f1_macro"], fresh["best_val_f1_macro"]) else None,
               "test": student["f1_macro"] - fresh["f1_macro"]}
    return {**{f"margin_{split}": None if m is None else round(m, 4) for split, m in margins.items()},
            **{f"beats_on_{split}": m is not None and m > 0 for split, m in margins.items()}}


def verdict_line(verdict: dict) -> str:
    def said(split: str) -> str:
        margin = verdict[f"margin_{split}"]
        return f"{split} {'?' if margin is None else f'{margin:+.4f}'}"

    answers = {split: verdict[f"beats_on_{split}"] for split in ("validation", "test")}
    if all(answers.values()):
        answer = "the distilled student beats it on validation and test"
    elif not any(answers.values()):
        answer = "the distilled student does NOT beat it, on validation or test"
    else:
        won = next(split for split, beats in answers.items() if beats)
        answer = f"the distilled student beats it on {won} only"
    return (f"distilled student - converged fresh baseline (macro-F1): {said('validation')}, "
            f"{said('test')}: {answer} (one seed: a gain under two points needs three seeds "
            "and a margin above their spread; scripts/study.py runs them)")


def stage1_inputs(cfg: DictConfig, pseudo_inputs: dict) -> dict:
    """What decides the stage-1 student: the student (not its stage-2 settings, so that stage 2
    can change without training stage 1 again), the method, the pseudo-labels, the stage-1
    settings, the news batching, the data, the seed and the trainer."""
    student = OmegaConf.to_container(cfg.student, resolve=True)
    pseudo_label_settings = OmegaConf.to_container(cfg.distill.pseudo_label, resolve=True)
    if not pseudo_label_settings.get("augment", {}).get("variants_per_sentence"):
        pseudo_label_settings.pop("augment", None)  # augmentation counts only when it is on
    pseudo_label_settings.pop("shard_size", None)  # how the labelling was split, not its labels
    return {"student": {key: value for key, value in student.items()
                        if not key.startswith("stage2_")},
            "method": cfg.method, "pseudo_label": pseudo_label_settings,
            "pseudo_labels": stage_key(pseudo_inputs), "stage1": cfg.distill.stage1,
            "news": {key: cfg.news[key] for key in ("batch_size", "max_length")},
            "data": data_settings(cfg), "seed": cfg.seed, "trainer": trainer_settings(cfg)}


def ensure_stage1(cfg: DictConfig, teacher_dir: Path, split) -> Path:
    """The student after stage 1 (distillation on pseudo-labelled news): stored, or trained
    now on the teacher's labels (themselves stored, see :func:`pseudo_label`). ``split`` is the
    PhraseBank split, whose val and test sentences never reach training."""
    precision = cfg.trainer.precision
    labels = list(cfg.data.labels)
    teacher_model, teacher_tokenizer = load_classifier(str(teacher_dir), labels)
    news = news_corpus(cfg, (teacher_model, teacher_tokenizer), split)
    labeller_rule = labelling_rule(cfg)
    pseudo_inputs = pseudo_label_inputs(teacher_dir, news.corpus, labels, cfg.news.max_length,
                                        labeller_rule or precision)

    def build(staging: Path) -> None:
        stage = stage_config(cfg, staging, max_epochs=cfg.distill.stage1.max_epochs)
        L.seed_everything(cfg.seed, workers=True)
        student, tokenizer = instantiate(cfg.student.model)
        loss = build_loss(instantiate(cfg.method.loss), student, teacher_model)
        teacher = None
        if loss.needs_teacher_model:  # checked before the teacher labels anything
            if tokenizer_fingerprint(tokenizer) != tokenizer_fingerprint(teacher_tokenizer):
                raise StudentMismatchError(
                    f"method {cfg.method.name} runs the teacher on the student's tokens, but the "
                    f"student ({cfg.student.name}) and teacher ({teacher_dir}) tokenize "
                    "differently; use a student built on the teacher's tokenizer (tiny, truncated)")
            teacher = teacher_model
            if loss.needs_attentions:  # attention maps need the eager implementation
                teacher.set_attn_implementation("eager")
                student.set_attn_implementation("eager")
        if labeller_rule and loss.teacher_cls_layers:
            raise ValueError(
                f"method {cfg.method.name} distils the teacher's cached [CLS] states, which "
                "only its PyTorch form gives: set distill.pseudo_label.engine=torch")
        pseudo = label_news(cfg, teacher_dir, split, news, (teacher_model, teacher_tokenizer),
                            staging)
        train_loader, news_sentences = news_loader(cfg, news, pseudo, loss, tokenizer)
        phrasebank = instantiate(stage.data, tokenizer=tokenizer)
        phrasebank.setup()
        module = ClassifierModule(student, labels, instantiate(cfg.distill.stage1.optimizer),
                                  instantiate(cfg.distill.stage1.scheduler), loss=loss,
                                  teacher=teacher)
        trainer = fit(stage, module, prefix="stage1", train=train_loader,
                      val=phrasebank.val_dataloader())
        save_model_folder(module.model, tokenizer, staging / "model", {
            "stage": "stage1",
            "method": cfg.method.name,
            "student": cfg.student.name,
            "teacher": str(teacher_dir),
            "pseudo_labels": str(pseudo.folder),
            "news_sentences": news_sentences,
            "best_val_f1_macro": best_score(trainer),
            "split_hash": phrasebank.info["split_hash"],
            "machine": choose_precision(cfg),
            "config": OmegaConf.to_container(cfg, resolve=True),
        })

    folder, reused = ensure_stage(cfg.paths.output_root, "stage1",
                                  stage1_inputs(cfg, pseudo_inputs), build, collective=True)
    print(f"{'reusing' if reused else 'stored'} stage-1 student {folder / 'model'}")
    return folder


def news_corpus(cfg: DictConfig, teacher: tuple, split):
    """The news datamodule, set up with the teacher's tokenizer: the news plus the transfer
    text (:func:`transfer_sentences`), without the split's val and test sentences."""
    held_out = split.splits["val"] + split.splits["test"]
    news = instantiate(cfg.news, tokenizer=teacher[1],
                       extra_sentences=transfer_sentences(cfg, *teacher, held_out))
    news.setup()
    print(news.corpus.summary())
    return news


def label_news(cfg: DictConfig, teacher_dir: Path, split, news, teacher: tuple,
               scratch: Path) -> PseudoLabels:
    """The teacher's labels of the news corpus (``news``, set up with the teacher's tokenizer),
    stored; labelled through the form ``distill.pseudo_label.engine`` picks (``teacher``: its
    loaded model and tokenizer; ``scratch``: a folder for the validation split the choice is
    measured on)."""
    rule = labelling_rule(cfg)
    labeller = None
    if rule:
        calibration = calibration_texts(split.splits["train"], cfg.quantize.calibration_sentences,
                                        cfg.seed)
        phrasebank_split(cfg, scratch / "split")
        labeller = partial(fastest_faithful_teacher, cfg, teacher_dir, calibration,
                           scratch / "split" / "val.csv", choose_precision(cfg))
    return pseudo_label(teacher_dir, news.corpus, cfg.paths.output_root, list(cfg.data.labels),
                        cfg.distill.pseudo_label.batch_size, cfg.news.max_length,
                        input_ids=news.dataset.input_ids, teacher=teacher,
                        precision=rule or cfg.trainer.precision, labeller=labeller,
                        shard_size=cfg.distill.pseudo_label.shard_size)


def labelling_rule(cfg: DictConfig) -> str | None:
    """``distill.pseudo_label.engine``: None for ``torch`` (the teacher in PyTorch, in the run's
    precision); for ``fastest``, the rule that picks the form, as the pseudo-labels' key names
    it (the form chosen on the machine that labels is in their report)."""
    engine = cfg.distill.pseudo_label.engine
    if engine == "torch":
        return None
    if engine == "fastest":
        return f"fastest form with agreement >= {cfg.distill.pseudo_label.min_agreement}"
    raise ValueError(f"distill.pseudo_label.engine must be torch or fastest, got {engine!r}")


def transfer_sentences(cfg: DictConfig, teacher_model, teacher_tokenizer,
                       held_out: list) -> dict[str, list[str]]:
    """The in-domain sentences that join the news, by name: ``phrasebank``, the sentences of
    the agreement level ``distill.pseudo_label.add_phrasebank`` (null: none) that are not
    ``held_out`` (the evaluation split's val and test rows), and ``augmented``, their variants made
    with the teacher's word embeddings (``distill.pseudo_label.augment``); no variant equals a
    held-out sentence."""
    augment = cfg.distill.pseudo_label.augment
    level = cfg.distill.pseudo_label.get("add_phrasebank")
    if level is None:
        if augment.variants_per_sentence:
            raise ValueError("distill.pseudo_label.augment.variants_per_sentence="
                             f"{augment.variants_per_sentence} augments the added PhraseBank "
                             "sentences, but distill.pseudo_label.add_phrasebank is null")
        return {}
    phrasebank = unlabelled_sentences(cfg.data.source, level, held_out)
    if not augment.variants_per_sentence:
        return {"phrasebank": phrasebank}
    augmenter = WordNeighbourAugmenter(teacher_tokenizer,
                                       teacher_model.get_input_embeddings().weight,
                                       augment.neighbours, augment.replace_prob)
    variants = augmenter.augment(phrasebank, augment.variants_per_sentence, augment.seed,
                                 exclude=[row.text for row in held_out])
    return {"phrasebank": phrasebank, "augmented": variants}


def news_loader(cfg: DictConfig, news, pseudo: PseudoLabels, loss: DistillationLoss,
                tokenizer) -> tuple[torch.utils.data.DataLoader, int]:
    """Batches of pseudo-labelled news in the student's tokens, carrying the teacher's logits
    (and the [CLS] states of the layers the loss matches); optionally confident labels only."""
    keep = torch.ones(len(pseudo.sentences), dtype=torch.bool)
    threshold = cfg.distill.pseudo_label.confidence_threshold
    if threshold is not None:
        keep = pseudo.confidence >= threshold
    index = keep.nonzero().squeeze(1)
    if len(index) == 0:
        raise ValueError(f"no pseudo-label has confidence >= {threshold} (pseudo_label.confidence_threshold)")
    input_ids = tokenize_cached(pseudo.sentences, tokenizer, news.max_length, news.cache_dir)
    extras = {"teacher_logits": pseudo.logits[index]}
    if loss.teacher_cls_layers:
        # only the matched layers leave the memory-mapped cache
        extras["teacher_cls"] = pseudo.cls[:, loss.teacher_cls_layers][index]
    dataset = TokenizedDataset([input_ids[i] for i in index], pseudo.hard_labels[index].tolist(),
                               extras)
    loader = length_grouped_loader(dataset, news.batch_size, tokenizer.pad_token_id, shuffle=True,
                                   seed=cfg.seed, num_workers=news.num_workers)
    return loader, len(index)


def side_by_side(result: dict) -> str:
    columns = {"teacher": result["teacher"],
               f"{result['method']} {result['student_name']}": result["student"]}
    if result.get("fresh"):
        columns[f"fresh {result['student_name']} (converged)"] = result["fresh"]
    names = list(columns)
    rows = [{"": "parameters", names[0]: f"{result['teacher_parameters'] / 1e6:.1f}M",
             names[1]: f"{result['student_parameters'] / 1e6:.1f}M",
             **({names[2]: f"{result['fresh']['parameters'] / 1e6:.1f}M"} if len(names) > 2 else {})},
            {"": "size on disk", names[0]: f"{result['teacher_size_bytes'] / 2**20:.0f} MiB",
             names[1]: f"{result['student_size_bytes'] / 2**20:.0f} MiB",
             **({names[2]: "same"} if len(names) > 2 else {})}]
    for key in ("best_val_f1_macro", "acc", "f1_macro", "f1_negative", "f1_neutral",
                "f1_positive", "kl_teacher_student", "agreement_with_teacher", "ece"):
        rows.append({"": key, **{name: _number(scores.get(key)) for name, scores in columns.items()}})
    short = dict(zip(names, ["teacher", "student", "fresh"]))
    for group, scores in (result.get("robustness") or {}).items():
        rows.append({"": f"agreement on held-out {group} ({scores['sentences']})",
                     **{name: _number(scores.get(short[name])) for name in names}})
    speed = result.get("speed") or {}
    if speed:
        rows.append({"": "batch-1 ms (median)", **{
            name: f"{speed[short[name]]['latency_model_ms_p50']:.2f}" for name in names}})
        rows.append({"": "sentences/s at batch 32", **{
            name: f"{speed[short[name]]['throughput_sorted']:.1f} "
                  f"({speed[short[name]]['throughput_ratio']:.1f}x)" for name in names}})
    machine = result["machine"]
    notes = [f"machine: {machine['cpu']}, {machine['torch_threads']} threads, "
             f"{machine['precision']} ({machine['precision_reason']})"]
    if result.get("verdict"):
        notes.append(verdict_line(result["verdict"]))
    if result.get("teacher_split_unknown"):
        notes.append(f"WARNING: the teacher {result['teacher_dir']} records no PhraseBank split; "
                     "it may have been trained on these test sentences (ProsusAI/finbert was "
                     "fine-tuned on PhraseBank), so its scores may be inflated")
    return (f"\nPhraseBank test split ({result['test_size']} sentences, split "
            f"{result['split_hash']}); best_val_f1_macro is on the validation split\n"
            + markdown_table(rows, ["", *names]) + "\n" + "\n".join(notes) +
            f"\nstage times (s): {json.dumps(result['timings'])}\nstudent saved: "
            f"{result['student_dir']}\n")


def _number(value) -> str:
    return "" if value is None else f"{value:.4f}"


def check_same_split(teacher_dir: Path, teacher_split: str | None, split_hash: str) -> None:
    if teacher_split and teacher_split != split_hash:
        raise ValueError(
            f"the teacher {teacher_dir} was trained on PhraseBank split {teacher_split}, this "
            f"run uses split {split_hash}: its test sentences may be in the teacher's training "
            "data. Use the same data settings (agreement, seed, fractions) as the teacher.")
