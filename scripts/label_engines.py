"""Pseudo-labelling engines side by side on this machine: which one labels a corpus fastest on
its cores, and what each offers beyond speed.

    python scripts/label_engines.py --teacher <model folder> [--sentences 2000] [--repeats 2]

The same teacher labels the same news sentences (the first ``--sentences`` of the news corpus,
cut at ``--max-length`` tokens, batches of ``--batch-size``, the precision ``auto`` picks here)
with each engine, in turn, for ``--repeats`` rounds (the best counts). Each time runs from the
call to every sentence's logits in hand, so process start-up and model loading are counted:

- ``one process``: fincompress's predictor, all cores' threads in one process;
- ``store shards, 2 processes``: fincompress's engine, ``label_in_shards`` in 2 processes of
  one thread each that share the shards through the stage store (as workers on several
  machines do over a shared file system);
- ``datasets.map, num_proc=2``: Hugging Face datasets' map over 2 processes of one thread each,
  each loading the teacher once;
- ``Lightning predict, DDP 2 processes``: ``Trainer.predict`` with ``strategy=ddp`` (2 forked
  processes of one thread each, Lightning's distributed sampler), each rank writing its share.

Every engine's logits are checked against the one-process logits. Writes ``engines.json`` and
``engines.md`` under ``--output``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fincompress.tables import markdown_table

LABELS = ["negative", "neutral", "positive"]


def load(teacher: str, threads: int):
    from fincompress.hardware import resolve_precision
    from fincompress.predict import load as load_predictor

    torch.set_num_threads(threads)
    return load_predictor(teacher, LABELS, resolve_precision("auto")[0], threads=threads)


def one_process(teacher: str, sentences: list[str], args) -> np.ndarray:
    predictor = load(teacher, len(os.sched_getaffinity(0)))
    return predictor.logits(sentences, batch_size=args.batch_size, max_length=args.max_length)


def shard_worker(teacher: str, sentences: list[str], root: str, shard_size: int,
                 batch_size: int, max_length: int) -> None:
    from fincompress.stages.pseudo_labels import label_in_shards

    predictor = load(teacher, 1)

    def label(rows):
        logits = predictor.logits([sentences[row] for row in rows], batch_size=batch_size,
                                  max_length=max_length)
        return torch.from_numpy(logits), torch.zeros(len(rows), 0)

    label_in_shards(root, {"teacher": teacher, "engine": "probe"}, sentences, shard_size, label)


def store_shards(teacher: str, sentences: list[str], args) -> np.ndarray:
    from fincompress.stages.pseudo_labels import label_in_shards

    root = tempfile.mkdtemp(prefix="label_engines_")
    try:
        context = multiprocessing.get_context("fork")  # as datasets.map and Lightning here
        workers = [context.Process(target=shard_worker, args=(
            teacher, sentences, root, args.shard_size, args.batch_size, args.max_length))
            for _ in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
            if worker.exitcode != 0:
                raise RuntimeError(f"a shard worker exited with {worker.exitcode}")
        # every shard is stored: this reads them back, in order
        logits, _ = label_in_shards(root, {"teacher": teacher, "engine": "probe"}, sentences,
                                    args.shard_size, label=None)
        return logits.numpy()
    finally:
        shutil.rmtree(root, ignore_errors=True)


_PREDICTOR = {}


def map_batch(batch: dict, teacher: str, batch_size: int, max_length: int) -> dict:
    if "predictor" not in _PREDICTOR:  # once per datasets process
        _PREDICTOR["predictor"] = load(teacher, 1)
    logits = _PREDICTOR["predictor"].logits(batch["text"], batch_size=batch_size,
                                            max_length=max_length)
    return {"logits": logits.tolist()}


def datasets_map(teacher: str, sentences: list[str], args) -> np.ndarray:
    import datasets

    with tempfile.TemporaryDirectory() as cache:
        data = datasets.Dataset.from_dict({"text": sentences})
        labelled = data.map(map_batch, batched=True, batch_size=args.shard_size, num_proc=2,
                            fn_kwargs={"teacher": teacher, "batch_size": args.batch_size,
                                       "max_length": args.max_length},
                            cache_file_name=str(Path(cache) / "labelled.arrow"),
                            remove_columns=["text"])
        return np.asarray(labelled["logits"], dtype=np.float32)


def lightning_predict(teacher: str, sentences: list[str], args) -> np.ndarray:
    import lightning as L
    from lightning.pytorch.strategies import DDPStrategy

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.predictor = None

        def setup(self, stage):
            self.predictor = load(teacher, 1)  # in each forked rank

        def predict_step(self, batch, batch_index):
            indices = batch.tolist()
            logits = self.predictor.logits([sentences[i] for i in indices],
                                           batch_size=args.batch_size, max_length=args.max_length)
            return indices, logits

    with tempfile.TemporaryDirectory() as out:
        class Writer(L.Callback):  # forked ranks cannot return predictions: each saves its own
            def __init__(self):
                self.rows = []

            def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_index):
                self.rows.extend(zip(*outputs))

            def on_predict_epoch_end(self, trainer, pl_module):
                torch.save(self.rows, Path(out) / f"rank{trainer.global_rank}.pt")

        loader = torch.utils.data.DataLoader(torch.arange(len(sentences)),
                                             batch_size=args.shard_size)
        trainer = L.Trainer(accelerator="cpu", devices=2,
                            strategy=DDPStrategy(start_method="fork"), logger=False,
                            enable_progress_bar=False, callbacks=[Writer()])
        trainer.predict(Module(), loader, return_predictions=False)
        logits = np.zeros((len(sentences), len(LABELS)), dtype=np.float32)
        for part in Path(out).glob("rank*.pt"):
            for i, row in torch.load(part, weights_only=False):
                logits[i] = row  # the distributed sampler pads with repeats: same rows again
        return logits


ENGINES = {"one process": one_process, "store shards, 2 processes": store_shards,
           "datasets.map, num_proc=2": datasets_map,
           "Lightning predict, DDP 2 processes": lightning_predict}


def news_sentences(count: int) -> list[str]:
    from hydra import compose, initialize_config_module

    from fincompress.data.news import build_news_corpus

    with initialize_config_module(config_module="fincompress.conf", version_base="1.3"):
        news = compose(config_name="train", overrides=[f"news.max_sentences={count}"]).news
    return build_news_corpus(news.sources, news.text_column, news.min_words, news.max_words,
                             max_sentences=count, seed=news.seed, holdout=news.holdout).sentences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", required=True, help="the teacher's model folder")
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--shard-size", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", default="outputs/label_engines")
    args = parser.parse_args()
    sentences = news_sentences(args.sentences)
    times: dict[str, list[float]] = {name: [] for name in ENGINES}
    reference = None
    agreement = {}
    for _ in range(args.repeats):
        for name, engine in ENGINES.items():
            started = time.perf_counter()
            logits = engine(args.teacher, sentences, args)
            times[name].append(time.perf_counter() - started)
            if reference is None:
                reference = logits
            agreement[name] = float((logits.argmax(1) == reference.argmax(1)).mean())
            print(f"{name}: {times[name][-1]:.1f} s, label agreement with one process "
                  f"{agreement[name]:.4f}", flush=True)
    from fincompress.hardware import cpu_info

    rows = [{"engine": name, "best s": f"{min(t):.1f}",
             "sentences/s": f"{len(sentences) / min(t):.1f}",
             "the rounds (s)": ", ".join(f"{x:.1f}" for x in t),
             "agreement with one process": round(agreement[name], 4)} for name, t in times.items()]
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    machine = cpu_info()
    (output / "engines.json").write_text(json.dumps(
        {"machine": machine, "sentences": len(sentences), "teacher": args.teacher,
         "settings": vars(args), "rows": rows}, indent=2))
    table = markdown_table(rows, list(rows[0]))
    (output / "engines.md").write_text(f"{machine['cpu']}, {len(sentences)} sentences\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
