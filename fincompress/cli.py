"""The ``fincompress`` command.

    fincompress predict MODEL "Operating profit rose." ["another text" ...]
    fincompress predict MODEL --input texts.csv|.jsonl|.txt [--column text] --output out.csv|.jsonl
    fincompress export MODEL --format openvino|onnx [--int8] [--calibration FILE] --output DIR
    fincompress info MODEL
    fincompress bench MODEL [MODEL ...] [--output DIR]
    fincompress serve MODEL [--host 127.0.0.1] [--port 8000]
    fincompress demo --teacher MODEL --student MODEL [--benchmark DIR] [--port 7860]

MODEL is any folder fincompress writes (see :func:`fincompress.load`). Bad input (a folder that
is not a model, a file that is not UTF-8, a missing column) ends with ``error: ...`` naming the
file, line or value, exit status 2, and no output file written.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import sys
import tempfile
from pathlib import Path

from fincompress.errors import InputError, read_utf8
from fincompress.files import atomic_file, atomic_folder, folder_size_bytes

# ---------------------------------------------------------------- reading and writing texts

FORMATS = (".txt", ".csv", ".jsonl")


def read_texts(path: Path, column: str | None = None) -> list[str]:
    """Texts from a ``.txt`` (one per line), ``.csv`` (a column: ``--column``, else ``text``
    or ``sentence``, else the only one) or ``.jsonl`` file (a field, by the same rule)."""
    return read_records(path, column)[0]


def read_records(path: Path, column: str | None = None, fmt: str | None = None,
                 ) -> tuple[list[str], list[dict] | None, str | None]:
    """The texts of a file (``-``: standard input), each row's fields (None for ``.txt``), and
    the name of the text column. ``fmt`` (``.txt``, ``.csv``, ``.jsonl``) overrides the
    suffix; standard input is ``.txt`` unless told."""
    from fincompress.data.news import csv_field_limit, parse_json_line

    stdin = str(path) == "-"
    suffix = fmt or (".txt" if stdin else path.suffix.lower())
    if suffix not in FORMATS:
        raise InputError(f"{path}: unknown format {suffix!r}; use .txt, .csv or .jsonl")
    if stdin:
        text = sys.stdin.buffer.read().decode("utf-8", errors="strict") if not sys.stdin.isatty() else ""
    elif not path.is_file():
        raise InputError(f"{path}: no such file")
    else:
        text = read_utf8(path)
    if not text.strip():
        return [], None, None
    if suffix == ".txt":
        lines = text.split("\n")[:-1 if text.endswith("\n") else None]
        return [line.rstrip("\r") for line in lines], None, None
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            with csv_field_limit():
                name = _column(path, column, reader.fieldnames or [])
                rows = [{key: value or "" for key, value in row.items() if key is not None}
                        for row in reader]
        except csv.Error as error:
            raise InputError(f"{path} line {reader.line_num}: not CSV ({error})") from None
        return [row[name] for row in rows], rows, name
    texts, rows, name = [], [], None
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        record = parse_json_line(path, number, line)
        if not isinstance(record, dict):
            raise InputError(f"{path} line {number}: expected a JSON object, got "
                             f"{type(record).__name__}")
        name = _column(path, column, list(record), number)
        if not isinstance(record[name], str):
            raise InputError(f"{path} line {number}: {name!r} is {type(record[name]).__name__}, "
                             "not a string")
        texts.append(record[name])
        rows.append(record)
    return texts, rows, name


def _column(path: Path, column: str | None, names: list[str], line: int | None = None) -> str:
    where = f"{path} line {line}" if line else str(path)
    if column is not None:
        if column not in names:
            raise InputError(f"{where}: no column {column!r}; columns: {', '.join(names) or 'none'}")
        return column
    for name in ("text", "sentence"):
        if name in names:
            return name
    if len(names) == 1:
        return names[0]
    raise InputError(f"{where}: no 'text' or 'sentence' column; columns: "
                     f"{', '.join(names) or 'none'} (choose one with --column)")


ANSWER_FIELDS = ("text", "label", "probabilities", "tokens", "truncated", "warning")


def output_rows(texts: list[str], answers: list[dict], rows: list[dict] | None,
                text_column: str | None, keep: list[str] | None) -> list[dict]:
    """One record per text: the kept input fields (``keep``: their names; None: all), then
    the answer's fields, ``warning`` None when there is none. An input field named like an
    answer field is kept as ``input_<name>``."""
    records = []
    for index, (text, answer) in enumerate(zip(texts, answers)):
        record = {}
        source = rows[index] if rows else {}
        for name in (keep if keep is not None else list(source)):
            if name == text_column:
                continue
            record[f"input_{name}" if name in ANSWER_FIELDS else name] = source.get(name)
        record.update({"text": text, **answer, "warning": answer.get("warning")})
        records.append(record)
    return records


def write_answers(path: Path, records: list[dict], labels: list[str], fmt: str | None = None) -> None:
    """``.csv`` (the kept input columns, then text, label, one probability column per label,
    tokens, truncated, warning) or ``.jsonl`` (the same fields, probabilities as one object,
    ``warning`` null when there is none); a file is written whole to a temporary file, then
    renamed; ``-`` writes standard output (``.jsonl`` unless ``fmt`` says otherwise)."""
    stdout = str(path) == "-"
    suffix = fmt or (".jsonl" if stdout else path.suffix.lower())
    if suffix not in (".csv", ".jsonl"):
        raise InputError(f"{path}: unknown output format {suffix!r}; use .csv or .jsonl")
    context = contextlib.nullcontext(sys.stdout) if stdout else atomic_file(path, newline="")
    with context as out:
        if suffix == ".jsonl":
            for record in records:
                out.write(json_line(record) + "\n")
            return
        writer = csv.writer(out)
        kept = [name for name in records[0] if name not in ANSWER_FIELDS] if records else []
        writer.writerow([*kept, "text", "label", *[f"p_{label}" for label in labels], "tokens",
                         "truncated", "warning"])
        for record in records:
            probabilities = record["probabilities"] or {}
            writer.writerow([*[_cell(record[name]) for name in kept],
                             _cell(record["text"]), record["label"] or "",
                             *[_round(probabilities.get(label)) for label in labels],
                             record["tokens"], record["truncated"], record["warning"] or ""])


def _cell(value) -> str:
    """A CSV cell: text as UTF-8 can hold it (a lone surrogate escaped), other values as JSON."""
    if value is None:
        return ""
    if not isinstance(value, str):
        return json.dumps(value)
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def json_line(record: dict) -> str:
    """One JSON line, UTF-8 as written; a text that is not valid Unicode (a lone surrogate)
    is written with ``\\u`` escapes, so that the line reads back to the same string."""
    line = json.dumps(record, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(record)
    return line


def check_output_file(output: Path, overwrite: bool, source: Path | None = None,
                      fmt: str | None = None) -> None:
    """Refuse, before any work, an output that would lose data or cannot be written: the input
    file itself, an existing file (unless ``overwrite``: it is then replaced whole, only once
    the new content is complete), a folder, a missing folder, an unknown format."""
    if output.is_dir():
        raise InputError(f"--output {output} is a folder; give a file name")
    if (fmt or output.suffix.lower()) not in (".csv", ".jsonl"):
        raise InputError(f"{output}: unknown output format {fmt or output.suffix!r}; use .csv or "
                         ".jsonl (or --output-format)")
    if source is not None and source.exists() and output.exists() and output.samefile(source):
        raise InputError(f"--output {output} is the input file; give another name (the input "
                         "keeps its data)")
    if output.exists() and not overwrite:
        raise InputError(f"--output {output} exists; give a new name, or --overwrite to replace "
                         "it (replaced only once every answer is written)")
    if not output.parent.is_dir():
        raise InputError(f"--output {output}: the folder {output.parent} does not exist")


def _round(value):
    return "" if value is None else f"{value:.6f}"


# ---------------------------------------------------------------- commands

def predict(args) -> None:
    from tqdm import tqdm

    import fincompress

    if bool(args.texts) == bool(args.input):
        raise InputError("give texts to predict, or --input FILE (with --output FILE), not both")
    if args.input and not args.output:
        raise InputError("--input needs --output FILE (.csv or .jsonl; - for standard output)")
    in_format = f".{args.input_format}" if args.input_format else None
    out_format = f".{args.output_format}" if args.output_format else None
    if args.output and args.output != "-":
        check_output_file(Path(args.output), args.overwrite,
                          None if args.input == "-" else Path(args.input), out_format)
    if args.input:  # read and checked before the model loads
        texts, rows, text_column = read_records(Path(args.input), args.column, in_format)
    else:
        texts, rows, text_column = args.texts, None, None
    if not texts:
        raise InputError("no texts on standard input" if args.input == "-"
                         else f"{args.input}: no texts in the file")
    keep = None if args.keep_columns == "all" else [] if args.keep_columns == "none" else \
        args.keep_columns.split(",")
    if keep and rows:
        missing = [name for name in keep if name not in rows[0]]
        if missing:
            raise InputError(f"--keep-columns: {args.input} has no column {missing}; columns: "
                             f"{', '.join(rows[0])}")
    model = fincompress.load(args.model, threads=args.threads, batch_size=args.batch_size)
    if not args.input:
        for text, answer in zip(texts, model.predict(texts)):
            print(json_line({"text": text[:200], **answer}))
        return
    answers = []
    chunk = 8 * model.batch_size  # each chunk is length-sorted into batches
    name = "standard input" if args.input == "-" else Path(args.input).name
    with tqdm(total=len(texts), unit="text", desc=f"predict {name}", file=sys.stderr) as bar:
        for start in range(0, len(texts), chunk):
            answers += model.predict(texts[start:start + chunk])
            bar.update(len(texts[start:start + chunk]))
    records = output_rows(texts, answers, rows, text_column, keep)
    write_answers(Path(args.output), records, model.labels, out_format)
    counts = {label: sum(a["label"] == label for a in answers) for label in model.labels}
    flagged = sum("warning" in a for a in answers)
    print(f"wrote {len(answers)} answers to {args.output}: {counts}"
          + (f"; {flagged} with a warning" if flagged else ""),
          file=sys.stderr if args.output == "-" else sys.stdout)


def export(args) -> None:
    """Write the artifact, then score it beside its source on a labelled split, and record
    what was measured in its ``checkpoint_info.json`` (nothing is written on any failure)."""
    import fincompress
    from fincompress.artifacts import write_checkpoint_info
    from fincompress.compress.int8 import ONNXRuntimeBackend, OpenVINOBackend
    from fincompress.models.sources import load_classifier

    source = fincompress.load(args.model)  # a clear error for a folder that is not a model
    if source.engine != "torch":
        raise InputError(f"{source.folder} is already an {source.engine} artifact; export "
                         "takes a Hugging Face model folder")
    output = Path(args.output)
    if output.exists():
        raise InputError(f"{output} exists; give a new folder")
    if args.format == "openvino":
        backend = OpenVINOBackend(int8=args.int8, subset_size=args.calibration_size,
                                  max_drop=args.max_drop)
    else:
        backend = ONNXRuntimeBackend(int8=args.int8, mode=args.onnx_mode,
                                     subset_size=args.calibration_size)
    calibration = []
    if args.int8 and (args.format == "openvino" or args.onnx_mode == "static"):
        calibration = (read_texts(Path(args.calibration), args.column) if args.calibration
                       else training_sentences(args.calibration_size))
        calibration = [text for text in calibration if text.strip()]
    scratch = tempfile.TemporaryDirectory(prefix="fincompress-export-")
    evaluation = None if args.no_eval else evaluation_split(args.eval, source, Path(scratch.name))
    model, tokenizer = load_classifier(str(source.folder), source.labels)
    with scratch, atomic_folder(output, replace=False) as staging:
        record = backend.export(model, tokenizer, calibration, staging, source.max_length,
                                **({"validation": validation_sentences(source.labels)}
                                   if args.int8 and args.max_drop is not None else {}))
        written = {"stage": "export", "source": str(source.folder), "labels": source.labels,
                   "steps": [record], "source_metrics": source.info.get("metrics")}
        write_checkpoint_info(staging, written)  # what the scorer reads (INT8 or not)
        measured = {} if evaluation is None else validate(source, staging, *evaluation)
        write_checkpoint_info(staging, {**written, **measured})
    print(f"wrote {output}: {args.format}{' INT8' if args.int8 else ''}, "
          f"{folder_size_bytes(output) / 2**20:.1f} MiB (source "
          f"{folder_size_bytes(source.folder) / 2**20:.1f} MiB)")
    if measured:
        print(validation_line(measured))


def evaluation_split(path: str | None, source, scratch: Path) -> tuple[Path, str]:
    """The labelled sentences an export is scored on, and what they are: ``--eval FILE`` (CSV
    with ``text`` and ``label`` columns), else the test split saved beside the source model (a
    run folder's ``split/test.csv``), else the PhraseBank test split from the data folder when
    the source records that same split (or records none), written to ``scratch``."""
    from fincompress.data.phrasebank import read_split_file

    if path is not None:
        read_split_file(path)  # a clear error now, not after the export
        return Path(path), f"{path} (--eval)"
    beside = source.folder.parent / "split" / "test.csv"
    if beside.is_file():
        return beside, f"the source's test split ({beside})"
    _, split = data_folder_split("no test split to score the export on",
                              "give --eval FILE (a CSV with text and label columns), or --no-eval")
    recorded = source.info.get("split_hash")
    if recorded and recorded != split.info["split_hash"]:
        raise InputError(f"{source.folder} was trained on another PhraseBank split (hash "
                         f"{recorded}, the data folder's is {split.info['split_hash']}): its "
                         "test sentences may have been trained on; give --eval FILE or --no-eval")
    from fincompress.data.phrasebank import write_splits

    write_splits({"test": split.splits["test"]}, scratch)
    note = "" if recorded else "; the source records no split, so some may have been trained on"
    return scratch / "test.csv", f"the PhraseBank test split of the data folder{note}"


def validate(source, artifact: Path, split_file: Path, described: str) -> dict:
    """The artifact and its source scored and timed side by side on ``split_file`` on this
    machine (the source in fp32, and in bf16 where this CPU has it natively: the speed-up is
    stated against both): what ``checkpoint_info.json`` records of an export."""
    from fincompress.hardware import cpu_info, native_bf16
    from fincompress.scoring import score

    print(f"scoring the export beside its source on {described}", flush=True)
    runs = {"source": (source.folder, "32-true"), "export": (artifact, "32-true")}
    if native_bf16()[0]:
        runs["source bf16"] = (source.folder, "bf16-mixed")
    rows = score(runs, source.labels, split_file, repeats=3)["models"]
    keys = ("acc", "f1_macro", *[f"f1_{label}" for label in source.labels])
    return {
        "precision": "int8" if rows[1]["precision"] == "i8" else rows[1]["precision"],
        "metrics": {f"test/{key}": rows[1][key] for key in keys},
        "metrics_of_source_here": {f"test/{key}": rows[0][key] for key in keys},
        "agreement_with_source": rows[1]["agreement_with_teacher"],
        "evaluated_on": {"file": str(split_file), "what": described,
                         "sentences": len(rows[1]["predictions"])},
        "throughput_batch32": {"export": rows[1]["throughput_sorted"],
                               "source_fp32": rows[0]["throughput_sorted"],
                               **({"source_bf16": rows[2]["throughput_sorted"]}
                                  if len(rows) > 2 else {})},
        "machine": {**cpu_info(), "engine": rows[1]["engine"],
                    "precision": (f"int8 (float parts {rows[1]['inference_precision']})"
                                  if rows[1]["precision"] == "i8" else rows[1]["precision"])},
    }


def validation_line(measured: dict) -> str:
    metrics, here = measured["metrics"], measured["metrics_of_source_here"]
    speed = measured["throughput_batch32"]
    return (f"validated on {measured['evaluated_on']['sentences']} sentences "
            f"({measured['evaluated_on']['what']}): macro-F1 {metrics['test/f1_macro']:.4f} "
            f"(source {here['test/f1_macro']:.4f}), label agreement with the source "
            f"{measured['agreement_with_source']:.1%}, {speed_text(speed)} on "
            f"{measured['machine']['cpu']}")


def speed_text(speed: dict) -> str:
    """The export's batch-32 throughput against its source in each precision timed."""
    against = "; ".join(f"{speed[key]:,.0f} in {name}, {speed['export'] / speed[key]:.1f}x"
                        for key, name in (("source_fp32", "fp32"), ("source_bf16", "bf16"))
                        if speed.get(key))
    return f"{speed['export']:,.0f} sentences/s at batch 32 (the source: {against})"


def data_overrides() -> list[str]:
    """Where the data folder is when ``FINCOMPRESS_DATA`` is not set and the default
    (``../shared/data`` from the working directory) is not there: beside this checkout, so that
    the commands work from any directory."""
    import fincompress

    if os.environ.get("FINCOMPRESS_DATA") or Path("../shared/data").is_dir():
        return []
    beside = Path(fincompress.__file__).resolve().parents[2] / "shared" / "data"
    return [f"paths.data_dir={beside}"] if beside.is_dir() else []


def validation_sentences(labels: list[str]) -> list[tuple[str, int]]:
    """The PhraseBank validation split (text, label index), for accuracy-controlled INT8."""
    _, split = data_folder_split("no PhraseBank validation split for --max-drop",
                                 "or leave out --max-drop")
    return [(row.text, labels.index(row.label)) for row in split.splits["val"]]


def training_sentences(count: int) -> list[str]:
    """The PhraseBank training split (never val or test), shuffled as PTQ calibrates, from the
    data directory (``FINCOMPRESS_DATA``, else ``../shared/data``, else the one beside this
    checkout)."""
    from fincompress.data.phrasebank import calibration_texts

    cfg, split = data_folder_split("no PhraseBank to calibrate INT8 on",
                                   "or give --calibration FILE")
    return calibration_texts(split.splits["train"], count, cfg.seed)


def data_folder_split(problem: str, remedy: str):
    """The default config and its PhraseBank split from the data folder; a missing data folder
    is one error naming ``problem``, ``FINCOMPRESS_DATA`` and ``remedy``."""
    from fincompress.config_checks import trusted_targets
    from fincompress.data.datamodule import phrasebank_split

    cfg = compose_config(data_overrides())
    try:
        with trusted_targets():  # phrasebank_split instantiates cfg.data
            return cfg, phrasebank_split(cfg)
    except FileNotFoundError as error:
        raise InputError(f"{problem} ({error}): set FINCOMPRESS_DATA to the data folder (it "
                         f"holds financial_phrasebank/), {remedy}") from None


def info(args) -> None:
    import fincompress

    model = fincompress.load(args.model)
    print(describe(model.folder, model.info, f"{model.engine}, {model.precision} on this CPU"))


def describe(folder: Path, record: dict, engine: str) -> str:
    """Metrics, size, lineage and the CPU a model was measured on, from its
    ``checkpoint_info.json``."""
    lines = [f"model: {folder}", f"runs as: {engine}"]
    if not record:
        return "\n".join([*lines, "no checkpoint_info.json: no metrics or lineage recorded"])
    lines.append(f"stage: {record.get('stage', '?')}"
                 + (f", method {record['method']}" if record.get("method") else "")
                 + (f", student {record['student']}" if record.get("student") else ""))
    metrics = record.get("metrics") or record.get("source_metrics") or {}
    if metrics:
        shown = ", ".join(f"{k.removeprefix('test/')} {v:.4f}" for k, v in metrics.items()
                          if isinstance(v, (int, float)))
        lines.append(f"test metrics{' (of its source)' if 'metrics' not in record else ''}: {shown}")
    if record.get("precision"):
        lines.append(f"precision: {record['precision']}")
    if record.get("agreement_with_source") is not None:
        evaluated = record.get("evaluated_on") or {}
        lines.append(f"label agreement with its source: {record['agreement_with_source']:.1%} of "
                     f"{evaluated.get('sentences', '?')} sentences ({evaluated.get('what', '?')})")
    speed = record.get("throughput_batch32") or {}
    if speed.get("export"):
        lines.append(f"throughput: {speed_text(speed)}, on the machine below")
    if record.get("best_val_f1_macro") is not None:
        lines.append(f"best validation macro-F1: {record['best_val_f1_macro']:.4f}")
    size = record.get("size_on_disk_bytes")
    parameters = record.get("parameters")
    lines.append(f"size: {size / 2**20:.1f} MiB" if size else "size: not recorded")
    if parameters:
        lines[-1] += f", {parameters / 1e6:.1f}M parameters"
    for step in record.get("steps", []):
        lines.append("step: " + ", ".join(f"{k} {v}" for k, v in step.items()))
    lines.append("lineage: " + " <- ".join(lineage(folder, record)))
    machine = record.get("machine") or {}
    if isinstance(machine, str):  # older artifacts recorded it as text
        lines.append(f"measured on: {machine}")
    elif machine:
        lines.append(f"measured on: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, "
                     f"ISA {' '.join(machine.get('isa', [])) or '?'}"
                     + (f", {machine['precision']}" if machine.get("precision") else ""))
    for key in ("timestamp", "git_commit", "split_hash"):
        if record.get(key):
            lines.append(f"{key}: {record[key]}")
    return "\n".join(lines)


def lineage(folder: Path, record: dict, depth: int = 8) -> list[str]:
    """This folder, then what it was made from (``source``, else ``teacher``), as far as the
    recorded folders exist."""
    chain = [str(folder)]
    while depth and record:
        parent = record.get("source") if record.get("stage") in ("int8", "export", "prune", "qat") \
            else record.get("teacher")
        if not parent or not Path(parent).is_dir():
            if parent:
                chain.append(f"{parent} (not on this machine)")
            break
        chain.append(f"{parent}")
        info = Path(parent) / "checkpoint_info.json"
        record = json.loads(info.read_text()) if info.is_file() else {}
        depth -= 1
    return chain


def bench(args) -> None:
    """The benchmark stage (``+experiment=benchmark``) on the given folders."""
    import fincompress
    from fincompress.stages.benchmark import artifacts_override, run_benchmark

    names = {}
    for path in args.models:
        model = fincompress.load(path)  # fails early on a folder that is not a model
        # a stage's model/ folder is named by its stage key; anything else by its own name
        name = model.folder.parent.name if model.folder.name == "model" else model.folder.name
        while name in names:
            name += "_"
        names[name] = str(model.folder.resolve())
    output = Path(args.output)
    overrides = ["+experiment=benchmark", artifacts_override(names),
                 f"paths.run_dir={output.resolve()}", f"benchmark.repeats={args.repeats}",
                 f"benchmark.latency_sentences={args.latency_sentences}",
                 f"benchmark.min_round_s={args.min_round_s}"]
    if not args.published:
        overrides.append("benchmark.published=[]")
    from fincompress.config_checks import trusted_targets

    with trusted_targets():  # imported here: the other commands start without Hydra
        run_benchmark(compose_config(overrides))
    print(f"written: {output}/benchmark.{{json,csv,md}}, pareto.png, confusion_matrices.png")


def compose_config(overrides: list[str]):
    """The ``train.py`` config with ``overrides``, from the configs inside the package."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="fincompress.conf", version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def serve(args) -> None:
    import uvicorn

    from fincompress.service import create_app

    app = create_app(args.model, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                     max_texts=args.max_texts, max_body_bytes=args.max_body_bytes,
                     threads=args.threads, max_queue=args.max_queue,
                     read_timeout_s=args.read_timeout_s, api_key=args.api_key)
    model = app.state.batcher.model
    print(f"fincompress serve: http://{args.host}:{args.port} (POST /predict, GET /health, "
          f"/ready, /metrics, /docs); model {model.folder} ({model.engine}, {model.precision}); batches of "
          f"up to {args.max_batch} texts within {args.max_wait_ms} ms; "
          f"{'API key required' if app.state.api_key_required else 'no API key'}; "
          f"{'no access log' if args.no_access_log else 'access log on stderr'}", flush=True)
    if not args.no_access_log:
        import logging

        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        access = logging.getLogger("fincompress.access")
        access.addHandler(handler)
        access.setLevel(logging.INFO)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)


def demo(args) -> None:
    from fincompress.demo import build_demo

    app = build_demo(args.teacher, args.student, args.benchmark)
    app.launch(server_name=args.host, server_port=args.port)


# ---------------------------------------------------------------- argument parsing

def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return number


def port(value: str) -> int:
    number = positive_int(value)
    if number > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (1 to 65535)")
    return number


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


EXAMPLES = {
    "predict": """  fincompress predict MODEL "Operating profit rose to EUR 13.1 mn ."
  fincompress predict MODEL --input news.csv --output labelled.csv      # keeps news.csv's columns
  fincompress predict MODEL --input news.csv --keep-columns id --output labelled.jsonl
  cat headlines.txt | fincompress predict MODEL --input - --output - > labelled.jsonl""",
    "export": """  fincompress export MODEL --format openvino --int8 --output model-int8  # scored on test
  fincompress export MODEL --format onnx --int8 --eval labelled.csv --output model-onnx""",
    "info": """  fincompress info model-int8""",
    "bench": """  fincompress bench TEACHER STUDENT model-int8 --output outputs/bench""",
    "serve": """  fincompress serve model-int8 --port 8000
  curl -s localhost:8000/predict -d '["Sales fell 10 %."]'""",
    "demo": """  fincompress demo --teacher TEACHER --student STUDENT --benchmark outputs/bench/RUN""",
}


def parser() -> argparse.ArgumentParser:
    import fincompress

    main = argparse.ArgumentParser(prog="fincompress", description=__doc__.splitlines()[0])
    main.add_argument("--version", action="version", version=f"fincompress {fincompress.__version__}")
    commands = main.add_subparsers(dest="command", required=True)

    def add(name: str, **kwargs) -> argparse.ArgumentParser:
        """A subcommand whose --help shows its defaults and its examples, as written."""
        return commands.add_parser(name, formatter_class=HelpFormatter,
                                   epilog="examples:\n" + EXAMPLES[name], **kwargs)

    p = add("predict", help="labels and probabilities for texts or a file")
    p.add_argument("model")
    p.add_argument("texts", nargs="*")
    p.add_argument("--input", help=".txt (a text per line), .csv or .jsonl; - reads standard input")
    p.add_argument("--input-format", choices=["txt", "csv", "jsonl"],
                   help="the input's format (default: its suffix; txt for standard input)")
    p.add_argument("--column", help="the CSV column or JSONL field (default: text or sentence)")
    p.add_argument("--keep-columns", default="all",
                   help="input columns copied to the output: all, none, or names, comma-separated")
    p.add_argument("--output", help=".csv or .jsonl; - writes standard output")
    p.add_argument("--output-format", choices=["csv", "jsonl"],
                   help="the output's format (default: its suffix; jsonl for standard output)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument("--threads", type=positive_int, help="the engine's threads (default: all cores)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="texts per model call")
    p.set_defaults(run=predict)

    p = add("export", help="an OpenVINO or ONNX artifact, fp32 or INT8")
    p.add_argument("model")
    p.add_argument("--format", choices=["openvino", "onnx"], required=True)
    p.add_argument("--int8", action="store_true")
    p.add_argument("--max-drop", type=float, help="OpenVINO INT8 with NNCF's accuracy control: "
                   "keep layers in float until validation accuracy is at most this far below "
                   "the float model's (0.01 = one point)")
    p.add_argument("--onnx-mode", choices=["dynamic", "static"], default="dynamic",
                   help="ONNX INT8: activations quantized at run time, or calibrated (QDQ)")
    p.add_argument("--calibration", help="texts to calibrate static INT8 (.txt/.csv/.jsonl); "
                   "default: the PhraseBank training split")
    p.add_argument("--column", help="the calibration file's column or field")
    p.add_argument("--calibration-size", type=positive_int, default=300)
    p.add_argument("--eval", help="labelled sentences to score the export on (CSV: text, label); "
                   "default: the source's test split")
    p.add_argument("--no-eval", action="store_true", help="do not score the export")
    p.add_argument("--output", required=True, help="a new folder")
    p.set_defaults(run=export)

    p = add("info", help="metrics, size, lineage and the CPU it was measured on")
    p.add_argument("model")
    p.set_defaults(run=info)

    p = add("bench", help="the CPU benchmark on the given models")
    p.add_argument("models", nargs="+", help="the first is the reference")
    p.add_argument("--output", default="outputs/bench")
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--latency-sentences", type=positive_int, default=200)
    p.add_argument("--min-round-s", type=float, default=1.0,
                   help="seconds each model's passes run per round (0: one pass)")
    p.add_argument("--published", action="store_true",
                   help="also time the published architectures (ALBERT-base, FinBERT)")
    p.set_defaults(run=bench)

    p = add("serve", help="the HTTP service (POST /predict, GET /health, /ready, /metrics, /docs)")
    p.add_argument("model")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port, default=8000)
    p.add_argument("--max-batch", type=positive_int, default=16,
                   help="texts per model call (16 and 5 ms: best measured by scripts/load_test.py)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long a batch waits for more requests")
    p.add_argument("--max-texts", type=positive_int, default=256, help="texts per request")
    p.add_argument("--max-body-bytes", type=positive_int, default=1_000_000)
    p.add_argument("--max-queue", type=positive_int, default=4096,
                   help="texts waiting for the model before requests get 503 and Retry-After")
    p.add_argument("--read-timeout-s", type=float, default=30.0,
                   help="a request body that takes longer to arrive gets 408")
    p.add_argument("--api-key", help="require this key on every route but /health (default: "
                   "the FINCOMPRESS_API_KEY environment variable; none: open)")
    p.add_argument("--threads", type=positive_int)
    p.add_argument("--log-level", default="warning", help="uvicorn's own log level")
    p.add_argument("--no-access-log", action="store_true",
                   help="do not log each request (method, path, status, ms, texts)")
    p.set_defaults(run=serve)

    p = add("demo", help="the web demo: teacher and student side by side")
    p.add_argument("--teacher", required=True)
    p.add_argument("--student", required=True)
    p.add_argument("--benchmark", help="a benchmark run folder (its benchmark.json)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port, default=7860)
    p.set_defaults(run=demo)
    return main


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        args.run(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
