"""The HTTP service behind ``fincompress serve MODEL``: FastAPI, run by uvicorn.

- ``POST /predict``: a JSON list of texts (or ``{"texts": [...]}``) -> ``{"predictions": [...]}``,
  one answer per text exactly as :meth:`fincompress.api.Model.predict` gives it;
- ``GET /health``: the model, engine, precision and batching settings;
- ``GET /ready``: 200 once the model is loaded and the batching loop runs, else 503;
- ``GET /metrics``: Prometheus metrics (requests by route and status, latency, model-call
  batch sizes, texts, queued texts);
- ``GET /docs`` (Swagger UI) and ``/redoc``: the OpenAPI description (``/openapi.json``),
  with typed answers and every error status documented; their files are served by the service
  itself (fastapi-offline), so the pages work offline.

Every request is logged as one access line (logger ``fincompress.access``): method, path,
status, milliseconds, and for ``/predict`` the number of texts.

Concurrent requests are batched: the first waiting request opens a batch, which takes the
requests that arrive within ``max_wait_ms`` until it holds ``max_batch`` texts, and runs as one
``predict`` call (one model call at a time; the engine uses every thread it was given).
``scripts/load_test.py`` measured the defaults. One request's texts never fail another's: if
a model call fails, each request in it is run again alone, and only the one whose texts fail
hears of it. Limits, with the status they answer:

- 413 for a body over ``max_body_bytes`` (checked as it streams in) or more than ``max_texts``
  texts; 408 for a body that takes over ``read_timeout_s`` to arrive (a slow client);
- 400 for a body that is not UTF-8 JSON, is nested too deeply, or holds a number too long to
  read; 422 for JSON that is not a non-empty list of strings (naming the bad item);
- 503 with ``Retry-After`` when ``max_queue`` texts already wait for the model (the queue is
  bounded, so a burst cannot grow memory without limit);
- 401 without the API key, where one is set (``api_key``, or ``FINCOMPRESS_API_KEY``): sent as
  ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``; ``/health``, ``/ready``, ``/metrics``
  and the docs pages stay open (they hold no predictions, and a browser, a load balancer or a
  Prometheus scraper fetches them without headers).

Empty texts, texts that are not valid Unicode (lone surrogates) and over-long texts get the
documented answers of the Python API, not errors. The service binds to 127.0.0.1 unless told
otherwise (``fincompress serve --host``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field

import fincompress
from fincompress.errors import InputError

access_log = logging.getLogger("fincompress.access")
# no API key needed: no predictions in them, and fetched without headers
OPEN_PATHS = ("/health", "/ready", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc",
              "/openapi.json")
DOCS_FILES = "/static-offline-docs"  # where fastapi-offline serves Swagger UI's and ReDoc's files


class Prediction(BaseModel):
    label: str | None = Field(description="the most probable label; null for a text no model "
                                          "can score (empty, or not valid Unicode)")
    probabilities: dict[str, float] | None = Field(description="label -> probability")
    tokens: int = Field(description="tokens scored, special tokens included")
    truncated: bool = Field(description="whether the text was cut to the model's maximum length")
    warning: str | None = Field(None, description="present when the answer needs a caveat")


class Predictions(BaseModel):
    predictions: list[Prediction] = Field(description="one answer per text, in order")


class ErrorAnswer(BaseModel):
    detail: str = Field(description="what was wrong, naming the value")


class Health(BaseModel):
    status: str
    model: str
    engine: str
    precision: str
    labels: list[str]
    max_batch: int
    max_wait_ms: float
    max_texts: int
    max_body_bytes: int
    max_queue: int
    queued_texts: int
    model_calls: int
    rejected_busy: int
    api_key_required: bool


def error_answers(*statuses: int) -> dict:
    """OpenAPI entries for the error statuses a route answers."""
    meaning = {
        400: "the body is not UTF-8 JSON, is nested too deeply, or holds a number too long",
        401: "the API key is missing or wrong (where the service requires one)",
        408: "the body took longer than read_timeout_s to arrive",
        413: "the body is over max_body_bytes, or holds more than max_texts texts",
        422: "the JSON is not a non-empty list of strings (the bad item is named)",
        503: "max_queue texts already wait for the model (retry after Retry-After seconds), or "
             "the service is not ready",
    }
    return {status: {"model": ErrorAnswer, "description": meaning[status]} for status in statuses}


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (one per app, so that apps
    in one process never share counts)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("fincompress_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("fincompress_request_seconds", "request latency by route",
                                 ["route"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.batch_texts = Histogram("fincompress_batch_texts", "texts per model call",
                                     registry=self.registry,
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.texts = Counter("fincompress_texts", "texts answered", registry=self.registry)
        self.queued = Gauge("fincompress_queued_texts", "texts waiting for the model",
                            registry=self.registry)

    def exposition(self) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

REQUEST_SCHEMA = {
    "required": True,
    "content": {"application/json": {
        "schema": {"oneOf": [
            {"type": "array", "items": {"type": "string"}, "minItems": 1},
            {"type": "object", "properties": {"texts": {"type": "array", "items": {"type": "string"}}},
             "required": ["texts"]},
        ]},
        "example": ["Operating profit rose to EUR 13.1 mn from EUR 8.7 mn.", "Sales fell 10 %."],
    }},
}


class RequestError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers


class Batcher:
    """Gathers concurrent requests' texts into model calls of up to ``max_batch`` texts; at
    most ``max_queue`` texts wait (more is a 503)."""

    def __init__(self, model, max_batch: int, max_wait_ms: float, max_queue: int,
                 metrics: Metrics | None = None):
        self.model = model
        self.metrics = metrics
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.waiting_texts = 0
        self.queue: asyncio.Queue = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1)  # one model call at a time
        self.calls = 0
        self.rejected = 0
        self.task: asyncio.Task | None = None

    async def predict(self, texts: list[str]) -> list[dict]:
        if self.waiting_texts + len(texts) > self.max_queue:
            self.rejected += 1
            raise RequestError(503, f"{self.waiting_texts} texts already wait for the model (the "
                               f"limit is {self.max_queue}); retry in a second",
                               {"Retry-After": "1"})
        future = asyncio.get_running_loop().create_future()
        self.waiting_texts += len(texts)
        try:
            await self.queue.put((texts, future))
            return await future
        finally:
            self.waiting_texts -= len(texts)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            waiting = [await self.queue.get()]
            size = len(waiting[0][0])
            deadline = loop.time() + self.max_wait
            while size < self.max_batch:
                try:
                    item = await asyncio.wait_for(self.queue.get(), deadline - loop.time())
                except TimeoutError:
                    break
                waiting.append(item)
                size += len(item[0])
            texts = [text for request, _ in waiting for text in request]
            try:
                answers = await loop.run_in_executor(self.executor, self.model.predict, texts)
            except Exception:  # one request's texts must not fail the others: each alone
                await self.run_alone(waiting)
                continue
            self.calls += 1
            self.observe(len(texts))
            start = 0
            for request, future in waiting:
                if not future.done():  # a client that went away has a cancelled future
                    future.set_result(answers[start:start + len(request)])
                start += len(request)

    async def run_alone(self, waiting: list) -> None:
        loop = asyncio.get_running_loop()
        for request, future in waiting:
            try:
                answers = await loop.run_in_executor(self.executor, self.model.predict, request)
            except Exception as error:
                if not future.done():
                    future.set_exception(RequestError(
                        422, f"the model cannot take these texts: {type(error).__name__}: {error}"))
                continue
            self.calls += 1
            self.observe(len(request))
            if not future.done():
                future.set_result(answers)

    def observe(self, texts: int) -> None:
        if self.metrics:
            self.metrics.batch_texts.observe(texts)
            self.metrics.texts.inc(texts)


def parse_texts(body: bytes, max_texts: int) -> list[str]:
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise RequestError(400, f"the body is not valid UTF-8 (byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise RequestError(400, f"the body is not JSON: {error.msg} at character {error.pos}") from None
    except RecursionError:
        raise RequestError(400, "the body is JSON nested too deeply to read") from None
    except ValueError as error:  # an integer of thousands of digits
        raise RequestError(400, f"the body cannot be read: {error}") from None
    if isinstance(data, dict):
        if "texts" not in data:
            raise RequestError(422, "expected a JSON list of texts, or an object with 'texts'")
        data = data["texts"]
    if not isinstance(data, list):
        raise RequestError(422, f"expected a JSON list of texts, got {type(data).__name__}")
    if not data:
        raise RequestError(422, "the list of texts is empty")
    if len(data) > max_texts:
        raise RequestError(413, f"{len(data)} texts in one request; the limit is {max_texts}")
    for index, text in enumerate(data):
        if not isinstance(text, str):
            raise RequestError(422, f"texts[{index}] is {type(text).__name__}, not a string")
    return data


def create_app(model_path, max_batch: int = 16, max_wait_ms: float = 5.0, max_texts: int = 256,
               max_body_bytes: int = 1_000_000, threads: int | None = None,
               max_queue: int = 4096, read_timeout_s: float = 30.0,
               api_key: str | None = None) -> FastAPI:
    settings = {"max_batch": max_batch, "max_texts": max_texts, "max_body_bytes": max_body_bytes,
                "max_queue": max_queue}
    for name, value in settings.items():
        if value < 1:
            raise InputError(f"{name} must be at least 1, got {value}")
    if max_wait_ms < 0 or read_timeout_s <= 0:
        raise InputError(f"max_wait_ms must be >= 0 and read_timeout_s > 0, got {max_wait_ms} "
                         f"and {read_timeout_s}")
    if max_queue < max_texts:
        raise InputError(f"max_queue ({max_queue}) must hold one request of max_texts ({max_texts})")
    api_key = api_key or os.environ.get("FINCOMPRESS_API_KEY") or None
    model = fincompress.load(model_path, threads=threads)
    metrics = Metrics()
    batcher = Batcher(model, max_batch, max_wait_ms, max_queue, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.task = asyncio.create_task(batcher.run())
        yield
        batcher.task.cancel()
        batcher.executor.shutdown(wait=False)

    # FastAPI's own /docs loads Swagger UI from a CDN: a blank page offline
    app = FastAPIOffline(title="fincompress", lifespan=lifespan, static_url=DOCS_FILES,
                         description="Financial sentiment from a compressed model: "
                                     f"{model.folder} ({model.engine}, {model.precision}).")
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.api_key_required = bool(api_key)
    @app.middleware("http")
    async def require_key_and_log(request: Request, call_next):
        started = time.perf_counter()
        path = request.url.path
        if api_key and path not in OPEN_PATHS and not path.startswith(DOCS_FILES + "/"):
            given = request.headers.get("x-api-key") or \
                request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not secrets.compare_digest(given.encode(), api_key.encode()):
                response = _error(401, "this service needs its API key: send 'Authorization: "
                                       "Bearer KEY' or 'X-API-Key: KEY'", {"WWW-Authenticate": "Bearer"})
                return record(request, response, started)
        return record(request, await call_next(request), started)

    def record(request: Request, response: Response, started: float) -> Response:
        seconds = time.perf_counter() - started
        route = request.url.path if request.url.path in (*OPEN_PATHS, "/predict") else "other"
        metrics.requests.labels(route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(seconds)
        metrics.queued.set(batcher.waiting_texts)
        texts = getattr(request.state, "texts", None)
        access_log.info("%s %s %s %d %.1f ms%s", request.client.host if request.client else "-",
                        request.method, request.url.path, response.status_code, 1000 * seconds,
                        f" {texts} texts" if texts is not None else "")
        return response

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics():
        """Prometheus text exposition."""
        return metrics.exposition()

    @app.post("/predict", openapi_extra={"requestBody": REQUEST_SCHEMA},
              responses={200: {"model": Predictions}, **error_answers(400, 401, 408, 413, 422, 503)})
    async def predict(request: Request):
        """One answer per text: label, probabilities, tokens scored, truncated, warning."""
        try:
            body = await read_body(request, max_body_bytes, read_timeout_s)
            texts = parse_texts(body, max_texts)
            request.state.texts = len(texts)
            return {"predictions": await batcher.predict(texts)}
        except RequestError as error:
            return _error(error.status, str(error), error.headers)

    @app.get("/ready", responses={200: {"content": {"application/json": {"example": {"ready": True}}}},
                                  **error_answers(503)})
    async def ready():
        """200 once the model is loaded and the batching loop runs (a load balancer's check)."""
        if batcher.task is None or batcher.task.done():
            return _error(503, "the batching loop is not running")
        return {"ready": True}

    @app.get("/health", responses={200: {"model": Health}})
    async def health():
        return {"status": "ok", "model": str(model.folder), "engine": model.engine,
                "precision": model.precision, "labels": model.labels, "max_batch": max_batch,
                "max_wait_ms": max_wait_ms, "max_texts": max_texts,
                "max_body_bytes": max_body_bytes, "max_queue": max_queue,
                "queued_texts": batcher.waiting_texts, "model_calls": batcher.calls,
                "rejected_busy": batcher.rejected, "api_key_required": bool(api_key)}

    return app


async def read_body(request: Request, max_body_bytes: int, timeout_s: float) -> bytes:
    """The body, streamed in under ``max_body_bytes`` and within ``timeout_s`` seconds."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_body_bytes:
        raise RequestError(413, f"the body is {declared} bytes; the limit is {max_body_bytes}")
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                body += chunk
                if len(body) > max_body_bytes:
                    raise RequestError(413, f"the body is over the limit of {max_body_bytes} bytes")
    except TimeoutError:
        raise RequestError(408, f"the body took over {timeout_s} s to arrive") from None
    return bytes(body)


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status, headers=headers)
