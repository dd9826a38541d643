"""Beyond one machine: the README's temperature sweep through Hydra's submitit launcher (its
local executor, what the SLURM launcher does without a cluster)."""

import json
import subprocess
import sys

import pytest

from .conftest import DATA_DIR, ROOT, TINY


@pytest.mark.slow(budget_s=600)
def test_the_temperature_sweep_runs_through_the_submitit_launcher(tmp_path, data_dir):
    command = [sys.executable, "train.py", "-m", "hydra/launcher=local", "+experiment=kd",
               "method.temperature=2,5,9", *TINY, "news.max_sentences=100", "student=tiny",
               f"paths.data_dir={DATA_DIR}", f"paths.output_root={tmp_path}",
               f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in done.stdout + done.stderr
    jobs = sorted((tmp_path / "multirun").glob("*_kd_t*"))
    assert [job.name for job in jobs] == ["0_kd_t2", "1_kd_t5", "2_kd_t9"]
    for job, temperature in zip(jobs, (2, 5, 9)):
        results = json.loads((job / "results.json").read_text())
        assert results["method"] == f"kd_t{temperature}" and 0 <= results["student"]["f1_macro"] <= 1
        assert (job / "student" / "checkpoint_info.json").is_file()
    # each job ran as its own submitit job, with its log
    assert len(list((tmp_path / "multirun" / ".submitit").rglob("*_log.out"))) == 3
