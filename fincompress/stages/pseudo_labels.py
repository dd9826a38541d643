"""The pseudo-label stage: the teacher labels unlabelled news, once, into a reusable cache.

For every sentence the cache holds the teacher's logits (soft labels; hard labels are their
argmax) and the [CLS] state of every teacher layer (what PKD distils). The cache is a stage of
the store (:mod:`fincompress.store`) keyed by the teacher's files, the corpus, the labels, the
maximum length and the inference precision, so any later run with the same teacher and corpus
reuses it. A new corpus that shares sentences with earlier caches of the same teacher, maximum
length and precision (the same news plus PhraseBank text) copies their rows and labels only
the new sentences. A report gives the label distribution and a
confidence histogram.

The teacher labels in PyTorch in the run's precision (``distill.pseudo_label.engine: torch``,
with the [CLS] states PKD needs), or through its fastest faithful form on this machine
(``fastest``: :func:`fastest_faithful_teacher`; logits only). The report records the labelling
throughput, and for ``fastest`` every form's agreement and speed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fincompress.data.news import NewsCorpus
from fincompress.files import write_json
from fincompress.predict import TorchPredictor, load
from fincompress.scoring import score
from fincompress.stages.quantize import export_int8, int8_inputs
from fincompress.store import ensure_stage, folder_fingerprint, stored

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


def pseudo_label_inputs(teacher_dir: str | Path, corpus: NewsCorpus, labels: list[str],
                        max_length: int, precision: str) -> dict:
    """What decides a pseudo-label cache: the stage store's inputs for it."""
    return {"teacher_fingerprint": folder_fingerprint(teacher_dir),
            "corpus_fingerprint": corpus.fingerprint, "labels": list(labels),
            "max_length": max_length, "precision": precision}


# what decides which teacher form is fastest and faithful on a machine (beside the teacher,
# the validation split and the candidate forms): the CPU, and which PyTorch uses it and how
MACHINE_FIELDS = ("cpu", "isa", "onednn_max_cpu_isa", "torch", "torch_cpu_capability",
                  "torch_threads", "precision")


def fastest_faithful_teacher(cfg, teacher_dir: Path, calibration: list[str], val_file: Path,
                             machine: dict) -> tuple[str, Path, str, dict]:
    """The teacher's fastest form on this machine whose labels agree with its fp32 PyTorch form
    on at least ``distill.pseudo_label.min_agreement`` of the validation sentences: PyTorch
    fp32, bf16 where native, and INT8 through each of ``quantize.backends`` (built once,
    calibrated on ``calibration``), timed side by side at batch 32.

    The measurement is a stored stage (``label_form``) keyed by the teacher, the validation
    split, the candidate forms, the rule and the machine (:data:`MACHINE_FIELDS`): label
    workers on one kind of machine measure once, one at a time under the store's lock (so no
    worker's timing shares the cores with another's), and the others read the choice.

    Returns the form's name, its folder, its PyTorch precision, and every form's measurement.
    """
    backends = list(cfg.quantize.backends)
    inputs = {"teacher_fingerprint": folder_fingerprint(teacher_dir),
              "validation": hashlib.sha256(Path(val_file).read_bytes()).hexdigest()[:16],
              "int8": {name: int8_inputs(cfg, name, Path(teacher_dir)) for name in backends},
              "min_agreement": cfg.distill.pseudo_label.min_agreement,
              "timing": {"repeats": cfg.quantize.timing_repeats,
                         "min_round_s": cfg.benchmark.min_round_s},
              "machine": {name: machine.get(name) for name in MACHINE_FIELDS}}

    def form_folder(name: str) -> tuple[Path, str]:
        if name.startswith("torch "):
            return Path(teacher_dir), "bf16-mixed" if name == "torch bf16" else "32-true"
        return export_int8(cfg, name.removesuffix(" int8"), Path(teacher_dir), calibration,
                           machine), "32-true"

    def measure(staging: Path) -> None:
        names = ["torch fp32", *(["torch bf16"] if machine["precision"] == "bf16-mixed" else []),
                 *(f"{backend} int8" for backend in backends)]
        forms = {name: form_folder(name) for name in names}
        rows = score(forms, list(cfg.data.labels), val_file, machine,
                     repeats=cfg.quantize.timing_repeats,
                     min_round_s=cfg.benchmark.min_round_s)["models"]
        measured = {name: {"agreement": row["agreement_with_teacher"],
                           "throughput_sorted": row["throughput_sorted"]}
                    for name, row in zip(forms, rows)}
        faithful = [name for name, row in measured.items()
                    if row["agreement"] >= cfg.distill.pseudo_label.min_agreement]
        chosen = max(faithful, key=lambda name: measured[name]["throughput_sorted"])
        write_json({"min_agreement": cfg.distill.pseudo_label.min_agreement, "forms": measured,
                    "chosen": chosen}, staging / "choice.json")

    folder, reused = ensure_stage(cfg.paths.output_root, "label_form", inputs, measure)
    record = {**json.loads((folder / "choice.json").read_text()), "stored": str(folder),
              "reused": reused}
    log.info("labelling with the teacher's %s form (%s): %s", record["chosen"],
             "measured earlier on this kind of machine" if reused else "measured here",
             json.dumps(record["forms"]))
    return record["chosen"], *form_folder(record["chosen"]), record


