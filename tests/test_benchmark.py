"""The CPU benchmark: FLOPs that match a counted forward pass, and every artifact measured in
one interleaved run with its latency, throughput, accuracy and ratios to the reference."""

import csv
import json
import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fincompress import scoring
from fincompress.compress.int8 import OpenVINOBackend
from fincompress.compress.prune import prune_ffn, prune_heads
from fincompress.data.phrasebank import write_splits
from fincompress.hardware import machine_record
from fincompress.models.sources import load_classifier
from fincompress.scoring import encoder_flops, mean_pass_seconds, peak_rates, score
from fincompress.stages.benchmark import write_outputs
from fincompress.tables import f1_axis, pareto_front

LABELS = ["negative", "neutral", "positive"]


def tiny():
    return load_classifier("bundled:minilm-l6", LABELS, random_init=True,
                           config_overrides={"num_hidden_layers": 2, "hidden_size": 64,
                                             "num_attention_heads": 4, "intermediate_size": 128})


def test_encoder_flops_match_a_counted_forward_pass_of_a_pruned_model():
    model, _ = tiny()
    prune_heads(model, {0: [1, 2], 1: [0]})
    prune_ffn(model, {1: list(range(50))})
    model.eval()
    model.set_attn_implementation("eager")  # attention as plain matmuls, which the counter sees
    ids = torch.randint(5, 1000, (3, 17))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    hidden = model.config.hidden_size
    head_and_pooler = 2 * 3 * hidden * hidden + 2 * 3 * hidden * len(LABELS)  # not the encoder
    assert encoder_flops(model.config.to_dict(), [(3, 17)]) == counter.get_total_flops() - head_and_pooler


def test_the_pareto_front_keeps_only_models_no_other_beats_on_both():
    def row(rate, f1):
        return {"throughput_sorted": rate, "f1_macro": f1}

    rows = [row(40, 0.97),     # the teacher: slowest, most accurate
            row(2000, 0.96),   # a fast student
            row(1500, 0.95),   # slower and worse than the fast student
            row(3000, 0.90),   # fastest, least accurate
            row(2000, 0.96),   # a tie with the fast student: neither beats the other
            row(40, 0.93)]     # as slow as the teacher and worse
    assert pareto_front(rows) == [True, True, False, True, True, False]
    # the F1 axis starts below the worst row, so a small gap does not fill the chart
    low, high = f1_axis(rows)
    assert low < 0.90 - 0.01 and high == 1.0
    assert f1_axis([row(1, 0.02)])[0] == 0.0


def test_peak_rates_are_measured_for_fp32_and_int8():
    peaks = peak_rates(n=256, repeats=2)
    assert peaks["f32"] > 0 and peaks["i8"] > 0


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, data_dir):
    from fincompress.data.phrasebank import read_phrasebank

    folder = tmp_path_factory.mktemp("bench")
    model, tokenizer = tiny()
    model.save_pretrained(folder / "torch")
    tokenizer.save_pretrained(folder / "torch")
    rows = read_phrasebank(data_dir / "financial_phrasebank", "all")[:40]
    OpenVINOBackend().export(model, tokenizer, [r.text for r in rows], folder / "int8")
    (folder / "int8" / "checkpoint_info.json").write_text(json.dumps(
        {"labels": LABELS, "steps": [{"engine": "openvino", "int8": True}]}))
    write_splits({"train": [], "val": [], "test": rows},
                 folder / "split")
    return folder


