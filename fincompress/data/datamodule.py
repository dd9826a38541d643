"""LightningDataModules for Financial PhraseBank and unlabelled news.

Both tokenize once and cache the token ids on disk, keyed by the tokenizer's serialised form,
the maximum length and the texts, so a second run (or a sweep's next job) skips tokenization.
Batches are padded to their own longest sentence and grouped by length
(:mod:`fincompress.data.batching`). The data settings that decide a trained model (the split
and the batch size) are named here once, for every stage's store key (:func:`data_settings`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import datasets
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from fincompress.data.batching import TokenizedDataset, length_grouped_loader
from fincompress.data.news import add_sentences, holdout_settings, stored_news_corpus
from fincompress.data.phrasebank import (
    LABELS,
    SPLITS,
    agreement_file_name,
    deduplicate,
    read_phrasebank,
    split_hash,
    stratified_split,
    write_splits,
)
from fincompress.store import tokenizer_rules


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what the tokenizer does to text: its vocabulary and rules, not the truncation
    and padding state that each call leaves in the backend."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = tokenizer_rules(json.loads(backend.to_str()))
    else:
        text = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(f"{type(tokenizer).__name__}\n{text}".encode()).hexdigest()


def tokenize_cached(
    texts: list[str], tokenizer, max_length: int, cache_dir: str | Path | None
) -> list[list[int]]:
    """Token ids (with special tokens, truncated to ``max_length``) of every text, cached as an
    Arrow file (``datasets``' ``map`` cache, written whole or not at all) keyed by the
    tokenizer, the maximum length and the texts."""
    key = hashlib.sha256()
    key.update(tokenizer_fingerprint(tokenizer).encode())
    key.update(f"\n{max_length}\n".encode())
    for text in texts:
        key.update(text.encode("utf-8") + b"\0")
    if cache_dir is None:
        return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    fingerprint = key.hexdigest()[:24]
    tokenized = datasets.Dataset.from_dict({"text": list(texts)}).map(
        lambda batch: {"input_ids": tokenizer(batch["text"], truncation=True,
                                              max_length=max_length)["input_ids"]},
        batched=True, batch_size=2000, remove_columns=["text"], new_fingerprint=fingerprint,
        cache_file_name=str(Path(cache_dir) / f"{fingerprint}.arrow"), load_from_cache_file=True,
        desc="tokenizing", features=datasets.Features(
            {"input_ids": datasets.Sequence(datasets.Value("int32"))}))
    return tokenized.to_dict()["input_ids"]


class PhraseBankDataModule(L.LightningDataModule):
    """Financial PhraseBank with fixed, written-out splits.

    Args:
        source: PhraseBank folder, zip, or ``"hub"``.
        agreement: 50, 66, 75 or all.
        split_fractions: train/val/test fractions (stratified by label).
        seed: split seed (the split, not training, so that all runs share a test set).
        tokenizer: set by the caller (the model's tokenizer).
        max_per_split: keep only the first N sentences of each split (tests, smoke runs).
        split_dir: where the split CSVs are written (the run's output folder).
    """

    def __init__(
        self,
        source: str,
        agreement: str | int = "all",
        split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
        seed: int = 42,
        tokenizer=None,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        cache_dir: str | None = None,
        split_dir: str | None = None,
        max_per_split: int | None = None,
        labels: list[str] | None = None,
    ):
        super().__init__()
        labels = list(LABELS) if labels is None else list(labels)
        if labels != list(LABELS):
            raise ValueError(f"PhraseBank labels are {list(LABELS)}, config says {list(labels)}")
        self.source = source
        self.agreement = agreement
        self.split_fractions = tuple(split_fractions)
        self.seed = seed
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.cache_dir = cache_dir
        self.split_dir = split_dir
        self.max_per_split = max_per_split
        self.labels = labels
        self.splits = None
        self.datasets: dict[str, TokenizedDataset] = {}
        self.info: dict = {}

    def prepare_splits(self) -> None:
        """Read, de-duplicate and split; write the split files. Idempotent."""
        if self.splits is not None:
            return
        unique, counts = deduplicate(read_phrasebank(self.source, self.agreement))
        splits = stratified_split(unique, self.split_fractions, self.seed)
        if self.max_per_split:
            splits = {name: rows[: self.max_per_split] for name, rows in splits.items()}
        self.splits = splits
        self.info = {
            "agreement": agreement_file_name(self.agreement).removeprefix("Sentences_")
            .removesuffix(".txt"),
            **counts,
            **{f"{name}_size": len(rows) for name, rows in splits.items()},
            "split_hash": split_hash(splits),
        }
        if self.split_dir:
            write_splits(splits, self.split_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            raise ValueError("PhraseBankDataModule needs a tokenizer before setup()")
        self.prepare_splits()
        label_ids = {label: i for i, label in enumerate(self.labels)}
        for name in SPLITS:
            if name in self.datasets:
                continue
            rows = self.splits[name]
            input_ids = tokenize_cached([r.text for r in rows], self.tokenizer, self.max_length,
                                        self.cache_dir)
            self.datasets[name] = TokenizedDataset(input_ids, [label_ids[r.label] for r in rows])

    def loader(self, name: str, shuffle: bool) -> DataLoader:
        return length_grouped_loader(self.datasets[name],
                                     self.batch_size if shuffle else self.eval_batch_size,
                                     self.tokenizer.pad_token_id, shuffle, self.seed,
                                     self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.loader("test", shuffle=False)


class NewsDataModule(L.LightningDataModule):
    """Unlabelled news sentences for the teacher to label, tokenized once (``dataset``).

    Args:
        sources: news files or folders.
        exclude_phrasebank: a PhraseBank source whose sentences (50Agree, the largest level)
            are removed from the corpus; None to keep everything.
        max_sentences: seeded subsample size.
        extra_sentences: in-domain sentences added after subsampling, by name (see
            ``distill.pseudo_label.add_phrasebank`` and ``augment``), each group counted as
            ``<name>_added``.
        holdout: the robustness hold-out (``fraction``, ``seed``, ``groups``), kept out of the
            corpus (see :func:`~fincompress.data.news.build_news_corpus`).
        corpus_cache_dir: where the built corpus is stored for later runs with the same files
            and settings (see :func:`~fincompress.data.news.stored_news_corpus`); None: none.
    """

    def __init__(
        self,
        sources: list[str],
        text_column: str = "summary",
        min_words: int = 4,
        max_words: int = 64,
        max_sentences: int | None = None,
        exclude_phrasebank: str | None = None,
        seed: int = 0,
        tokenizer=None,
        max_length: int = 128,
        batch_size: int = 32,
        num_workers: int = 0,
        cache_dir: str | None = None,
        extra_sentences: dict[str, list[str]] | None = None,
        holdout: dict | None = None,
        corpus_cache_dir: str | None = None,
    ):
        super().__init__()
        self.corpus_cache_dir = corpus_cache_dir
        self.sources = list(sources)
        self.extra_sentences = extra_sentences
        self.holdout = holdout
        self.text_column = text_column
        self.min_words = min_words
        self.max_words = max_words
        self.max_sentences = max_sentences
        self.exclude_phrasebank = exclude_phrasebank
        self.seed = seed
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size  # of stage-1 training on the pseudo-labelled sentences
        self.num_workers = num_workers
        self.cache_dir = cache_dir
        self.corpus = None
        self.dataset: TokenizedDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            raise ValueError("NewsDataModule needs a tokenizer before setup()")
        if self.corpus is None:
            exclude = None
            if self.exclude_phrasebank:
                exclude = [r.text for r in read_phrasebank(self.exclude_phrasebank, "50")]
            self.corpus = stored_news_corpus(
                self.corpus_cache_dir, self.sources, text_column=self.text_column,
                min_words=self.min_words, max_words=self.max_words, exclude=exclude,
                max_sentences=self.max_sentences, seed=self.seed,
                holdout=holdout_settings(self.holdout))
            for name, sentences in (self.extra_sentences or {}).items():
                self.corpus = add_sentences(self.corpus, sentences, name)
        if self.dataset is None:
            input_ids = tokenize_cached(self.corpus.sentences, self.tokenizer, self.max_length,
                                        self.cache_dir)
            self.dataset = TokenizedDataset(input_ids)


# data settings that decide the split and tokenization (not where files go or batch sizes)
SPLIT_KEYS = ("source", "agreement", "split_fractions", "seed", "labels", "max_length",
              "max_per_split")


def split_settings(cfg: DictConfig) -> dict:
    data = OmegaConf.to_container(cfg.data, resolve=True)
    return {key: data[key] for key in SPLIT_KEYS}


def data_settings(cfg: DictConfig) -> dict:
    """PhraseBank settings that decide a trained model: the split and the batch size."""
    return {**split_settings(cfg), "batch_size": cfg.data.batch_size}


def phrasebank_split(cfg: DictConfig, split_dir: str | Path | None = None) -> PhraseBankDataModule:
    """The configured PhraseBank split, read and split but not tokenized; its files are written
    to ``split_dir`` when one is given."""
    split = instantiate(cfg.data, tokenizer=None, split_dir=None if split_dir is None
                        else str(split_dir))
    split.prepare_splits()
    return split
