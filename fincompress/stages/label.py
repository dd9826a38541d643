"""Pseudo-labelling alone, behind ``python train.py +experiment=label``: the teacher labels the
news corpus and the PhraseBank transfer text into the stored cache that distillation reads.

The labelling runs in shards (``distill.pseudo_label.shard_size``), each stored as it
finishes. Start the command on as many processes or machines as there are, all with the same
``paths.output_root`` (a shared file system): each labels the shards nobody else has taken,
and the first to find them all done merges them into the cache (the others then reuse it).
A killed worker loses only the shard it was labelling.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from omegaconf import DictConfig

from fincompress.data.datamodule import phrasebank_split
from fincompress.files import write_json
from fincompress.models.sources import load_classifier
from fincompress.stages.distill import label_news, news_corpus
from fincompress.stages.teacher import ensure_teacher
from fincompress.training import choose_precision


def run_label(cfg: DictConfig) -> dict:
    started = time.perf_counter()
    choose_precision(cfg)  # the labels' store key names the precision, as distillation's does
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    split = phrasebank_split(cfg)  # its val and test sentences never join the corpus
    teacher_dir = ensure_teacher(cfg)
    teacher = load_classifier(str(teacher_dir), list(cfg.data.labels))
    news = news_corpus(cfg, teacher, split)
    pseudo = label_news(cfg, teacher_dir, split, news, teacher, output_dir)
    report = json.loads((pseudo.folder / "report.json").read_text())
    result = {"pseudo_labels": str(pseudo.folder), "teacher_dir": str(teacher_dir),
              "sentences": len(pseudo.sentences), "reused": pseudo.reused,
              "label_share": report["label_share"],
              "labelling_sentences_per_s": report.get("labelling_sentences_per_s"),
              "labelled_by": report.get("labelled_by"), "shard_size": report.get("shard_size"),
              "wall_time_s": round(time.perf_counter() - started, 1)}
    write_json(result, output_dir / "results.json")
    print(f"pseudo-labels of {result['sentences']} sentences: {pseudo.folder} "
          f"({'reused' if pseudo.reused else 'merged here'}); label share {result['label_share']}")
    return {"metrics": {}, **result}
