"""The distillation pipeline behind ``python train.py +experiment=pkd`` (and ce, kd, tinybert,
fresh): teacher -> pseudo-labelled news -> stage 1 (student on news) -> stage 2 (student
fine-tuned on PhraseBank) -> test diagnostics side by side with the teacher.

Upstream stages are stored under ``<output_root>/stages/<stage>/<key>``, where the key hashes
everything that determines the stage's result; a later run whose configs match reuses them
(a crash mid-stage leaves only a ``.partial`` folder, which is redone). The run folder holds
the final student (Hugging Face folder + ``checkpoint_info.json`` + the scored test split) and
``results.json``.
"""

from __future__ import annotations

import inspect
import json
import logging
import shutil
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
from fincompress.pseudo_label.label import pseudo_label
from fincompress.runs import (
    best_score,
    build_trainer,
    config_hash,
    load_best_weights,
    save_model_folder,
    stage_config,
    write_json,
)
from fincompress.teacher.train import train_teacher

log = logging.getLogger(__name__)

# data settings that decide the split and tokenization (not where files go or batch sizes)
SPLIT_KEYS = ("source", "agreement", "split_fractions", "seed", "labels", "max_length",
              "max_per_split")


def run_distill(cfg: DictConfig) -> dict:
    started = time.perf_counter()
    labels = list(cfg.data.labels)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    clock = time.perf_counter()
    teacher_dir = ensure_teacher(cfg)
    timings["teacher_s"] = round(time.perf_counter() - clock, 1)
    cfg.teacher_checkpoint = str(teacher_dir)  # student configs interpolate it

    clock = time.perf_counter()
    if cfg.method.stage1:
        stage1_dir = ensure_stage1(cfg, teacher_dir, labels)
        model, tokenizer = load_classifier(str(stage1_dir / "model"), labels)
    else:  # the "fresh" baseline: stage 2 only, from the student's initial weights
        stage1_dir = None
        model, tokenizer = instantiate(cfg.student.model)
    timings["stage1_s"] = round(time.perf_counter() - clock, 1)

    clock = time.perf_counter()
    result = finetune_and_score(cfg, model, tokenizer, teacher_dir, labels, output_dir,
                                stage1_dir, started)
    timings["stage2_s"] = round(time.perf_counter() - clock, 1)
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
    key = config_hash(cfg.teacher, _split_settings(cfg), cfg.seed, _trainer_settings(cfg))
    folder = Path(cfg.paths.output_root) / "stages" / "teacher" / key
    if (folder / "model" / "checkpoint_info.json").is_file():
        log.info("reusing teacher %s", folder)
        print(f"reusing teacher {folder / 'model'}")
        return folder / "model"
    staging = _staging(folder)
    train_teacher(stage_config(cfg, staging, max_epochs=cfg.teacher.max_epochs))
    staging.rename(folder)
    print(f"teacher stored: {folder / 'model'}")
    return folder / "model"


