"""The README's quick-start commands are real: set-up, main job (shrunk) and tests."""

import re
import subprocess
import sys
import tomllib

from .conftest import DATA_DIR, ROOT, TINY


def quick_start() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", text, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]


def test_quick_start_is_three_commands():
    setup, main, tests = quick_start()
    extras = re.search(r'\.\[(.*)\]', setup).group(1).split(",")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert setup.startswith("pip install -e") and set(extras) <= set(declared["optional-dependencies"])
    assert main.startswith("python train.py")
    assert tests == "pytest"


def test_main_job_runs(tmp_path, data_dir):
    """The main command exactly as written, plus overrides that shrink model and data."""
    main = quick_start()[1].split()
    result = subprocess.run(
        [sys.executable, *main[1:], *TINY, f"paths.data_dir={DATA_DIR}",
         f"paths.output_root={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test accuracy" in result.stdout and "test macro-F1" in result.stdout
    runs = [p for p in tmp_path.iterdir() if p.name != "cache"]
    assert len(runs) == 1
    infos = list(runs[0].rglob("checkpoint_info.json"))
    assert len(infos) == 1
