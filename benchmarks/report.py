"""Writing results: the JSON document and the PNG of the distributions.

matplotlib is optional: without it the PNG is skipped and the reason printed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Series colours (matplotlib's default cycle, named so that both scripts agree).
COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red")


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside and renamed, so that an interrupted run never leaves half a file.
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(document, indent=1) + "\n")
    partial.replace(path)


def save_json(out: Path, name: str, document: dict[str, Any]) -> Path:
    """Write C{name}.json in C{out}, say so, and return where the PNG beside it goes."""
    path = out / f"{name}.json"
    write_json(path, document)
    print(f"wrote {path}")
    return out / f"{name}.png"


def title(headline: str, timing: str, info: dict[str, Any], trials: int) -> str:
    return (
        f"{headline}\n{timing}; {info['cores']} cores, Python {info['python']}, "
        f"graft_tx {info['graft_tx']}; {trials} trials per case"
    )


def finish(png_path: Path, skipped: str | None, elapsed: float, interrupted: bool) -> int:
    """Say what became of the PNG and how long it all took; the exit status."""
    print(f"PNG skipped: {skipped}" if skipped else f"wrote {png_path}")
    print(f"{elapsed:.0f} s in all")
    return 130 if interrupted else 0


@dataclass
class Row:
    """One case in the figure: a label and one or more named series of ms."""

    label: str
    series: dict[str, list[float]]


def draw(
    path: Path,
    title: str,
    rows: Sequence[Row],
    marks: Sequence[tuple[float, str]] = (),
    unit: tuple[float, str] | None = None,
    from_zero: bool = False,
    xlabel: str = "milliseconds",
) -> str | None:
    """One horizontal box plot with every sample on it per row and series.

    C{marks} are vertical reference lines (ms, label), such as the election
    timeouts; C{unit} (ms, label) adds a second axis on top in that unit;
    C{from_zero} starts a linear axis at 0 ms.
    Returns None once written, or why the PNG was skipped.
    """
    try:
        import matplotlib

        # No display needed; also keeps a plot window from ever opening.
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        return f"matplotlib is not installed ({e}); pip install matplotlib for the PNG"
    values = [v for row in rows for series in row.series.values() for v in series]
    if not values:
        return "no measurements to draw"
    names: list[str] = []
    for row in rows:
        names += [name for name in row.series if name not in names]
    band = 0.8 / len(names)
    jitter = random.Random(0)  # the same picture for the same data
    fig, ax = plt.subplots(figsize=(10, 1.0 + 0.75 * len(rows) * max(1, len(names) * 0.7)))
    for i, row in enumerate(rows):
        y0 = len(rows) - 1 - i  # the first case on top
        for k, name in enumerate(names):
            data = row.series.get(name, [])
            if not data:
                continue
            y = y0 + (len(names) - 1 - k - (len(names) - 1) / 2) * band
            colour = COLOURS[k % len(COLOURS)]
            ax.boxplot(
                data,
                positions=[y],
                vert=False,
                widths=band * 0.8,
                whis=(0, 100),  # whiskers to min and max: no point hidden as an "outlier"
                showfliers=False,
                medianprops={"color": colour, "linewidth": 2},
                boxprops={"color": colour},
                whiskerprops={"color": colour},
                capprops={"color": colour},
                manage_ticks=False,
            )
            ys = [y + jitter.uniform(-band * 0.3, band * 0.3) for _ in data]
            ax.scatter(data, ys, s=9, alpha=0.5, color=colour, zorder=3)
    positive = [v for v in values if v > 0]
    # Hand-overs take milliseconds and crashes hundreds: a log axis shows both.
    if positive and max(positive) / min(positive) > 20:
        ax.set_xscale("log")
    elif from_zero:
        ax.set_xlim(left=0)
    for k, (ms, text) in enumerate(marks):
        ax.axvline(ms, color="grey", linestyle=("--", ":", "-.")[k % 3], linewidth=1, label=text)
    for k, name in enumerate(names):
        if len(names) > 1:
            ax.scatter([], [], color=COLOURS[k % len(COLOURS)], label=name)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([row.label for row in reversed(rows)])
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlabel(xlabel)
    if unit is not None:
        per = unit[0]

        def to_unit(ms: Any) -> Any:
            return ms / per

        def to_ms(value: Any) -> Any:
            return value * per

        top = ax.secondary_xaxis("top", functions=(to_unit, to_ms))
        top.set_xlabel(unit[1], fontsize=9)
    ax.grid(axis="x", which="both", alpha=0.3)
    ax.set_title(title, fontsize=10)
    if marks or len(names) > 1:
        # Outside the axes, where it can hide no sample.
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
