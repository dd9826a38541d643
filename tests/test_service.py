"""The HTTP service: answers equal to offline predict, batching under load, limits with clear
4xx errors, and the load-test script."""

import json
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

import fincompress
from fincompress.service import create_app

from .conftest import ROOT

TEXTS = ["Operating profit rose to EUR 13.1 mn .", "Sales fell 10 % .", "The board met ."]


@pytest.fixture(scope="module")
def client(tiny_classifier):
    app = create_app(tiny_classifier, max_batch=8, max_wait_ms=5, max_texts=4, max_body_bytes=2000)
    with TestClient(app) as client:  # runs the lifespan: the batching loop
        yield client


def test_predict_health_and_openapi(client, tiny_classifier):
    response = client.post("/predict", json=TEXTS)
    assert response.status_code == 200
    offline = fincompress.load(tiny_classifier).predict(TEXTS)
    answers = response.json()["predictions"]
    assert [a["label"] for a in answers] == [a["label"] for a in offline]
    for answer, expected in zip(answers, offline):
        assert answer["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-3)
    assert client.post("/predict", json={"texts": TEXTS[:1]}).json()["predictions"][0]["label"] \
        == offline[0]["label"]
    blank = client.post("/predict", json=["  "]).json()["predictions"][0]
    assert blank["label"] is None and blank["warning"] == "empty text: no prediction"
    long = client.post("/predict", json=["Profit rose . " * 100]).json()["predictions"][0]
    assert long["truncated"] is True
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["max_batch"] == 8 and health["model_calls"] >= 3
    spec = client.get("/openapi.json").json()
    assert "/predict" in spec["paths"] and "requestBody" in spec["paths"]["/predict"]["post"]
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize("body, status, message", [
    (b"x" * 2001, 413, "the limit is 2000"),
    (json.dumps(["a"] * 5).encode(), 413, "5 texts in one request; the limit is 4"),
    (b'["caf\xe9"]', 400, "not valid UTF-8"),
    (b'["unclosed', 400, "not JSON"),
    (b"[]", 422, "the list of texts is empty"),
    (b'["ok", 3]', 422, "texts[1] is int, not a string"),
    (b'{"text": "x"}', 422, "an object with 'texts'"),
    (b'"just a string"', 422, "got str"),
])
def test_bad_requests_get_clear_4xx_errors(client, body, status, message):
    response = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status and message in response.json()["detail"]
    assert client.get("/health").json()["status"] == "ok"  # and the service goes on


def test_load_test_script_batches_with_no_errors_and_offline_answers(tiny_classifier, tmp_path):
    split = tmp_path / "texts.csv"
    split.write_text("text\n" + "".join(f"Sales rose {i} % in quarter {i % 4} .\n" for i in range(40)))
    result = subprocess.run(
        [sys.executable, "scripts/load_test.py", str(tiny_classifier), "--requests", "200",
         "--clients", "16", "--grid", "1/0,16/5", "--grid-requests", "80", "--texts", str(split),
         "--output", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "load_test.json").read_text())
    final = report["final"]
    assert final["requests"] == 200 and final["errors"] == [] and final["mismatches"] == []
    assert len(report["grid"]) == 2 and report["chosen"]["max_batch"] in (1, 16)
    assert 0 < final["latency_ms_p50"] <= final["latency_ms_p95"]
    if report["chosen"]["max_batch"] == 16:  # requests were batched: fewer model calls
        assert final["model_calls"] < 200
