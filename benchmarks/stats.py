"""Summary statistics and the printed table, shared by failover.py and coldstart.py.

Percentiles are nearest-rank: the p-th percentile of n sorted samples is the
ceil(p/100 * n)-th smallest, always one of the measured values (no
interpolation). So the median of an even count is the lower middle value,
and with fewer than 100 samples p99 is the maximum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

# The statistics printed and written, in order: (name, percentile).
POINTS: tuple[tuple[str, float], ...] = (
    ("min", 0.0),
    ("median", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("max", 100.0),
)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The nearest-rank C{p}-th percentile of already sorted values."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(values_ms: Sequence[float], unit_ms: float | None = None) -> dict[str, Any]:
    """min, median, p90, p99 and max of C{values_ms}, also as multiples of C{unit_ms}.

    C{unit_ms} is the minimum election timeout: a crash cannot be noticed
    sooner than that, so the ratio says how close to the floor a failover is.
    """
    ordered = sorted(values_ms)
    summary: dict[str, Any] = {"count": len(ordered)}
    if not ordered:
        return summary
    summary["ms"] = {name: round(percentile(ordered, p), 3) for name, p in POINTS}
    if unit_ms:
        summary["ratio"] = {name: round(percentile(ordered, p) / unit_ms, 4) for name, p in POINTS}
    return summary


def format_table(
    rows: Sequence[Sequence[object]], left: int = 1, groups: Sequence[tuple[int, str]] = ()
) -> str:
    """Columns padded to their widest cell: the first C{left} to the left (labels),
    the others to the right (numbers). C{groups} (first column, title) put a
    title above runs of columns, such as the same statistics in other units."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = []
    if groups:
        starts = [sum(widths[:i]) + 2 * i for i in range(len(widths))] + [
            sum(widths) + 2 * len(widths)
        ]
        bounds = [start for start, _ in groups[1:]] + [len(widths)]
        line = ""
        for (first, title), end in zip(groups, bounds, strict=True):
            span = starts[end] - 2 - starts[first]
            line = line.ljust(starts[first]) + f" {title} ".center(span, "-")
        lines.append(line.rstrip())
    for row in rows:
        cells = [
            str(cell).ljust(width) if i < left else str(cell).rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def ms_cells(summary: dict[str, Any]) -> list[object]:
    """A summary's milliseconds as table cells ("-" when nothing was measured)."""
    ms = summary.get("ms")
    return [f"{ms[name]:.0f}" if ms else "-" for name, _ in POINTS]


def ratio_cells(summary: dict[str, Any]) -> list[object]:
    ratio = summary.get("ratio")
    return [f"{ratio[name]:.2f}" if ratio else "-" for name, _ in POINTS]


def names() -> list[str]:
    return [name for name, _ in POINTS]
