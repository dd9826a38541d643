"""Load test of the HTTP service on 127.0.0.1, and the batching settings chosen by measurement.

    python scripts/load_test.py MODEL [--requests 1000] [--clients 16] [--output DIR]

For each batching setting (``--grid``: max_batch/max_wait_ms pairs) it starts
``fincompress serve MODEL`` on a free port, sends ``--grid-requests`` requests from ``--clients``
concurrent clients and measures throughput and latency. The setting with the most requests per
second among those whose p95 latency is within 1.5x of the lowest p95 is chosen; with it, the
full test sends ``--requests`` requests. Each request is one test-split sentence (cycled). Every
answer is checked against offline ``fincompress.load(MODEL).predict`` of the same sentence:
the same label, probabilities within ``--tolerance``. Writes ``load_test.json`` and prints a
table; exits 1 on any error or mismatch.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, max_batch: int, max_wait_ms: float, threads: int | None):
    port = free_port()
    command = [sys.executable, "-m", "fincompress.cli", "serve", model, "--port", str(port),
               "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)]
    if threads:
        command += ["--threads", str(threads)]
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the service exited: {server.stdout.read()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return server, url
        except httpx.TransportError:
            time.sleep(0.3)
    server.kill()
    raise RuntimeError("the service did not answer /health within 180 s")


def load(url: str, texts: list[str], requests: int, clients: int) -> dict:
    """``requests`` single-text requests from ``clients`` threads; latencies and answers."""
    latencies = [0.0] * requests
    answers: list = [None] * requests
    errors: list[str] = []
    counter = iter(range(requests))
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=60) as session:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                clock = time.perf_counter()
                try:
                    response = session.post("/predict", json=[texts[i % len(texts)]])
                    latencies[i] = time.perf_counter() - clock
                    if response.status_code != 200:
                        errors.append(f"request {i}: HTTP {response.status_code} {response.text[:200]}")
                    else:
                        answers[i] = response.json()["predictions"][0]
                except httpx.HTTPError as error:
                    errors.append(f"request {i}: {error!r}")

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ms = sorted(1000 * v for v in latencies)
    return {"requests": requests, "clients": clients, "wall_s": round(wall, 2),
            "requests_per_s": round(requests / wall, 1),
            "latency_ms_p50": round(statistics.median(ms), 2),
            "latency_ms_p95": round(ms[min(len(ms) - 1, int(0.95 * len(ms)))], 2),
            "errors": errors, "answers": answers}


def check(answers: list, texts: list[str], offline: list[dict], tolerance: float) -> dict:
    mismatches, worst = [], 0.0
    for i, answer in enumerate(answers):
        expected = offline[i % len(texts)]
        if answer is None:
            continue
        if answer["label"] != expected["label"]:
            mismatches.append(f"request {i}: {answer['label']} != offline {expected['label']}")
            continue
        gap = max(abs(answer["probabilities"][k] - v) for k, v in expected["probabilities"].items())
        worst = max(worst, gap)
        if gap > tolerance:
            mismatches.append(f"request {i}: probabilities differ by {gap:.2e}")
    return {"mismatches": mismatches, "max_probability_gap": worst}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--grid", default="1/0,8/2,16/5,32/5,32/20",
                        help="max_batch/max_wait_ms settings to measure, comma-separated")
    parser.add_argument("--grid-requests", type=int, default=300)
    parser.add_argument("--texts", help="a split CSV (text column); default: the model's "
                        "test_split.csv, else the PhraseBank test split")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--tolerance", type=float, default=1e-2,
                        help="largest probability gap to offline predict (bf16 batches differ ~1e-3)")
    parser.add_argument("--output", default="outputs/load_test")
    args = parser.parse_args()

    import fincompress
    from fincompress.cli import read_texts

    model = fincompress.load(args.model, threads=args.threads)
    texts = read_texts(Path(args.texts) if args.texts else test_split(model.folder))
    offline = [model.predict([text])[0] for text in texts]  # one at a time, as the requests
    grid = []
    for setting in args.grid.split(","):
        max_batch, max_wait = setting.split("/")
        grid.append((int(max_batch), float(max_wait)))
    measured = []
    for max_batch, max_wait in grid:
        server, url = start_server(args.model, max_batch, max_wait, args.threads)
        try:
            result = load(url, texts, args.grid_requests, args.clients)
        finally:
            server.terminate()
            server.wait(timeout=30)
        result.pop("answers")
        measured.append({"max_batch": max_batch, "max_wait_ms": max_wait, **result})
        print(f"max_batch {max_batch:>3} max_wait {max_wait:>5} ms: {result['requests_per_s']:>7} "
              f"req/s, p50 {result['latency_ms_p50']} ms, p95 {result['latency_ms_p95']} ms, "
              f"{len(result['errors'])} errors", flush=True)
    best_p95 = min(m["latency_ms_p95"] for m in measured)
    chosen = max((m for m in measured if m["latency_ms_p95"] <= 1.5 * best_p95),
                 key=lambda m: m["requests_per_s"])
    server, url = start_server(args.model, chosen["max_batch"], chosen["max_wait_ms"], args.threads)
    try:
        final = load(url, texts, args.requests, args.clients)
        health = httpx.get(f"{url}/health").json()
    finally:
        server.terminate()
        server.wait(timeout=30)
    verdict = check(final.pop("answers"), texts, offline, args.tolerance)
    from fincompress.hardware import cpu_info

    report = {"model": str(model.folder), "engine": model.engine, "precision": model.precision,
              "machine": cpu_info(), "grid": measured,
              "chosen": {"max_batch": chosen["max_batch"], "max_wait_ms": chosen["max_wait_ms"]},
              "final": {**final, "model_calls": health["model_calls"], **verdict}}
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "load_test.json").write_text(json.dumps(report, indent=2))
    print(f"\nchosen: max_batch {chosen['max_batch']}, max_wait {chosen['max_wait_ms']} ms")
    print(f"{args.requests} requests from {args.clients} clients: {final['requests_per_s']} req/s, "
          f"p50 {final['latency_ms_p50']} ms, p95 {final['latency_ms_p95']} ms, "
          f"{health['model_calls']} model calls, {len(final['errors'])} errors, "
          f"{len(verdict['mismatches'])} answers unlike offline predict (largest probability gap "
          f"{verdict['max_probability_gap']:.1e}); written {output / 'load_test.json'}")
    if final["errors"] or verdict["mismatches"]:
        print("\n".join((final["errors"] + verdict["mismatches"])[:20]))
        sys.exit(1)


def test_split(folder: Path) -> Path:
    for candidate in (folder / "test_split.csv", folder.parent / "split" / "test.csv"):
        if candidate.is_file():
            return candidate
    sys.exit(f"no test split beside {folder}; give --texts FILE")


if __name__ == "__main__":
    main()
