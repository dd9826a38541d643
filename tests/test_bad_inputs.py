"""The bad-input catalogue: hostile or careless input across data files, configs, checkpoints
and model folders, the command line, the Python API and the HTTP service.

Each case asserts what the user gets: the exit status or HTTP status, a message naming the bad
file, line, field or value, no traceback for input the user can fix, nothing half-written, and
every earlier good output still there. The README's hostile-input table lists these cases.
"""

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

import fincompress
from fincompress import cli
from fincompress.config_checks import RANGES, check_config
from fincompress.data.news import build_news_corpus
from fincompress.data.phrasebank import read_phrasebank
from fincompress.errors import InputError, NotAModelError
from fincompress.service import Batcher, RequestError, create_app

from .conftest import DATA_DIR, ROOT, TINY, compose_config

SURROGATE = "\ud800"


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """``fincompress ARGS`` in this process: exit status, stdout, stderr."""
    try:
        cli.main([str(a) for a in args])
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def damaged(tiny_classifier, tmp_path):
    """Copies of the tiny model, each damaged one way."""
    def make(how: str):
        folder = tmp_path / how
        shutil.copytree(tiny_classifier, folder)
        if how == "truncated":
            weights = folder / "model.safetensors"
            weights.write_bytes(weights.read_bytes()[:1000])
        elif how == "config":
            (folder / "config.json").write_text('{"model_type": "bert", ')
        elif how == "no_weights":
            (folder / "model.safetensors").unlink()
        return folder
    return make


# ------------------------------------------------------------------ configs (train.py values)

def out_of_range(key: str):
    low, high, low_allowed, _ = RANGES[key]
    if high != float("inf"):
        return high + 1
    return low if not low_allowed else low - 1


@pytest.mark.parametrize("key", sorted(RANGES))
def test_every_config_value_out_of_its_range_is_named(key, tmp_path):
    experiment = {"method": "pkd", "prune": "prune", "quantize": "ptq", "qat": "qat",
                  "static": "static", "benchmark": "benchmark"}.get(key.split(".")[0], "pkd")
    cfg = compose_config([f"+experiment={experiment}", f"{key}={out_of_range(key)}"], tmp_path)
    with pytest.raises(InputError, match=rf"{key}=.* is out of range"):
        check_config(cfg)


def test_a_text_where_a_number_belongs_is_named(tmp_path):
    cfg = compose_config(["+experiment=pkd", "trainer.max_epochs=two"], tmp_path)
    with pytest.raises(InputError, match="trainer.max_epochs='two' is out of range: a whole number"):
        check_config(cfg)


def bad_train_run(tmp_path: Path) -> Path:
    """``train.py`` with ``trainer.max_epochs=-1``: exit 2, one ``error:`` line, no traceback,
    ``FAILED.json`` in the run folder and no work started. Returns the run folder."""
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "train.py", "+experiment=teacher", "trainer.max_epochs=-1",
         f"paths.output_root={tmp_path}", f"hydra.run.dir={run_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "error: trainer.max_epochs=-1 is out of range" in result.stderr
    assert "Traceback" not in result.stderr
    assert json.loads((run_dir / "FAILED.json").read_text())["failed"] is True
    assert not (tmp_path / "stages").exists()  # no work started
    return run_dir


def test_train_py_with_a_bad_value_exits_2_with_one_line_and_marks_the_run_failed(tmp_path):
    """``trainer.max_epochs=-1`` ended in OverflowError; ``0`` saved an untrained teacher."""
    bad_train_run(tmp_path)


@pytest.mark.slow(budget_s=120)  # a tiny teacher's training: 19 s on 2 AVX2 cores
def test_a_fixed_rerun_into_a_failed_runs_folder_no_longer_says_it_failed(tmp_path):
    run_dir = bad_train_run(tmp_path)
    fixed = subprocess.run(
        [sys.executable, "train.py", "+experiment=teacher", *TINY, f"paths.data_dir={DATA_DIR}",
         f"paths.output_root={tmp_path}", f"hydra.run.dir={run_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert not (run_dir / "FAILED.json").exists() and (run_dir / "model").is_dir()


def test_a_decoder_as_teacher_is_refused_before_any_work(tmp_path):
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2, "n_embd": 64}))
    cfg = compose_config(["+experiment=pkd", f"teacher_checkpoint={gpt2}"], tmp_path)
    with pytest.raises(InputError, match="is a gpt2 model without num_hidden_layers"):
        check_config(cfg)


