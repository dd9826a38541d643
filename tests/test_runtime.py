"""The lean runtime: importing fincompress, and opening, running and describing an OpenVINO or
ONNX artifact, need neither PyTorch nor transformers nor the training stack; the tokenizer the
runtime uses gives transformers' ids; an export scores itself and records what it measured."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from fincompress.data.phrasebank import read_phrasebank
from fincompress.hardware import native_bf16
from fincompress.predict import SavedTokenizer

from .conftest import PHRASEBANK_DIR, ROOT

TRAINING_STACK = ("torch", "transformers", "lightning", "torchmetrics", "datasets", "hydra")
# a process in which the training stack cannot be imported: what the runtime extra installs
WITHOUT_TRAINING_STACK = f"""
import importlib.abc, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {TRAINING_STACK!r}:
            raise ImportError(f"{{name}} is not installed in the runtime")
sys.meta_path.insert(0, Blocked())
"""
HOSTILE = ["", "   ", "Operating profit rose to EUR 13.1 mn .", "ÄÖÜ café naïve Espoo",
           "📈📉 stocks 🚀", "日本語のテキスト", "a" * 3000, "word " * 400, "tab\there\nnewline",
           "$AAPL +3.5% #earnings @user http://x.co/abc"]


@pytest.fixture(scope="module")
def int8_artifacts(tiny_classifier, tmp_path_factory):
    """The tiny classifier exported to OpenVINO and ONNX INT8 by the CLI, from a directory
    that is not the checkout and without FINCOMPRESS_DATA: calibration and test sentences are
    found in the data folder beside the checkout (it ended in a traceback)."""
    from .test_cli import cli_here

    folder = tmp_path_factory.mktemp("exports")
    outputs = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.delenv("FINCOMPRESS_DATA", raising=False)
        for fmt in ("openvino", "onnx"):
            outputs[fmt] = folder / fmt
            done = cli_here("export", tiny_classifier, "--format", fmt, "--int8",
                            "--output", outputs[fmt])
            assert done.returncode == 0, done.stderr[-3000:]
            assert "validated on 339 sentences" in done.stdout
    return outputs


def run_without_training_stack(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_TRAINING_STACK + code], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_importing_fincompress_imports_none_of_the_training_stack():
    done = subprocess.run([sys.executable, "-c", "import sys, fincompress, fincompress.cli; "
                           f"print([m for m in {TRAINING_STACK!r} if m in sys.modules])"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


@pytest.mark.parametrize("fmt", ["openvino", "onnx"])
def test_an_int8_artifact_predicts_and_describes_itself_without_the_training_stack(
        int8_artifacts, fmt):
    folder = int8_artifacts[fmt]
    expected = __import__("fincompress").load(folder).predict(HOSTILE)  # in this full process
    done = run_without_training_stack(
        "import json, fincompress\n"
        f"print(json.dumps(fincompress.load({str(folder)!r}).predict({HOSTILE!r})))\n"
        "from fincompress.cli import main\n"
        f"main(['info', {str(folder)!r}])\n"
        f"main(['predict', {str(folder)!r}, 'Profit rose .'])\n")
    assert done.returncode == 0, done.stderr[-3000:]
    answers, rest = done.stdout.split("\n", 1)
    got = json.loads(answers)
    assert [a["label"] for a in got] == [a["label"] for a in expected]
    for ours, theirs in zip(got, expected):
        if ours["probabilities"]:
            assert ours["probabilities"] == pytest.approx(theirs["probabilities"], abs=1e-6)
        assert (ours["tokens"], ours["truncated"]) == (theirs["tokens"], theirs["truncated"])
    assert got[0]["label"] is None and got[7]["truncated"] is True
    assert "precision: int8" in rest and '"text": "Profit rose ."' in rest
    # an INT8 artifact says so (it said "f32", the precision of its float parts, alone)
    assert f"runs as: {fmt.replace('onnx', 'onnxruntime')}, int8 (float parts " in rest


def test_an_export_records_what_it_measured_and_info_shows_it(int8_artifacts, tiny_classifier):
    from fincompress.cli import describe

    for folder in int8_artifacts.values():
        record = json.loads((folder / "checkpoint_info.json").read_text())
        assert record["precision"] == "int8" and record["evaluated_on"]["sentences"] == 339
        # the source records no split: said so, not hidden
        assert "the source records no split" in record["evaluated_on"]["what"]
        assert 0.5 <= record["agreement_with_source"] <= 1.0
        assert set(record["metrics"]) >= {"test/acc", "test/f1_macro", "test/f1_negative"}
        assert record["machine"]["cpu"] and record["machine"]["isa"] is not None
        speed = record["throughput_batch32"]
        assert speed["export"] > 0 and speed["source_fp32"] > 0
        # the source in bf16 too where this CPU has it: a speed-up not against fp32 alone
        assert ("source_bf16" in speed) == native_bf16()[0]
        shown = describe(folder, record, "engine")
        assert "precision: int8" in shown and "label agreement with its source: " in shown
        assert f"(the source: {speed['source_fp32']:,.0f} in fp32, " in shown
        assert f"f1_macro {record['metrics']['test/f1_macro']:.4f}" in shown
        assert f"measured on: {record['machine']['cpu']}" in shown
        assert f"lineage: {folder} <- {tiny_classifier}" in shown


def test_export_scores_on_a_given_file_and_refuses_a_bad_one_before_the_work(
        tiny_classifier, tmp_path):
    from .test_cli import cli_here

    good = tmp_path / "eval.csv"
    good.write_text("text,label\nProfit rose .,positive\nSales fell .,negative\n"
                    "The board met .,neutral\n")
    result = cli_here("export", tiny_classifier, "--format", "onnx", "--eval", good,
                      "--output", tmp_path / "onnx")
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((tmp_path / "onnx" / "checkpoint_info.json").read_text())
    assert record["evaluated_on"]["sentences"] == 3 and record["precision"] == "f32"
    assert record["agreement_with_source"] == pytest.approx(1.0)  # fp32: the same model
    bad = tmp_path / "bad.csv"
    bad.write_text("text,sentiment\nProfit rose .,positive\n")
    result = cli_here("export", tiny_classifier, "--format", "onnx", "--eval", bad,
                      "--output", tmp_path / "other")
    assert result.returncode == 2 and f"{bad}: no label column" in result.stderr
    assert not (tmp_path / "other").exists()


def test_export_refuses_the_data_folders_test_split_for_a_model_trained_on_another(
        tiny_classifier, tmp_path):
    import shutil

    from .test_cli import cli_here

    source = tmp_path / "student"
    shutil.copytree(tiny_classifier, source)
    info = json.loads((source / "checkpoint_info.json").read_text())
    (source / "checkpoint_info.json").write_text(json.dumps({**info, "split_hash": "0" * 16}))
    result = cli_here("export", source, "--format", "onnx", "--output", tmp_path / "onnx")
    assert result.returncode == 2 and "was trained on another PhraseBank split" in result.stderr
    assert "--eval FILE" in result.stderr and not (tmp_path / "onnx").exists()
    assert cli_here("export", source, "--format", "onnx", "--no-eval",
                    "--output", tmp_path / "onnx").returncode == 0


def saved_tokenizer_matches(tokenizer, folder):
    tokenizer.save_pretrained(folder)
    ours = SavedTokenizer(folder)
    texts = [row.text for row in read_phrasebank(PHRASEBANK_DIR, "all")][:500] + HOSTILE
    for max_length in (None, 16, 128):
        kwargs = {"truncation": max_length is not None, "max_length": max_length}
        assert ours(texts, **kwargs)["input_ids"] == tokenizer(texts, **kwargs)["input_ids"]
    assert (ours.pad_token_id, ours.unk_token_id) == (tokenizer.pad_token_id,
                                                       tokenizer.unk_token_id)


def test_the_runtime_tokenizer_gives_transformers_ids_minilm(minilm_tokenizer, tmp_path):
    saved_tokenizer_matches(minilm_tokenizer, tmp_path)


@pytest.mark.slow(budget_s=120)  # fetches the bundled MPNet (400 MB) where it is not cached
def test_the_runtime_tokenizer_gives_transformers_ids_mpnet(tmp_path):
    from fincompress.models.sources import load_tokenizer

    saved_tokenizer_matches(load_tokenizer("bundled:mpnet-base"), tmp_path)



def test_a_pytorch_folder_without_pytorch_installed_names_the_extra(tiny_classifier):
    done = run_without_training_stack(
        f"from fincompress.cli import main\nmain(['predict', {str(tiny_classifier)!r}, 'x'])\n")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "is a PyTorch model folder; running it needs torch and transformers" in done.stderr
    assert "pip install 'fincompress[train]'" in done.stderr


@pytest.mark.slow(budget_s=300)
def test_the_runtime_extra_alone_predicts_describes_and_serves_an_int8_artifact(int8_artifacts,
                                                                                 tmp_path):
    """A fresh virtual environment with ``fincompress[runtime]`` installed from the package
    index (no system packages): no PyTorch, transformers or Lightning arrive, and the OpenVINO
    INT8 artifact predicts, describes itself and is served, with the answers of this process."""
    import socket
    import time

    import httpx

    import fincompress

    source = tmp_path / "source"
    shutil.copytree(ROOT / "fincompress", source / "fincompress",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", "-w", str(tmp_path / "dist"), str(source)], check=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("fincompress-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", f"{wheel}[runtime]"],
                   check=True, timeout=600)
    installed = subprocess.run([str(venv / "bin" / "pip"), "list", "--format", "json"],
                               capture_output=True, text=True, check=True).stdout
    names = {package["name"].lower() for package in json.loads(installed)}
    assert {"openvino", "onnxruntime", "fastapi", "tokenizers"} <= names
    assert not names & {"torch", "transformers", "lightning", "torchmetrics", "datasets"}

    folder = int8_artifacts["openvino"]
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)

    def run(*command: str) -> str:
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    expected = fincompress.load(folder).predict(["Operating profit rose to EUR 13.1 mn ."])[0]
    answer = json.loads(run("fincompress", "predict", str(folder),
                            "Operating profit rose to EUR 13.1 mn .").splitlines()[-1])
    assert answer["label"] == expected["label"]
    assert "int8" in run("fincompress", "info", str(folder))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(["fincompress", "serve", str(folder), "--port", str(port)],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and server.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        served = httpx.post(f"http://127.0.0.1:{port}/predict", timeout=30,
                            json={"texts": ["Operating profit rose to EUR 13.1 mn ."]}).json()
        assert served["predictions"][0]["label"] == expected["label"]
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert f"http://127.0.0.1:{port}" in output  # the start line


def test_cold_start_script_times_each_first_command_in_a_fresh_process(int8_artifacts, tmp_path):
    output = tmp_path / "cold.json"
    done = subprocess.run([sys.executable, "scripts/cold_start.py", str(int8_artifacts["onnx"]),
                           "--repeats", "2", "--output", str(output)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(output.read_text())
    assert [row["command"] for row in result["rows"]] == ["import fincompress", "info onnx",
                                                         "predict onnx"]
    for row in result["rows"]:
        assert 0 < row["min_s"] <= row["median_s"] <= row["max_s"] < 60
    assert result["repeats"] == 2 and result["machine"]["cores"] >= 1
    assert "predict onnx" in done.stdout and "median s" in done.stdout
    # a command that fails stops the script with its name and error, writing nothing
    missing = tmp_path / "missing"
    done = subprocess.run([sys.executable, "scripts/cold_start.py", str(missing), "--repeats", "1",
                           "--output", str(tmp_path / "none.json")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode != 0 and "info missing failed" in done.stderr
    assert not (tmp_path / "none.json").exists()
