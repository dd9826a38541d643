"""Checks of a ``train.py`` config before any work: every value with a valid range, and the
teacher folder, so that a bad value is one ``error:`` line naming it, not a traceback (or an
untrained model saved in silence) minutes later.

Keys absent from a config (a method's own settings) are not checked; ``None`` passes where
the config documents it as "off" or "all".
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fincompress.errors import InputError, NotAModelError

# key -> (lowest, highest, whether the lowest is allowed, whether None is allowed)
AT_LEAST_ONE = (1, math.inf, True, False)
AT_LEAST_ONE_OR_ALL = (1, math.inf, True, True)
NOT_NEGATIVE = (0, math.inf, True, False)
POSITIVE = (0, math.inf, False, False)
FRACTION = (0, 1, True, False)  # 0 to 1, both included
SHARE = (0, 1 - 1e-9, True, False)  # 0 included, 1 not (a share of heads, a hold-out)
RANGES = {
    "data.max_length": (3, 4096, True, False),
    "data.batch_size": AT_LEAST_ONE,
    "data.eval_batch_size": AT_LEAST_ONE,
    "data.max_per_split": AT_LEAST_ONE_OR_ALL,
    "data.num_workers": NOT_NEGATIVE,
    "news.min_words": AT_LEAST_ONE,
    "news.max_words": AT_LEAST_ONE,
    "news.max_sentences": AT_LEAST_ONE_OR_ALL,
    "news.max_length": (3, 4096, True, False),
    "news.batch_size": AT_LEAST_ONE,
    "news.num_workers": NOT_NEGATIVE,
    "news.holdout.fraction": SHARE,
    "news.holdout.scored_per_group": AT_LEAST_ONE_OR_ALL,
    "teacher.max_epochs": AT_LEAST_ONE,
    "teacher.optimizer.lr": POSITIVE,
    "teacher.optimizer.weight_decay": NOT_NEGATIVE,
    "teacher.scheduler.warmup_fraction": SHARE,
    "student.model.num_layers": AT_LEAST_ONE,
    "student.model.heads": AT_LEAST_ONE_OR_ALL,
    "student.model.intermediate_size": AT_LEAST_ONE_OR_ALL,
    "student.stage1_epochs": AT_LEAST_ONE,
    "student.stage2_epochs": AT_LEAST_ONE,
    "student.stage1_lr": POSITIVE,
    "student.stage2_lr": POSITIVE,
    "method.temperature": POSITIVE,
    "method.alpha": FRACTION,
    "method.pkd_beta": NOT_NEGATIVE,
    "distill.fresh.max_epochs": AT_LEAST_ONE,
    "distill.fresh.patience": AT_LEAST_ONE,
    "distill.fresh.lr": (0, math.inf, False, True),
    "distill.speed_sentences": NOT_NEGATIVE,
    "distill.pseudo_label.batch_size": AT_LEAST_ONE,
    "distill.pseudo_label.shard_size": AT_LEAST_ONE_OR_ALL,
    "distill.pseudo_label.min_agreement": FRACTION,
    "distill.pseudo_label.confidence_threshold": (0, 1, True, True),
    "distill.pseudo_label.augment.variants_per_sentence": NOT_NEGATIVE,
    "distill.pseudo_label.augment.replace_prob": FRACTION,
    "distill.pseudo_label.augment.neighbours": AT_LEAST_ONE,
    "prune.heads": SHARE,
    "prune.ffn": SHARE,
    "prune.rounds": AT_LEAST_ONE,
    "prune.ffn_multiple": AT_LEAST_ONE,
    "prune.importance_sentences": AT_LEAST_ONE,
    "prune.recover.epochs": NOT_NEGATIVE,
    "prune.recover.temperature": POSITIVE,
    "prune.recover.alpha": FRACTION,
    "prune.recover.optimizer.lr": POSITIVE,
    "prune.timing_repeats": AT_LEAST_ONE,
    "quantize.min_agreement": FRACTION,
    "quantize.calibration_sentences": AT_LEAST_ONE,
    "quantize.timing_repeats": AT_LEAST_ONE,
    "quantize.latency_sentences": AT_LEAST_ONE,
    "qat.epochs": AT_LEAST_ONE,
    "qat.temperature": POSITIVE,
    "qat.alpha": FRACTION,
    "qat.optimizer.lr": POSITIVE,
    "static.pca_dims": AT_LEAST_ONE,
    "static.head_layers": NOT_NEGATIVE,
    "static.hidden_dim": AT_LEAST_ONE,
    "static.lr": POSITIVE,
    "static.batch_size": AT_LEAST_ONE,
    "static.max_epochs": AT_LEAST_ONE,
    "static.patience": AT_LEAST_ONE,
    "static.timing_repeats": AT_LEAST_ONE,
    "benchmark.latency_sentences": NOT_NEGATIVE,
    "benchmark.warmup": NOT_NEGATIVE,
    "benchmark.repeats": AT_LEAST_ONE,
    "benchmark.min_round_s": NOT_NEGATIVE,
    "trainer.max_epochs": AT_LEAST_ONE,
    "trainer.gradient_clip_val": (0, math.inf, True, True),
}
MISSING = object()


def check_config(cfg: DictConfig) -> None:
    """Raise :class:`InputError` naming the first value out of its range, then check the
    teacher folder, if one is given."""
    for key, (low, high, low_allowed, none_allowed) in RANGES.items():
        value = OmegaConf.select(cfg, key, default=MISSING, throw_on_missing=False)
        if value is MISSING or (value is None and none_allowed):
            continue
        number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
        if number is None or math.isnan(number) or number > high or number < low or \
                (number == low and not low_allowed):
            raise InputError(f"{key}={value!r} is out of range: {describe(key)}")
        if low == 1 and high == math.inf and not float(number).is_integer():
            raise InputError(f"{key}={value!r} is out of range: {describe(key)}")
    if cfg.get("teacher_checkpoint"):
        check_teacher_folder(Path(cfg.teacher_checkpoint))
    if cfg.get("resume_from"):
        check_resume_file(Path(cfg.resume_from))


def describe(key: str) -> str:
    low, high, low_allowed, none_allowed = RANGES[key]
    text = f"a number from {low} ({'included' if low_allowed else 'excluded'})"
    text += " up" if high == math.inf else f" to {high:g}"
    if low == 1 and high == math.inf:
        text = "a whole number, at least 1"
    return text + (", or null" if none_allowed else "")


def check_teacher_folder(folder: Path) -> None:
    """A teacher is a Hugging Face encoder folder (BERT, MPNet, ALBERT and their kin): the
    distillation losses and the speed check read its layers and width."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise NotAModelError(f"teacher_checkpoint {folder} is not a saved model folder (no "
                             "config.json)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"teacher_checkpoint {config_file}: not valid JSON ({error})") from None
    missing = [k for k in ("num_hidden_layers", "hidden_size", "num_attention_heads")
               if k not in config]
    if missing:
        raise InputError(f"teacher_checkpoint {folder} is a {config.get('model_type', 'unknown')} "
                         f"model without {', '.join(missing)} in its config.json: fincompress "
                         "distils from encoder classifiers (BERT, MPNet, ALBERT and their kin)")


def check_resume_file(path: Path) -> None:
    """``resume_from`` is a Lightning checkpoint this project wrote (``last.ckpt``)."""
    import torch

    if not path.is_file():
        raise InputError(f"resume_from {path}: no such file")
    try:
        # memory-mapped: the keys are read, the tensors stay on disk until Lightning loads them
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as error:  # torch raises many types for a file that is not a checkpoint
        raise InputError(f"resume_from {path} is not a checkpoint torch can read ({error}); give "
                         "a last.ckpt a run wrote") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or \
            "loops" not in checkpoint:
        raise InputError(f"resume_from {path} is not a Lightning training checkpoint (no "
                         "state_dict and loop state); give a last.ckpt a run wrote")


# what the project's configs may instantiate (``_target_``): its own code, PyTorch's optimizers
# and schedulers, Lightning's trainer, callbacks, loggers, strategies and plugins
TRUSTED_TARGETS = ("fincompress.*", "torch.optim.*", "lightning.pytorch.*", "lightning.fabric.*")
# the user's own additions, comma-separated (say ``my_lab.callbacks.*`` for
# ``+callbacks.mine={_target_: my_lab.callbacks.Mine}``): set by whoever starts the process,
# never by the config it runs, which could otherwise trust itself (Hydra's security model)
EXTRA_TARGETS_VARIABLE = "FINCOMPRESS_TRUSTED_TARGETS"


def trusted_target_patterns() -> list[str]:
    """``TRUSTED_TARGETS`` and those named in ``$FINCOMPRESS_TRUSTED_TARGETS``; a bare ``*``
    (which Hydra refuses as trusting everything) is an ``InputError`` naming it."""
    extra = [entry.strip() for entry in os.environ.get(EXTRA_TARGETS_VARIABLE, "").split(",")]
    extra = [entry for entry in extra if entry]
    for entry in extra:
        if not all(part.isidentifier() for part in entry.removesuffix(".*").split(".")):
            raise InputError(f"{EXTRA_TARGETS_VARIABLE}: {entry!r} is not a dotted Python name or "
                             "a package prefix ending in .* (say my_lab.callbacks.*)")
    return [*TRUSTED_TARGETS, *extra]


def trusted_targets():
    """A context in which ``hydra.utils.instantiate`` resolves only the targets of
    :func:`trusted_target_patterns`: Hydra 1.4 warns at each instantiate without such a
    whitelist (an error from Hydra 1.5); on Hydra 1.3, which has none, nothing happens."""
    patterns = trusted_target_patterns()
    try:
        from hydra.utils import execution_whitelist
    except ImportError:
        return contextlib.nullcontext()
    return execution_whitelist(patterns)