@pytest.mark.parametrize("content, message", [
    (b"", "is not a checkpoint torch can read"),
    (b"garbage bytes \x00\x01", "is not a checkpoint torch can read"),
    (None, "no such file"),
], ids=["empty", "garbage", "missing"])
def test_resume_from_a_file_that_is_not_a_checkpoint(tmp_path, content, message):
    """A garbage ``resume_from`` gave ``IndexError: pop from empty list``."""
    path = tmp_path / "last.ckpt"
    if content is not None:
        path.write_bytes(content)
    cfg = compose_config(["+experiment=teacher", f"resume_from={path}"], tmp_path)
    with pytest.raises(InputError, match=f"resume_from {path}.*{message}"):
        check_config(cfg)


def test_resume_from_a_weights_file_is_not_a_training_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    cfg = compose_config(["+experiment=teacher", f"resume_from={path}"], tmp_path)
    with pytest.raises(InputError, match="not a Lightning training checkpoint"):
        check_config(cfg)


# ------------------------------------------------------------------ data files

def test_a_binary_file_among_the_news_is_named_not_trained_on(tmp_path):
    """2 MB of binary named .txt was read with errors='replace' and trained on."""
    (tmp_path / "good.txt").write_text("Profits rose sharply in the third quarter of the year.\n")
    (tmp_path / "blob.txt").write_bytes(b"header line\n" + bytes(range(128, 256)) * 64)
    with pytest.raises(InputError, match=r"blob\.txt line 2, byte 1: not valid UTF-8 \(0x80\)"):
        build_news_corpus([tmp_path])
    (tmp_path / "blob.txt").rename(tmp_path / "blob.csv")  # the same bytes as CSV
    with pytest.raises(InputError, match=r"blob\.csv line 2, byte 1: not valid UTF-8"):
        build_news_corpus([tmp_path])


@pytest.mark.parametrize("line, message", [
    ("[" * 100_000, "line 2: JSON nested too deeply"),
    ('{"text": ' + "9" * 5000 + "}", "line 2: Exceeds the limit"),
    ('{"text": "unclosed', "line 2: not JSON"),
    ('{"body": "no text field"}', "line 2: no field 'text'"),
], ids=["deep", "huge-number", "unclosed", "no-field"])
def test_bad_news_jsonl_lines_are_named(tmp_path, line, message):
    (tmp_path / "news.jsonl").write_text('{"text": "Profits rose sharply in the quarter."}\n'
                                         + line + "\n")
    with pytest.raises(InputError, match=message):
        build_news_corpus([tmp_path], text_column="text")


def test_a_news_csv_cell_over_the_csv_modules_limit_is_read(tmp_path):
    """A cell over 131,072 characters ended in ``_csv.Error``."""
    long = "Profits rose sharply. " * 7000  # 154,000 characters
    (tmp_path / "news.csv").write_text(f'text\n"{long}"\nShares fell after the warning today.\n')
    corpus = build_news_corpus([tmp_path], text_column="text")
    assert "Shares fell after the warning today." in corpus.sentences


def test_a_malformed_phrasebank_line_is_named(tmp_path):
    folder = tmp_path / "FinancialPhraseBank-v1.0"
    folder.mkdir()
    (folder / "Sentences_50Agree.txt").write_bytes(b"Sales rose .@positive\nno label here\n")
    with pytest.raises(InputError, match=r"Sentences_50Agree\.txt:2: no '@' before a label"):
        read_phrasebank(tmp_path, "50")


# ------------------------------------------------------------------ model folders (the API)

@pytest.mark.parametrize("how, message", [
    ("truncated", r"model\.safetensors: not a complete safetensors file"),
    ("config", r"config\.json: not valid JSON"),
    ("no_weights", "cannot be opened"),
])
def test_a_damaged_model_folder_is_named(damaged, how, message):
    """A truncated model.safetensors gave a 37-line SafetensorError naming no file; a config.json
    that is not JSON gave OSError."""
    with pytest.raises(NotAModelError, match=message):
        fincompress.load(damaged(how))


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: (p / "file.bin").write_bytes(b"x") and p / "file.bin", "is a file"),
    (lambda p: p, "holds no model"),
])
def test_a_path_that_is_not_a_model_is_named(tmp_path, make, message):
    with pytest.raises(NotAModelError, match=message):
        fincompress.load(make(tmp_path))


