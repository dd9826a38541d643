"""Financial PhraseBank v1.0 (Malo et al. 2014, JASIST 65(4)): parsing and fixed splits.

Each ``Sentences_<level>Agree.txt`` holds one ``sentence@label`` per line in latin-1. This
module reads it from a folder, a zip laid out like the published archive, or the public hub
copy; removes duplicate sentences; and makes seeded, stratified train/val/test splits that
each run writes next to its outputs, so every later stage scores exactly the same sentences.
"""

from __future__ import annotations

import csv
import hashlib
import io
import random
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from fincompress.errors import InputError, read_utf8

LABELS = ("negative", "neutral", "positive")
AGREEMENT_FILES = {"50": "50Agree", "66": "66Agree", "75": "75Agree", "all": "AllAgree"}
HUB_DATASET = "takala/financial_phrasebank"
HUB_ZIP = "data/FinancialPhraseBank-v1.0.zip"
SPLITS = ("train", "val", "test")


class PhraseBankFormatError(InputError):
    """A line that is not ``sentence@label`` with a known label in latin-1 text."""


@dataclass(frozen=True)
class Sentence:
    id: str
    text: str
    label: str


def sentence_id(text: str) -> str:
    """A stable id from the text itself, equal across agreement levels and file copies."""
    return "fpb-" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def comparable(text: str) -> str:
    """The text reduced to lower-case letters and digits, the form in which sentences are
    compared to keep evaluation sentences out of training: PhraseBank's tokenised spacing
    ("not disclosed .") and a news copy ("Not disclosed.") compare equal."""
    return "".join(filter(str.isalnum, text.casefold()))  # a generator was 1.5x slower


def agreement_file_name(agreement: str | int) -> str:
    key = str(agreement).lower().removesuffix("agree")
    if key not in AGREEMENT_FILES:
        raise ValueError(f"agreement must be one of 50, 66, 75, all; got {agreement!r}")
    return f"Sentences_{AGREEMENT_FILES[key]}.txt"


def parse_lines(raw: bytes, origin: str) -> list[Sentence]:
    """Parse the bytes of one PhraseBank file; every row, duplicates included.

    Raises:
        PhraseBankFormatError: naming ``origin``, the 1-based line number and the content of the
            first line with no ``@``, an unknown label, or bytes that latin-1 leaves unassigned
            (C0/C1 control characters, the mark of a file saved in another encoding).
    """
    rows = []
    for number, line in enumerate(raw.split(b"\n"), 1):
        line = line.removesuffix(b"\r")
        if not line.strip():
            continue
        text = line.decode("latin-1")
        bad = [c for c in text if (ord(c) < 0x20 and c != "\t") or 0x7F <= ord(c) <= 0x9F]
        if bad:
            raise PhraseBankFormatError(
                f"{origin}:{number}: undecodable byte {ord(bad[0]):#04x} (not latin-1 text): "
                f"{text!r}"
            )
        sentence, at, label = text.rpartition("@")
        if not at:
            raise PhraseBankFormatError(f"{origin}:{number}: no '@' before a label: {text!r}")
        label = label.strip()
        if label not in LABELS:
            raise PhraseBankFormatError(
                f"{origin}:{number}: unknown label {label!r} (expected one of {LABELS}): {text!r}"
            )
        sentence = sentence.strip()
        if not sentence:
            raise PhraseBankFormatError(f"{origin}:{number}: empty sentence: {text!r}")
        rows.append(Sentence(sentence_id(sentence), sentence, label))
    return rows


def read_phrasebank(source: str | Path, agreement: str | int = "all") -> list[Sentence]:
    """Every row of one agreement level, duplicates included.

    Args:
        source: a folder holding ``Sentences_*Agree.txt`` (directly or in
            ``FinancialPhraseBank-v1.0/``), a zip of that folder, or ``"hub"`` for the public
            copy (``takala/financial_phrasebank``; needs network).
    """
    name = agreement_file_name(agreement)
    if str(source) == "hub":
        from huggingface_hub import hf_hub_download

        source = hf_hub_download(repo_id=HUB_DATASET, filename=HUB_ZIP, repo_type="dataset")
    path = Path(source).expanduser()
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.namelist() if m.rsplit("/", 1)[-1] == name]
            if not members:
                raise FileNotFoundError(f"{path} has no {name}")
            return parse_lines(archive.read(members[0]), f"{path}!{members[0]}")
    for candidate in (path / name, path / "FinancialPhraseBank-v1.0" / name):
        if candidate.is_file():
            return parse_lines(candidate.read_bytes(), str(candidate))
    raise FileNotFoundError(
        f"no {name} in {path}: give a PhraseBank folder, its zip, or 'hub'"
    )


