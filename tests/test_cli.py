"""The fincompress command: predict, export, info, bench; bad input gets a named error, exit 2,
and no output file."""

import csv
import json
import os
import subprocess
import sys

import pytest

import fincompress

from .conftest import DATA_DIR, ROOT

LABELS = ["negative", "neutral", "positive"]


def cli(*args, timeout=600):
    """The installed ``fincompress`` command, in a new process (what a user runs)."""
    env = {**os.environ, "FINCOMPRESS_DATA": str(DATA_DIR)}
    return subprocess.run(["fincompress", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def cli_here(*args):
    """The same command in this process (``fincompress.cli.main``): no interpreter start and
    imports per call. Exit status, stdout and stderr as :func:`cli` gives them."""
    import contextlib
    import io

    from fincompress.cli import main

    out, err = io.StringIO(), io.StringIO()
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
    if before is None:
        os.environ.pop("TOKENIZERS_PARALLELISM", None)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def test_predict_a_sentence_and_files_in_every_format(tiny_classifier, tmp_path):
    result = cli("predict", tiny_classifier, "Sales rose 5 %.", "   ")
    assert result.returncode == 0, result.stderr[-2000:]
    first, blank = [json.loads(line) for line in result.stdout.splitlines()]
    expected = fincompress.load(tiny_classifier).predict(["Sales rose 5 %."])[0]
    assert first["text"] == "Sales rose 5 %." and first["label"] == expected["label"]
    assert blank["label"] is None and blank["warning"] == "empty text: no prediction"

    texts = ["Profit rose .", "Sales fell , the company said .", "", "Ünïcödé 😀 text ."]
    (tmp_path / "in.csv").write_text("id,sentence\n" + "".join(
        f'{i},"{t}"\n' for i, t in enumerate(texts)), encoding="utf-8")
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in texts))
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    offline = fincompress.load(tiny_classifier).predict(texts)
    for source, extra, output in (("in.csv", [], "out.csv"), ("in.jsonl", ["--column", "body"], "out.jsonl"),
                                  ("in.txt", [], "out2.csv")):
        result = cli_here("predict", tiny_classifier, "--input", tmp_path / source, *extra,
                     "--output", tmp_path / output)
        assert result.returncode == 0, result.stderr[-2000:]
        if output.endswith(".csv"):
            with open(tmp_path / output, encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            assert [r["text"] for r in rows] == texts
            assert [r["label"] or None for r in rows] == [a["label"] for a in offline]
            if source == "in.csv":  # the input's other columns are kept (its id was lost)
                assert list(rows[0])[:2] == ["id", "text"] and [r["id"] for r in rows] == ["0", "1", "2", "3"]
            expected = offline[0]["probabilities"]["positive"]
            assert float(rows[0]["p_positive"]) == pytest.approx(expected, abs=1e-5)
        else:
            rows = [json.loads(line) for line in (tmp_path / output).read_text().splitlines()]
            assert [r["label"] for r in rows] == [a["label"] for a in offline]
            # one schema with the CSV: every row has every field, warning null when none
            assert all(list(r) == ["text", "label", "probabilities", "tokens", "truncated",
                                   "warning"] for r in rows)
            assert [r["warning"] is None for r in rows] == ["warning" not in a for a in offline]
        assert "wrote 4 answers" in result.stdout and "1 with a warning" in result.stdout


def test_batch_prediction_keeps_columns_and_streams_through_pipes(tiny_classifier, tmp_path):
    data = tmp_path / "in.csv"
    data.write_text("id,text,label,source\n7,Profit rose .,positive,wire\n8,Sales fell .,negative,blog\n")
    out = tmp_path / "out.jsonl"
    assert cli_here("predict", tiny_classifier, "--input", data, "--output", out).returncode == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # the input's label is kept beside the model's, under another name
    assert list(rows[0]) == ["id", "input_label", "source", "text", "label", "probabilities",
                             "tokens", "truncated", "warning"]
    assert [(r["id"], r["input_label"], r["source"]) for r in rows] == [
        ("7", "positive", "wire"), ("8", "negative", "blog")]
    result = cli_here("predict", tiny_classifier, "--input", data, "--keep-columns", "source",
                      "--output", tmp_path / "some.csv")
    assert result.returncode == 0
    with open(tmp_path / "some.csv", encoding="utf-8") as f:
        assert next(csv.reader(f))[:3] == ["source", "text", "label"]
    result = cli_here("predict", tiny_classifier, "--input", data, "--keep-columns", "nope",
                      "--output", tmp_path / "no.csv")
    assert result.returncode == 2 and "has no column ['nope']" in result.stderr
    # standard input to standard output, in a real pipe
    piped = subprocess.run(["fincompress", "predict", str(tiny_classifier), "--input", "-",
                            "--output", "-"], input="Profit rose .\nSales fell .\n",
                           capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert piped.returncode == 0, piped.stderr[-2000:]
    lines = [json.loads(line) for line in piped.stdout.splitlines()]
    expected = fincompress.load(tiny_classifier).predict(["Profit rose .", "Sales fell ."])
    assert [r["label"] for r in lines] == [a["label"] for a in expected]
    assert "wrote 2 answers to -" in piped.stderr


@pytest.mark.parametrize("content, args, message", [
    (b"fine line\nbad \xff byte\n", [], "in.txt line 2, byte 5: not valid UTF-8 (0xff)"),
    (b"id,body\n1,hello\n", [], "no 'text' or 'sentence' column; columns: id, body"),
    (b"id,text\n1,hello\n", ["--column", "sentence"], "no column 'sentence'; columns: id, text"),
])
def test_bad_input_files_get_a_named_error_and_no_output(tiny_classifier, tmp_path, content, args,
                                                          message):
    name = "in.txt" if content.startswith(b"fine") else "in.csv"
    (tmp_path / name).write_bytes(content)
    result = cli_here("predict", tiny_classifier, "--input", tmp_path / name, *args,
                 "--output", tmp_path / "out.csv")
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == [tmp_path / name]  # nothing written


def test_a_folder_that_is_not_a_model_gets_a_named_error(tmp_path):
    result = cli("info", tmp_path)
    assert result.returncode == 2 and "holds no model" in result.stderr
    assert "Traceback" not in result.stderr


def test_info_shows_metrics_lineage_and_machine(tiny_classifier):
    result = cli_here("info", tiny_classifier.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "stage: stage2, method pkd" in result.stdout
    assert "f1_macro 0.5000" in result.stdout and "1000" not in result.stdout.split("size")[0]
    assert f"lineage: {tiny_classifier} <- {tiny_classifier.parent / 'gone'} (not on this machine)" \
        in result.stdout
    assert "measured on: Test CPU, 2 cores, ISA avx2" in result.stdout


def test_export_calibrates_on_a_given_file_and_never_overwrites(tiny_classifier, tmp_path):
    calibration = tmp_path / "calibration.txt"
    calibration.write_text("Profit rose .\nSales fell .\nThe board met .\n")
    openvino = tmp_path / "openvino"
    result = cli_here("export", tiny_classifier, "--format", "openvino", "--int8", "--calibration",
                      calibration, "--no-eval", "--output", openvino)
    assert result.returncode == 0, result.stderr[-3000:]
    reopened = fincompress.load(openvino)
    assert reopened.engine == "openvino" and reopened.info["steps"][0]["calibration_sentences"] == 3
    assert reopened.precision.startswith("int8 (float parts ")
    assert "metrics" not in reopened.info  # --no-eval: nothing measured, nothing claimed
    again = cli_here("export", tiny_classifier, "--format", "onnx", "--output", openvino)
    assert again.returncode == 2 and "exists" in again.stderr


@pytest.mark.slow(budget_s=200)
def test_export_check_reopens_int8_with_the_benchmarks_labels(tiny_classifier, tmp_path, data_dir):
    """The script behind the README's export figures: CLI export, CLI bench, then load()."""
    result = subprocess.run([sys.executable, "scripts/export_check.py", str(tiny_classifier),
                             "--format", "onnx", "--output", str(tmp_path), "--repeats", "1",
                             "--latency-sentences", "5"], cwd=ROOT,
                            capture_output=True, text=True, timeout=900,
                            env={**os.environ, "FINCOMPRESS_DATA": str(DATA_DIR)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    check = json.loads((tmp_path / "export_check.json").read_text())
    assert check["test_sentences"] > 50 and check["agreement_load_vs_benchmark"] >= 0.99
    engines = [row["engine"] for row in check["benchmark_rows"]]
    assert engines[0] == "torch" and engines[-1] == "onnxruntime"
    assert (tmp_path / "bench" / "pareto.png").is_file()
