"""Pseudo-labelling: the teacher labels unlabelled news, once, into a reusable cache.

For every sentence the cache holds the teacher's logits (soft labels; hard labels are their
argmax) and the [CLS] state of every teacher layer (what PKD distils). The cache folder is
named by a key of the teacher's weights, the corpus and the maximum length, so any later run
with the same teacher and corpus reuses it. A new corpus that shares sentences with earlier
caches of the same teacher and maximum length (the same news plus PhraseBank text) copies
their rows and labels only the new sentences. A report gives the label distribution and a
confidence histogram.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from fincompress.data.news import NewsCorpus
from fincompress.evaluate import predict
from fincompress.models.sources import load_classifier
from fincompress.runs import write_json

log = logging.getLogger(__name__)


@dataclass
class PseudoLabels:
    sentences: list[str]
    logits: torch.Tensor  # (N, classes) float32
    cls: torch.Tensor  # (N, teacher layers + 1, hidden) float16; index 0 = embeddings
    labels: list[str]
    folder: Path
    reused: bool = False

    @property
    def hard_labels(self) -> torch.Tensor:
        return self.logits.argmax(dim=-1)

    @property
    def confidence(self) -> torch.Tensor:
        return self.logits.softmax(dim=-1).max(dim=-1).values


def teacher_fingerprint(teacher_dir: str | Path) -> str:
    """A hash of the teacher's weights and config: a retrained teacher gets new labels."""
    digest = hashlib.sha256()
    for path in sorted(Path(teacher_dir).glob("*.safetensors")) + [Path(teacher_dir) / "config.json"]:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def pseudo_label(teacher_dir: str | Path, corpus: NewsCorpus, store_dir: str | Path,
                 labels: list[str], batch_size: int = 128, max_length: int = 128,
                 input_ids: list[list[int]] | None = None,
                 teacher: tuple | None = None) -> PseudoLabels:
    """Label ``corpus`` with the teacher, or load the cached labels for this teacher + corpus.

    ``input_ids``: the corpus already tokenized with the teacher's tokenizer, if at hand;
    ``teacher``: ``(model, tokenizer)`` already loaded from ``teacher_dir``, if at hand.
    """
    fingerprint = teacher_fingerprint(teacher_dir)
    key = hashlib.sha256(f"{fingerprint}\n{corpus.fingerprint}\n{max_length}".encode()
                         ).hexdigest()[:16]
    folder = Path(store_dir) / key
    if (folder / "labels.pt").is_file():
        log.info("reusing pseudo-labels %s", folder)
        return _load(folder, reused=True)

    logits, cls, found = labelled_before(Path(store_dir), fingerprint, max_length, labels,
                                         corpus.sentences)
    missing = [i for i, copied in enumerate(found) if not copied]
    log.info("pseudo-labels: %d of %d sentences copied from earlier caches, %d to label",
             len(found) - len(missing), len(found), len(missing))
    if missing:
        model, tokenizer = teacher or load_classifier(str(teacher_dir), labels)
        new_logits, new_cls = predict(
            model, tokenizer, [corpus.sentences[i] for i in missing], batch_size, max_length,
            cls_states=True, description="pseudo-labelling news",
            input_ids=None if input_ids is None else [input_ids[i] for i in missing])
        if logits is None:
            logits = torch.empty(len(corpus.sentences), new_logits.shape[1])
            cls = torch.empty(len(corpus.sentences), *new_cls.shape[1:], dtype=new_cls.dtype)
        logits[missing] = new_logits
        cls[missing] = new_cls
    staging = folder.with_name(f".{key}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    torch.save({"sentences": corpus.sentences, "logits": logits, "cls": cls, "labels": labels},
               staging / "labels.pt")
    result = PseudoLabels(corpus.sentences, logits, cls, labels, folder)
    report = label_report(result)
    report.update(teacher=str(teacher_dir), teacher_fingerprint=fingerprint,
                  max_length=max_length, copied_from_earlier_caches=len(found) - len(missing),
                  corpus_counts=corpus.counts, per_file=corpus.per_file)
    write_json(report, staging / "report.json")
    save_confidence_histogram(result, staging / "confidence_histogram.png")
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    log.info("pseudo-labels: %s", json.dumps({k: report[k] for k in ("sentences", "label_share")}))
    return result


def labelled_before(store_dir: Path, fingerprint: str, max_length: int, labels: list[str],
                    sentences: list[str]):
    """Rows of earlier caches (same teacher weights, maximum length and label order) for
    ``sentences``.

    Returns ``logits`` (N, classes) and ``cls`` (N, layers + 1, hidden) with the found rows
    filled (both None when nothing was found), and ``found``, one bool per sentence. Caches
    written before reports named their teacher fingerprint are not consulted.
    """
    found = [False] * len(sentences)
    logits = cls = None
    for report_path in sorted(store_dir.glob("[!.]*/report.json")):
        report = json.loads(report_path.read_text())
        if (report.get("teacher_fingerprint") != fingerprint
                or report.get("max_length") != max_length):
            continue
        data = torch.load(report_path.parent / "labels.pt", mmap=True)
        if data["labels"] != labels:
            continue
        row_of = {sentence: row for row, sentence in enumerate(data["sentences"])}
        targets = [i for i, sentence in enumerate(sentences) if not found[i] and sentence in row_of]
        if not targets:
            continue
        if logits is None:
            logits = torch.empty(len(sentences), data["logits"].shape[1])
            cls = torch.empty(len(sentences), *data["cls"].shape[1:], dtype=data["cls"].dtype)
        rows = [row_of[sentences[i]] for i in targets]
        logits[targets] = data["logits"][rows]
        cls[targets] = data["cls"][rows]
        for i in targets:
            found[i] = True
        if all(found):
            break
    return logits, cls, found


def _load(folder: Path, reused: bool) -> PseudoLabels:
    data = torch.load(folder / "labels.pt")
    return PseudoLabels(data["sentences"], data["logits"], data["cls"], data["labels"], folder,
                        reused)


def label_report(pseudo: PseudoLabels, bins: int = 10) -> dict:
    hard = pseudo.hard_labels
    confidence = pseudo.confidence
    counts = torch.bincount(hard, minlength=len(pseudo.labels))
    histogram = torch.histc(confidence, bins=bins, min=0, max=1)
    return {
        "sentences": len(pseudo.sentences),
        "label_counts": dict(zip(pseudo.labels, counts.tolist())),
        "label_share": {k: round(v / len(hard), 3) for k, v in zip(pseudo.labels, counts.tolist())},
        "mean_confidence": round(float(confidence.mean()), 4),
        "confidence_histogram": {f"{i / bins:.1f}-{(i + 1) / bins:.1f}": int(n)
                                 for i, n in enumerate(histogram.tolist())},
    }


def save_confidence_histogram(pseudo: PseudoLabels, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 3.2))
    confidence = pseudo.confidence
    for index, label in enumerate(pseudo.labels):
        axes.hist(confidence[pseudo.hard_labels == index].numpy(), bins=20, range=(1 / 3, 1),
                  alpha=0.6, label=label)
    axes.set_xlabel("teacher confidence (max probability)")
    axes.set_ylabel("sentences")
    axes.set_title(f"pseudo-labels: {len(pseudo.sentences)} news sentences", fontsize=9)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
