"""The README's quick-start commands are real: set-up, main job (shrunk) and tests."""

import re
import subprocess
import sys
import tomllib

from .conftest import DATA_DIR, DISTILL_TINY, ROOT
from .test_distill import check_distill_run

SCORED_PER_GROUP = 100
# shrinks the main job: tiny teacher, 48 sentences per split, 120 news sentences, 2-layer student
SHRINK = [*DISTILL_TINY, "distill.speed_sentences=5",
          f"news.holdout.scored_per_group={SCORED_PER_GROUP}"]


def quick_start() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", text, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]


def test_quick_start_is_three_commands():
    setup, main, tests = quick_start()
    extras = re.search(r'\.\[(.*)\]', setup).group(1).split(",")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert setup.startswith("pip install -e")
    assert set(extras) <= set(declared["optional-dependencies"])
    assert main.startswith("python train.py")
    assert tests == "pytest"


def test_main_job_runs(tmp_path, tiny_store):
    """The main command exactly as written, plus overrides that shrink model and data; its
    stages go to the store the distill tests share (whichever runs first trains them)."""
    main = quick_start()[1].split()
    result = subprocess.run(
        [sys.executable, *main[1:], *SHRINK, f"paths.data_dir={DATA_DIR}",
         f"paths.output_root={tiny_store}", f"paths.run_dir={tmp_path / 'pkd'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # teacher, student and the converged fresh baseline side by side, and the verdict
    header = next(line for line in result.stdout.splitlines() if line.startswith("| ") and "teacher" in line)
    assert "pkd" in header and "fresh" in header and "(converged)" in header
    assert "| acc " in result.stdout and "| f1_macro " in result.stdout
    # the stages instantiate their config inside the project's Hydra execution whitelist
    assert "execution_whitelist" not in result.stderr
    # the run's files, scores, speed rows, robustness and verdict, checked in depth
    check_distill_run(tmp_path / "pkd", result.stdout, "pkd", scored_per_group=SCORED_PER_GROUP)


def test_readme_fincompress_commands_parse():
    """Every ``fincompress ...`` line of "Using a model" names a real subcommand and real flags."""
    import shlex

    from fincompress.cli import parser

    text = (ROOT / "README.md").read_text()
    section = text.split("## Using a model", 1)[1].split("\n## ", 1)[0]
    lines = [line.split("  #")[0].strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)
             for line in block.splitlines() if line.startswith("fincompress ")]
    assert {shlex.split(line)[1] for line in lines} == {"predict", "export", "info", "bench",
                                                         "serve", "demo"}
    for line in lines:
        parser().parse_args(shlex.split(line)[1:])  # argparse exits on an unknown flag
