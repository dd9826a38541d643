"""The one writer of markdown tables: every comparison the project prints or saves goes
through :func:`markdown_table`, so numbers in different tables read alike."""

from __future__ import annotations

from tabulate import tabulate


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
    columns = [(c, c, None) if isinstance(c, str) else (*c, None)[:3] for c in columns]
    cells = [[cell(row.get(key), spec) for key, _, spec in columns] for row in rows]
    return tabulate(cells, headers=[title for _, title, _ in columns], tablefmt="github",
                    disable_numparse=True)
