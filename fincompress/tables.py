"""The one writer of markdown tables: every comparison the project prints or saves goes
through :func:`markdown_table`, so numbers in different tables read alike; and the one reading
of a benchmark's rows as an accuracy-throughput chart (its Pareto front and F1 axis), shared by
the benchmark's plot and the demo. Light to import: the demo runs without the training stack."""

from __future__ import annotations


def cell(value, spec: str | None = None) -> str:
    """A value as a table cell: ``spec`` (a format spec) when given; else None as blank, floats
    with 4 decimals below 10 and thousands separators above, ints with separators."""
    if value is None or value == "":
        return ""
    if spec is not None and isinstance(value, int | float):
        return format(value, spec)
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown_table(rows: list[dict], columns: list) -> str:
    """A GitHub markdown table of ``rows``; ``columns`` lists ``key``, ``(key, title)`` or
    ``(key, title, format spec)``."""
    from tabulate import tabulate

    columns = [(c, c, None) if isinstance(c, str) else (*c, None)[:3] for c in columns]
    cells = [[cell(row.get(key), spec) for key, _, spec in columns] for row in rows]
    return tabulate(cells, headers=[title for _, title, _ in columns], tablefmt="github",
                    disable_numparse=True)


def pareto_front(rows: list[dict]) -> list[bool]:
    """For each row, whether no other row is at least as fast (``throughput_sorted``) and as
    accurate (``f1_macro``) and better in one of them: the accuracy-throughput Pareto front."""
    def point(row: dict) -> tuple[float, float]:
        return row["throughput_sorted"], row["f1_macro"]

    return [not any(point(o)[0] >= point(r)[0] and point(o)[1] >= point(r)[1] and point(o) != point(r)
                    for o in rows) for r in rows]


def f1_axis(rows: list[dict]) -> tuple[float, float]:
    """The macro-F1 axis of an accuracy chart: from 0.05 below the lowest row (not from the
    lowest row itself, which makes a 0.01 gap fill the plot) to 1.0."""
    return max(0.0, min(row["f1_macro"] for row in rows) - 0.05), 1.0
