"""The distillation pipeline behind ``python train.py +experiment=pkd`` (and ce, kd, tinybert,
fresh): teacher -> pseudo-labelled news -> stage 1 (student on news) -> stage 2 (student
fine-tuned on PhraseBank) -> test diagnostics side by side with the teacher and the fresh
baseline (the same student fine-tuned on PhraseBank only).

Upstream stages (teacher, pseudo-labels, stage 1, fresh baseline) live in the stage store
(:mod:`fincompress.store`) under keys of everything that decides them; a later run whose
configs match reuses them. The run folder holds the final student (Hugging Face folder +
``checkpoint_info.json`` + the scored test split) and ``results.json``.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from fincompress.data.augment import WordNeighbourAugmenter
from fincompress.data.datamodule import (
    LengthGroupedBatchSampler,
    TokenizedDataset,
    pad_collate,
    tokenize_cached,
    tokenizer_fingerprint,
)
from fincompress.data.phrasebank import read_split_file, unlabelled_sentences
from fincompress.evaluate import diagnostics, predict
from fincompress.metrics import save_confusion_matrices
from fincompress.models.sources import count_parameters, folder_size_bytes, load_classifier
from fincompress.module import ClassifierModule
from fincompress.pseudo_label.label import pseudo_label, pseudo_label_inputs, teacher_fingerprint
from fincompress.runs import (
    best_score,
    build_trainer,
    choose_precision,
    load_best_weights,
    save_model_folder,
    stage_config,
    write_json,
)
from fincompress.store import ensure_stage, stage_key
from fincompress.teacher.train import train_teacher

log = logging.getLogger(__name__)

# data settings that decide the split and tokenization (not where files go or batch sizes)
SPLIT_KEYS = ("source", "agreement", "split_fractions", "seed", "labels", "max_length",
              "max_per_split")


def run_distill(cfg: DictConfig) -> dict:
    started = time.perf_counter()
    machine = choose_precision(cfg)
    labels = list(cfg.data.labels)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    clock = time.perf_counter()
    teacher_dir = ensure_teacher(cfg)
    timings["teacher_s"] = round(time.perf_counter() - clock, 1)
    cfg.teacher_checkpoint = str(teacher_dir)  # student configs interpolate it
    teacher_split = _recorded_split(teacher_dir)
    _check_same_split(teacher_dir, teacher_split, current_split_hash(cfg))

    clock = time.perf_counter()
    if cfg.method.stage1:
        stage1_dir = ensure_stage1(cfg, teacher_dir, labels)
        model, tokenizer = load_classifier(str(stage1_dir / "model"), labels)
    else:  # the "fresh" experiment: stage 2 only, from the student's initial weights
        stage1_dir = None
        L.seed_everything(cfg.seed, workers=True)
        model, tokenizer = instantiate(cfg.student.model)
    timings["stage1_s"] = round(time.perf_counter() - clock, 1)

    clock = time.perf_counter()
    best_val = finetune(cfg, model, tokenizer, output_dir / "stage2")
    timings["stage2_s"] = round(time.perf_counter() - clock, 1)

    fresh = None
    if cfg.method.stage1 and cfg.distill.fresh_baseline:
        clock = time.perf_counter()
        fresh = ensure_fresh_baseline(cfg, teacher_dir)
        timings["fresh_baseline_s"] = round(time.perf_counter() - clock, 1)

    result = score_and_save(cfg, model, tokenizer, best_val, teacher_dir, fresh, labels,
                            output_dir, stage1_dir, started, machine)
    result["teacher_split_unknown"] = teacher_split is None
    result["speed"] = speed_check(cfg, result, fresh, labels, output_dir)
    timings["total_s"] = round(time.perf_counter() - started, 1)
    result["timings"] = timings
    write_json(result, output_dir / "results.json")
    print(side_by_side(result))
    return {"metrics": {f"test/{k}": v for k, v in result["student"].items()
                        if isinstance(v, float)}, **result}


def ensure_teacher(cfg: DictConfig) -> Path:
    """The teacher's model folder: given, stored from an earlier run, or trained now."""
    if cfg.get("teacher_checkpoint"):
        folder = Path(cfg.teacher_checkpoint)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"teacher_checkpoint {folder} is not a saved model folder "
                                    "(no config.json)")
        return folder
    choose_precision(cfg)  # the precision is part of the key
    inputs = {"teacher": cfg.teacher, "data": _data_settings(cfg), "seed": cfg.seed,
              "trainer": _trainer_settings(cfg)}
    folder, reused = ensure_stage(cfg.paths.output_root, "teacher", inputs, lambda staging: (
        train_teacher(stage_config(cfg, staging, max_epochs=cfg.teacher.max_epochs))))
    print(f"{'reusing' if reused else 'stored'} teacher {folder / 'model'}")
    return folder / "model"


