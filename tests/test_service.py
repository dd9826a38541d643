"""The HTTP service: answers equal to offline predict, batching under load, limits with clear
4xx errors, and the load-test script."""

import json
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

import fincompress
from fincompress.service import create_app

from .conftest import ROOT, browser

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
    assert client.get("/ready").json() == {"ready": True}
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["max_batch"] == 8 and health["model_calls"] >= 3
    spec = client.get("/openapi.json").json()
    assert "/predict" in spec["paths"] and "requestBody" in spec["paths"]["/predict"]["post"]


def test_the_docs_work_offline_with_typed_answers_and_documented_errors(client):
    page = client.get("/docs").text
    assert "cdn" not in page.lower()  # Swagger UI came from a CDN: a blank page offline
    for asset in ("/static-offline-docs/swagger-ui-bundle.js", "/static-offline-docs/swagger-ui.css"):
        assert asset in page
        answer = client.get(asset)
        assert answer.status_code == 200 and len(answer.content) > 100_000
    spec = client.get("/openapi.json").json()
    answers = spec["paths"]["/predict"]["post"]["responses"]
    assert set(answers) == {"200", "400", "401", "408", "413", "422", "503"}
    assert answers["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/Predictions")
    prediction = spec["components"]["schemas"]["Prediction"]["properties"]
    assert set(prediction) == {"label", "probabilities", "tokens", "truncated", "warning"}
    assert "max_body_bytes" in answers["413"]["description"]
    assert spec["paths"]["/health"]["get"]["responses"]["200"]["content"]["application/json"][
        "schema"]["$ref"].endswith("/Health")


def test_metrics_count_requests_latency_and_batches_and_every_request_is_logged(
        tiny_classifier, caplog):
    import logging

    app = create_app(tiny_classifier, max_batch=8, max_wait_ms=5, max_texts=4)
    with TestClient(app) as client, caplog.at_level(logging.INFO, "fincompress.access"):
        for _ in range(3):
            assert client.post("/predict", json=TEXTS).status_code == 200
        assert client.post("/predict", content=b"[]").status_code == 422
        text = client.get("/metrics").text
    assert 'fincompress_requests_total{route="/predict",status="200"} 3.0' in text
    assert 'fincompress_requests_total{route="/predict",status="422"} 1.0' in text
    assert 'fincompress_request_seconds_count{route="/predict"} 4.0' in text
    assert "fincompress_texts_total 9.0" in text  # three requests of three texts
    calls = float(text.split("fincompress_batch_texts_count ")[1].split()[0])
    assert 1 <= calls <= 3 and app.state.batcher.calls == calls
    lines = [r.getMessage() for r in caplog.records if r.name == "fincompress.access"]
    assert len(lines) == 5 and all(" POST /predict " in line for line in lines[:4])
    assert lines[0].endswith(" 3 texts") and " 200 " in lines[0] and " 422 " in lines[3]
    assert " GET /metrics 200 " in lines[4]


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


@pytest.mark.slow(budget_s=200)
def test_load_test_script_batches_with_no_errors_and_offline_answers(tiny_classifier, tmp_path):
    split = tmp_path / "texts.csv"
    split.write_text("text\n" + "".join(f"Sales rose {i} % in quarter {i % 4} .\n" for i in range(40)))
    result = subprocess.run(
        [sys.executable, "scripts/load_test.py", str(tiny_classifier), "--requests", "200",
         "--clients", "16", "--grid", "1/0,16/5", "--grid-requests", "80", "--texts", str(split),
         "--hostile", "20", "--soak-s", "5", "--output", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "load_test.json").read_text())
    final = report["final"]
    assert final["requests"] == 200 and final["errors"] == [] and final["mismatches"] == []
    # 20 hostile requests among them, two of each kind, each with its expected status
    assert sum(sum(c.values()) for c in final["hostile"].values()) == 20
    assert final["hostile"]["JSON nested 100,000 deep"] == {"400": 2}
    assert final["hostile"]["lone surrogate"] == {"200": 2}
    soak = report["soak"]
    assert soak["requests"] > 20 and soak["errors"] == [] and soak["memory_mib_end"] > 0
    assert 0 < soak["model_calls"] <= soak["requests"]  # counted apart from the final run's
    assert len(report["grid"]) == 2 and report["chosen"]["max_batch"] in (1, 16)
    assert 0 < final["latency_ms_p50"] <= final["latency_ms_p95"]
    if report["chosen"]["max_batch"] == 16:  # requests were batched: fewer model calls
        assert final["model_calls"] < 200


