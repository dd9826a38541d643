"""Unlabelled financial text for pseudo-labelling: readers, cleaning, de-duplication, sampling.

Readers: Reuters-21578 SGML (titles and bodies, entities decoded, bodies split into
sentences), CSV with a named text column, plain text with one item per line, and JSONL with
a named text field. :func:`build_news_corpus` cleans (whitespace, links), applies length
limits, removes duplicates and every Financial PhraseBank sentence (so no test sentence leaks
into training), holds out a seeded share of chosen files for robustness scoring
(:func:`held_out`), subsamples deterministically, and reports what each step removed.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fnmatch
import hashlib
import html
import io
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from fincompress.data import phrasebank
from fincompress.data.phrasebank import comparable
from fincompress.errors import InputError, read_utf8
from fincompress.files import write_json

_REUTERS_STORY = re.compile(r"<REUTERS\b[^>]*>(.*?)</REUTERS>", re.S)
_TITLE = re.compile(r"<TITLE>(.*?)</TITLE>", re.S)
_BODY = re.compile(r"<BODY>(.*?)</BODY>", re.S)
_LINK = re.compile(r"(https?://\S+|www\.\S+)")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# A sentence ends at . ! or ? followed by space and an upper-case letter, digit or quote,
# unless the full stop closes a short abbreviation ("U.S.", "Corp.", "Mr.").
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'A-Z0-9(])")
_ABBREVIATION = re.compile(
    r"(\b[A-Z]\.|\b(?:Mr|Mrs|Ms|Dr|Inc|Corp|Co|Ltd|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept?|Oct|Nov|"
    r"Dec|No|St|vs|Bros|Dlrs|dlrs|approx|est)\.)$"
)


class NewsFormatError(InputError):
    """A news file that cannot be read as the format it was given as."""


def split_sentences(text: str) -> list[str]:
    """Split running text into sentences; abbreviations do not end a sentence."""
    pieces = _SENTENCE_END.split(text.strip())
    sentences: list[str] = []
    for piece in pieces:
        if sentences and _ABBREVIATION.search(sentences[-1]):
            sentences[-1] = f"{sentences[-1]} {piece}"
        else:
            sentences.append(piece)
    return [s for s in sentences if s]


def read_reuters_sgml(path: str | Path) -> list[str]:
    """Titles and body sentences of every story in one Reuters-21578 ``.sgm`` file."""
    raw = Path(path).read_bytes().decode("latin-1")  # ASCII or latin-1; never fails
    stories = _REUTERS_STORY.findall(raw)
    if not stories and raw.strip():
        raise NewsFormatError(f"{path}: no <REUTERS> stories; is this a Reuters-21578 .sgm file?")
    texts = []
    for story in stories:
        title = _TITLE.search(story)
        if title:
            texts.append(_decode(title.group(1)))
        body = _BODY.search(story)
        if body:
            text = _decode(body.group(1))
            text = re.sub(r"\s*Reuter\s*$", "", text)  # the wire's sign-off, not content
            texts.extend(split_sentences(text))
    return texts


def _decode(sgml_text: str) -> str:
    return re.sub(r"\s+", " ", _CONTROL.sub(" ", html.unescape(sgml_text))).strip()


def read_csv_column(path: str | Path, text_column: str) -> list[str]:
    reader = csv.DictReader(io.StringIO(read_utf8(path), newline=""))
    if text_column not in (reader.fieldnames or []):
        raise NewsFormatError(
            f"{path}: no column {text_column!r}; columns are {reader.fieldnames}"
        )
    try:
        with csv_field_limit():
            return [row[text_column] or "" for row in reader]
    except csv.Error as error:
        raise NewsFormatError(f"{path} line {reader.line_num}: not CSV ({error})") from None


def read_lines(path: str | Path) -> list[str]:
    return read_utf8(path).splitlines()


def read_jsonl(path: str | Path, text_field: str) -> list[str]:
    texts = []
    for number, line in enumerate(read_utf8(path).split("\n"), 1):
        if not line.strip():
            continue
        record = parse_json_line(path, number, line)
        if not isinstance(record, dict) or text_field not in record:
            raise NewsFormatError(f"{path} line {number}: no field {text_field!r}: {line[:200]!r}")
        texts.append(str(record[text_field]))
    return texts


def parse_json_line(path: str | Path, number: int, line: str):
    """One JSONL line; not JSON, nested too deeply, or a number too long to read is a
    :class:`NewsFormatError` naming the file and line."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise NewsFormatError(f"{path} line {number}: not JSON ({error.msg}): "
                              f"{line[:200]!r}") from None
    except RecursionError:
        raise NewsFormatError(f"{path} line {number}: JSON nested too deeply to read") from None
    except ValueError as error:  # an integer of thousands of digits
        raise NewsFormatError(f"{path} line {number}: {error}") from None


