"""Beyond one machine: the README's temperature sweep through Hydra's submitit launcher (its
local executor, what the SLURM launcher does without a cluster), and pseudo-labelling in
stored shards that several workers share and a killed run resumes."""

import json
import os
import subprocess
import sys
import threading
import time

import pytest
import torch

from fincompress.stages.pseudo_labels import label_in_shards

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


def test_shards_are_labelled_once_split_between_workers_and_resumed_after_a_kill(tmp_path):
    sentences = [f"sentence {i}" for i in range(50)]
    inputs = {"teacher_fingerprint": "t", "corpus_fingerprint": "c", "labels": ["a", "b"],
              "max_length": 8, "precision": "32-true"}
    calls: list[tuple[str, list[int]]] = []

    def labeller(name: str, fail_at: int | None = None, pause: float = 0.0):
        def label(rows: list[int]):
            if fail_at is not None and len(calls) == fail_at:
                raise KeyboardInterrupt("killed")
            calls.append((name, rows))
            time.sleep(pause)
            logits = torch.tensor([[float(row), -float(row)] for row in rows])
            return logits, torch.zeros(len(rows), 1, 2, dtype=torch.float16)
        return label

    # a worker killed during its third shard: the next run labels only what is left
    with pytest.raises(KeyboardInterrupt):
        label_in_shards(tmp_path, inputs, sentences, 8, labeller("killed", fail_at=2))
    assert [rows[0] for _, rows in calls] == [0, 8]
    logits, cls = label_in_shards(tmp_path, inputs, sentences, 8, labeller("rerun"))
    assert [rows[0] for name, rows in calls if name == "rerun"] == [16, 24, 32, 40, 48]
    torch.testing.assert_close(logits[:, 0], torch.arange(50.0))
    assert cls.shape == (50, 1, 2)
    assert len(list((tmp_path / "stages" / "pseudo_label_shards").glob("[!.]*"))) == 7

    # two workers at once on another corpus: each shard labelled once, by one or the other
    calls.clear()
    others = [f"other {i}" for i in range(60)]
    results = {}
    workers = [threading.Thread(target=lambda name=name: results.__setitem__(
        name, label_in_shards(tmp_path, inputs, others, 10, labeller(name, pause=0.2))[0]))
        for name in ("first", "second")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert sorted(rows[0] for _, rows in calls) == [0, 10, 20, 30, 40, 50]  # each once
    assert {name for name, _ in calls} == {"first", "second"}  # the work was shared
    torch.testing.assert_close(results["first"], results["second"])
    torch.testing.assert_close(results["first"][:, 0], torch.arange(60.0))


@pytest.mark.slow(budget_s=300)
def test_two_label_workers_build_the_same_cache_as_one_unsharded_run(tmp_path, data_dir):
    settings = [*TINY, "+experiment=label", "news.max_sentences=300",
                "distill.pseudo_label.batch_size=16", f"paths.data_dir={DATA_DIR}"]
    # both workers need the teacher: one trains it (stored), the other waits for it
    sharded = [*settings, "distill.pseudo_label.shard_size=64", f"paths.output_root={tmp_path / 'a'}"]
    workers = [subprocess.Popen([sys.executable, "train.py", *sharded, f"worker={i}"], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for i in range(2)]
    outputs = [worker.communicate(timeout=300)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    (teacher_dir,) = (tmp_path / "a" / "stages" / "teacher").glob("[!.]*/model")
    one = subprocess.run([sys.executable, "train.py", *settings, f"teacher_checkpoint={teacher_dir}",
                          "distill.pseudo_label.shard_size=null",
                          f"paths.output_root={tmp_path / 'b'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    (cache,) = (tmp_path / "a" / "stages" / "pseudo_labels").glob("[!.]*/labels.pt")
    (single,) = (tmp_path / "b" / "stages" / "pseudo_labels").glob("[!.]*/labels.pt")
    cache, single = torch.load(cache), torch.load(single)
    assert cache["sentences"] == single["sentences"] and len(cache["sentences"]) == 300
    # the same logits, up to bf16 rounding where bf16 is native (shards pad batches differently)
    torch.testing.assert_close(cache["logits"], single["logits"], atol=5e-3, rtol=0)
    shards = list((tmp_path / "a" / "stages" / "pseudo_label_shards").glob("[!.]*/report.json"))
    assert len(shards) == 5  # 300 sentences in shards of 64, each built once
    assert all(json.loads(shard.read_text())["labelled_by"].startswith("torch ") for shard in shards)
    report = json.loads(next((tmp_path / "a" / "stages" / "pseudo_labels").glob(
        "[!.]*/report.json")).read_text())
    assert report["shard_size"] == 64 and report["sentences"] == 300


@pytest.mark.slow(budget_s=400)
def test_the_scaling_script_measures_one_and_two_label_workers(tmp_path, data_dir):
    done = subprocess.run(
        [sys.executable, "scripts/scaling.py", "--name", "tiny", "--sentences", "120",
         "--shard-size", "20", "--repeats", "1", "--output-root", str(tmp_path), "--",
         *TINY, f"paths.data_dir={DATA_DIR}"],
        cwd=ROOT, capture_output=True, text=True, timeout=380)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "scaling" / "tiny" / "scaling.json").read_text())
    rows = {row["workers"]: row for row in result["measured"]}
    assert set(rows) == {1, 2}
    for row in rows.values():
        assert row["sentences"] == 120 and row["shards"] == 6 and sum(row["shards_per_worker"]) == 6
        assert row["sentences_per_s"] > 0 and row["merge_s"] >= 0
    cores = len(os.sched_getaffinity(0))  # the CPUs split between the workers
    assert (rows[1]["threads_per_worker"], rows[2]["threads_per_worker"]) == (cores, max(1, cores // 2))
    assert [p["machines"] for p in result["projection"]] == [1, 8]
    assert "Projected" in (tmp_path / "scaling" / "tiny" / "scaling.md").read_text()


@pytest.mark.slow(budget_s=300)
def test_the_scaling_script_measures_training_in_one_and_two_processes(tmp_path, data_dir):
    done = subprocess.run(
        [sys.executable, "scripts/scaling.py", "--name", "tiny", "--workers", "",
         "--train-sentences", "100", "--repeats", "1", "--output-root", str(tmp_path), "--",
         *TINY, "student=tiny", "student.model.num_hidden_layers=2", "student.model.hidden_size=32",
         "student.model.num_attention_heads=2", "student.model.intermediate_size=64",
         f"paths.data_dir={DATA_DIR}"],
        cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "scaling" / "tiny" / "scaling.json").read_text())
    assert "measured" not in result  # no labelling asked for
    rows = {row["processes"]: row for row in result["training"]}
    assert set(rows) == {1, 2}
    for row in rows.values():
        assert row["sentences"] == 100 and row["epochs"] == 2 and row["stage1_s"] > 0
    projection = result["training_projection"]
    assert [p["machines"] for p in projection] == [1, 8]
    assert projection[0]["all_reduce_ms"] == 0 and projection[1]["all_reduce_ms"] > 0
    assert projection[0]["speed_up"] == 1.0
    assert not (tmp_path / "scaling" / "tiny" / "runs").exists()


DDP_STUDENT = ["student=tiny", "student.model.num_hidden_layers=2", "student.model.hidden_size=32",
               "student.model.num_attention_heads=2", "student.model.intermediate_size=64",
               "student.stage1_epochs=1", "student.stage2_epochs=2", "trainer.precision=32-true",
               # without dropout the two runs draw no random masks: they must agree to rounding
               "+student.model.hidden_dropout_prob=0.0",
               "+student.model.attention_probs_dropout_prob=0.0",
               "+teacher.model.config_overrides.hidden_dropout_prob=0.0",
               "+teacher.model.config_overrides.attention_probs_dropout_prob=0.0"]


@pytest.mark.slow(budget_s=400)
def test_ddp_with_two_processes_trains_what_one_process_trains(tmp_path, data_dir):
    """The teacher, stage 1 (PKD on pseudo-labels), stage 2 and the fresh baseline, each fitted
    in 2 DDP processes on CPU (gloo), end with the weights one process gets from the same global
    batches: equal within 1e-5 (float rounding of the gradient average), metrics equal to 4
    decimals. Only this process writes the store and the run folder."""
    from omegaconf import open_dict
    from safetensors.torch import load_file

    from fincompress.stages.distill import run_distill

    from .conftest import compose_config

    results, folders = {}, {}
    for name, extra in (("single", []), ("ddp", ["trainer=ddp", "trainer.devices=2"])):
        marks = tmp_path / name / "ranks"
        cfg = compose_config(["+experiment=pkd", *TINY, "news.max_sentences=120", *DDP_STUDENT,
                              "+callbacks.ranks._target_=tests.helpers.RankMarker",
                              f"+callbacks.ranks.folder={marks}", *extra], tmp_path / name)
        with open_dict(cfg):
            cfg.paths.run_dir = str(tmp_path / name / "run")
        results[name] = run_distill(cfg)
        folders[name] = tmp_path / name
        fits = [mark.name.split("-") for mark in marks.iterdir()]
        # four fits (teacher, stage 1, stage 2, fresh baseline): in this process, or each in
        # two others (ranks 0 and 1) that took the same number of steps
        if not extra:
            assert len(fits) == 4 and {pid for _, pid, _, _ in fits} == {str(os.getpid())}
            steps = sorted(step for _, _, step, _ in fits)
        else:
            assert len(fits) == 8 and str(os.getpid()) not in {pid for _, pid, _, _ in fits}
            assert sorted(rank for rank, _, _, _ in fits) == ["0"] * 4 + ["1"] * 4
            for rank in "01":  # each rank stepped as often as the single process did
                assert sorted(step for r, _, step, _ in fits if r == rank) == steps
    for model in ("stages/teacher/*/model", "run/student", "stages/fresh/*/model"):
        (single,) = folders["single"].glob(model)
        (ddp,) = folders["ddp"].glob(model)
        ours, theirs = load_file(single / "model.safetensors"), load_file(ddp / "model.safetensors")
        assert ours.keys() == theirs.keys()
        difference = max((ours[k] - theirs[k]).abs().max().item() for k in ours)
        assert difference < 1e-5, f"{model}: weights differ by {difference}"
    for part in ("student", "fresh"):
        for metric in ("f1_macro", "acc", "ece", "best_val_f1_macro"):
            assert results["ddp"][part][metric] == pytest.approx(results["single"][part][metric],
                                                                 abs=1e-4)
    # the teacher stage records the epochs it ran and its best validation score under DDP too
    (info,) = folders["ddp"].glob("stages/teacher/*/model/checkpoint_info.json")
    info = json.loads(info.read_text())
    assert info["epochs_run"] == 1 and info["best_val_f1_macro"] is not None


def slurm_task_env(rank: int, tasks: int, port: int, job_id: str) -> dict:
    """What ``srun --ntasks-per-node=<tasks>`` gives task ``rank`` on one node (Lightning's
    SLURMEnvironment reads it), for a job on this machine."""
    return {**os.environ, "SLURM_NTASKS": str(tasks), "SLURM_NTASKS_PER_NODE": str(tasks),
            "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_NODEID": "0",
            "SLURM_NNODES": "1", "SLURM_JOB_NAME": "fincompress", "SLURM_JOB_ID": job_id,
            "SLURM_NODELIST": "127.0.0.1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow(budget_s=500)
def test_ddp_ranks_started_as_slurm_tasks_train_what_one_process_trains(tmp_path, data_dir):
    """Multi-node DDP as SLURM runs it: one task per rank, each running the whole job (here two
    tasks of one node, with the variables srun sets). Every rank joins the teacher, stage-1,
    stage-2 and fresh-baseline fits; rank 0 alone writes the store and the run folder, rank 1
    its own ``rank1`` folder; the weights equal one process's within 1e-5."""
    from safetensors.torch import load_file

    job = [sys.executable, "train.py", "+experiment=pkd", *TINY, "news.max_sentences=120",
           *DDP_STUDENT, f"paths.data_dir={DATA_DIR}"]
    single = subprocess.run([*job, f"paths.output_root={tmp_path / 'single'}",
                             f"hydra.run.dir={tmp_path / 'single' / 'run'}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert single.returncode == 0, single.stderr[-3000:]
    root, port = tmp_path / "tasks", free_port()
    ranks = [subprocess.Popen([*job, "trainer=ddp", "trainer.devices=2",
                               f"paths.output_root={root}", f"hydra.run.dir={root / 'run'}"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=slurm_task_env(rank, 2, port, "4343"))
             for rank in range(2)]
    try:
        logs = [rank.communicate(timeout=400)[0] for rank in ranks]
    finally:
        for rank in ranks:
            rank.kill()
    assert [rank.returncode for rank in ranks] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    assert "DDP rank 1 of 2 (started by SLURMEnvironment)" in (
        root / "run" / "rank1" / "train.log").read_text()
    for model in ("stages/teacher/*/model", "run/student", "stages/fresh/*/model"):
        (ours,) = (tmp_path / "single").glob(model)
        (theirs,) = root.glob(model)
        ours, theirs = load_file(ours / "model.safetensors"), load_file(theirs / "model.safetensors")
        difference = max((ours[k] - theirs[k]).abs().max().item() for k in ours)
        assert difference < 1e-5, f"{model}: weights differ by {difference}"
    expected = json.loads((tmp_path / "single" / "run" / "results.json").read_text())
    got = json.loads((root / "run" / "results.json").read_text())
    for part in ("student", "fresh"):
        assert got[part]["f1_macro"] == pytest.approx(expected[part]["f1_macro"], abs=1e-4)
        assert got[part]["confusion_matrix"] == expected[part]["confusion_matrix"]
    # one stored folder per stage and key, no scratch builds or checkpoints left
    for stage in ("teacher", "stage1", "fresh"):
        assert len(list((root / "stages" / stage).iterdir())) == 1, stage
    assert not list((root / "stages").glob("*/.*scratch"))
    assert not list((root / "stages" / ".resume").glob("*/*/checkpoints/*.ckpt"))


def test_a_launcher_that_started_other_than_num_nodes_times_devices_processes_is_refused(
        tmp_path, monkeypatch):
    """Three SLURM tasks for a 1 x 2 DDP job: an error naming both counts, before any process
    group opens; without a launcher, or without trainer=ddp, the job runs as one process."""
    import torch.distributed as dist

    from fincompress import distributed
    from fincompress.errors import InputError

    from .conftest import compose_config

    ddp = compose_config(["+experiment=pkd", "trainer=ddp", "trainer.devices=2"], tmp_path)
    single = compose_config(["+experiment=pkd"], tmp_path)
    assert distributed.join(ddp) == 0 and not dist.is_initialized()  # no launcher here
    env = slurm_task_env(1, 3, free_port(), "77")
    env["SLURM_NTASKS_PER_NODE"] = "3"
    for name, value in env.items():
        if name.startswith("SLURM_"):
            monkeypatch.setenv(name, value)
    assert distributed.launcher_environment(single) is None  # not a DDP job: label workers
    with pytest.raises(InputError, match=r"started 3 processes.*num_nodes=1 x trainer.devices=2"):
        distributed.join(ddp)
    assert not dist.is_initialized()


@pytest.mark.slow(budget_s=300)
def test_the_labelling_engines_script_labels_the_same_sentences_with_each_engine(
        tmp_path, tiny_classifier, data_dir):
    """scripts/label_engines.py runs every engine on real news sentences with a tiny teacher:
    each labels every sentence as the single process does, and the table has their times."""
    out = tmp_path / "engines"
    done = subprocess.run([sys.executable, "scripts/label_engines.py", "--teacher",
                           str(tiny_classifier), "--sentences", "120", "--shard-size", "50",
                           "--repeats", "1", "--output", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "FINCOMPRESS_DATA": str(DATA_DIR)})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((out / "engines.json").read_text())["rows"]
    assert [row["engine"] for row in rows] == [
        "one process", "store shards, 2 processes", "datasets.map, num_proc=2",
        "Lightning predict, DDP 2 processes"]
    for row in rows:
        # the same labels up to rounding (batches of other sentences pad otherwise)
        assert row["agreement with one process"] >= 0.95 and float(row["sentences/s"]) > 0
    assert json.loads((out / "engines.json").read_text())["sentences"] == 120