def test_one_bad_request_among_twenty_concurrent_good_ones_touches_none_of_them(
        tiny_classifier, data_dir, tmp_path):
    """A lone surrogate sent among 20 concurrent requests made 15 of them fail with 500: the
    batcher handed one text's exception to every request of that model call. Here each good
    request carries its own PhraseBank sentence and must get offline predict's answer. Then a
    slow client (a body that never arrives) gets 408 and the service goes on; the docs render
    in a browser with no network beyond the service; every request is in the access log."""
    import socket
    import threading
    import time

    import httpx

    from fincompress.data.phrasebank import read_phrasebank

    texts = [row.text for row in read_phrasebank(data_dir / "financial_phrasebank", "all")[:20]]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "fincompress.cli", "serve", str(tiny_classifier),
                               "--port", str(port), "--max-batch", "32", "--max-wait-ms", "50",
                               "--read-timeout-s", "2"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        results: dict = {}
        start = threading.Barrier(21)

        def send(key, body: bytes):
            start.wait()
            results[key] = httpx.post(f"{url}/predict", content=body, timeout=60,
                                      headers={"content-type": "application/json"})

        threads = [threading.Thread(target=send, args=(i, json.dumps([t]).encode()))
                   for i, t in enumerate(texts)]
        threads.append(threading.Thread(target=send, args=("bad", b'["\\ud800"]')))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        calls = httpx.get(f"{url}/health").json()["model_calls"]
        started = server.stdout.readline()  # the startup line: where, what, how it batches
        assert started.startswith(f"fincompress serve: {url} ")
        assert "batches of up to 32 texts" in started and "no API key" in started
        assert "(torch, f32)" in started or "(torch, bf16)" in started
        # a slow client: headers promise 100 bytes, one arrives, then nothing
        with socket.create_connection(("127.0.0.1", port), timeout=30) as slow:
            slow.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                         b"\r\nContent-Length: 100\r\n\r\n[")
            clock = time.perf_counter()
            reply = ""
            while "took over" not in reply and (chunk := slow.recv(4096)):
                reply += chunk.decode()
            waited = time.perf_counter() - clock
        assert reply.startswith("HTTP/1.1 408") and "took over 2.0 s" in reply
        assert 1.5 < waited < 20
        assert httpx.get(f"{url}/health").status_code == 200  # and the service goes on
        # the load test against this running service (no server of its own)
        (tmp_path / "texts.csv").write_text("text\n" + "".join(f"{t.replace(',', ' ')}\n"
                                                             for t in texts[:8]))
        tested = subprocess.run([sys.executable, "scripts/load_test.py", "--url", url,
                                 "--requests", "40", "--clients", "4", "--texts",
                                 str(tmp_path / "texts.csv"), "--output", str(tmp_path)],
                                cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert tested.returncode == 0, tested.stdout[-2000:] + tested.stderr[-2000:]
        report = json.loads((tmp_path / "load_test.json").read_text())
        assert report["url"] == url and report["model"] == str(tiny_classifier)
        assert report["final"]["requests"] == 40 and report["final"]["errors"] == []
        assert report["final"]["mismatches"] == [] and report["final"]["model_calls"] >= 1
        # the docs page in a real browser, every request for another host refused
        shot = tmp_path / "docs.png"
        browsed = subprocess.run([sys.executable, "scripts/demo_browser.py", f"{url}/docs",
                                  "--swagger", "--screenshot", str(shot),
                                  "--browser", browser()], cwd=ROOT,
                                 capture_output=True, text=True, timeout=300)
        assert browsed.returncode == 0, browsed.stderr[-3000:]
        docs = json.loads(browsed.stdout)
        assert "POST /predict" in docs["operations"] and "GET /health" in docs["operations"]
        assert docs["refused"] == [] and shot.stat().st_size > 20_000
    finally:
        server.terminate()
        log = server.communicate(timeout=30)[1]
    # one access line per request
    # the 20 good ones, the bad one and the load test's 40, and the slow client's 408
    assert log.count("POST /predict 200 ") == 61 and log.count("POST /predict 408 ") == 1
    assert " GET /docs 200 " in log and " GET /static-offline-docs/swagger-ui-bundle.js 200 " in log
    offline = fincompress.load(tiny_classifier).predict(texts)
    assert [results[i].status_code for i in range(20)] == [200] * 20
    for i, expected in enumerate(offline):
        answer = results[i].json()["predictions"][0]
        assert answer["label"] == expected["label"]
        assert answer["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-4)
    bad = results["bad"]
    assert bad.status_code == 200 and "lone surrogate" in bad.json()["predictions"][0]["warning"]
    assert calls < 21  # the requests were batched together, so isolation was put to the test
