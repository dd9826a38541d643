"""Batches of token ids, light enough for the runtime (no Lightning): a dataset of token ids
with per-item extras, a sampler that groups sentences of similar length, padding to each
batch's longest sentence, and the one function that builds such a loader.

Sorting within shuffled pools of ``pool_batches`` batches halves the padding and nearly
doubles CPU speed, while batch order stays random.

Under DDP (a process group of N ranks), every rank draws the same batches and takes its own
N-th of each: the N ranks together train on the batch one process would, so the averaged
gradient is the one process's (Lightning's DistributedSampler, which deals single sentences
to ranks, cannot wrap a batch sampler: ``use_distributed_sampler: false`` in ``trainer=ddp``).
"""

from __future__ import annotations

import functools
import random

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class TokenizedDataset(Dataset):
    """Token ids, optional labels, and optional per-item tensors (``extras``, e.g. the
    teacher's cached logits) that batches carry under the same names."""

    def __init__(self, input_ids: list[list[int]], labels: list[int] | None = None,
                 extras: dict[str, torch.Tensor] | None = None):
        if labels is not None and len(labels) != len(input_ids):
            raise ValueError(f"{len(labels)} labels for {len(input_ids)} texts")
        for name, values in (extras or {}).items():
            if len(values) != len(input_ids):
                raise ValueError(f"{len(values)} {name} for {len(input_ids)} texts")
        self.input_ids = input_ids
        self.labels = labels
        self.extras = extras or {}

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict:
        item = {"input_ids": self.input_ids[index], "index": index}
        if self.labels is not None:
            item["labels"] = self.labels[index]
        item.update({name: values[index] for name, values in self.extras.items()})
        return item

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of similar length.

    With ``shuffle``: indices are shuffled, cut into pools of ``pool_batches`` batches, each pool
    sorted by length and cut into batches, and the batches shuffled (a new order each epoch).
    Without: one pass in order of length, for evaluation.
    """

    def __init__(self, lengths: list[int], batch_size: int, shuffle: bool, seed: int = 0,
                 pool_batches: int = 50):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.lengths = lengths
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.pool_batches = pool_batches
        self.epoch = 0
        self.skip = 0  # batches the next pass leaves out: those a resumed run already trained on

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.batches()) if replicas()[1] > 1 else -(-len(self.lengths) // self.batch_size)

    def __iter__(self):
        skip, self.skip = self.skip, 0
        rank, ranks = replicas()
        for batch in self.batches()[skip:]:
            if ranks > 1:
                # contiguous shares of the batch sorted by length (each rank pads little), their
                # sizes one apart at most: none is empty where the batch has a sentence per rank
                batch = batch[rank * len(batch) // ranks:(rank + 1) * len(batch) // ranks]
            if batch:  # an evaluation batch smaller than the ranks leaves some without a share
                yield batch

    def batches(self) -> list[list[int]]:
        """This epoch's batches, in order."""
        indices = list(range(len(self.lengths)))
        if not self.shuffle:
            indices.sort(key=lambda i: self.lengths[i])
            return _chunks(indices, self.batch_size)
        rng = random.Random(self.seed + self.epoch)
        rng.shuffle(indices)
        pool = self.batch_size * self.pool_batches
        batches = []
        for start in range(0, len(indices), pool):
            group = sorted(indices[start : start + pool], key=lambda i: self.lengths[i])
            batches += _chunks(group, self.batch_size)
        rng.shuffle(batches)
        if replicas()[1] > 1:  # every rank needs a share of every batch it steps on
            batches = [batch for batch in batches if len(batch) >= replicas()[1]]
        return batches


def replicas() -> tuple[int, int]:
    """This process's rank and the number of ranks: (0, 1) outside a DDP process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def pad_collate(pad_token_id: int):
    """Collate function padding ``input_ids`` to the longest sequence in the batch (a partial
    of a module function, so that a loader pickles: DDP started by spawn sends it pickled)."""
    return functools.partial(collate_padded, pad_token_id=pad_token_id)


def collate_padded(items: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    longest = max(len(item["input_ids"]) for item in items)
    input_ids = torch.full((len(items), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(items), longest), dtype=torch.long)
    for row, item in enumerate(items):
        ids = item["input_ids"]
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "index": torch.tensor([item["index"] for item in items]),
    }
    if "labels" in items[0]:
        batch["labels"] = torch.tensor([item["labels"] for item in items])
    for name in items[0].keys() - {"input_ids", "index", "labels"}:
        batch[name] = torch.stack([item[name] for item in items])
    return batch


def length_grouped_loader(dataset: TokenizedDataset, batch_size: int, pad_token_id: int,
                          shuffle: bool, seed: int = 0, num_workers: int = 0) -> DataLoader:
    """Batches of ``dataset`` grouped by length (shuffled pools for training, one sorted pass
    for evaluation), each padded to its own longest sentence."""
    return DataLoader(
        dataset,
        batch_sampler=LengthGroupedBatchSampler(dataset.lengths, batch_size, shuffle, seed),
        collate_fn=pad_collate(pad_token_id),
        num_workers=num_workers,
    )
