"""The web demo behind ``fincompress demo --teacher MODEL --student MODEL [--benchmark DIR]``:
type a financial sentence and see the teacher's and the student's predictions side by side,
with class probabilities and each model's latency for this request; below, a benchmark run's
results (``benchmark.json``) as a compact table (model, precision, MiB, sentences/s, speed-up,
macro-F1, agreement), a one-line speed-up summary per model and an interactive chart of
macro-F1 against throughput with the Pareto front marked. A second tab labels an uploaded CSV
or text file with the student, keeping the file's columns, and offers the result for download.

The same function answers the page and the HTTP API (``/gradio_api/call/compare``, or
``gradio_client.Client(url).predict(text, api_name="/compare")``).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

import fincompress
from fincompress.tables import f1_axis, pareto_front

EXAMPLES = ["Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding period.",
            "The company's net sales fell 12 % year-on-year as demand weakened.",
            "The annual general meeting will be held in Helsinki on 5 April."]


def compare(models: dict, text: str) -> tuple:
    """Per model: its probabilities (None for an empty text) and a status line with the label,
    latency and any warning."""
    outputs = []
    for name, model in models.items():
        clock = time.perf_counter()
        answer = model.predict([text or ""])[0]
        ms = 1000 * (time.perf_counter() - clock)
        if answer["label"] is None:
            outputs += [None, f"**{name}**: {answer['warning']}"]
            continue
        note = " (text cut to the first 128 tokens)" if answer["truncated"] else ""
        if answer.get("warning"):
            note += f"; {answer['warning']}"
        outputs += [answer["probabilities"],
                    f"**{name}**: {answer['label']} in {ms:.1f} ms "
                    f"({model.engine}, {model.precision}){note}"]
    return tuple(outputs)


def build_demo(teacher: str, student: str, benchmark: str | None = None):
    import gradio as gr
    import pandas as pd

    models = {"teacher": fincompress.load(teacher), "student": fincompress.load(student)}
    rows = benchmark_rows(benchmark)
    with gr.Blocks(title="fincompress: teacher vs student") as demo:
        gr.Markdown("# fincompress: teacher vs compressed student\n"
                    f"Teacher `{models['teacher'].folder}` against student "
                    f"`{models['student'].folder}`, on this CPU.")
        with gr.Tab("Compare", elem_id="compare_tab"):
            text = gr.Textbox(label="A financial sentence", lines=2, value=EXAMPLES[0],
                              elem_id="text")
            button = gr.Button("Compare", variant="primary", elem_id="compare")
            outputs = []
            with gr.Row():
                for name in models:
                    with gr.Column():
                        outputs.append(gr.Label(label=f"{name} probabilities",
                                                elem_id=f"{name}_label"))
                        outputs.append(gr.Markdown(elem_id=f"{name}_status"))
            gr.Examples(EXAMPLES, inputs=text)
            if rows:
                gr.Markdown(f"## Benchmark on {rows[0].get('machine', 'this CPU')}\n"
                            + "\n".join(f"- {line}" for line in summary_lines(rows)),
                            elem_id="summary")
                gr.Dataframe(pd.DataFrame(compact_table(rows)), elem_id="benchmark_table",
                             interactive=False, wrap=False)
                gr.ScatterPlot(pd.DataFrame(chart_points(rows)), x="log10 sentences/s",
                               y="macro-F1", color="Pareto front", tooltip="all",
                               title="macro-F1 against throughput (batch 32)",
                               x_title="sentences/s at batch 32, log10 (2 = 100, 3 = 1,000, "
                                       "4 = 10,000)",
                               y_lim=list(f1_axis(rows)),
                               elem_id="benchmark_chart")
            else:
                gr.Markdown("No benchmark run given (fincompress demo --benchmark DIR, or "
                            "fincompress bench MODEL ...)")
        with gr.Tab("Label a file", elem_id="upload_tab"):
            gr.Markdown("Upload a `.csv` (a `text` or `sentence` column) or `.txt` (a text per "
                        "line): the student labels every text; the file's columns are kept.")
            upload = gr.File(label="texts", file_types=[".csv", ".txt", ".jsonl"],
                             elem_id="upload")
            label_button = gr.Button("Label", variant="primary", elem_id="label_file")
            preview = gr.Dataframe(label="first rows", elem_id="labelled_preview",
                                   interactive=False, wrap=True)
            labelled = gr.File(label="labelled file", elem_id="labelled_file")
            label_button.click(lambda f: label_file(models["student"], f), inputs=upload,
                               outputs=[preview, labelled], api_name="label_file")
        button.click(lambda t: compare(models, t), inputs=text, outputs=outputs,
                     api_name="compare")
        text.submit(lambda t: compare(models, t), inputs=text, outputs=outputs)
    return demo


def label_file(model, path: str | None):
    """The first rows of the labelled file, and the file (CSV) to download."""
    import gradio as gr
    import pandas as pd

    from fincompress.cli import output_rows, read_records, write_answers
    from fincompress.errors import InputError

    if not path:
        raise gr.Error("upload a .csv, .txt or .jsonl file first")
    try:
        texts, rows, column = read_records(Path(path))
    except InputError as error:
        raise gr.Error(str(error)) from None
    if not texts:
        raise gr.Error("the file holds no texts")
    records = output_rows(texts, model.predict(texts), rows, column, None)
    out = Path(tempfile.mkdtemp(prefix="fincompress-demo-")) / f"{Path(path).stem}_labelled.csv"
    write_answers(out, records, model.labels)
    return pd.read_csv(out, nrows=20, dtype=str, keep_default_na=False), str(out)


def benchmark_rows(folder: str | None) -> list[dict]:
    """The models of a benchmark run folder's ``benchmark.json`` (the first is the reference),
    each with the machine's name."""
    if folder is None:
        return []
    path = Path(folder) / "benchmark.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a benchmark run: it has no benchmark.json")
    data = json.loads(path.read_text())
    machine = (data.get("machine") or {}).get("cpu", "this CPU")
    return [{**row, "machine": machine} for row in data["models"]]


