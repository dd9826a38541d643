"""Crashes with real processes: ``python train.py`` is killed with SIGKILL in the middle of the
teacher, of pseudo-labelling and of stage 1, and the same command is run again each time. The
rerun finishes, no staging folder is left behind, and the metrics and every stage key equal
those of an uninterrupted run in a fresh output root."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fincompress.config_checks import EXTRA_TARGETS_VARIABLE
from fincompress.hardware import resolve_precision
from fincompress.training import Preemption

from .conftest import DATA_DIR, NEWS_DIR, ROOT, TINY


def news_slice(tmp_path: Path) -> Path:
    """A folder with 60 real market posts: reading all the news takes 9 s a run."""
    news = tmp_path / "news"
    news.mkdir()
    posts = (NEWS_DIR / "stock_tweets" / "stock_tweets_a.txt").read_text().splitlines()[:60]
    (news / "posts.txt").write_text("\n".join(posts) + "\n")
    return news


def recording_scontrol(tmp_path: Path) -> dict:
    """The environment of a SLURM job (id 4242) whose ``scontrol`` records what it was asked
    in ``<tmp_path>/scontrol.log``, trusting the callbacks of ``tests.helpers`` that the
    commands add through config."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'scontrol.log'}\n")
    (bin_dir / "scontrol").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "SLURM_JOB_ID": "4242", EXTRA_TARGETS_VARIABLE: "tests.helpers.*"}

COMMAND = [sys.executable, "train.py", "+experiment=kd", *TINY, "news.max_sentences=400",
           "student.model.num_layers=2", "distill.speed_sentences=0", f"paths.data_dir={DATA_DIR}"]


def command(root, run: str) -> list[str]:
    return [*COMMAND, f"paths.output_root={root}", f"hydra.run.dir={root / run}"]


def stage_keys(root) -> dict[str, list[str]]:
    return {stage.name: sorted(p.name for p in stage.iterdir() if not p.name.startswith("."))
            for stage in sorted((root / "stages").iterdir()) if not stage.name.startswith(".")}