def test_a_round_repeats_a_short_pass_until_its_time_is_up_and_counts_the_mean(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(scoring.time, "perf_counter", lambda: now[0])

    def run_pass(seconds):
        now[0] += seconds

    assert mean_pass_seconds(lambda: run_pass(0.3), 1.0) == (pytest.approx(0.3), 4)
    assert mean_pass_seconds(lambda: run_pass(0.3), 0.0) == (pytest.approx(0.3), 1)
    assert mean_pass_seconds(lambda: run_pass(2.5), 1.0) == (pytest.approx(2.5), 1)


def test_benchmark_measures_every_artifact_against_the_first(artifacts, tmp_path):
    peaks = {"f32": 50.0, "i8": 100.0}
    rows = score({"teacher": (artifacts / "torch", "32-true"),
                  "int8": (artifacts / "int8", "32-true")}, LABELS,
                 artifacts / "split" / "test.csv", latency_sentences=6, repeats=2, warmup=2,
                 unsorted=True, peaks=peaks, min_round_s=0.2)["models"]
    teacher, int8 = rows
    assert (teacher["engine"], teacher["precision"]) == ("torch", "f32")
    assert (int8["engine"], int8["precision"]) == ("openvino", "i8")
    assert teacher["parameters"] == int8["parameters"] > 0  # the IR's shape, rebuilt from config
    assert int8["size_bytes"] < teacher["size_bytes"]
    for row in rows:
        assert 0 < row["latency_model_ms_p50"] <= row["latency_model_ms_p95"]
        assert row["latency_e2e_ms_p50"] > 0 and row["throughput_sorted"] > 0
        assert row["throughput_unsorted"] > 0 and row["throughput_spread_pct"] >= 0
        assert row["peak_share"] == pytest.approx(row["achieved_gflops"] / peaks[row["precision"]],
                                                  abs=2e-3)
        assert {"acc", "f1_macro", "f1_negative", "kl_teacher_student"} <= set(row)
    # a tiny model's pass takes milliseconds: each round repeats it until 0.2 s have passed
    assert teacher["timing_passes"] > 2 * 5 and int8["timing_passes"] > 2 * 5
    assert (teacher["throughput_ratio"], teacher["size_ratio"], teacher["f1_macro_delta"]) == (1, 1, 0)
    assert teacher["agreement_with_teacher"] == 1
    assert int8["size_ratio"] == round(teacher["size_bytes"] / int8["size_bytes"], 2)
    markdown = write_outputs(rows, machine_record("32-true", "test"), peaks, tmp_path)
    assert markdown.count("\n| ") == 3  # header and two models
    assert "| MiB " in markdown and "| spread % " in markdown and "bytes" not in markdown
    with open(tmp_path / "benchmark.csv") as handle:
        saved = list(csv.DictReader(handle))
    assert [r["model"] for r in saved] == ["teacher", "int8"]
    assert json.loads((tmp_path / "benchmark.json").read_text())["models"][1]["precision"] == "i8"


@pytest.mark.slow(budget_s=200)  # the tiny reproduction runs the benchmark stage in every CI run
def test_benchmark_experiment_writes_tables_and_plot(tmp_path, data_dir):
    from fincompress.stages.benchmark import run_benchmark

    from .conftest import TINY, compose_config

    overrides = ["+experiment=benchmark", *TINY, "benchmark.latency_sentences=3",
                 "benchmark.repeats=1", "benchmark.warmup=1", "benchmark.published=[]",
                 "quantize.calibration_sentences=20"]
    published = ("benchmark.published=[{name:tiny-published,model_type:bert,config:{"
                 "num_hidden_layers:1,hidden_size:32,num_attention_heads:2,intermediate_size:64},"
                 "acc:0.91,f1_macro:0.88}]")
    result = run_benchmark(compose_config([*overrides, published], tmp_path))
    rows = {row["model"]: row for row in result["models"]}
    bf16 = result["machine"]["precision"] == "bf16-mixed"
    # every reference (the teacher, the published architecture) in every precision offered here
    for reference in ("teacher", "tiny-published"):
        forms = [name for name, row in rows.items() if row["reference_of"] == reference]
        assert forms[0] == reference and (f"{reference} (bf16)" in forms) == bf16
        (int8,) = [name for name in forms if rows[name]["precision"] == "i8"]
        assert int8.startswith(f"{reference} (int8, ")  # the backend chosen on validation
    row = rows["tiny-published"]  # timed here, at its published accuracy
    assert row["published"] and (row["acc"], row["f1_macro"]) == (0.91, 0.88)
    assert row["accuracy_from"] == "published (fp32, another split)"
    assert row["throughput_sorted"] > 0 and row["agreement_with_teacher"] is None
    assert row["f1_macro_delta"] == round(0.88 - result["models"][0]["f1_macro"], 4)
    teacher = result["models"][0]
    assert not teacher["published"] and teacher["accuracy_from"] == "measured here"
    # speed-ups against the teacher's best PyTorch form and its INT8 form
    teacher_forms = [r for r in rows.values() if r["reference_of"] == "teacher"]
    best_torch = max(r["throughput_sorted"] for r in teacher_forms if r["engine"] == "torch")
    teacher_int8 = next(r for r in teacher_forms if r["precision"] == "i8")
    assert row["x_reference_torch"] == round(row["throughput_sorted"] / best_torch, 2)
    assert teacher_int8["x_reference_int8"] == 1
    assert "accuracy from" in (tmp_path / "run" / "benchmark.md").read_text()
    run = tmp_path / "run"
    for name in ("benchmark.json", "benchmark.csv", "benchmark.md", "pareto.png",
                 "confusion_matrices.png"):
        assert (run / name).stat().st_size > 0
    teacher = result["models"][0]["dir"]
    again = run_benchmark(compose_config([*overrides, f"benchmark.artifacts={{a:{teacher},b:{teacher}}}",
                                          "benchmark.reference_int8=false"], tmp_path))
    # without INT8 exports the reference keeps its bf16 form where that is native
    assert [row["model"] for row in again["models"]] == ["a", *(["a (bf16)"] if bf16 else []), "b"]
    assert again["models"][-1]["agreement_with_teacher"] == 1  # the same model twice
    with pytest.raises(FileNotFoundError, match="benchmark.artifacts.x: nowhere is not a folder"):
        run_benchmark(compose_config([*overrides, "benchmark.artifacts={x:nowhere}"], tmp_path))


@pytest.mark.slow(budget_s=120)  # 11 s on 2 AVX2 cores
def test_benchmark_logs_a_wandb_table_offline(tmp_path, data_dir, monkeypatch):
    from fincompress.stages.benchmark import run_benchmark

    from .conftest import TINY, compose_config

    monkeypatch.setenv("WANDB_MODE", "offline")
    run_benchmark(compose_config(["+experiment=benchmark", *TINY, "logger=csv_wandb",
                                  "benchmark.latency_sentences=2", "benchmark.repeats=1",
                                  "benchmark.warmup=1", "benchmark.reference_precisions=false",
                                  "study_name=bench-test", "benchmark.published=[]"], tmp_path))
    (run,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    (table,) = (run / "files" / "media" / "table").glob("benchmark_*.table.json")
    saved = json.loads(table.read_text())
    assert "throughput_sorted" in saved["columns"] and [r[0] for r in saved["data"]] == ["teacher"]
    assert list((run / "files" / "media" / "images" / "benchmark").glob("pareto_*.png"))
    (log,) = run.glob("run-*.wandb")  # the offline run's records, synced later with `wandb sync`
    # W&B's service process writes the file after the run ends: wait for it (once in three
    # suite runs on 2 busy cores it still held only its header when first read)
    deadline = time.time() + 60
    keys = (b"benchmark/teacher/f1_macro", b"benchmark/teacher/throughput_sorted", b"bench-test")
    while not all(key in (records := log.read_bytes()) for key in keys) and time.time() < deadline:
        time.sleep(0.5)
    for key in keys:
        assert key in records


@pytest.mark.slow(budget_s=400)  # two stand-ins exported to INT8 twice, two benchmark runs
def test_the_steadiness_script_times_pruned_stand_ins_in_both_round_settings(tmp_path, data_dir):
    import subprocess
    import sys

    from .conftest import ROOT

    output = tmp_path / "steady"
    command = [sys.executable, "scripts/benchmark_steadiness.py", "--output", str(output),
               "--runs", "1", "--min-round-s", "0,0.5", "--teacher", "bundled:minilm-l6",
               "--layers", "1", "--prune", "0.5,0.5", "--backends", "openvino,onnxruntime"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=380)
    assert result.returncode == 0, result.stderr[-2000:]
    saved = json.loads((output / "steadiness.json").read_text())
    assert [run["min_round_s"] for run in saved["runs"]] == [0.0, 0.5]
    assert set(saved["summary"]) == {"0", "0.5"}
    student = json.loads((output / "models" / "student" / "config.json").read_text())
    assert student["num_hidden_layers"] == 1
    pruning = student["fincompress_pruning"]  # half of 12 heads and of 1,536 neurons
    assert len(pruning["kept_heads"]["0"]) == 6 and pruning["intermediate_sizes"]["0"] == 768
    for run in saved["runs"]:
        folder = output / f"run1_min{run['min_round_s']:g}s"
        rows = {r["model"]: r for r in json.loads((folder / "benchmark.json").read_text())["models"]}
        assert {(rows[f"student_int8_{engine}"]["engine"], rows[f"student_int8_{engine}"]["precision"])
                for engine in ("openvino", "onnxruntime")} == {("openvino", "i8"), ("onnxruntime", "i8")}
        # the ratios use each model's fastest INT8 form
        for model in ("student", "teacher"):
            forms = {name: row["throughput_sorted"] for name, row in rows.items()
                     if name.startswith(f"{model}_int8_")}
            assert run[f"{model}_int8"] == max(forms, key=forms.get)
        # the teacher in its best PyTorch precision too (bf16 where native), no INT8 of its own
        # beyond the stand-ins
        assert ("teacher (bf16)" in rows) == (saved["machine"]["precision"] == "bf16-mixed")
        assert not [name for name in rows if name.startswith("teacher (int8")]
        assert run["x_teacher_best_torch"] <= run["x_teacher_fp32"]
        passes = rows["student_int8_openvino"]["timing_passes"]
        assert passes == 2 if run["min_round_s"] == 0 else passes > 2


@pytest.mark.slow(budget_s=240)  # one stand-in exported to ONNX INT8 twice
def test_the_onnx_runtime_forms_script_times_both_exports_with_and_without_the_fusion(
        tmp_path, data_dir):
    import subprocess
    import sys

    import onnx

    from .conftest import ROOT

    output = tmp_path / "forms"
    command = [sys.executable, "scripts/onnx_runtime_forms.py", "--output", str(output),
               "--layers", "1", "--prune", "0.5,0.5", "--rounds", "2", "--min-round-s", "0",
               "--profile"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=220)
    assert result.returncode == 0, result.stderr[-2000:]
    saved = json.loads((output / "forms.json").read_text())
    rows = {row["form"]: row for row in saved["rows"]}
    assert set(rows) == {f"{attention}, {fusion} SkipLayerNorm" for attention in ("sdpa", "eager")
                         for fusion in ("fused", "unfused")}
    assert saved["sentences"] > 300  # the PhraseBank test split
    for row in rows.values():
        assert len(row["rounds_per_s"]) == 2 and row["median_per_s"] > 0
        # the same model in every form: the same labels, logits within INT8 noise
        assert row["agreement_with_before"] >= 0.99 and row["max_logit_difference"] < 0.05
        ops = {op["op"] for op in row["kernel_time_by_op"]}  # ONNX Runtime's own profile
        assert ops and 0 < sum(op["share"] for op in row["kernel_time_by_op"]) <= 1
        if "unfused" in row["form"]:  # the session really runs without the fused kernel
            assert "SkipLayerNormalization" not in ops
    ops = {attention: {node.op_type for node in
                       onnx.load(output / f"int8_{attention}" / "model.onnx").graph.node}
           for attention in ("sdpa", "eager")}
    assert "IsNaN" in ops["sdpa"] and "IsNaN" not in ops["eager"]  # the two exports differ