def ensure_stage1(cfg: DictConfig, teacher_dir: Path, labels: list[str]) -> Path:
    """Pseudo-label the news (cached), then train the student on it (stored by config)."""
    teacher_model, teacher_tokenizer = load_classifier(str(teacher_dir), labels)
    news = instantiate(cfg.news, tokenizer=teacher_tokenizer,
                       extra_sentences=transfer_sentences(cfg, teacher_model, teacher_tokenizer))
    news.setup()
    print(news.corpus.summary())
    pseudo = pseudo_label(teacher_dir, news.corpus,
                          Path(cfg.paths.output_root) / "stages" / "pseudo_labels", labels,
                          cfg.distill.pseudo_label.batch_size, cfg.news.max_length,
                          input_ids=news.dataset.input_ids,
                          teacher=(teacher_model, teacher_tokenizer))

    key = config_hash(_stage1_student(cfg), cfg.method, _pseudo_label_settings(cfg),
                      cfg.distill.stage1, pseudo.folder.name, _split_settings(cfg), cfg.seed,
                      _trainer_settings(cfg))
    folder = Path(cfg.paths.output_root) / "stages" / "stage1" / key
    if (folder / "model" / "checkpoint_info.json").is_file():
        print(f"reusing stage-1 student {folder / 'model'}")
        return folder
    staging = _staging(folder)
    stage = stage_config(cfg, staging, max_epochs=cfg.distill.stage1.max_epochs)
    L.seed_everything(cfg.seed, workers=True)
    student, tokenizer = instantiate(cfg.student.model)
    loss = build_loss(cfg, student, teacher_model)
    teacher = None
    if loss.needs_teacher_model:
        if tokenizer_fingerprint(tokenizer) != tokenizer_fingerprint(teacher_tokenizer):
            raise ValueError(
                f"method {cfg.method.name} runs the teacher on the student's tokens, but the "
                f"student ({cfg.student.name}) and teacher ({teacher_dir}) tokenize differently; "
                "use a student built on the teacher's tokenizer (tiny, truncated)")
        teacher = teacher_model
        if loss.needs_attentions:  # attention maps need the eager implementation
            teacher.set_attn_implementation("eager")
            student.set_attn_implementation("eager")

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
        "config": OmegaConf.to_container(cfg, resolve=True),
    })
    staging.rename(folder)
    print(f"stage-1 student stored: {folder / 'model'}")
    return folder


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
        extras["teacher_cls"] = pseudo.cls[index][:, loss.teacher_cls_layers]
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


def finetune_and_score(cfg: DictConfig, model, tokenizer, teacher_dir: Path, labels: list[str],
                       output_dir: Path, stage1_dir: Path | None, started: float) -> dict:
    """Stage 2: fine-tune on PhraseBank gold labels (same settings for every student), then
    score student and teacher on the test split."""
    stage_dir = output_dir / "stage2"
    stage = stage_config(cfg, stage_dir, max_epochs=cfg.distill.stage2.max_epochs)
    L.seed_everything(cfg.seed, workers=True)
    phrasebank = instantiate(stage.data, tokenizer=tokenizer)
    phrasebank.setup()
    _check_same_split(teacher_dir, phrasebank.info["split_hash"])
    module = ClassifierModule(model, labels, instantiate(cfg.distill.stage2.optimizer),
                              instantiate(cfg.distill.stage2.scheduler))
    trainer = build_trainer(stage, prefix="stage2")
    trainer.fit(module, datamodule=phrasebank)
    load_best_weights(trainer, module)

    test_rows = read_split_file(stage_dir / "split" / "test.csv")
    texts = [row.text for row in test_rows]
    gold = torch.tensor([labels.index(row.label) for row in test_rows])
    teacher_model, teacher_tokenizer = load_classifier(str(teacher_dir), labels)
    teacher_logits, _ = predict(teacher_model, teacher_tokenizer, texts,
                                max_length=cfg.data.max_length)
    student_logits, _ = predict(module.model, tokenizer, texts, max_length=cfg.data.max_length)
    teacher_scores = diagnostics(teacher_logits, gold, labels, teacher_logits)
    student_scores = diagnostics(student_logits, gold, labels, teacher_logits)

    student_folder = output_dir / "student"
    info = save_model_folder(module.model, tokenizer, student_folder, {
        "stage": "stage2",
        "method": cfg.method.name,
        "student": cfg.student.name,
        "source": cfg.student.name,
        "teacher": str(teacher_dir),
        "stage1": str(stage1_dir) if stage1_dir else None,
        "labels": labels,
        "metrics": {f"test/{k}": v for k, v in student_scores.items() if isinstance(v, float)},
        "best_val_f1_macro": best_score(trainer),
        "confusion_matrix": student_scores["confusion_matrix"],
        "data": phrasebank.info,
        "split_hash": phrasebank.info["split_hash"],
        "wall_time_s": round(time.perf_counter() - started, 1),  # this run, reused stages excluded
        "config": OmegaConf.to_container(cfg, resolve=True),
    }, extra_files={"test_split.csv": stage_dir / "split" / "test.csv"})
    title = f"{cfg.method.name} {cfg.student.name}: macro-F1 {student_scores['f1_macro']:.3f}"
    save_confusion_matrices({title: student_scores["confusion_matrix"]}, labels,
                            output_dir / "confusion_matrix.png")
    return {
        "method": cfg.method.name,
        "student_name": cfg.student.name,
        "teacher_dir": str(teacher_dir),
        "teacher_source": _recorded_source(teacher_dir),
        "student_dir": str(student_folder),
        "split_hash": phrasebank.info["split_hash"],
        "test_size": len(test_rows),
        "teacher_parameters": count_parameters(teacher_model),
        "student_parameters": info["parameters"],
        "teacher_size_bytes": folder_size_bytes(teacher_dir),
        "student_size_bytes": info["size_on_disk_bytes"],
        "teacher": teacher_scores,
        "student": student_scores,
    }