def ensure_stage1(cfg: DictConfig, teacher_dir: Path, labels: list[str]) -> Path:
    """The student after stage 1 (distillation on pseudo-labelled news): stored, or trained
    now on the teacher's labels (themselves stored, see :func:`pseudo_label`)."""
    precision = cfg.trainer.precision
    teacher_model, teacher_tokenizer = load_classifier(str(teacher_dir), labels)
    news = instantiate(cfg.news, tokenizer=teacher_tokenizer,
                       extra_sentences=transfer_sentences(cfg, teacher_model, teacher_tokenizer))
    news.setup()
    print(news.corpus.summary())
    pseudo_inputs = pseudo_label_inputs(teacher_dir, news.corpus, labels, cfg.news.max_length,
                                        precision)
    inputs = {"student": _stage1_student(cfg), "method": cfg.method,
              "pseudo_label": _pseudo_label_settings(cfg),
              "pseudo_labels": stage_key(pseudo_inputs), "stage1": cfg.distill.stage1,
              "news": {key: cfg.news[key] for key in ("batch_size", "max_length")},
              "data": _data_settings(cfg), "seed": cfg.seed, "trainer": _trainer_settings(cfg)}

    def build(staging: Path) -> None:
        stage = stage_config(cfg, staging, max_epochs=cfg.distill.stage1.max_epochs)
        L.seed_everything(cfg.seed, workers=True)
        student, tokenizer = instantiate(cfg.student.model)
        loss = build_loss(cfg, student, teacher_model)
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
        pseudo = pseudo_label(teacher_dir, news.corpus, cfg.paths.output_root, labels,
                              cfg.distill.pseudo_label.batch_size, cfg.news.max_length,
                              input_ids=news.dataset.input_ids,
                              teacher=(teacher_model, teacher_tokenizer), precision=precision)
        train_loader, news_sentences = news_loader(cfg, pseudo, loss, tokenizer)
        phrasebank = instantiate(stage.data, tokenizer=tokenizer)
        phrasebank.setup()
        module = ClassifierModule(student, labels, instantiate(cfg.distill.stage1.optimizer),
                                  instantiate(cfg.distill.stage1.scheduler), loss=loss,
                                  teacher=teacher)
        trainer = build_trainer(stage, prefix="stage1")
        trainer.fit(module, train_dataloaders=train_loader,
                    val_dataloaders=phrasebank.val_dataloader())
        load_best_weights(trainer, module)
        save_model_folder(module.model, tokenizer, staging / "model", {
            "stage": "stage1",
            "method": cfg.method.name,
            "student": cfg.student.name,
            "teacher": str(teacher_dir),
            "pseudo_labels": str(pseudo.folder),
            "news_sentences": news_sentences,
            "best_val_f1_macro": best_score(trainer),
            "split_hash": phrasebank.info["split_hash"],
            "machine": cfg.machine,
            "config": OmegaConf.to_container(cfg, resolve=True),
        })

    folder, reused = ensure_stage(cfg.paths.output_root, "stage1", inputs, build)
    print(f"{'reusing' if reused else 'stored'} stage-1 student {folder / 'model'}")
    return folder


