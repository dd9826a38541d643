"""Load test of the HTTP service on 127.0.0.1, and the batching settings chosen by measurement.

    python scripts/load_test.py MODEL [--requests 1000] [--clients 16] [--output DIR]

For each batching setting (``--grid``: max_batch/max_wait_ms pairs) it starts
``fincompress serve MODEL`` on a free port, sends ``--grid-requests`` requests from ``--clients``
concurrent clients and measures throughput and latency. The setting with the most requests per
second among those whose p95 latency is within 1.5x of the lowest p95 is chosen; with it, the
full test sends ``--requests`` requests. Each request is one test-split sentence (cycled). Every
answer is checked against offline ``fincompress.load(MODEL).predict`` of the same sentence:
the same label, probabilities within ``--tolerance``.

``--hostile N`` mixes N hostile requests into the full test (a lone surrogate, JSON nested
100,000 deep, a 5,000-digit number, non-string items, an empty list, bytes that are not UTF-8,
an oversized body, huge and empty texts, in turn): each must get a 4xx or a documented 200
answer, never a 5xx, and must not change any good request's answer. ``--soak-s S`` then keeps
the same mix going for S seconds and reports the server's memory (resident set) before and
after, and the errors. Writes ``load_test.json`` and prints a table; exits 1 on any error,
5xx or mismatch.

``--url URL`` tests a service that is already running (started by you, anywhere) instead: no
grid, no server started, no memory readings; the model for the offline check is MODEL, else
the folder the service's ``/health`` names when it is on this machine (else answers are not
checked, and the report says so); ``--api-key`` is sent as ``X-API-Key``.

    python scripts/load_test.py --url http://127.0.0.1:8000 --requests 500 --texts texts.csv
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
    # no access log: a line per request would fill the unread pipe and stall the server
    command = [sys.executable, "-m", "fincompress.cli", "serve", model, "--port", str(port),
               "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms),
               "--no-access-log"]
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


HOSTILE = [
    ("lone surrogate", b'["\\ud800 Sales rose ."]', {200}),
    ("JSON nested 100,000 deep", b"[" * 100_000, {400}),
    ("5,000-digit number", b"[" + b"9" * 5000 + b"]", {400}),
    ("non-string item", b'["fine", 3]', {422}),
    ("empty list", b"[]", {422}),
    ("not UTF-8", b'["caf\xe9"]', {400}),
    ("oversized body", b'["' + b"a" * 1_100_000 + b'"]', {413}),
    ("100,000-character text", b'["' + b"Profit rose . " * 7000 + b'"]', {200}),
    ("empty text", b'["   "]', {200}),
    ("object without texts", b'{"text": "x"}', {422}),
]


def memory_mib(pid: int) -> float:
    """The resident set of a process (Linux), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def load(url: str, texts: list[str], requests: int, clients: int, hostile: int = 0,
         seconds: float | None = None, headers: dict | None = None) -> dict:
    """``requests`` single-text requests from ``clients`` threads (or as many as fit in
    ``seconds``), with ``hostile`` hostile requests spread among them; latencies, answers, and
    each hostile request's status."""
    if seconds is not None:
        requests = 10**9
    every = requests // hostile if hostile else 0
    latencies: list = [] if seconds is not None else [0.0] * requests
    answers: dict = {}
    errors: list[str] = []
    hostile_statuses: dict[str, dict[int, int]] = {}
    counter = iter(range(requests))
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds if seconds is not None else None

    def client() -> None:
        with httpx.Client(base_url=url, timeout=60, headers=headers) as session:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None or (stop_at is not None and time.perf_counter() > stop_at):
                    return
                if every and i % every == every - 1:
                    name, body, expected = HOSTILE[(i // every) % len(HOSTILE)]
                    try:
                        status = session.post("/predict", content=body, headers={
                            "content-type": "application/json"}).status_code
                    except httpx.HTTPError as error:
                        status = type(error).__name__
                    with lock:
                        counts = hostile_statuses.setdefault(name, {})
                        counts[status] = counts.get(status, 0) + 1
                    if status not in expected:
                        errors.append(f"hostile request {i} ({name}): HTTP {status}, expected "
                                      f"{sorted(expected)}")
                    continue
                clock = time.perf_counter()
                try:
                    response = session.post("/predict", json=[texts[i % len(texts)]])
                    elapsed = time.perf_counter() - clock
                    if seconds is None:
                        latencies[i] = elapsed
                    else:
                        latencies.append(elapsed)
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
    sent = len(answers) + sum(sum(c.values()) for c in hostile_statuses.values()) + len(errors)
    ms = sorted(1000 * v for v in latencies if v)
    return {"requests": requests if seconds is None else sent, "clients": clients,
            "wall_s": round(wall, 2), "requests_per_s": round(len(ms) / wall, 1),
            "latency_ms_p50": round(statistics.median(ms), 2),
            "latency_ms_p95": round(ms[min(len(ms) - 1, int(0.95 * len(ms)))], 2),
            "hostile": hostile_statuses, "errors": errors, "answers": answers}


def check(answers: list, texts: list[str], offline: list[dict], tolerance: float) -> dict:
    mismatches, worst = [], 0.0
    for i, answer in sorted(answers.items()):
        expected = offline[i % len(texts)]
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
    parser.add_argument("model", nargs="?", help="the model folder (with --url: optional, for "
                        "the offline check)")
    parser.add_argument("--url", help="a running service to test instead of starting one")
    parser.add_argument("--api-key", help="the running service's API key (sent as X-API-Key)")
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
    parser.add_argument("--hostile", type=int, default=0,
                        help="hostile requests mixed into the full test")
    parser.add_argument("--soak-s", type=float, default=0,
                        help="then this many seconds of the same mix; memory before and after")
    parser.add_argument("--output", default="outputs/load_test")
    args = parser.parse_args()
    if args.url:
        running(args)
        return
    if not args.model:
        parser.error("give MODEL, or --url URL of a running service")

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
    soak = None
    try:
        memory_before = memory_mib(server.pid)
        final = load(url, texts, args.requests, args.clients, args.hostile)
        final["memory_mib"] = [memory_before, memory_mib(server.pid)]
        calls = httpx.get(f"{url}/health", timeout=10).json()["model_calls"]  # before the soak's
        if args.soak_s:
            start = memory_mib(server.pid)
            samples: list = []
            done = threading.Event()

            def sample() -> None:  # the server's memory every 10 s: does it level off?
                clock = time.perf_counter()
                while not done.wait(10):
                    samples.append([round(time.perf_counter() - clock), memory_mib(server.pid)])

            sampler = threading.Thread(target=sample)
            sampler.start()
            try:
                soak = load(url, texts, 0, args.clients, max(1, args.hostile), seconds=args.soak_s)
            finally:
                done.set()
                sampler.join()
            soak_verdict = check(soak.pop("answers"), texts, offline, args.tolerance)
            soak.update(memory_mib_start=start, memory_mib_end=memory_mib(server.pid),
                        model_calls=httpx.get(f"{url}/health", timeout=10).json()["model_calls"]
                        - calls,
                        memory_mib_every_10_s=samples, **soak_verdict)
            print(f"soak {args.soak_s:.0f} s: {soak['requests']} requests, memory {start} -> "
                  f"{soak['memory_mib_end']} MiB, {len(soak['errors'])} errors, "
                  f"{len(soak['mismatches'])} answers unlike offline predict", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    verdict = check(final.pop("answers"), texts, offline, args.tolerance)
    from fincompress.hardware import cpu_info

    report = {"model": str(model.folder), "engine": model.engine, "precision": model.precision,
              "machine": cpu_info(), "grid": measured,
              "chosen": {"max_batch": chosen["max_batch"], "max_wait_ms": chosen["max_wait_ms"]},
              "final": {**final, "model_calls": calls, **verdict},
              "soak": soak}
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "load_test.json").write_text(json.dumps(report, indent=2))
    print(f"\nchosen: max_batch {chosen['max_batch']}, max_wait {chosen['max_wait_ms']} ms")
    print(f"{args.requests} requests from {args.clients} clients: {final['requests_per_s']} req/s, "
          f"p50 {final['latency_ms_p50']} ms, p95 {final['latency_ms_p95']} ms, "
          f"{calls} model calls, {len(final['errors'])} errors, "
          f"{len(verdict['mismatches'])} answers unlike offline predict (largest probability gap "
          f"{verdict['max_probability_gap']:.1e}); server memory {final['memory_mib'][0]} -> "
          f"{final['memory_mib'][1]} MiB; written {output / 'load_test.json'}")
    if final["hostile"]:
        print("hostile requests (status: count): " + "; ".join(
            f"{name} {counts}" for name, counts in final["hostile"].items()))
    problems = final["errors"] + verdict["mismatches"] + \
        (soak["errors"] + soak["mismatches"] if soak else [])
    if problems:
        print("\n".join(problems[:20]))
        sys.exit(1)


def running(args) -> None:
    """The full test against a service that is already running at ``args.url``."""
    import fincompress
    from fincompress.cli import read_texts

    url = args.url.rstrip("/")
    headers = {"X-API-Key": args.api_key} if args.api_key else None
    try:
        health = httpx.get(f"{url}/health", timeout=10).json()
    except (httpx.HTTPError, ValueError) as error:
        sys.exit(f"error: {url}/health did not answer as a fincompress service: {error}")
    folder = Path(args.model or health["model"])
    local = (folder / "config.json").is_file() or (folder / "model.xml").is_file() or \
        (folder / "model.onnx").is_file() or (folder / "head.safetensors").is_file()
    if not args.texts and not local:
        sys.exit(f"error: the service's model {folder} is not on this machine; give --texts FILE")
    texts = read_texts(Path(args.texts) if args.texts else test_split(folder))
    calls_before = health["model_calls"]
    final = load(url, texts, args.requests, args.clients, args.hostile, headers=headers)
    answers = final.pop("answers")
    if local:
        model = fincompress.load(folder, threads=args.threads)
        verdict = check(answers, texts, [model.predict([t])[0] for t in texts], args.tolerance)
    else:
        verdict = {"mismatches": [], "max_probability_gap": None,
                   "not_checked": f"{folder} is not on this machine"}
    calls = httpx.get(f"{url}/health", timeout=10).json()["model_calls"] - calls_before
    from fincompress.hardware import cpu_info

    report = {"url": url, "model": health["model"], "engine": health["engine"],
              "precision": health["precision"], "server_batching": {
                  "max_batch": health["max_batch"], "max_wait_ms": health["max_wait_ms"]},
              "client_machine": cpu_info(with_torch=False),
              "final": {**final, "model_calls": calls, **verdict}}
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "load_test.json").write_text(json.dumps(report, indent=2))
    print(f"{args.requests} requests from {args.clients} clients to {url}: "
          f"{final['requests_per_s']} req/s, p50 {final['latency_ms_p50']} ms, p95 "
          f"{final['latency_ms_p95']} ms, {calls} model calls, {len(final['errors'])} errors, "
          + (f"{len(verdict['mismatches'])} answers unlike offline predict" if local
             else "answers not checked (the model is not on this machine)")
          + f"; written {output / 'load_test.json'}")
    problems = final["errors"] + verdict["mismatches"]
    if problems:
        print("\n".join(problems[:20]))
        sys.exit(1)


def test_split(folder: Path) -> Path:
    for candidate in (folder / "test_split.csv", folder.parent / "split" / "test.csv"):
        if candidate.is_file():
            return candidate
    sys.exit(f"no test split beside {folder}; give --texts FILE")


if __name__ == "__main__":
    main()