def compact_table(rows: list[dict]) -> list[dict]:
    """The table's cells as text, each column with one number format."""
    return [{"model": r["model"], "precision": r["precision"],
             "MiB": f"{r['size_bytes'] / 2**20:,.1f}",
             "sentences/s": f"{r['throughput_sorted']:,.0f}",
             "speed-up": f"{r['throughput_sorted'] / rows[0]['throughput_sorted']:.1f}x",
             "macro-F1": f"{r['f1_macro']:.4f}",
             "agreement": f"{r.get('agreement_with_teacher', 1.0):.3f}"} for r in rows]


def summary_lines(rows: list[dict]) -> list[str]:
    """One line per model against the first: "23.0x faster, 0.4 points lower"."""
    reference = rows[0]
    lines = []
    for row in rows[1:]:
        speed = row["throughput_sorted"] / reference["throughput_sorted"]
        points = 100 * (row["f1_macro"] - reference["f1_macro"])
        change = ("the same macro-F1" if abs(points) < 0.05 else
                  f"{abs(points):.1f} points {'higher' if points > 0 else 'lower'} macro-F1")
        pace = f"{speed:.1f}x faster" if speed >= 1 else f"{1 / speed:.1f}x slower"
        lines.append(f"**{row['model']}**: {pace} than {reference['model']}, {change}")
    return lines


def chart_points(rows: list[dict]) -> list[dict]:
    """Chart rows: log10 throughput, macro-F1, and whether no other model is both faster and
    more accurate (the Pareto front)."""
    return [{"model": r["model"], "log10 sentences/s": round(math.log10(r["throughput_sorted"]), 3),
             "macro-F1": r["f1_macro"], "sentences/s": round(r["throughput_sorted"]),
             "Pareto front": "on the front" if front else "dominated"}
            for r, front in zip(rows, pareto_front(rows))]
