"""The HTTP service behind ``fincompress serve MODEL``: FastAPI, run by uvicorn.

- ``POST /predict``: a JSON list of texts (or ``{"texts": [...]}``) -> ``{"predictions": [...]}``,
  one answer per text exactly as :meth:`fincompress.api.Model.predict` gives it;
- ``GET /health``: the model, engine, precision and batching settings;
- ``GET /docs``: the OpenAPI page (``/openapi.json``).

Concurrent requests are batched: the first waiting request opens a batch, which takes the
requests that arrive within ``max_wait_ms`` until it holds ``max_batch`` texts, and runs as one
``predict`` call (one model call at a time; the engine uses every thread it was given).
``scripts/load_test.py`` measured the defaults. Limits, with the status they answer:
413 for a body over ``max_body_bytes`` or more than ``max_texts`` texts; 400 for a body that is
not UTF-8 JSON; 422 for JSON that is not a non-empty list of strings (naming the bad item).
Empty texts and over-long texts get the documented answers of the Python API, not errors.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

import fincompress

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
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Batcher:
    """Gathers concurrent requests' texts into model calls of up to ``max_batch`` texts."""

    def __init__(self, model, max_batch: int, max_wait_ms: float):
        self.model = model
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.queue: asyncio.Queue = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1)  # one model call at a time
        self.calls = 0

    async def predict(self, texts: list[str]) -> list[dict]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((texts, future))
        return await future

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
            except Exception as error:  # every waiting request hears of it; the loop goes on
                for _, future in waiting:
                    if not future.done():
                        future.set_exception(error)
                continue
            self.calls += 1
            start = 0
            for request, future in waiting:
                if not future.done():  # a client that went away has a cancelled future
                    future.set_result(answers[start:start + len(request)])
                start += len(request)


def parse_texts(body: bytes, max_texts: int) -> list[str]:
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise RequestError(400, f"the body is not valid UTF-8 (byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise RequestError(400, f"the body is not JSON: {error.msg} at character {error.pos}") from None
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
               max_body_bytes: int = 1_000_000, threads: int | None = None) -> FastAPI:
    if max_batch < 1 or max_wait_ms < 0 or max_texts < 1 or max_body_bytes < 1:
        raise ValueError(f"max_batch ({max_batch}), max_texts ({max_texts}) and max_body_bytes "
                         f"({max_body_bytes}) must be positive, max_wait_ms ({max_wait_ms}) >= 0")
    model = fincompress.load(model_path, threads=threads)
    batcher = Batcher(model, max_batch, max_wait_ms)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(batcher.run())
        yield
        task.cancel()
        batcher.executor.shutdown(wait=False)

    app = FastAPI(title="fincompress", lifespan=lifespan,
                  description="Financial sentiment from a compressed model: "
                              f"{model.folder} ({model.engine}, {model.precision}).")
    app.state.batcher = batcher

    @app.post("/predict", openapi_extra={"requestBody": REQUEST_SCHEMA})
    async def predict(request: Request):
        """One answer per text: label, probabilities, tokens scored, truncated, warning."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_body_bytes:
            return _error(413, f"the body is {declared} bytes; the limit is {max_body_bytes}")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body_bytes:
                return _error(413, f"the body is over the limit of {max_body_bytes} bytes")
        try:
            texts = parse_texts(body, max_texts)
        except RequestError as error:
            return _error(error.status, str(error))
        return {"predictions": await batcher.predict(texts)}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": str(model.folder), "engine": model.engine,
                "precision": model.precision, "labels": model.labels, "max_batch": max_batch,
                "max_wait_ms": max_wait_ms, "max_texts": max_texts,
                "max_body_bytes": max_body_bytes, "model_calls": batcher.calls}

    return app


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)
