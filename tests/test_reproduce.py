"""The one-command reproduction at tiny scale: every stage runs, its wall time is recorded, the
report is written from the stages' files, and a rerun resumes instead of retraining."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from .conftest import DATA_DIR, ROOT, TINY

TINY_STUDY = [*TINY, "news.max_sentences=120", "student.model.num_layers=2",
              f"paths.data_dir={DATA_DIR}", "prune.rounds=1", "prune.timing_repeats=1",
              "quantize.timing_repeats=1", "quantize.latency_sentences=3", "qat.epochs=1",
              "benchmark.latency_sentences=3", "benchmark.repeats=1", "benchmark.warmup=1",
              "benchmark.published=[]", "distill.speed_sentences=3"]


@pytest.mark.slow(budget_s=1800)
def test_reproduce_runs_every_stage_and_writes_the_report(tmp_path, data_dir):
    command = [sys.executable, "scripts/reproduce.py", "--name", "tiny", "--methods",
               "fresh,kd_t2,pkd", "--output-root", str(tmp_path),
               "--stage-overrides", "prune50=prune.ffn_multiple=1",
               # a one-epoch random teacher gives every news sentence one label, on which the
               # static head cannot train (tests/test_frontier.py runs the static stage)
               "--stage-overrides", "frontier=--no-static", "--", *TINY_STUDY]
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1700)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-3000:]
    root = tmp_path / "reproduce" / "tiny"
    stages = json.loads((root / "stages.json").read_text())
    stage_names = ["teacher", "study", "ptq", "qat", "teacher_int8", "prune30", "prune30_int8",
                   "prune50", "compress", "benchmark", "frontier"]
    assert [s for s in stages if s in stage_names] == stage_names  # in order
    assert stages["total_wall_time_s"] == pytest.approx(
        sum(stages[s]["wall_time_s"] for s in stage_names), abs=0.2)
    for stage in stage_names:
        assert stages[stage]["status"] == "ok" and stages[stage]["wall_time_s"] > 0, stage
    assert stages["best_student"]["method"] in ("kd_t2", "pkd")  # chosen on validation
    benchmark = json.loads((root / "benchmark" / "benchmark.json").read_text())
    names = [row["model"] for row in benchmark["models"]]
    assert names[0] == "teacher" and "prune50_final" in names and "compress_final" in names
    assert "prune30_int8" in names and "teacher_int8" in names
    report = (root / "report.md").read_text()
    assert "Wall time per stage" in report and re.search(r"\| benchmark +\| ok +\|", report)
    assert "![accuracy vs throughput](benchmark/pareto.png)" in report
    assert "QAT with KD beside PTQ" in report and "Stacked" in report
    assert "The small-student frontier" in report and "frontier.png" in report
    # the README's results section, replaced from the same files
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    subprocess.run([sys.executable, "scripts/report.py", str(root), "--readme", str(readme),
                    "--figures", str(tmp_path / "docs")], cwd=ROOT, check=True, capture_output=True)
    text = readme.read_text()
    section = text.split("<!-- results:begin -->")[1].split("<!-- results:end -->")[0]
    assert "Wall time per stage" in section and text.count("<!-- results:begin -->") == 1
    assert "![accuracy vs throughput](docs/pareto.png)" in section  # copied beside the README
    assert (tmp_path / "docs" / "pareto.png").is_file()
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("done earlier") == 11
    redo = subprocess.run([*command[:2], "--redo", "benchmark", *command[2:]], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert redo.returncode == 0 and redo.stdout.count("done earlier") == 10
    assert "[reproduce] benchmark: ok" in redo.stdout


@pytest.mark.slow(budget_s=300)
def test_a_tiny_reproduction_of_two_stages_writes_the_report_and_the_readme(tmp_path, data_dir):
    """The reproduction's machinery in two stages (the whole run above takes far longer): their
    record, the report, and the README's results section replaced from the same files. Slow
    since the default suite passed 10 minutes (69 s here); the report's own tests stay."""
    command = [sys.executable, "scripts/reproduce.py", "--name", "tiny", "--stages",
               "teacher,benchmark", "--output-root", str(tmp_path),
               "--stage-overrides", "benchmark=benchmark.reference_precisions=false",
               "--", *TINY_STUDY]
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-3000:]
    root = tmp_path / "reproduce" / "tiny"
    stages = json.loads((root / "stages.json").read_text())
    assert [s for s in stages if s in ("teacher", "benchmark", "study")] == ["teacher", "benchmark"]
    assert all(stages[s]["status"] == "ok" for s in ("teacher", "benchmark"))
    benchmark = json.loads((root / "benchmark" / "benchmark.json").read_text())
    assert [row["model"] for row in benchmark["models"]][0] == "teacher"
    report = (root / "report.md").read_text()
    assert re.search(r"\| benchmark +\| ok +\|", report)
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    subprocess.run([sys.executable, "scripts/report.py", str(root), "--readme", str(readme),
                    "--figures", str(tmp_path / "docs")], cwd=ROOT, check=True, capture_output=True)
    section = readme.read_text().split("<!-- results:begin -->")[1].split("<!-- results:end -->")[0]
    assert "Wall time per stage" in section and (tmp_path / "docs" / "pareto.png").is_file()
    refused = subprocess.run([*command[:5], "ptq", *command[6:]], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 2 and "holds teacher" in refused.stderr


def test_ctrl_c_stops_the_reproduction_with_a_resume_hint_and_no_traceback(tmp_path, data_dir):
    command = [sys.executable, "scripts/reproduce.py", "--name", "tiny", "--stages", "teacher",
               "--output-root", str(tmp_path), "--", *TINY_STUDY]
    # with SIGINT's default action, as a terminal's foreground job has it: a shell starts
    # background jobs (and so a suite run under nohup or &) with SIGINT ignored, and Python
    # then never raises KeyboardInterrupt
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert process.stdout.readline().startswith("[reproduce] teacher: ")  # the stage runs
        time.sleep(1)
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C sends to the terminal's process group
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130
    assert "Traceback" not in err and "the same command resumes" in err
    stages = tmp_path / "reproduce" / "tiny" / "stages.json"
    assert not stages.exists() or "teacher" not in json.loads(stages.read_text())


def test_pareto_claim_names_models_that_beat_every_published_row():
    sys.path.insert(0, str(ROOT / "scripts"))
    from report import pareto_claim

    published = {"model": "ALBERT", "published": True, "acc": 0.97, "f1_macro": 0.96,
                 "throughput_sorted": 100.0}
    rows = [published,
            {"model": "fast and good", "acc": 0.98, "f1_macro": 0.97, "throughput_sorted": 900.0,
             "size_bytes": 2**20},
            {"model": "fast, worse", "acc": 0.95, "f1_macro": 0.94, "throughput_sorted": 900.0,
             "size_bytes": 2**20},
            {"model": "good, slower", "acc": 0.98, "f1_macro": 0.97, "throughput_sorted": 90.0,
             "size_bytes": 2**20}]
    reference = {"model": "teacher (bf16)", "dir": "teacher", "acc": 0.99, "f1_macro": 0.98,
                 "throughput_sorted": 200.0, "size_bytes": 2**20}
    assert "**teacher (bf16)** (the uncompressed reference; macro-F1 0.9800" in pareto_claim(
        [{**reference, "model": "teacher"}, published, reference])
    claim = pareto_claim(rows)
    assert ("**fast and good** (macro-F1 0.9700, accuracy 0.9800, 900.0 sentences/s, 1.0 MiB; "
            "accuracy above every published row too)") in claim
    assert "fast, worse" not in claim and "good, slower" not in claim
    assert pareto_claim(rows[:1] + rows[2:]).startswith("No model measured here beats")
    assert pareto_claim(rows[1:]) == "No published rows were measured."


@pytest.mark.slow(budget_s=120)  # 17 s on 2 AVX2 cores
def test_report_adds_a_study_run_over_more_seeds(tmp_path):
    """``--seeds-study`` appends another study's table (mean ± std) and copies its plots beside
    the README; a folder that is not a study is refused by name."""
    root = tmp_path / "reproduce" / "one"
    root.mkdir(parents=True)
    (root / "stages.json").write_text(json.dumps({"teacher": {"status": "ok", "wall_time_s": 60}}))
    seeds = tmp_path / "study" / "three"
    seeds.mkdir(parents=True)
    (seeds / "study.md").write_text("| seeds | model | macro-F1 |\n|---|---|---|\n"
                                    "| 3 | kd_t2 minilm | 0.9400 ± 0.0100 |\n")
    runs = {"kd_t2": {"42": {}, "43": {}, "44": {}}, "ce": {"42": {}}}
    (seeds / "study.json").write_text(json.dumps({"runs": runs}))
    (seeds / "temperature_sweep.png").write_bytes(b"png")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:begin -->\nold\n<!-- results:end -->\nend\n")
    script = [sys.executable, "scripts/report.py", str(root), "--readme", str(readme), "--figures",
              str(tmp_path / "docs")]
    subprocess.run([*script, "--seeds-study", str(seeds)], cwd=ROOT, check=True,
                   capture_output=True)
    text = readme.read_text()
    assert "**Distillation study, 3 seeds** (`three`" in text and "0.9400 ± 0.0100" in text
    assert "(docs/seeds_temperature_sweep.png)" in text and "old" not in text
    assert text.startswith("intro\n") and text.endswith("end\n")
    assert (tmp_path / "docs" / "seeds_temperature_sweep.png").read_bytes() == b"png"
    refused = subprocess.run([*script, "--seeds-study", str(tmp_path)], cwd=ROOT,
                             capture_output=True, text=True)
    assert refused.returncode == 2 and f"{tmp_path} has no study.md" in refused.stderr