def ensure_fresh_baseline(cfg: DictConfig, teacher_dir: Path) -> Path:
    """The fresh baseline beside every distilled student: the same student, from its initial
    weights, fine-tuned on PhraseBank with the same stage-2 settings; stored, so a sweep over
    distillation settings trains it once."""
    inputs = {"student": cfg.student, "teacher_fingerprint": teacher_fingerprint(teacher_dir),
              "stage2": cfg.distill.stage2, "data": _data_settings(cfg), "seed": cfg.seed,
              "trainer": _trainer_settings(cfg)}

    def build(staging: Path) -> None:
        L.seed_everything(cfg.seed, workers=True)
        model, tokenizer = instantiate(cfg.student.model)
        best_val = finetune(cfg, model, tokenizer, staging)
        save_model_folder(model, tokenizer, staging / "model", {
            "stage": "fresh_baseline", "student": cfg.student.name, "teacher": str(teacher_dir),
            "best_val_f1_macro": best_val, "machine": cfg.machine,
            "config": OmegaConf.to_container(cfg, resolve=True)})

    folder, reused = ensure_stage(cfg.paths.output_root, "fresh", inputs, build)
    print(f"{'reusing' if reused else 'stored'} fresh baseline {folder / 'model'}")
    return folder / "model"


def phrasebank_transfer(cfg: DictConfig) -> list[str] | None:
    """PhraseBank sentences the teacher labels along with the news
    (``distill.pseudo_label.add_phrasebank``: an agreement level, or null for none); the
    evaluation split's val and test sentences are never among them."""
    level = cfg.distill.pseudo_label.get("add_phrasebank")
    if level is None:
        return None
    return unlabelled_sentences(cfg.data.source, level, _held_out(cfg))


def transfer_sentences(cfg: DictConfig, teacher_model, teacher_tokenizer) -> dict[str, list[str]]:
    """The in-domain sentences that join the news, by name: ``phrasebank`` (see
    ``phrasebank_transfer``) and ``augmented``, their variants made with the teacher's word
    embeddings (``distill.pseudo_label.augment``); no variant equals a val or test sentence."""
    augment = cfg.distill.pseudo_label.augment
    phrasebank = phrasebank_transfer(cfg)
    if phrasebank is None:
        if augment.variants_per_sentence:
            raise ValueError("distill.pseudo_label.augment.variants_per_sentence="
                             f"{augment.variants_per_sentence} augments the added PhraseBank "
                             "sentences, but distill.pseudo_label.add_phrasebank is null")
        return {}
    if not augment.variants_per_sentence:
        return {"phrasebank": phrasebank}
    augmenter = WordNeighbourAugmenter(teacher_tokenizer,
                                       teacher_model.get_input_embeddings().weight,
                                       augment.neighbours, augment.replace_prob)
    held_out = [row.text for row in _held_out(cfg)]
    variants = augmenter.augment(phrasebank, augment.variants_per_sentence, augment.seed,
                                 exclude=held_out)
    return {"phrasebank": phrasebank, "augmented": variants}


def _held_out(cfg: DictConfig) -> list:
    split = instantiate(cfg.data, tokenizer=None, split_dir=None)
    split.prepare_splits()
    return split.splits["val"] + split.splits["test"]


def news_loader(cfg: DictConfig, pseudo, loss, tokenizer) -> tuple[DataLoader, int]:
    """Batches of pseudo-labelled news in the student's tokens, carrying the teacher's logits
    (and the [CLS] states of the layers the loss matches); optionally confident labels only."""
    keep = torch.ones(len(pseudo.sentences), dtype=torch.bool)
    threshold = cfg.distill.pseudo_label.confidence_threshold
    if threshold is not None:
        keep = pseudo.confidence >= threshold
    index = keep.nonzero().squeeze(1)
    if len(index) == 0:
        raise ValueError(f"no pseudo-label has confidence >= {threshold} (pseudo_label.confidence_threshold)")
    input_ids = tokenize_cached(pseudo.sentences, tokenizer, cfg.news.max_length, cfg.news.cache_dir)
    extras = {"teacher_logits": pseudo.logits[index]}
    if loss.teacher_cls_layers:
        # only the matched layers leave the memory-mapped cache
        extras["teacher_cls"] = pseudo.cls[:, loss.teacher_cls_layers][index]
    dataset = TokenizedDataset([input_ids[i] for i in index], pseudo.hard_labels[index].tolist(),
                               extras)
    loader = DataLoader(
        dataset,
        batch_sampler=LengthGroupedBatchSampler(dataset.lengths, cfg.news.batch_size, True, cfg.seed),
        collate_fn=pad_collate(tokenizer.pad_token_id),
        num_workers=cfg.news.num_workers,
    )
    return loader, len(index)


