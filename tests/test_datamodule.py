import random

import pytest
import torch

from fincompress.data.batching import LengthGroupedBatchSampler
from fincompress.data.datamodule import NewsDataModule, PhraseBankDataModule, tokenize_cached
from fincompress.data.phrasebank import read_split_file

from .conftest import NEWS_DIR, PHRASEBANK_DIR


def _datamodule(tokenizer, tmp_path, **kwargs):
    return PhraseBankDataModule(source=str(PHRASEBANK_DIR), tokenizer=tokenizer,
                                cache_dir=str(tmp_path / "cache"), split_dir=str(tmp_path / "split"),
                                batch_size=16, **kwargs)


def test_batches_are_padded_to_their_own_longest(data_dir, minilm_tokenizer, tmp_path):
    datamodule = _datamodule(minilm_tokenizer, tmp_path)
    datamodule.setup()
    for batch in datamodule.train_dataloader():
        lengths = batch["attention_mask"].sum(dim=1)
        assert batch["input_ids"].shape[1] == lengths.max()
        assert set(batch) == {"input_ids", "attention_mask", "labels", "index"}
    assert sum(len(b["index"]) for b in datamodule.test_dataloader()) == len(
        read_split_file(tmp_path / "split" / "test.csv"))


def test_length_grouping_cuts_padding_and_covers_every_item_once():
    rng = random.Random(0)
    lengths = [rng.randint(8, 120) for _ in range(2000)]

    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b)
                   for b in batches)

    grouped = list(LengthGroupedBatchSampler(lengths, 32, shuffle=True, seed=1))
    shuffled = list(range(2000))
    rng.shuffle(shuffled)
    plain = [shuffled[i : i + 32] for i in range(0, 2000, 32)]
    assert sorted(i for b in grouped for i in b) == list(range(2000))
    assert padding(grouped) < 0.5 * padding(plain)
    sampler = LengthGroupedBatchSampler(lengths, 32, shuffle=True, seed=1)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first  # a new order every epoch
    sampler.skip = 5  # a run resumed after five batches of this epoch: the rest, in order
    assert list(sampler) == second[5:]
    assert list(sampler) == second  # one pass only


def test_under_ddp_each_rank_takes_its_share_of_every_batch(monkeypatch):
    """Two ranks split each batch one process would train on: together they cover it exactly,
    in the same order, with the same number of steps each; a batch too small to split is left
    out of training, and in evaluation leaves one rank without a share of it."""
    import fincompress.data.batching as batching

    def batches(lengths, shuffle, rank=None):
        if rank is not None:
            monkeypatch.setattr(batching, "replicas", lambda: (rank, 2))
        sampler = LengthGroupedBatchSampler(lengths, 8, shuffle, seed=3)
        return len(sampler), list(sampler)

    lengths = [random.Random(i).randint(3, 40) for i in range(101)]  # 12 batches of 8 and one of 5
    for shuffle in (True, False):
        monkeypatch.undo()
        _, alone = batches(lengths, shuffle)
        (size0, rank0), (size1, rank1) = batches(lengths, shuffle, 0), batches(lengths, shuffle, 1)
        assert size0 == size1 == len(rank0) == len(rank1) == len(alone) == 13
        assert [a + b for a, b in zip(rank0, rank1)] == alone
    nine = lengths[:9]  # a batch of 8 and one of 1
    _, rank0 = batches(nine, True, 0)
    _, rank1 = batches(nine, True, 1)
    assert len(rank0) == len(rank1) == 1 and len(rank0[0] + rank1[0]) == 8
    _, rank0 = batches(nine, False, 0)
    _, rank1 = batches(nine, False, 1)
    assert sorted(i for batch in rank0 + rank1 for i in batch) == list(range(9))
    assert sorted([len(rank0), len(rank1)]) == [1, 2]  # the batch of 1 goes to one rank
    # three ranks and a batch of 4: shares of 1, 1 and 2, none empty (a rank without a share
    # of a training batch would leave the others waiting for it)
    sizes = []
    for rank in range(3):
        monkeypatch.setattr(batching, "replicas", lambda rank=rank: (rank, 3))
        sizes.append([len(b) for b in LengthGroupedBatchSampler(lengths[:4], 8, True, seed=3)])
    assert sorted(sum(sizes, [])) == [1, 1, 2]


def test_tokenization_is_cached_across_runs(minilm_tokenizer, tmp_path):
    calls = []

    class CountingTokenizer:
        backend_tokenizer = minilm_tokenizer.backend_tokenizer

        def __call__(self, texts, **kwargs):
            calls.append(len(texts))
            return minilm_tokenizer(texts, **kwargs)

    texts = ["Profit rose.", "Sales fell sharply in the third quarter ."]
    first = tokenize_cached(texts, CountingTokenizer(), 128, tmp_path)
    second = tokenize_cached(texts, CountingTokenizer(), 128, tmp_path)
    assert first == second and calls == [2]
    tokenize_cached(texts, CountingTokenizer(), 16, tmp_path)  # another max_length: new entry
    assert calls == [2, 2]
    assert not list(tmp_path.glob("*.tmp*"))


def test_split_written_and_labels_match(data_dir, minilm_tokenizer, tmp_path):
    datamodule = _datamodule(minilm_tokenizer, tmp_path)
    datamodule.setup()
    test_rows = read_split_file(tmp_path / "split" / "test.csv")
    assert [r.id for r in test_rows] == [r.id for r in datamodule.splits["test"]]
    labels = torch.cat([b["labels"] for b in datamodule.test_dataloader()])
    index = torch.cat([b["index"] for b in datamodule.test_dataloader()])
    gold = [["negative", "neutral", "positive"].index(test_rows[i].label) for i in index]
    assert labels.tolist() == gold
    assert datamodule.info["test_size"] == len(test_rows) > 300


def test_wrong_label_order_is_refused(minilm_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="PhraseBank labels are"):
        _datamodule(minilm_tokenizer, tmp_path, labels=["positive", "negative", "neutral"])


def test_news_datamodule_tokenizes_its_corpus_once(data_dir, minilm_tokenizer, tmp_path):
    datamodule = NewsDataModule(sources=[str(NEWS_DIR / "seeking_alpha")], max_sentences=200,
                                exclude_phrasebank=str(PHRASEBANK_DIR), tokenizer=minilm_tokenizer,
                                cache_dir=str(tmp_path))
    datamodule.setup()
    assert len(datamodule.dataset) == len(datamodule.corpus.sentences) == 200
    first = datamodule.corpus.sentences[0]
    assert datamodule.dataset.input_ids[0] == minilm_tokenizer(first, truncation=True,
                                                              max_length=128)["input_ids"]
    assert "labels" not in datamodule.dataset[0]