def side_by_side(result: dict) -> str:
    teacher, student = result["teacher"], result["student"]
    rows = [
        ("parameters", f"{result['teacher_parameters'] / 1e6:.1f}M",
         f"{result['student_parameters'] / 1e6:.1f}M"),
        ("size on disk", f"{result['teacher_size_bytes'] / 2**20:.0f} MiB",
         f"{result['student_size_bytes'] / 2**20:.0f} MiB"),
    ]
    for key in ("acc", "f1_macro", "f1_negative", "f1_neutral", "f1_positive",
                "kl_teacher_student", "agreement_with_teacher", "ece"):
        rows.append((key, f"{teacher[key]:.4f}", f"{student[key]:.4f}"))
    header = f"{'':24}{'teacher':>14}{result['method'] + ' ' + result['student_name']:>26}"
    lines = [f"{name:24}{t:>14}{s:>26}" for name, t, s in rows]
    return (f"\nPhraseBank test split ({result['test_size']} sentences, split "
            f"{result['split_hash']})\n{header}\n" + "\n".join(lines) +
            f"\nstage times (s): {json.dumps(result['timings'])}\nstudent saved: "
            f"{result['student_dir']}\n")


def _split_settings(cfg: DictConfig) -> dict:
    data = OmegaConf.to_container(cfg.data, resolve=True)
    return {key: data[key] for key in SPLIT_KEYS}


def _stage1_student(cfg: DictConfig) -> dict:
    """Student fields that decide stage 1 (not the stage-2 rate and epochs, so that stage 2
    can be changed without training stage 1 again)."""
    student = OmegaConf.to_container(cfg.student, resolve=True)
    return {key: value for key, value in student.items() if not key.startswith("stage2_")}


def _pseudo_label_settings(cfg: DictConfig) -> dict:
    """Pseudo-label settings that decide stage 1; augmentation only when it is on, so students
    stored before it existed keep their keys."""
    settings = OmegaConf.to_container(cfg.distill.pseudo_label, resolve=True)
    if not settings.get("augment", {}).get("variants_per_sentence"):
        settings.pop("augment", None)
    return settings


def _trainer_settings(cfg: DictConfig) -> dict:
    """Trainer fields that decide a stage's result (not where it writes)."""
    return {key: value for key, value in cfg.trainer.items() if key != "default_root_dir"}


def _recorded_source(model_dir: Path) -> str:
    info = model_dir / "checkpoint_info.json"
    if info.is_file():
        return json.loads(info.read_text()).get("source") or str(model_dir)
    return str(model_dir)


def _staging(folder: Path) -> Path:
    staging = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)  # what an interrupted run left behind
    staging.parent.mkdir(parents=True, exist_ok=True)
    return staging


def _check_same_split(teacher_dir: Path, split_hash: str) -> None:
    info_path = teacher_dir / "checkpoint_info.json"
    if not info_path.is_file():
        return  # an outside teacher: nothing recorded to compare
    teacher_split = json.loads(info_path.read_text()).get("split_hash")
    if teacher_split and teacher_split != split_hash:
        raise ValueError(
            f"the teacher {teacher_dir} was trained on PhraseBank split {teacher_split}, this "
            f"run uses split {split_hash}: its test sentences may be in the teacher's training "
            "data. Use the same data settings (agreement, seed, fractions) as the teacher.")