def build_loss(cfg: DictConfig, student, teacher) -> torch.nn.Module:
    """The method's loss; layer-matching losses also get both models' depth and width."""
    factory = instantiate(cfg.method.loss)
    shapes = {
        "student_layers": student.config.num_hidden_layers,
        "teacher_layers": teacher.config.num_hidden_layers,
        "student_hidden": student.config.hidden_size,
        "teacher_hidden": teacher.config.hidden_size,
    }
    accepted = inspect.signature(factory).parameters
    return factory(**{k: v for k, v in shapes.items() if k in accepted})


def finetune(cfg: DictConfig, model, tokenizer, folder: Path) -> float | None:
    """Stage 2: fine-tune ``model`` in place on PhraseBank gold labels (the same settings for
    every student and the fresh baseline), keep its best epoch on validation macro-F1; split
    files, checkpoints and logs go to ``folder``. Returns that best validation macro-F1."""
    stage = stage_config(cfg, folder, max_epochs=cfg.distill.stage2.max_epochs)
    L.seed_everything(cfg.seed, workers=True)
    phrasebank = instantiate(stage.data, tokenizer=tokenizer)
    phrasebank.setup()
    module = ClassifierModule(model, labels=list(cfg.data.labels),
                              optimizer=instantiate(cfg.distill.stage2.optimizer),
                              scheduler=instantiate(cfg.distill.stage2.scheduler))
    trainer = build_trainer(stage, prefix="stage2")
    trainer.fit(module, datamodule=phrasebank)
    load_best_weights(trainer, module)
    return best_score(trainer)


def score_and_save(cfg: DictConfig, model, tokenizer, best_val: float | None, teacher_dir: Path,
                   fresh_dir: Path | None, labels: list[str], output_dir: Path,
                   stage1_dir: Path | None, started: float, machine: dict) -> dict:
    """Score the teacher, the student and the fresh baseline on the test split (the same
    precision as training), save the student with ``checkpoint_info.json``."""
    split_file = output_dir / "stage2" / "split" / "test.csv"
    test_rows = read_split_file(split_file)
    texts = [row.text for row in test_rows]
    gold = torch.tensor([labels.index(row.label) for row in test_rows])

    def test_logits(model, tokenizer):
        return predict(model, tokenizer, texts, max_length=cfg.data.max_length,
                       precision=cfg.trainer.precision)[0]

    teacher_model, teacher_tokenizer = load_classifier(str(teacher_dir), labels)
    teacher_logits = test_logits(teacher_model, teacher_tokenizer)
    teacher_scores = diagnostics(teacher_logits, gold, labels, teacher_logits)
    student_scores = diagnostics(test_logits(model, tokenizer), gold, labels, teacher_logits)
    student_scores["best_val_f1_macro"] = best_val
    fresh = None
    if fresh_dir is not None:
        fresh_model, fresh_tokenizer = load_classifier(str(fresh_dir), labels)
        fresh = diagnostics(test_logits(fresh_model, fresh_tokenizer), gold, labels,
                            teacher_logits)
        fresh["best_val_f1_macro"] = _recorded(fresh_dir, "best_val_f1_macro")
        fresh["parameters"] = count_parameters(fresh_model)
        fresh["dir"] = str(fresh_dir)
    teacher_scores["best_val_f1_macro"] = _recorded(teacher_dir, "best_val_f1_macro")

    student_folder = output_dir / "student"
    info = save_model_folder(model, tokenizer, student_folder, {
        "stage": "stage2",
        "method": cfg.method.name,
        "student": cfg.student.name,
        "source": cfg.student.name,
        "teacher": str(teacher_dir),
        "stage1": str(stage1_dir) if stage1_dir else None,
        "labels": labels,
        "metrics": {f"test/{k}": v for k, v in student_scores.items() if isinstance(v, float)},
        "best_val_f1_macro": best_val,
        "confusion_matrix": student_scores["confusion_matrix"],
        "split_hash": _recorded_split(teacher_dir) or current_split_hash(cfg),
        "machine": machine,
        "wall_time_s": round(time.perf_counter() - started, 1),  # this run, reused stages excluded
        "config": OmegaConf.to_container(cfg, resolve=True),
    }, extra_files={"test_split.csv": split_file})
    title = f"{cfg.method.name} {cfg.student.name}: macro-F1 {student_scores['f1_macro']:.3f}"
    save_confusion_matrices({title: student_scores["confusion_matrix"]}, labels,
                            output_dir / "confusion_matrix.png")
    return {
        "method": cfg.method.name,
        "student_name": cfg.student.name,
        "teacher_dir": str(teacher_dir),
        "teacher_source": _recorded(teacher_dir, "source") or str(teacher_dir),
        "student_dir": str(student_folder),
        "split_hash": info["split_hash"],
        "test_size": len(test_rows),
        "teacher_parameters": count_parameters(teacher_model),
        "student_parameters": info["parameters"],
        "teacher_size_bytes": folder_size_bytes(teacher_dir),
        "student_size_bytes": info["size_on_disk_bytes"],
        "machine": machine,
        "teacher": teacher_scores,
        "student": student_scores,
        "fresh": fresh,
    }


