"""Shared test fixtures: the real data in ../shared/data, composed configs, offline settings."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

# Tests never touch the network: hub loads fail fast, W&B writes locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "fincompress" / "conf"
DATA_DIR = Path(os.environ.get("FINCOMPRESS_DATA", ROOT.parent / "shared" / "data")).resolve()
PHRASEBANK_DIR = DATA_DIR / "financial_phrasebank"
NEWS_DIR = DATA_DIR / "news"

# Settings that make any experiment tiny: random 4-layer teacher, a few sentences per split, one
# epoch (two at most for the converged fresh baseline), no PhraseBank transfer text.
# benchmark.min_round_s=0: every stage table times one pass per round (1-s rounds by default)
TINY = ["teacher=tiny_random", "data.max_per_split=48", "trainer.max_epochs=1",
        "distill.fresh.max_epochs=2", "distill.pseudo_label.add_phrasebank=null",
        "benchmark.min_round_s=0"]


BROWSER = "/usr/bin/chromium"  # Debian's chromium, which .ci/run installs


def browser() -> str:
    """The browser the headless-browser checks drive. CI installs it (``.ci/run``) and fails
    without it; elsewhere its absence skips the check and says how to install it, since the
    README's set-up command installs Python packages only."""
    if shutil.which(BROWSER):
        return BROWSER
    message = f"{BROWSER} is missing: apt-get install chromium (see .ci/run)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """``fincompress.load(threads=N)`` sets PyTorch's process-wide thread count: no test may
    leave it changed for the tests after it."""
    import torch

    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (PHRASEBANK_DIR / "FinancialPhraseBank-v1.0").is_dir():
        pytest.fail(f"the shared data is missing: expected {DATA_DIR} (set FINCOMPRESS_DATA)")
    return DATA_DIR


def compose_config(overrides: list[str], output_dir: Path):
    """The config ``python train.py OVERRIDES`` would run, writing under ``output_dir``."""
    with initialize_config_module(config_module="fincompress.conf", version_base="1.3"):
        return compose(
            config_name="train",
            overrides=[
                *overrides,
                f"paths.data_dir={DATA_DIR}",
                f"paths.output_root={output_dir}",
                f"paths.run_dir={output_dir / 'run'}",
            ],
        )


# the tiny end-to-end runs: the README's main job and the distill experiments
DISTILL_TINY = [*TINY, "news.max_sentences=120", "student.model.num_layers=2"]


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory, data_dir) -> Path:
    """One stage store for the tiny end-to-end runs (``DISTILL_TINY``), so that they share the
    teacher, the pseudo-labels, stage 1 and the fresh baseline, whichever runs first; its tiny
    teacher is trained here, so that every test using it can run alone."""
    from fincompress.stages.teacher import ensure_teacher

    root = tmp_path_factory.mktemp("store")
    ensure_teacher(compose_config([*TINY], root))
    return root


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory) -> Path:
    """A random 1-layer classifier on MiniLM's tokenizer, saved as a run's ``student/`` folder
    (with a ``checkpoint_info.json``)."""
    return save_tiny_classifier(tmp_path_factory.mktemp("run") / "student", seed=0)


def save_tiny_classifier(folder: Path, seed: int, label_bias: list[float] | None = None) -> Path:
    """A random tiny classifier saved to ``folder``; ``label_bias`` is added to its output
    layer's bias (a model that leans to one label, unlike another seed's near-uniform one)."""
    import json

    import torch

    from fincompress.models.sources import load_classifier

    labels = ["negative", "neutral", "positive"]
    torch.manual_seed(seed)
    model, tokenizer = load_classifier("bundled:minilm-l6", labels, random_init=True,
                                       config_overrides={"num_hidden_layers": 1, "hidden_size": 32,
                                                         "num_attention_heads": 2,
                                                         "intermediate_size": 64})
    if label_bias is not None:
        with torch.no_grad():
            model.classifier.bias += torch.tensor(label_bias)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "checkpoint_info.json").write_text(json.dumps(
        {"stage": "stage2", "method": "pkd", "labels": labels, "parameters": 1000,
         "metrics": {"test/f1_macro": 0.5}, "teacher": str(folder.parent / "gone"),
         "machine": {"cpu": "Test CPU", "cores": 2, "isa": ["avx2"]}}))
    return folder


@pytest.fixture(scope="session")
def minilm_tokenizer():
    from fincompress.models.sources import load_tokenizer

    return load_tokenizer("bundled:minilm-l6")


def pytest_collection_modifyitems(config, items):
    """A slow test's ``budget_s`` also bounds it (pytest-timeout), so that it cannot overrun."""
    for item in items:
        marker = item.get_closest_marker("slow")
        if marker and "budget_s" in marker.kwargs:
            item.add_marker(pytest.mark.timeout(marker.kwargs["budget_s"]))


def pytest_runtest_setup(item):
    """Under CI (``FINCOMPRESS_DEADLINE``, a Unix time), a slow test starts only if its budget
    fits before the deadline; otherwise it is skipped, and the skip says why."""
    marker = item.get_closest_marker("slow")
    deadline = os.environ.get("FINCOMPRESS_DEADLINE")
    if marker is None or not deadline:
        return
    budget = marker.kwargs.get("budget_s")
    if budget is None:
        raise pytest.UsageError(f"{item.nodeid}: a slow test needs @pytest.mark.slow(budget_s=...)")
    left = float(deadline) - time.time()
    if budget > left:
        pytest.skip(f"needs up to {budget} s, {left:.0f} s left before the CI deadline")


def pytest_collection_finish(session):
    """NNCF's C++ quantization kernels are built (about 90 s, once; then cached) before any QAT
    test starts, so that no test's time limit pays for the build."""
    if any("test_qat" in item.nodeid for item in session.items):
        from fincompress.compress.qat import build_extension

        build_extension()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Under CI, the slow run's outcome in one line (``FINCOMPRESS_SLOW_REPORT``, a file that
    ``.ci/run`` prints last): how many slow tests ran, and how many the deadline skipped."""
    report = os.environ.get("FINCOMPRESS_SLOW_REPORT")
    if not report or "slow" not in (config.getoption("markexpr") or ""):
        return
    stats = terminalreporter.stats
    ran = sum(len(stats.get(key, [])) for key in ("passed", "failed", "error"))
    skipped = [r for r in stats.get("skipped", []) if "CI deadline" in str(r.longrepr)]
    line = f"slow tests: {ran} ran, {len(skipped)} skipped by the CI deadline"
    if not ran:
        line = f"NO slow test ran ({len(skipped)} skipped by the CI deadline): this CI run " \
               "checked the default suite only"
    Path(report).write_text(line + "\n")
