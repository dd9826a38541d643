"""The web demo behind ``fincompress demo --teacher MODEL --student MODEL [--benchmark DIR]``:
type a financial sentence and see the teacher's and the student's predictions side by side,
with class probabilities and each model's latency for this request, above the benchmark table
and Pareto plot of a benchmark run (``benchmark.md``, ``pareto.png``).

The same function answers the page and the HTTP API (``/gradio_api/call/compare``, or
``gradio_client.Client(url).predict(text, api_name="/compare")``).
"""

from __future__ import annotations

import time
from pathlib import Path

import fincompress

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

    models = {"teacher": fincompress.load(teacher), "student": fincompress.load(student)}
    table, plot = benchmark_files(benchmark)
    with gr.Blocks(title="fincompress: teacher vs student") as demo:
        gr.Markdown("# fincompress: teacher vs compressed student\n"
                    f"Teacher `{models['teacher'].folder}` against student "
                    f"`{models['student'].folder}`, on this CPU.")
        text = gr.Textbox(label="A financial sentence", lines=2, value=EXAMPLES[0],
                          elem_id="text")
        button = gr.Button("Compare", variant="primary", elem_id="compare")
        outputs = []
        with gr.Row():
            for name in models:
                with gr.Column():
                    outputs.append(gr.Label(label=f"{name} probabilities", elem_id=f"{name}_label"))
                    outputs.append(gr.Markdown(elem_id=f"{name}_status"))
        gr.Examples(EXAMPLES, inputs=text)
        gr.Markdown("## Latest benchmark on this CPU\n" + (table or "no benchmark run given "
                    "(fincompress demo --benchmark DIR, or fincompress bench MODEL ...)"))
        if plot:
            gr.Image(str(plot), label="accuracy against throughput", show_label=True)
        button.click(lambda t: compare(models, t), inputs=text, outputs=outputs,
                     api_name="compare")
        text.submit(lambda t: compare(models, t), inputs=text, outputs=outputs)
    return demo


def benchmark_files(folder: str | None) -> tuple[str | None, Path | None]:
    """``benchmark.md`` and ``pareto.png`` of a benchmark run folder."""
    if folder is None:
        return None, None
    path = Path(folder)
    if not (path / "benchmark.md").is_file():
        raise FileNotFoundError(f"{path} is not a benchmark run: it has no benchmark.md")
    plot = path / "pareto.png"
    return (path / "benchmark.md").read_text(), plot if plot.is_file() else None