def test_texts_the_tokenizer_cannot_take_get_a_documented_answer(tiny_classifier):
    """A lone surrogate was a TypeError from the tokenizer, for the whole call."""
    model = fincompress.load(tiny_classifier)
    answers = model.predict(["Sales rose .", f"bad {SURROGATE} text", "Sales fell ."])
    assert answers[1]["label"] is None and "lone surrogate (U+D800) at character 4" in \
        answers[1]["warning"]
    assert [a["label"] for a in answers[::2]] == [a["label"] for a in
                                                   model.predict(["Sales rose .", "Sales fell ."])]
    with pytest.raises(TypeError, match="texts\\[1\\] is int"):
        model.predict(["fine", 3])


# ------------------------------------------------------------------ the command line

@pytest.mark.parametrize("command", [
    ["predict", "{folder}", "text"], ["info", "{folder}"],
    ["export", "{folder}", "--format", "onnx", "--output", "{out}"],
    ["bench", "{folder}", "--output", "{out}"], ["serve", "{folder}"],
])
@pytest.mark.parametrize("how", ["empty", "truncated", "config"])
def test_every_subcommand_names_a_folder_that_is_not_a_model(capsys, damaged, tmp_path, command,
                                                             how):
    folder = tmp_path / "empty" if how == "empty" else damaged(how)
    folder.mkdir(exist_ok=True)
    args = [a.format(folder=folder, out=tmp_path / "out") for a in command]
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and err.startswith("error: ") and str(folder) in err
    assert not (tmp_path / "out").exists()


def test_export_int8_without_calibration_data_names_both_ways_to_give_it(
        capsys, tiny_classifier, tmp_path, monkeypatch):
    """Outside the repository ``export --int8`` ended in a FileNotFoundError traceback."""
    monkeypatch.setenv("FINCOMPRESS_DATA", str(tmp_path / "nowhere"))
    code, _, err = run_cli(capsys, "export", tiny_classifier, "--format", "openvino", "--int8",
                           "--output", tmp_path / "int8")
    assert code == 2 and "set FINCOMPRESS_DATA" in err and "--calibration FILE" in err
    assert not (tmp_path / "int8").exists()


def test_the_demo_names_a_folder_that_is_not_a_model(capsys, tiny_classifier, tmp_path):
    code, _, err = run_cli(capsys, "demo", "--teacher", tiny_classifier, "--student", tmp_path)
    assert code == 2 and f"{tmp_path} holds no model" in err


def test_predict_never_overwrites_its_input_or_an_existing_file(capsys, tiny_classifier, tmp_path):
    """``--input d.csv --output d.csv`` replaced the input with the predictions."""
    data = tmp_path / "d.csv"
    data.write_text("id,text,source\n1,Sales rose .,wire\n")
    before = data.read_bytes()
    code, _, err = run_cli(capsys, "predict", tiny_classifier, "--input", data, "--output", data)
    assert code == 2 and "is the input file" in err and data.read_bytes() == before
    earlier = tmp_path / "earlier.csv"
    earlier.write_text("an earlier result\n")
    code, _, err = run_cli(capsys, "predict", tiny_classifier, "--input", data, "--output", earlier)
    assert code == 2 and "exists; give a new name, or --overwrite" in err
    assert earlier.read_text() == "an earlier result\n"
    code, out, _ = run_cli(capsys, "predict", tiny_classifier, "--input", data, "--output",
                           earlier, "--overwrite")
    assert code == 0 and "wrote 1 answers" in out and "label" in earlier.read_text()