def unlabelled_sentences(source: str | Path, agreement: str | int,
                         held_out: list[Sentence]) -> list[str]:
    """The texts of one agreement level except ``held_out`` (the evaluation split's val and
    test sentences): in-domain text for the teacher to label, its gold labels unused."""
    excluded = {comparable(row.text) for row in held_out}
    texts = dict.fromkeys(row.text for row in read_phrasebank(source, agreement))
    return [text for text in texts if comparable(text) not in excluded]


def calibration_texts(train: list[Sentence], count: int, seed: int) -> list[str]:
    """``count`` sentences of the training split, shuffled by ``seed``: what INT8 calibrates
    on (never a val or test sentence)."""
    texts = [row.text for row in train]
    random.Random(seed).shuffle(texts)
    return texts[:count]


def deduplicate(rows: list[Sentence]) -> tuple[list[Sentence], dict[str, int]]:
    """Keep the first copy of each sentence; drop sentences whose copies disagree on the label.

    Returns:
        The unique sentences in file order, and counts of what was removed.
    """
    labels_by_text: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        labels_by_text[row.text].add(row.label)
    seen: set[str] = set()
    unique = []
    for row in rows:
        if row.text in seen or len(labels_by_text[row.text]) > 1:
            continue
        seen.add(row.text)
        unique.append(row)
    conflicting = sum(len(labels) > 1 for labels in labels_by_text.values())
    return unique, {
        "rows": len(rows),
        "unique": len(unique),
        "duplicate_rows_removed": len(rows) - len(unique),
        "conflicting_sentences_removed": conflicting,
    }


def stratified_split(
    rows: list[Sentence], fractions: tuple[float, float, float], seed: int
) -> dict[str, list[Sentence]]:
    """Seeded train/val/test split that keeps each label's share in every split."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    by_label: dict[str, list[Sentence]] = defaultdict(list)
    for row in rows:
        by_label[row.label].append(row)
    rng = random.Random(seed)
    splits: dict[str, list[Sentence]] = {name: [] for name in SPLITS}
    for label in sorted(by_label):
        group = sorted(by_label[label], key=lambda r: r.id)  # independent of file order
        rng.shuffle(group)
        n_train = round(fractions[0] * len(group))
        n_val = round(fractions[1] * len(group))
        splits["train"] += group[:n_train]
        splits["val"] += group[n_train : n_train + n_val]
        splits["test"] += group[n_train + n_val :]
    for name in SPLITS:
        rng.shuffle(splits[name])
    return splits


def split_hash(splits: dict[str, list[Sentence]]) -> str:
    """A fingerprint of which sentence, with which label, is in which split."""
    digest = hashlib.sha256()
    for name in SPLITS:
        for row in sorted(splits[name], key=lambda r: r.id):
            digest.update(f"{name}\t{row.id}\t{row.label}\n".encode())
    return digest.hexdigest()[:16]


def write_splits(splits: dict[str, list[Sentence]], folder: str | Path) -> Path:
    """Write ``<folder>/<split>.csv`` (id, text, label), each file replaced atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["id", "text", "label"])
        writer.writerows([row.id, row.text, row.label] for row in rows)
        tmp = folder / f".{name}.csv.tmp"
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
        tmp.replace(folder / f"{name}.csv")
    return folder


def read_split_file(path: str | Path) -> list[Sentence]:
    """Read a split written by :func:`write_splits`, or any CSV with ``text`` and ``label``
    columns (``id`` optional: the row number), e.g. to score an outside model."""
    path = Path(path)
    if not path.is_file():
        raise PhraseBankFormatError(f"{path}: no such file")
    reader = csv.DictReader(io.StringIO(read_utf8(path), newline=""))
    missing = [name for name in ("text", "label") if name not in (reader.fieldnames or [])]
    if missing:
        raise PhraseBankFormatError(f"{path}: no {' or '.join(missing)} column; columns: "
                                    f"{', '.join(reader.fieldnames or []) or 'none'}")
    rows = [Sentence(r.get("id") or str(number), r["text"] or "", r["label"])
            for number, r in enumerate(reader, 1)]
    unknown = Counter(r.label for r in rows if r.label not in LABELS)
    if unknown:
        raise PhraseBankFormatError(f"{path}: unknown labels {dict(unknown)}")
    return rows
