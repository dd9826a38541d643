"""The study script on tiny models: one table row per model and the confusion-matrix figure."""

import csv
import json
import re
import subprocess
import sys

import pytest

from .conftest import DATA_DIR, ROOT, TINY


@pytest.mark.slow(budget_s=600)
def test_study_writes_table_and_figure_and_resumes(tmp_path, data_dir):
    command = [sys.executable, "scripts/study.py", "--name", "tiny", "--methods", "fresh,pkd",
               "--seeds", "2", "--output-root", str(tmp_path), "--", *TINY, "news.max_sentences=120",
               "student.model.num_layers=2", f"paths.data_dir={DATA_DIR}"]
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    study = tmp_path / "study" / "tiny"
    with open(study / "study.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["model"].split()[0] for row in rows] == ["teacher", "fresh", "pkd"]
    assert all(0 <= float(row["f1_macro"]) <= 1 for row in rows)
    assert [row["seeds"] for row in rows] == ["1", "2", "2"]
    saved = json.loads((study / "study.json").read_text())
    pkd = [saved["runs"]["pkd"][seed]["student"]["f1_macro"] for seed in ("42", "43")]
    assert float(rows[2]["f1_macro"]) == pytest.approx(sum(pkd) / 2)  # the mean over seeds
    assert float(rows[2]["f1_macro_std"]) == pytest.approx(abs(pkd[0] - pkd[1]) / 2 ** 0.5)
    # seeds vary the students only: one teacher (teacher_seed), trained by the first job
    assert len([p for p in (tmp_path / "stages" / "teacher").iterdir() if not p.name.startswith(".")]) == 1
    assert {saved["runs"][m][s]["teacher_dir"] for m in ("fresh", "pkd") for s in ("42", "43")} \
        == {saved["runs"]["fresh"]["42"]["teacher_dir"]}
    assert (study / "study.md").read_text().count("\n") == 5
    # --collect runs nothing and writes the same table from the jobs' folders
    (study / "study.md").unlink()
    collected = subprocess.run([*command[:8], "--collect", *command[8:]], cwd=ROOT,
                               capture_output=True, text=True, timeout=120)
    assert collected.returncode == 0, collected.stderr[-2000:]
    assert "train.py -m" not in collected.stdout
    assert json.loads((study / "study.json").read_text())["rows"] == saved["rows"]
    assert (study / "study.md").read_text().count("\n") == 5
    assert (study / "confusion_matrices.png").stat().st_size > 5000
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("from an earlier run into this folder") == 4  # nothing retrained

    table = subprocess.run([sys.executable, "scripts/collect_results.py", str(tmp_path)],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr[-2000:]
    lines = [line for line in table.stdout.splitlines() if line.startswith("| ")]
    assert len(lines) == 1 + 5  # header, the stored teacher, fresh and pkd students of 2 seeds
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]
    val = {row[1]: row[4] for row in cells}
    assert val["fresh"].startswith("- / 0.") and re.fullmatch(r"0\.\d{3} / 0\.\d{3}", val["pkd"])
    assert "machine:" in table.stdout


def test_study_rejects_unknown_methods(tmp_path):
    result = subprocess.run([sys.executable, "scripts/study.py", "--name", "x", "--methods",
                             "kd_t4", "--output-root", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "unknown methods ['kd_t4']" in result.stderr
    result = subprocess.run([sys.executable, "scripts/study.py", "--name", "never", "--collect",
                             "--output-root", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "no multirun wrote there" in result.stderr


@pytest.mark.slow(budget_s=400)
def test_study_skips_a_method_the_student_cannot_do_and_says_why(tmp_path, data_dir):
    """TinyBERT runs the teacher on the student's tokens, so it cannot train a student on another
    tokenizer (here one cut from MPNet, beside the teacher's MiniLM one). The job runs as a
    local submitit process (--launcher local), as it would on SLURM."""
    result = subprocess.run(
        [sys.executable, "scripts/study.py", "--name", "tiny", "--methods", "tinybert",
         "--seeds", "1", "--launcher", "local", "--output-root", str(tmp_path), "--", *TINY,
         "news.max_sentences=120",
         "student.model.source=bundled:mpnet-base", f"paths.data_dir={DATA_DIR}"],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "tinybert seed 42: skipped: method tinybert runs the teacher on the student's tokens" \
        in result.stdout
    rows = json.loads((tmp_path / "study" / "tiny" / "study.json").read_text())["rows"]
    assert len(rows) == 1 and rows[0]["model"].startswith("tinybert (skipped: method tinybert")


def test_sweep_plots_and_mean_std_cells(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    from study import SWEEPS, cell_text, plot_sweep, swept_value

    rows = [{"model": "teacher x", "f1_macro": 0.95},
            {"model": "kd_t9 minilm", "f1_macro": 0.93, "f1_macro_std": 0.01},
            {"model": "kd_t2 minilm", "f1_macro": 0.95, "f1_macro_std": 0.004},
            {"model": "pkd minilm", "f1_macro": 0.94},
            {"model": "pkd_b100 minilm", "f1_macro": 0.91}]
    temperature, beta = SWEEPS
    assert plot_sweep(rows, *temperature[:2], tmp_path / "sweep.png", temperature[3])
    assert (tmp_path / "sweep.png").stat().st_size > 5000
    assert not plot_sweep(rows[:2], *temperature[:2], tmp_path / "none.png", temperature[3])
    # PKD's default beta comes from its method config; the sweep's from their overrides
    assert swept_value("pkd", "method.pkd_beta", "pkd") == 0.02
    assert swept_value("pkd_b100", "method.pkd_beta", "pkd") == 100
    assert swept_value("kd_t2", "method.pkd_beta", "pkd") is None
    assert plot_sweep(rows, *beta[:2], tmp_path / "beta.png", beta[3])
    assert cell_text(0.95123, 0.0042) == "0.9512 ± 0.0042" and cell_text(0.95, 0.0) == "0.9500"


def test_tinybert_keeps_its_own_student_when_the_study_names_another(tmp_path, monkeypatch):
    """TinyBERT's study method cuts its student from the teacher's encoder; a student=minilm
    given to the study (for every other method) must not replace it, so it runs in a multirun
    of its own with its student last. The commands study.py starts, composed as Hydra would."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import study

    from .conftest import compose_config

    commands = []
    monkeypatch.setattr(study.subprocess, "run", lambda command, cwd: commands.append(command)
                        or subprocess.CompletedProcess(command, 0))
    monkeypatch.setattr(sys, "argv", ["study.py", "--name", "x", "--methods", "pkd,tinybert",
                                      "--seeds", "1", "--output-root", str(tmp_path), "--",
                                      "student=minilm"])
    with pytest.raises(SystemExit):  # no job ran, so the table finds them missing
        study.main()
    students = {}
    for command in commands:
        overrides = [o for o in command[3:] if not o.startswith(("seed=", "paths."))]
        (method,) = [o.partition("=")[2] for o in overrides if o.startswith("study_method=")]
        cfg = compose_config(overrides, tmp_path)
        students[method] = cfg.student.name
    assert students == {"pkd": "minilm", "tinybert": "truncated"}