def pseudo_label(teacher_dir: str | Path, corpus: NewsCorpus, output_root: str | Path,
                 labels: list[str], batch_size: int = 128, max_length: int = 128,
                 input_ids: list[list[int]] | None = None,
                 teacher: tuple | None = None, precision: str = "32-true",
                 labeller=None, shard_size: int | None = None) -> PseudoLabels:
    """Label ``corpus`` with the teacher, or load the stored labels for this teacher + corpus
    (stage ``pseudo_labels`` of the store under ``output_root``).

    ``input_ids``: the corpus already tokenized with the teacher's tokenizer, if at hand;
    ``teacher``: ``(model, tokenizer)`` already loaded from ``teacher_dir``, if at hand;
    ``precision``: the inference precision (bf16 autocast under a bf16 precision), or, with
    ``labeller``, the name of the rule that picks the labelling form (part of the store key);
    ``labeller``: a function of nothing returning ``(form, folder, precision, record)`` (see
    :func:`fastest_faithful_teacher`), called only when something is left to label: the
    teacher form that labels, without [CLS] states (``cls`` is then empty);
    ``shard_size``: label in shards of this many sentences, each a stored stage
    (:func:`label_in_shards`): any number of processes, on any machines that share
    ``output_root``, label one corpus together, and a killed run resumes at its first
    unfinished shard. None: in one piece.
    """
    inputs = pseudo_label_inputs(teacher_dir, corpus, labels, max_length, precision)
    loaded: dict = {}

    def predictor():
        """The labelling form, loaded once (and chosen, for ``labeller``) when first needed."""
        if not loaded:
            if labeller is None:
                model, tokenizer = teacher or (None, None)
                loaded.update(predictor=TorchPredictor(teacher_dir, labels, precision, model,
                                                       tokenizer), form=f"torch {precision}")
            else:
                clock = time.perf_counter()
                form, folder, form_precision, record = labeller()
                loaded.update(predictor=load(folder, labels, form_precision), form=form,
                              labeller=record, choosing_s=time.perf_counter() - clock)
        return loaded["predictor"]

    def label(indices: list[int], description: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits and [CLS] states (empty through a ``labeller``) of these sentences."""
        ids = (predictor().encode([corpus.sentences[i] for i in indices], max_length)
               if input_ids is None else [input_ids[i] for i in indices])
        if labeller is None:
            logits, cls = predictor().logits_ids(ids, batch_size, cls_states=True,
                                                 description=description)
        else:
            logits = predictor().logits_ids(ids, batch_size, description=description)
            cls = torch.empty(len(ids), 0, 0, dtype=torch.float16)
        return torch.from_numpy(logits), cls

    before: list = []  # earlier caches' rows, read once (the shards' pre-pass and the build)

    def unlabelled() -> tuple:
        if not before:
            before.extend(labelled_before(Path(output_root), inputs, corpus.sentences))
        logits, cls, found = before
        return logits, cls, found, [i for i, copied in enumerate(found) if not copied]

    spent = [0.0]  # seconds this process spent labelling (over the shards' pre-pass and build)

    def label_missing(missing: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        clock = time.perf_counter()
        try:
            predictor()  # loaded (and chosen) first: a shard's time is its labelling alone
            if shard_size:
                return label_in_shards(
                    output_root, inputs, [corpus.sentences[i] for i in missing], shard_size,
                    lambda rows: label([missing[r] for r in rows], "pseudo-labelling a shard"),
                    lambda: loaded.get("form"))
            return label(missing, "pseudo-labelling news")
        finally:
            spent[0] += time.perf_counter() - clock

    def build(staging: Path) -> None:
        logits, cls, found, missing = unlabelled()
        log.info("pseudo-labels: %d of %d sentences copied from earlier caches, %d to label",
                 len(found) - len(missing), len(found), len(missing))
        speed = {}
        if missing:
            new_logits, new_cls = label_missing(missing)
            # the labelling form's choice (INT8 exports, timing) is not labelling
            seconds = spent[0] - loaded.get("choosing_s", 0.0)
            if loaded:  # labelled here, not only read from shards other workers made
                speed.update(labeller=loaded.get("labeller"), labelled_by=loaded["form"])
            if "choosing_s" in loaded:
                speed.update(choosing_form_s=round(loaded["choosing_s"], 1))
            speed.update(labelled=len(missing), labelling_s=round(seconds, 1),
                         labelling_sentences_per_s=round(len(missing) / seconds, 1))
            log.info("pseudo-labels: %d sentences in %.1f s (%.1f sentences/s)", len(missing),
                     seconds, len(missing) / seconds)
            if logits is None:
                logits = torch.empty(len(corpus.sentences), new_logits.shape[1])
                cls = torch.empty(len(corpus.sentences), *new_cls.shape[1:], dtype=new_cls.dtype)
            logits[missing] = new_logits
            cls[missing] = new_cls
        torch.save({"sentences": corpus.sentences, "logits": logits, "cls": cls,
                    "labels": labels}, staging / "labels.pt")
        result = PseudoLabels(corpus.sentences, logits, cls, labels, staging)
        report = label_report(result)
        report.update(teacher=str(teacher_dir), **inputs, **speed,
                      copied_from_earlier_caches=len(found) - len(missing),
                      shard_size=shard_size, corpus_counts=corpus.counts,
                      per_file=corpus.per_file)
        write_json(report, staging / "report.json")
        save_confidence_histogram(result, staging / "confidence_histogram.png")
        log.info("pseudo-labels: %s",
                 json.dumps({k: report[k] for k in ("sentences", "label_share")}))

    if shard_size and not stored(output_root, "pseudo_labels", inputs):
        # the shards first, outside the cache's lock, so that other workers label beside this one
        *_, missing = unlabelled()
        if missing:
            label_missing(missing)
    folder, reused = ensure_stage(output_root, "pseudo_labels", inputs, build)
    if reused:
        log.info("reusing pseudo-labels %s", folder)
    return load_pseudo_labels(folder, reused)


def label_in_shards(output_root: str | Path, inputs: dict, sentences: list[str],
                    shard_size: int, label, form=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits and [CLS] states of ``sentences``, labelled in shards of ``shard_size``, each
    a stored stage (``pseudo_label_shards``) keyed by the cache's ``inputs`` without the corpus
    and by the shard's own sentences. A shard another process is labelling is skipped and
    read once it is done, so workers that share ``output_root`` (on one machine or many, over
    a shared file system) split the work without talking to each other; a shard is built once,
    and a killed run leaves every finished shard for the next. ``label(rows)`` labels the
    sentences at those positions of ``sentences``; ``form()``, after it, names the teacher form
    that labelled (for the shard's report)."""
    shared = {key: value for key, value in inputs.items() if key != "corpus_fingerprint"}
    shards = [list(range(start, min(start + shard_size, len(sentences))))
              for start in range(0, len(sentences), shard_size)]
    folders: dict[int, Path] = {}

    def shard_inputs(rows: list[int]) -> dict:
        text = "\n".join(sentences[row] for row in rows)
        return {**shared, "sentences": hashlib.sha256(text.encode()).hexdigest()[:16],
                "count": len(rows)}

    def build(staging: Path, rows: list[int]) -> None:
        started = time.time()
        logits, cls = label(rows)
        torch.save({"sentences": [sentences[row] for row in rows], "logits": logits, "cls": cls},
                   staging / "shard.pt")
        seconds = time.time() - started
        write_json({"sentences": len(rows), "started": started, "finished": time.time(),
                    "labelling_s": round(seconds, 2),
                    "sentences_per_s": round(len(rows) / seconds, 1),
                    "labelled_by": form() if form else None, "host": socket.gethostname(),
                    "pid": os.getpid()}, staging / "report.json")

    built = 0
    with tqdm(total=len(shards), desc="pseudo-label shards", unit="shard") as progress:
        for wait in (False, True):  # first the free shards, then those others were labelling
            for index, rows in enumerate(shards):
                if index in folders:
                    continue
                folder, reused = ensure_stage(output_root, "pseudo_label_shards",
                                              shard_inputs(rows),
                                              lambda staging, rows=rows: build(staging, rows),
                                              wait=wait)
                if folder is not None:
                    folders[index] = folder
                    built += not reused
                    progress.update()
    log.info("pseudo-label shards: %d of %d labelled by this process", built, len(shards))
    parts = [torch.load(folders[index] / "shard.pt") for index in range(len(shards))]
    for index, (part, rows) in enumerate(zip(parts, shards)):
        if part["sentences"] != [sentences[row] for row in rows]:
            raise RuntimeError("a pseudo-label shard does not hold the sentences its key names: "
                               f"{folders[index]}")
    return torch.cat([part["logits"] for part in parts]), torch.cat([part["cls"] for part in parts])


def labelled_before(output_root: Path, inputs: dict, sentences: list[str]):
    """Rows for ``sentences`` from earlier caches made with the same teacher, labels, maximum
    length and precision (``inputs`` as from :func:`pseudo_label_inputs`).

    Returns ``logits`` (N, classes) and ``cls`` (N, layers + 1, hidden) with the found rows
    filled (both None when nothing was found), and ``found``, one bool per sentence.
    """
    same = ("teacher_fingerprint", "labels", "max_length", "precision")
    found = [False] * len(sentences)
    logits = cls = None
    for report_path in sorted((output_root / "stages" / "pseudo_labels").glob("[!.]*/report.json")):
        report = json.loads(report_path.read_text())
        if any(report.get(name) != inputs[name] for name in same):
            continue
        data = torch.load(report_path.parent / "labels.pt", mmap=True)
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


def load_pseudo_labels(folder: Path, reused: bool = True) -> PseudoLabels:
    """A stored cache; the [CLS] states stay memory-mapped (1.8 GB for 90k MPNet sentences),
    so only the layers a method reads are ever copied into memory."""
    data = torch.load(folder / "labels.pt", mmap=True)
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