@contextlib.contextmanager
def csv_field_limit(limit: int = 2**26):
    """Cells up to ``limit`` characters (the csv module stops at 131,072), restored after."""
    previous = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def read_news_file(path: str | Path, text_column: str = "text") -> list[str]:
    """Read one file by its extension: .sgm, .csv, .jsonl, anything else as lines."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".sgm":
        return read_reuters_sgml(path)
    if suffix == ".csv":
        return read_csv_column(path, text_column)
    if suffix in (".jsonl", ".json"):
        return read_jsonl(path, text_column)
    return read_lines(path)


def news_files(sources: list[str | Path]) -> list[Path]:
    """Expand folders (recursively, sorted) into news files; README/licence files are skipped."""
    files: list[Path] = []
    for source in sources:
        path = Path(source).expanduser()
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in {".sgm", ".csv", ".jsonl", ".txt"}
                and not p.name.lower().startswith(("readme", "license", "licence"))
            )
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"news source {path} does not exist")
    return files


def clean_text(text: str) -> str:
    """Remove links and control characters; collapse whitespace."""
    return re.sub(r"\s+", " ", _CONTROL.sub(" ", _LINK.sub(" ", text))).strip()


def held_out(sentence: str, fraction: float, seed: int) -> bool:
    """Whether ``sentence`` is in the seeded robustness hold-out (``fraction`` of sentences):
    decided by its letters and digits alone, so a sentence is held out, or not, whatever file,
    order, subsample or run it comes in."""
    digest = hashlib.sha256(f"{seed}:{comparable(sentence)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


@dataclass
class NewsCorpus:
    sentences: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    per_file: dict[str, int] = field(default_factory=dict)
    # the robustness hold-out by group name: sentences no training corpus may hold
    holdout: dict[str, list[str]] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256("\n".join(self.sentences).encode("utf-8"))
        return digest.hexdigest()[:16]

    def summary(self) -> str:
        steps = ", ".join(f"{key} {value}" for key, value in self.counts.items())
        return f"news corpus: {steps}"


def build_news_corpus(
    sources: list[str | Path],
    text_column: str = "summary",
    min_words: int = 4,
    max_words: int = 64,
    exclude: list[str] | None = None,
    max_sentences: int | None = None,
    seed: int = 0,
    split_long_items: bool = True,
    holdout: dict | None = None,
) -> NewsCorpus:
    """Read, clean, filter, de-duplicate and subsample unlabelled sentences.

    Args:
        sources: files or folders (see :func:`news_files`).
        text_column: CSV column / JSONL field holding the text.
        min_words, max_words: length limits, in whitespace-separated words, after cleaning.
        exclude: sentences that must not appear (every PhraseBank sentence, so no evaluation
            sentence leaks into training); compared as letters and digits only
            (:func:`~fincompress.data.phrasebank.comparable`).
        max_sentences: keep a seeded random subset of this size (None keeps all).
        split_long_items: split multi-sentence CSV/JSONL/line items into sentences.
        holdout: ``{"fraction", "seed", "groups": {name: file-name pattern}}``: of the files a
            group's pattern matches, the sentences :func:`held_out` picks are kept apart (in
            ``corpus.holdout[name]``), and no copy of them, from any file, stays in the corpus.

    Raises:
        ValueError: when nothing is left, naming the step that removed the last sentences.
    """
    files = news_files(sources)
    if not files:
        raise ValueError(f"no news files found in {[str(s) for s in sources]}")
    raw: list[str] = []
    raw_items: dict[str, list[str]] = {}
    per_file: dict[str, int] = {}
    for path in files:
        items = read_news_file(path, text_column)
        if split_long_items and path.suffix.lower() != ".sgm":
            items = [s for item in items for s in split_sentences(clean_text(item))]
        per_file[path.name] = len(items)
        raw_items[path.name] = [clean_text(text) for text in items]  # cleaned once
        raw += raw_items[path.name]
    counts = Counter(read=len(raw))
    kept = [t for t in raw if min_words <= len(t.split()) <= max_words]
    counts["too_short_or_long"] = len(raw) - len(kept)
    unique = list(dict.fromkeys(kept))
    counts["duplicates"] = len(kept) - len(unique)
    groups: dict[str, list[str]] = {}
    hold_out = bool(holdout and holdout.get("fraction"))
    keys = dict(zip(unique, map(comparable, unique))) if exclude or hold_out else {}
    if hold_out:
        groups = holdout_groups(files, unique, sources_of(files, raw_items), holdout)
        kept_apart = {keys[text] for texts in groups.values() for text in texts}
        survivors = [t for t in unique if keys[t] not in kept_apart]
        counts["robustness_holdout"] = len(unique) - len(survivors)
        unique = survivors
    if exclude:
        excluded = {comparable(text) for text in exclude}
        survivors = [t for t in unique if keys[t] not in excluded]
        counts["phrasebank_overlap"] = len(unique) - len(survivors)
        unique = survivors
    if max_sentences is not None and len(unique) > max_sentences:
        counts["subsampled_away"] = len(unique) - max_sentences
        unique = random.Random(seed).sample(unique, max_sentences)
    counts["kept"] = len(unique)
    if not unique:
        names = [str(f) for f in files]
        raise ValueError(f"the news corpus is empty after filtering: {dict(counts)} (files: {names})")
    return NewsCorpus(unique, dict(counts), per_file, groups)


def sources_of(files: list[Path], items: dict[str, list[str]]) -> dict[str, set[str]]:
    """The names of the files each sentence occurs in (``items``: file name -> its cleaned
    sentences)."""
    found: dict[str, set[str]] = {}
    for path in files:
        for text in items[path.name]:
            found.setdefault(text, set()).add(path.name)
    return found


def holdout_groups(files: list[Path], sentences: list[str], source: dict[str, set[str]],
                   holdout: dict) -> dict[str, list[str]]:
    """The hold-out of each group: the ``sentences`` (cleaned, filtered, unique) found in a file
    the group's pattern matches and that :func:`held_out` picks (so reading only those files
    gives the same hold-out as reading them all); a group no file matches is empty."""
    groups = {}
    fraction, seed = holdout["fraction"], holdout["seed"]  # read once: it may be a DictConfig
    for group, pattern in holdout["groups"].items():  # a group no file matches stays empty
        names = set(fnmatch.filter([path.name for path in files], pattern))
        groups[group] = [text for text in sentences
                         if not names.isdisjoint(source.get(text, ()))
                         and held_out(text, fraction, seed)]
    return groups


def stored_news_corpus(cache_dir: str | Path | None, sources: list[str | Path],
                       **settings) -> NewsCorpus:
    """``build_news_corpus(sources, **settings)``, stored as JSON in ``cache_dir`` under a key
    of the news files' names and bytes, the settings and the code that builds it (this module
    and the PhraseBank comparison), so that a later run with the same inputs reads it instead
    of building it again (the shared news: 14 s to build on 2 AVX2 cores). A stored file that
    cannot be read is built again; ``cache_dir`` None: built every time."""
    if cache_dir is None:
        return build_news_corpus(sources, **settings)
    key = hashlib.sha256()
    for module in (__file__, phrasebank.__file__):
        key.update(Path(module).read_bytes())
    key.update(json.dumps(settings, sort_keys=True).encode())
    for path in news_files(sources):
        key.update(f"\0{path.name}\0".encode())
        key.update(path.read_bytes())
    stored = Path(cache_dir) / f"{key.hexdigest()[:24]}.json"
    with contextlib.suppress(OSError, ValueError, TypeError):
        return NewsCorpus(**json.loads(stored.read_text(encoding="utf-8")))
    corpus = build_news_corpus(sources, **settings)
    stored.parent.mkdir(parents=True, exist_ok=True)
    write_json(dataclasses.asdict(corpus), stored)
    return corpus


def robustness_holdout(sources: list[str | Path], holdout: dict, text_column: str = "summary",
                       min_words: int = 4, max_words: int = 64,
                       cache_dir: str | Path | None = None) -> dict[str, list[str]]:
    """The robustness hold-out of the news in ``sources`` (see :func:`build_news_corpus`),
    read from the files its groups name only (stored in ``cache_dir``: see
    :func:`stored_news_corpus`)."""
    patterns = list(holdout["groups"].values())
    files = [path for path in news_files(sources)
             if any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns)]
    if not files:
        return {group: [] for group in holdout["groups"]}
    return stored_news_corpus(cache_dir, files, text_column=text_column, min_words=min_words,
                              max_words=max_words, holdout=holdout_settings(holdout)).holdout


def holdout_settings(holdout) -> dict | None:
    """What decides the robustness hold-out (``fraction``, ``seed``, ``groups``) as a plain dict,
    whether ``holdout`` is a dict or Hydra's DictConfig; None stays None."""
    if not holdout:
        return None
    return {"fraction": holdout["fraction"], "seed": holdout["seed"],
            "groups": dict(holdout["groups"].items())}


def add_sentences(corpus: NewsCorpus, sentences: list[str], name: str) -> NewsCorpus:
    """The corpus plus those of ``sentences`` it lacks, counted as ``<name>_added``."""
    present = {comparable(text) for text in corpus.sentences}
    present |= {comparable(text) for texts in corpus.holdout.values() for text in texts}
    new = []
    for text in sentences:
        if comparable(text) not in present:
            present.add(comparable(text))
            new.append(text)
    counts = {key: value for key, value in corpus.counts.items() if key != "total"}
    counts.update({f"{name}_added": len(new), "total": len(corpus.sentences) + len(new)})
    return NewsCorpus(corpus.sentences + new, counts, {**corpus.per_file, name: len(new)},
                      corpus.holdout)