@pytest.mark.parametrize("args, message", [
    (["--output", "{tmp}/missing/out.csv"], "the folder {tmp}/missing does not exist"),
    (["--output", "{tmp}"], "is a folder"),
    (["--output", "{tmp}/out.parquet"], "unknown output format '.parquet'"),
    (["--batch-size", "0", "--output", "{tmp}/o.csv"], "--batch-size: 0 is not at least 1"),
    (["--threads", "0", "--output", "{tmp}/o.csv"], "--threads: 0 is not at least 1"),
    (["--batch-size", "lots", "--output", "{tmp}/o.csv"], "--batch-size: 'lots' is not a whole number"),
])
def test_bad_predict_arguments_are_refused_before_the_model_loads(capsys, tmp_path, args, message):
    """``--output`` in a missing folder failed only after the model ran; ``--batch-size 0`` and
    ``--threads 0`` ended in raw ValueErrors. The model here is no model at all: the arguments
    are checked first."""
    (tmp_path / "in.txt").write_text("Sales rose .\n")
    args = [a.format(tmp=tmp_path) for a in args]
    code, _, err = run_cli(capsys, "predict", tmp_path / "not-a-model", "--input",
                           tmp_path / "in.txt", *args)
    assert code == 2 and message.format(tmp=tmp_path) in err and "Traceback" not in err


@pytest.mark.parametrize("args, message", [
    (["--max-batch", "0"], "--max-batch: 0 is not at least 1"),
    (["--max-texts", "-3"], "--max-texts: -3 is not at least 1"),
    (["--port", "70000"], "--port: 70000 is not a port"),
    (["--max-queue", "0"], "--max-queue: 0 is not at least 1"),
])
def test_bad_serve_settings_are_refused(capsys, tiny_classifier, args, message):
    code, _, err = run_cli(capsys, "serve", tiny_classifier, *args)
    assert code == 2 and message in err


@pytest.mark.parametrize("name, content, message", [
    ("empty.txt", b"", "no texts in the file"),
    ("deep.jsonl", b"[" * 100_000 + b"\n", "deep.jsonl line 1: JSON nested too deeply"),
    ("huge.jsonl", b'{"text": ' + b"9" * 5000 + b"}\n", "huge.jsonl line 1: Exceeds the limit"),
    ("bad.txt", b"ok\n\xff\n", "bad.txt line 2, byte 1: not valid UTF-8"),
    ("list.jsonl", b'["a list"]\n', "list.jsonl line 1: expected a JSON object"),
], ids=["empty", "deep", "huge-number", "not-utf8", "not-an-object"])
def test_bad_input_files_are_named_and_nothing_is_written(capsys, tiny_classifier, tmp_path, name,
                                                          content, message):
    (tmp_path / name).write_bytes(content)
    code, _, err = run_cli(capsys, "predict", tiny_classifier, "--input", tmp_path / name,
                           "--output", tmp_path / "out.csv")
    assert code == 2 and message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_a_csv_cell_over_131072_characters_and_a_surrogate_in_jsonl_are_answered(
        capsys, tiny_classifier, tmp_path):
    (tmp_path / "long.csv").write_text('text\n"' + "Profit rose . " * 10_000 + '"\nSales fell .\n')
    code, _, _ = run_cli(capsys, "predict", tiny_classifier, "--input", tmp_path / "long.csv",
                         "--output", tmp_path / "long_out.jsonl")
    answers = [json.loads(line) for line in (tmp_path / "long_out.jsonl").read_text().splitlines()]
    assert code == 0 and answers[0]["truncated"] is True and answers[1]["label"] is not None
    (tmp_path / "s.jsonl").write_text('{"text": "bad \\ud800"}\n{"text": "Sales rose ."}\n')
    code, out, _ = run_cli(capsys, "predict", tiny_classifier, "--input", tmp_path / "s.jsonl",
                           "--output", tmp_path / "s_out.csv")
    assert code == 0 and "1 with a warning" in out


# ------------------------------------------------------------------ the HTTP service

@pytest.fixture(scope="module")
def client(tiny_classifier):
    app = create_app(tiny_classifier, max_batch=8, max_wait_ms=5, max_texts=4,
                     max_body_bytes=200_000, max_queue=64)
    with TestClient(app) as client:
        yield client