def kill_during(root, run: str, stage: str, timeout: float = 240) -> None:
    """Start the run, and SIGKILL it (and its children) as soon as ``stage`` is being built:
    its staging folder exists."""
    process = subprocess.Popen(command(root, run), cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if list((root / "stages" / stage).glob(".*.partial")):
                break
            if process.poll() is not None:
                pytest.fail(f"the run ended (exit {process.returncode}) before {stage} began")
            time.sleep(0.02)
        else:
            pytest.fail(f"{stage} did not begin within {timeout} s")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL


@pytest.mark.slow(budget_s=900)
def test_sigkill_in_three_stages_then_rerun_equals_an_uninterrupted_run(tmp_path):
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    subprocess.run(command(clean, "run"), cwd=ROOT, check=True, capture_output=True, timeout=600)
    expected = json.loads((clean / "run" / "results.json").read_text())

    for number, stage in enumerate(["teacher", "pseudo_labels", "stage1"]):
        kill_during(crashed, f"killed{number}", stage)
        assert list((crashed / "stages" / stage).glob(".*.partial"))  # what the kill left
    final = subprocess.run(command(crashed, "run"), cwd=ROOT, capture_output=True, text=True,
                           timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    got = json.loads((crashed / "run" / "results.json").read_text())

    assert not list((crashed / "stages").glob("*/.*.partial"))
    assert stage_keys(crashed) == stage_keys(clean)
    for model in ("teacher", "student", "fresh"):
        assert got[model]["f1_macro"] == expected[model]["f1_macro"], model
        assert got[model]["confusion_matrix"] == expected[model]["confusion_matrix"], model
    # each killed run's folder says it did not finish: no results, and no stray model
    for number in range(3):
        assert not (crashed / f"killed{number}" / "results.json").exists()


@pytest.mark.slow(budget_s=600)
def test_two_identical_runs_at_once_build_each_stage_once(tmp_path):
    runs = [subprocess.Popen(command(tmp_path, f"run{i}"), cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [run.communicate(timeout=550)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    results = [json.loads((tmp_path / f"run{i}" / "results.json").read_text()) for i in range(2)]
    assert results[0]["student"]["f1_macro"] == results[1]["student"]["f1_macro"]
    assert all(len(keys) == 1 for stage, keys in stage_keys(tmp_path).items()
               if stage != "pseudo_labels")
    built = sum(out.count("stored teacher") for out in outputs)
    reused = sum(out.count("reusing teacher") for out in outputs)
    assert (built, reused) == (1, 1)


@pytest.mark.slow(budget_s=600)
def test_a_teacher_killed_after_an_epoch_resumes_from_its_last_checkpoint(tmp_path):
    """``resume_from=<run>/checkpoints/last.ckpt`` continues a run killed once an epoch's
    checkpoint was written, and the result equals an uninterrupted run's."""
    teacher = [sys.executable, "train.py", "+experiment=teacher", *TINY, "trainer.max_epochs=3",
               "teacher.max_epochs=3", f"paths.data_dir={DATA_DIR}", f"paths.output_root={tmp_path}"]
    clean = subprocess.run([*teacher, f"hydra.run.dir={tmp_path / 'clean'}"], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, clean.stderr[-3000:]
    run = tmp_path / "killed"
    process = subprocess.Popen([*teacher, f"hydra.run.dir={run}"], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.is_file() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert last.is_file() and not (run / "model").exists()
    resumed = subprocess.run([*teacher, f"hydra.run.dir={run}", f"resume_from={last}"], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected = json.loads((tmp_path / "clean" / "model" / "checkpoint_info.json").read_text())
    got = json.loads((run / "model" / "checkpoint_info.json").read_text())
    assert got["epochs_run"] == expected["epochs_run"]
    assert got["metrics"] == pytest.approx(expected["metrics"], abs=1e-6)
    assert got["confusion_matrix"] == expected["confusion_matrix"]


# all three slow (37 to 50 s each; the default suite passed 10 minutes): the default suite keeps
# test_a_signal_during_the_last_validation_still_stops_the_run below
@pytest.mark.slow(budget_s=300)
@pytest.mark.parametrize("signal_name", ["SIGUSR1", "SIGTERM", "SIGUSR2"])
def test_a_preempted_stage_requeues_and_its_rerun_ends_as_an_uninterrupted_run(
        tmp_path, signal_name):
    """SLURM's signal (SIGUSR1 before a time limit or preemption, SIGUSR2 through submitit;
    SIGTERM when it cancels) in the middle of the teacher stage's second epoch: a checkpoint, a
    requeue request, a stop; the rerun resumes there and its teacher is the uninterrupted one,
    weight for weight. (The label experiment trains the stored teacher, then labels 20
    sentences: the cheapest run with a stored training stage.)"""
    news = news_slice(tmp_path)
    settings = [sys.executable, "train.py", "+experiment=label", *TINY, "teacher.max_epochs=3",
                "data.batch_size=8", f"news.sources=[{news}]", "news.max_sentences=20",
                f"paths.data_dir={DATA_DIR}"]
    clean = subprocess.run([*settings, f"paths.output_root={tmp_path / 'clean'}",
                            f"hydra.run.dir={tmp_path / 'clean' / 'run'}"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, clean.stderr[-3000:]
    env = recording_scontrol(tmp_path)
    root = tmp_path / "preempted"
    # 48 training sentences in batches of 8: step 8 is the second batch of the second epoch
    preempted = [*settings, f"paths.output_root={root}", f"hydra.run.dir={root / 'run'}",
                 f"+callbacks.signal={{_target_: tests.helpers.SignalAt, step: 8, "
                 f"marker: '{tmp_path / 'signalled'}', signal_name: {signal_name}}}"]
    first = subprocess.run(preempted, cwd=ROOT, capture_output=True, text=True, timeout=300,
                           env=env)
    assert first.returncode != 0 and f"stopped by signal {signal_name}" in first.stderr
    # requeued on SLURM's warning signals, not on SIGTERM (scancel sends it too)
    if signal_name == "SIGTERM":
        assert not (tmp_path / "scontrol.log").exists()
    else:
        assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    (saved,) = (root / "stages" / ".resume").glob("teacher-*/fit/preempted.ckpt")
    assert not list((root / "stages" / "teacher").glob("[!.]*"))  # nothing stored yet
    again = subprocess.run(preempted, cwd=ROOT, capture_output=True, text=True, timeout=300,
                           env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {saved}" in again.stdout
    assert not list((root / "stages" / ".resume").iterdir())  # removed once stored
    (expected,) = (tmp_path / "clean" / "stages" / "teacher").glob("[!.]*/model/model.safetensors")
    (got,) = (root / "stages" / "teacher").glob("[!.]*/model/model.safetensors")
    assert got.read_bytes() == expected.read_bytes()
    infos = [json.loads((path.parent / "checkpoint_info.json").read_text()) for path in (expected, got)]
    assert infos[0]["metrics"] == infos[1]["metrics"] and infos[1]["epochs_run"] == 3
    # the labels are stored under the precision distillation resolves, so that it reuses them
    (report,) = (root / "stages" / "pseudo_labels").glob("[!.]*/report.json")
    assert json.loads(report.read_text())["precision"] == resolve_precision("auto")[0]


def test_a_signal_during_the_last_validation_still_stops_the_run(tmp_path, monkeypatch):
    """No batch ends after the last validation: the signal is acted on when the fit ends, with a
    checkpoint that skips nothing, instead of being swallowed."""
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID"):
        monkeypatch.delenv(name, raising=False)

    class Trainer:
        world_size, is_global_zero = 1, True

        def save_checkpoint(self, path):
            Path(path).write_text("weights")

    callback = Preemption(tmp_path / "preempted.ckpt")
    callback.on_fit_end(Trainer(), None)  # no signal: nothing happens
    assert not (tmp_path / "preempted.ckpt").exists()
    callback.received = signal.SIGTERM
    with pytest.raises(SystemExit, match="stopped by signal SIGTERM"):
        callback.on_fit_end(Trainer(), None)
    assert (tmp_path / "preempted.ckpt").read_text() == "weights"
    assert "batches_done" not in callback.state_dict()


@pytest.mark.slow(budget_s=400)
@pytest.mark.parametrize("launch", ["forked", "slurm_tasks"])
def test_a_preempted_ddp_fit_stops_every_rank_and_its_rerun_ends_as_an_uninterrupted_run(
        tmp_path, launch):
    """DDP in 2 processes, preempted: SLURM's SIGUSR1 reaches the job's process, which passes
    it on to the ranks Lightning forked (``forked``), or reaches one rank of two that SLURM
    started as tasks (``slurm_tasks``; SLURM signals each task, at slightly different moments).
    Every rank stops at the same batch, rank 0 saves the checkpoint and asks for the requeue;
    the rerun resumes and its teacher equals the uninterrupted DDP run's within 1e-6."""
    from safetensors.torch import load_file

    from .test_cluster import DDP_STUDENT, free_port, slurm_task_env

    news = news_slice(tmp_path)
    env = recording_scontrol(tmp_path)
    marker = tmp_path / "paused"

    def start(root: Path, pause: bool) -> list[subprocess.Popen]:
        command = [sys.executable, "train.py", "+experiment=label", *TINY, "teacher.max_epochs=3",
                   "data.batch_size=8", f"news.sources=[{news}]", "news.max_sentences=20",
                   *DDP_STUDENT, "trainer=ddp", "trainer.devices=2", f"paths.data_dir={DATA_DIR}",
                   f"paths.output_root={root}", f"hydra.run.dir={root / 'run'}"]
        if pause:
            command.append(f"+callbacks.pause={{_target_: tests.helpers.PauseAt, step: 8, "
                           f"marker: '{marker}'}}")
        if launch == "forked":
            return [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)]
        port = free_port()
        return [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True,
                                 env={**slurm_task_env(rank, 2, port, "4242"),
                                      "PATH": env["PATH"],
                                      EXTRA_TARGETS_VARIABLE: env[EXTRA_TARGETS_VARIABLE]})
                     for rank in range(2)]

    def finish(processes) -> tuple[list[int], str]:
        logs = [process.communicate(timeout=300)[0] for process in processes]
        return [process.returncode for process in processes], "\n".join(logs)

    codes, log = finish(start(tmp_path / "clean", pause=False))
    assert set(codes) == {0}, log[-3000:]
    root = tmp_path / "preempted"
    processes = start(root, pause=True)
    deadline = time.time() + 240
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), finish(processes)[1][-3000:]
    os.kill(processes[-1].pid, signal.SIGUSR1)  # the job's process, or rank 1 of the tasks
    codes, log = finish(processes)
    assert 0 not in codes and "stopped by signal SIGUSR1" in log, log[-3000:]
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"  # once, by rank 0
    (saved,) = (root / "stages" / ".resume").glob("teacher-*/fit/preempted.ckpt")
    assert not list((root / "stages" / "teacher").glob("[!.]*"))  # nothing stored yet
    codes, log = finish(start(root, pause=True))  # the marker exists: no pause this time
    assert set(codes) == {0}, log[-3000:]
    assert f"resuming from {saved}" in log
    (expected,) = (tmp_path / "clean" / "stages" / "teacher").glob("[!.]*/model/model.safetensors")
    (got,) = (root / "stages" / "teacher").glob("[!.]*/model/model.safetensors")
    expected, got = load_file(expected), load_file(got)
    assert max((expected[k] - got[k]).abs().max().item() for k in expected) < 1e-6