def speed_check(cfg: DictConfig, result: dict, fresh_dir: Path | None, labels: list[str],
                output_dir: Path) -> dict:
    """Batch-1 latency and batch-32 throughput of the teacher, the student and the fresh
    baseline, measured interleaved by the benchmark's code in the run's precision (seconds:
    ``distill.speed_sentences`` sentences at batch 1, one pass of the test split at batch 32).
    """
    if not cfg.distill.speed_sentences:
        return {}
    from fincompress.benchmark import benchmark

    folders = {"teacher": result["teacher_dir"], "student": result["student_dir"],
               **({"fresh": str(fresh_dir)} if fresh_dir else {})}
    rows = benchmark({name: (Path(folder), cfg.trainer.precision) for name, folder in folders.items()},
                     labels, output_dir / "stage2" / "split" / "test.csv",
                     latency_sentences=cfg.distill.speed_sentences, repeats=1, warmup=3)
    return {row["model"]: {key: row[key] for key in ("latency_model_ms_p50", "throughput_sorted",
                                                     "throughput_ratio")} for row in rows}


def side_by_side(result: dict) -> str:
    columns = [("teacher", result["teacher"]),
               (f"{result['method']} {result['student_name']}", result["student"])]
    if result.get("fresh"):
        columns.append((f"fresh {result['student_name']}", result["fresh"]))
    rows = [("parameters", [f"{result['teacher_parameters'] / 1e6:.1f}M",
                            f"{result['student_parameters'] / 1e6:.1f}M"]
             + ([f"{result['fresh']['parameters'] / 1e6:.1f}M"] if len(columns) > 2 else [])),
            ("size on disk", [f"{result['teacher_size_bytes'] / 2**20:.0f} MiB",
                              f"{result['student_size_bytes'] / 2**20:.0f} MiB"]
             + (["same"] if len(columns) > 2 else []))]
    for key in ("best_val_f1_macro", "acc", "f1_macro", "f1_negative", "f1_neutral",
                "f1_positive", "kl_teacher_student", "agreement_with_teacher", "ece"):
        rows.append((key, [_number(scores.get(key)) for _, scores in columns]))
    speed = result.get("speed") or {}
    if speed:
        names = ["teacher", "student", "fresh"][:len(columns)]
        rows.append(("batch-1 ms (median)", [f"{speed[n]['latency_model_ms_p50']:.2f}" for n in names]))
        rows.append(("sentences/s at batch 32", [f"{speed[n]['throughput_sorted']:.1f} "
                                                 f"({speed[n]['throughput_ratio']:.1f}x)"
                                                 for n in names]))
    header = f"{'':24}" + "".join(f"{name:>24}" for name, _ in columns)
    lines = [f"{name:24}" + "".join(f"{cell:>24}" for cell in cells) for name, cells in rows]
    machine = result["machine"]
    notes = [f"machine: {machine['cpu']}, {machine['torch_threads']} threads, "
             f"{machine['precision']} ({machine['precision_reason']})"]
    if result.get("teacher_split_unknown"):
        notes.append(f"WARNING: the teacher {result['teacher_dir']} records no PhraseBank split; "
                     "it may have been trained on these test sentences (ProsusAI/finbert was "
                     "fine-tuned on PhraseBank), so its scores may be inflated")
    return (f"\nPhraseBank test split ({result['test_size']} sentences, split "
            f"{result['split_hash']}); best_val_f1_macro is on the validation split\n{header}\n"
            + "\n".join(lines) + "\n" + "\n".join(notes) +
            f"\nstage times (s): {json.dumps(result['timings'])}\nstudent saved: "
            f"{result['student_dir']}\n")