@pytest.mark.parametrize("body, status, message", [
    (b"[" * 100_000, 400, "nested too deeply"),
    (b'{"texts": ' + b"[" * 100_000, 400, "nested too deeply"),
    (b"[" + b"9" * 5000 + b"]", 400, "Exceeds the limit"),
    (b'{"texts": [null]}', 422, "texts[0] is NoneType"),
    (b'[["nested"]]', 422, "texts[0] is list"),
    (b"{}", 422, "an object with 'texts'"),
    (b"\xff\xfe", 400, "not valid UTF-8"),
], ids=["deep", "deep-in-texts", "huge-number", "null-item", "list-item", "no-texts", "not-utf8"])
def test_hostile_bodies_get_4xx_and_the_service_goes_on(client, body, status, message):
    response = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status and message in response.json()["detail"]
    assert client.post("/predict", json=["Sales rose ."]).status_code == 200


def test_a_body_streamed_past_the_limit_is_cut_off(client):
    """No content-length: the guard counts the bytes as they stream in."""
    def chunks():
        for _ in range(30):
            yield b'["' + b"a" * 10_000

    response = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "over the limit of 200000 bytes" in response.json()["detail"]


def test_a_lone_surrogate_gets_a_documented_answer(client):
    response = client.post("/predict", content=b'["\\ud800", "Sales rose ."]',
                           headers={"content-type": "application/json"})
    first, second = response.json()["predictions"]
    assert response.status_code == 200 and first["label"] is None and "lone surrogate" in first["warning"]
    assert second["label"] is not None


def test_the_api_key_guards_predictions_not_health_metrics_or_docs(tiny_classifier, monkeypatch):
    monkeypatch.setenv("FINCOMPRESS_API_KEY", "s3cret")
    with TestClient(create_app(tiny_classifier)) as client:
        assert client.post("/predict", json=["Sales rose ."]).status_code == 401
        assert client.post("/predict", json=["x"], headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.get("/anything-else").status_code == 401
        # what a browser, a scraper and a load balancer fetch without headers: no data in them
        for path in ("/openapi.json", "/docs", "/metrics", "/static-offline-docs/swagger-ui.css"):
            assert client.get(path).status_code == 200, path
        assert client.post("/predict", json=["Sales rose ."],
                           headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/health").json()["api_key_required"] is True
        assert client.get("/ready").status_code == 200  # a load balancer's check needs no key


class SlowModel:
    """Stands in for a model that takes its time, or that fails on one text."""

    def __init__(self, seconds: float = 0.0):
        self.seconds = seconds

    def predict(self, texts):
        import time

        time.sleep(self.seconds)
        if "poison" in texts:
            raise ValueError("the tokenizer cannot take 'poison'")
        return [{"label": text} for text in texts]


def test_a_full_queue_answers_503_with_retry_after_and_frees_up():
    async def scenario():
        batcher = Batcher(SlowModel(0.2), max_batch=2, max_wait_ms=0, max_queue=4)
        loop_task = asyncio.create_task(batcher.run())
        first = [asyncio.create_task(batcher.predict(["a", "b"])) for _ in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(RequestError) as refused:
            await batcher.predict(["c"])
        results = await asyncio.gather(*first)
        later = await batcher.predict(["d"])  # room again once those are answered
        loop_task.cancel()
        return refused.value, results, later, batcher.waiting_texts

    refused, results, later, waiting = asyncio.run(scenario())
    assert refused.status == 503 and refused.headers == {"Retry-After": "1"}
    assert results == [[{"label": "a"}, {"label": "b"}]] * 2 and later == [{"label": "d"}]
    assert waiting == 0


def test_one_requests_failure_never_reaches_the_others_in_its_batch():
    async def scenario():
        batcher = Batcher(SlowModel(), max_batch=64, max_wait_ms=50, max_queue=100)
        loop_task = asyncio.create_task(batcher.run())
        requests = [asyncio.create_task(batcher.predict([f"good {i}"])) for i in range(5)]
        requests.insert(2, asyncio.create_task(batcher.predict(["poison"])))
        outcomes = await asyncio.gather(*requests, return_exceptions=True)
        loop_task.cancel()
        return outcomes

    outcomes = asyncio.run(scenario())
    assert isinstance(outcomes[2], RequestError) and outcomes[2].status == 422
    assert "cannot take 'poison'" in str(outcomes[2])
    good = [o for i, o in enumerate(outcomes) if i != 2]
    assert good == [[{"label": f"good {i}"}] for i in range(5)]
