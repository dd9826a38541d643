"""The static tier behind ``python train.py +experiment=static``: a model2vec static-embedding
student, hundreds of times faster than any transformer because it has no encoder (a sentence is
the mean of its tokens' vectors, then a small MLP head).

- Its vectors are distilled offline from a sentence encoder (``static.source``; the bundled
  MPNet sentence encoder by default): model2vec runs the encoder once over its vocabulary (and,
  with ``static.vocabulary_min_count``, over the training text's frequent words it lacks) and
  reduces the vectors with PCA to ``static.pca_dims``. Stored (stage ``static_vectors``).
- Its classifier (model2vec's ``StaticModelForClassification``: head trained, vectors
  fine-tuned) learns the teacher's labels of all the news text, with early stopping on
  PhraseBank validation accuracy. No gold label but validation's is used.
- The student folder (``student/``, a model2vec pipeline with ``checkpoint_info.json``) opens
  with :func:`fincompress.load`; the run scores it on the test split beside the teacher and
  reports its agreement with the teacher on the robustness hold-out.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fincompress.artifacts import write_checkpoint_info
from fincompress.data.datamodule import data_settings, phrasebank_split
from fincompress.files import atomic_folder, write_json
from fincompress.models.sources import load_classifier, resolve_source
from fincompress.scoring import COMPARISON_COLUMNS, caption, score, with_mib
from fincompress.stages.distill import label_news, news_corpus, robustness
from fincompress.stages.teacher import ensure_teacher
from fincompress.store import ensure_stage, folder_fingerprint
from fincompress.tables import markdown_table
from fincompress.training import choose_precision


def static_vectors(cfg: DictConfig, sentences: list[str] = ()) -> Path:
    """The stored model2vec vectors distilled from ``static.source``: one per token of its
    vocabulary, plus one per word of ``sentences`` (the training text) that occurs at least
    ``static.vocabulary_min_count`` times and that the vocabulary lacks (null: none)."""
    from transformers import AutoTokenizer

    source = Path(resolve_source(cfg.static.source, cfg.paths.model_cache_dir))
    tokenizer = AutoTokenizer.from_pretrained(source)
    # model2vec encodes each added word with this tokenizer and averages over every id it
    # returns: the bundled MPNet tokenizer pads to 128, which would make each word's vector
    # mostly padding (and its encoding 17 to 35 times slower on 2 AVX2 cores)
    tokenizer.backend_tokenizer.no_padding()
    tokenizer.backend_tokenizer.no_truncation()
    words = []
    if cfg.static.vocabulary_min_count:
        words = corpus_words(tokenizer, sentences, cfg.static.vocabulary_min_count)
    inputs = {"source": folder_fingerprint(source), "pca_dims": cfg.static.pca_dims}
    if words:  # vectors stored without added words keep their key
        inputs.update(corpus_words=hashlib.sha256("\n".join(words).encode()).hexdigest()[:16],
                      corpus_word_count=len(words))

    def build(staging: Path) -> None:
        from model2vec.distill import distill_from_model
        from transformers import AutoModel

        model = distill_from_model(model=AutoModel.from_pretrained(source), tokenizer=tokenizer,
                                   vocabulary=words or None, pca_dims=cfg.static.pca_dims)
        model.save_pretrained(staging / "model")

    folder, reused = ensure_stage(cfg.paths.output_root, "static_vectors", inputs, build)
    print(f"{'reusing' if reused else 'stored'} static vectors {folder / 'model'} "
          f"({len(words)} corpus words added)")
    return folder / "model"


def corpus_words(tokenizer, sentences: list[str], min_count: int) -> list[str]:
    """The words of ``sentences``, as ``tokenizer`` normalizes and splits them before its
    sub-word step, that occur at least ``min_count`` times and are not one of its tokens, most
    frequent first (ties alphabetically): model2vec gives each a vector of its own instead of
    the mean of its pieces."""
    backend = tokenizer.backend_tokenizer
    counts = Counter()
    for text in sentences:
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        counts.update(word for word, _ in backend.pre_tokenizer.pre_tokenize_str(text))
    known = tokenizer.get_vocab()
    frequent = [(word, count) for word, count in counts.items()
                if count >= min_count and word not in known]
    return [word for word, _ in sorted(frequent, key=lambda item: (-item[1], item[0]))]


def run_static(cfg: DictConfig) -> dict:
    started = time.perf_counter()
    machine = choose_precision(cfg)
    labels = list(cfg.data.labels)
    output_dir = Path(cfg.paths.output_dir)
    split = phrasebank_split(cfg, output_dir / "split")
    teacher_dir = ensure_teacher(cfg)
    cfg.teacher_checkpoint = str(teacher_dir)
    teacher = load_classifier(str(teacher_dir), labels)
    news = news_corpus(cfg, teacher, split)
    pseudo = label_news(cfg, teacher_dir, split, news, teacher, output_dir)
    vectors = static_vectors(cfg, pseudo.sentences)
    student_dir = output_dir / "student"
    clock = time.perf_counter()
    best_val = train_static(cfg, vectors, pseudo, split.splits["val"], student_dir, {
        "stage": "static", "student": "model2vec", "vectors": str(vectors),
        "teacher": str(teacher_dir), "pseudo_labels": str(pseudo.folder),
        "news_sentences": len(pseudo.sentences), "labels": labels,
        "split_hash": split.info["split_hash"], "machine": machine, "data": data_settings(cfg),
        "config": OmegaConf.to_container(cfg, resolve=True)})
    train_s = round(time.perf_counter() - clock, 1)
    result = score({"teacher": teacher_dir, "static": student_dir}, labels,
                   output_dir / "split" / "test.csv", machine, precision=cfg.trainer.precision,
                   repeats=cfg.static.timing_repeats, latency_sentences=50, warmup=3,
                   min_round_s=cfg.benchmark.min_round_s)
    result["robustness"] = robustness(cfg, teacher_dir, {"static": student_dir})
    result["best_val_accuracy"] = best_val
    result["timings"] = {"train_s": train_s, "total_s": round(time.perf_counter() - started, 1)}
    write_json(result, output_dir / "results.json")
    print(f"\n{caption(result)}\n" + markdown_table(with_mib(result["models"]), COMPARISON_COLUMNS))
    print(f"robustness (agreement with the teacher on held-out text): {result['robustness']}")
    static_row = result["models"][1]
    return {"metrics": {"test/f1_macro": static_row["f1_macro"]}, **result}


def train_static(cfg: DictConfig, vectors: Path, pseudo, val_rows: list, folder: Path,
                 info: dict) -> float:
    """Fit model2vec's classifier on the teacher's hard labels of ``pseudo`` (early stopping on
    validation accuracy) and save it as a pipeline with ``checkpoint_info.json`` into
    ``folder``; returns its best validation accuracy."""
    from model2vec import StaticModel
    from model2vec.train import StaticModelForClassification

    classifier = StaticModelForClassification.from_static_model(
        model=StaticModel.from_pretrained(vectors), n_layers=cfg.static.head_layers,
        hidden_dim=cfg.static.hidden_dim, out_dim=len(pseudo.labels))
    hard = [pseudo.labels[i] for i in pseudo.hard_labels.tolist()]
    missing = sorted(set(pseudo.labels) - set(hard))
    if missing:
        raise ValueError(f"the teacher labels none of the {len(hard)} news sentences "
                         f"{missing} (pseudo-labels {pseudo.folder}): the static head cannot "
                         "learn a class it never sees; check the teacher")
    classifier.fit(list(pseudo.sentences), hard, learning_rate=cfg.static.lr,
                   batch_size=cfg.static.batch_size, max_epochs=cfg.static.max_epochs,
                   early_stopping_patience=cfg.static.patience, device="cpu",
                   X_val=[row.text for row in val_rows], y_val=[row.label for row in val_rows],
                   random_seed=cfg.seed)
    pipeline = classifier.to_pipeline()
    val_texts = [row.text for row in val_rows]
    predicted = pipeline.predict(val_texts)
    best_val = sum(p == row.label for p, row in zip(predicted, val_rows)) / len(val_rows)
    with atomic_folder(folder) as staging:
        pipeline.save_pretrained(str(staging))
        write_checkpoint_info(staging, {**info, "best_val_accuracy": round(best_val, 4)},
                              parameters=None)
    return round(best_val, 4)