def _number(value) -> str:
    return "" if value is None else f"{value:.4f}"


class StudentMismatchError(ValueError):
    """A method that cannot train this student with this teacher (say, TinyBERT with a
    student on another tokenizer): ``train.py`` exits with ``exit_code``, and
    ``scripts/study.py`` skips the method and says why."""

    exit_code = 3


def _split_settings(cfg: DictConfig) -> dict:
    data = OmegaConf.to_container(cfg.data, resolve=True)
    return {key: data[key] for key in SPLIT_KEYS}


def _data_settings(cfg: DictConfig) -> dict:
    """PhraseBank settings that decide a trained model: the split and the batch size."""
    return {**_split_settings(cfg), "batch_size": cfg.data.batch_size}


def current_split_hash(cfg: DictConfig) -> str:
    split = instantiate(cfg.data, tokenizer=None, split_dir=None)
    split.prepare_splits()
    return split.info["split_hash"]


def _stage1_student(cfg: DictConfig) -> dict:
    """Student fields that decide stage 1 (not the stage-2 rate and epochs, so that stage 2
    can be changed without training stage 1 again)."""
    student = OmegaConf.to_container(cfg.student, resolve=True)
    return {key: value for key, value in student.items() if not key.startswith("stage2_")}


def _pseudo_label_settings(cfg: DictConfig) -> dict:
    """Pseudo-label settings that decide stage 1; augmentation only when it is on."""
    settings = OmegaConf.to_container(cfg.distill.pseudo_label, resolve=True)
    if not settings.get("augment", {}).get("variants_per_sentence"):
        settings.pop("augment", None)
    return settings


def _trainer_settings(cfg: DictConfig) -> dict:
    """Trainer fields that decide a stage's result (not where it writes)."""
    return {key: value for key, value in cfg.trainer.items() if key != "default_root_dir"}


def _recorded(model_dir: Path, key: str):
    info = Path(model_dir) / "checkpoint_info.json"
    return json.loads(info.read_text()).get(key) if info.is_file() else None


def _recorded_split(teacher_dir: Path) -> str | None:
    """The PhraseBank split the teacher was trained on; None for an outside teacher."""
    return _recorded(teacher_dir, "split_hash")


def _check_same_split(teacher_dir: Path, teacher_split: str | None, split_hash: str) -> None:
    if teacher_split and teacher_split != split_hash:
        raise ValueError(
            f"the teacher {teacher_dir} was trained on PhraseBank split {teacher_split}, this "
            f"run uses split {split_hash}: its test sentences may be in the teacher's training "
            "data. Use the same data settings (agreement, seed, fractions) as the teacher.")
