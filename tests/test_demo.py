"""The web demo: started by its one command, answered through its HTTP API, and driven in a real
headless browser (Debian's chromium through Playwright), which saves a screenshot."""

import json
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

import fincompress

from .conftest import ROOT, browser, save_tiny_classifier

TEXT = "Net sales fell 12 % as demand weakened ."


@pytest.fixture(scope="module")
def other_classifier(tmp_path_factory):
    """A second tiny model, another seed: the demo's student, so that swapped wiring shows."""
    return save_tiny_classifier(tmp_path_factory.mktemp("other") / "student", seed=1,
                                label_bias=[2.0, 0.0, -2.0])


@pytest.fixture(scope="module")
def demo_url(tiny_classifier, other_classifier, tmp_path_factory):
    bench = tmp_path_factory.mktemp("bench")
    rows = [{"model": "teacher fp32", "precision": "f32", "size_bytes": 438 * 2**20,
             "throughput_sorted": 44.4, "f1_macro": 0.9399, "agreement_with_teacher": 1.0},
            {"model": "student int8", "precision": "i8", "size_bytes": 16 * 2**20,
             "throughput_sorted": 2020.3, "f1_macro": 0.9382, "agreement_with_teacher": 0.961},
            {"model": "slow and worse", "precision": "f32", "size_bytes": 60 * 2**20,
             "throughput_sorted": 30.0, "f1_macro": 0.90, "agreement_with_teacher": 0.9}]
    (bench / "benchmark.json").write_text(json.dumps({"machine": {"cpu": "Test CPU"},
                                                      "models": rows}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(bench / "demo.log", "w")
    demo = subprocess.Popen(["fincompress", "demo", "--teacher", str(tiny_classifier), "--student",
                             str(other_classifier.parent), "--benchmark", str(bench), "--port", str(port)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240  # importing gradio takes a while on 2 cores
        while time.time() < deadline and demo.poll() is None:
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(1)
        else:
            pytest.fail(f"the demo did not start: {(bench / 'demo.log').read_text()[-2000:]}")
        yield url
    finally:
        demo.terminate()
        demo.wait(timeout=30)
        log.close()


def test_demo_http_api_gives_both_models_answers(demo_url, tiny_classifier, other_classifier):
    from gradio_client import Client

    teacher, teacher_status, student, student_status = Client(demo_url, verbose=False).predict(
        TEXT, api_name="/compare")
    expected = {"teacher": fincompress.load(tiny_classifier).predict([TEXT])[0],
                "student": fincompress.load(other_classifier).predict([TEXT])[0]}
    gap = max(abs(expected["teacher"]["probabilities"][k] - p)
              for k, p in expected["student"]["probabilities"].items())
    assert gap > 0.01  # two models that answer differently: swapped wiring would show
    for label, status, name in ((teacher, teacher_status, "teacher"), (student, student_status, "student")):
        assert label["label"] == expected[name]["label"]
        shown = {c["label"]: c["confidence"] for c in label["confidences"]}
        assert shown == pytest.approx(expected[name]["probabilities"], abs=1e-3)
        assert status.startswith(f"**{name}**: {expected[name]['label']} in ") and " ms " in status
    empty = Client(demo_url, verbose=False).predict("   ", api_name="/compare")
    assert empty[1] == "**teacher**: empty text: no prediction"
    huge = Client(demo_url, verbose=False).predict("Profit rose . " * 20_000, api_name="/compare")
    assert "text cut to the first 128 tokens" in huge[1]


def test_demo_in_a_headless_browser(demo_url, tiny_classifier, other_classifier, tmp_path):
    path = browser()
    shot = tmp_path / "demo.png"
    upload = tmp_path / "news.csv"
    upload.write_text("id,text\n17,Profit rose .\n18,Sales fell sharply .\n")
    result = subprocess.run([sys.executable, "scripts/demo_browser.py", demo_url, "--text", TEXT,
                             "--screenshot", str(shot), "--browser", path,
                             "--upload", str(upload)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    statuses = json.loads(result.stdout)
    teacher = fincompress.load(tiny_classifier).predict([TEXT])[0]["label"]
    student = fincompress.load(other_classifier).predict([TEXT])[0]["label"]
    assert statuses["teacher"].startswith(f"teacher: {teacher} in ")
    assert statuses["student"].startswith(f"student: {student} in ")
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
    # the compact table: one header and a row per model, speed-ups against the first
    header, *rows = statuses["table"]
    assert header[:4] == ["model", "precision", "MiB", "sentences/s"] and len(rows) == 3
    assert rows[1][:2] == ["student int8", "i8"] and "45.5x" in rows[1]
    assert "student int8: 45.5x faster than teacher fp32, 0.2 points lower macro-F1" in \
        statuses["summary"]
    # the upload tab labelled the file with the student, keeping its id column
    header, *labelled = statuses["labelled"]
    assert header[:3] == ["id", "text", "label"] and [r[0] for r in labelled] == ["17", "18"]
    expected = fincompress.load(other_classifier).predict(["Profit rose .", "Sales fell sharply ."])
    assert [r[2] for r in labelled] == [a["label"] for a in expected]
    assert (tmp_path / "demo_upload.png").stat().st_size > 20_000
