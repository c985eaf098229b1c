"""
How the benchmarks draw their PNG plots: matplotlib without a display (the
Agg backend), one figure per file, the same size and resolution for every plot.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

SIZE = (8.0, 5.0)
"""Inches; with DPI, 1200 x 750 pixels."""
DPI = 150


@contextmanager
def figure(path: Path, title: str) -> Iterator[Any]:
    """
    A matplotlib ``Axes`` to draw on; saved to ``path`` (its folder made if
    needed) and closed when the ``with`` block ends without an error.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display: a PNG file only
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(figsize=SIZE, layout="constrained")
    try:
        axes.set_title(title)
        axes.grid(True, which="both", alpha=0.3)
        yield axes
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)


DASHBOARD: dict[Any, str] = {  # Any: matplotlib types rc keys as a Literal of every key
    "figure.facecolor": "#181b1f",
    "axes.facecolor": "#111217",
    "axes.edgecolor": "#2c3235",
    "axes.labelcolor": "#ccccdc",
    "axes.titlecolor": "#ccccdc",
    "axes.titlelocation": "left",
    "axes.titlesize": "medium",
    "text.color": "#ccccdc",
    "xtick.color": "#8e8e9a",
    "ytick.color": "#8e8e9a",
    "grid.color": "#2c3235",
    "legend.facecolor": "#181b1f",
    "legend.edgecolor": "#2c3235",
    "legend.fontsize": "small",
}
"""A dark theme in the manner of Grafana's panels (the colours of its default theme)."""
DASHBOARD_DPI = 100
"""With :func:`dashboard`'s 16 x 8 inches, 1600 x 800 pixels."""


@contextmanager
def dashboard(path: Path, title: str, rows: int, columns: int) -> Iterator[Any]:
    """
    Like :func:`figure`, a grid of ``rows`` x ``columns`` panels (an array of
    ``Axes``) in :data:`DASHBOARD`'s theme, twice :data:`SIZE`'s width.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context(DASHBOARD):
        fig, panels = plt.subplots(
            rows,
            columns,
            figsize=(SIZE[0] * 2, SIZE[1] * 1.6),
            layout="constrained",
            squeeze=False,
        )
        try:
            fig.suptitle(title, x=0.01, ha="left")
            for panel in panels.flat:
                panel.grid(True, alpha=0.6)
            yield panels
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=DASHBOARD_DPI)
        finally:
            plt.close(fig)


def log_scale(axes: Any, which: Literal["x", "y"], ticks: Sequence[float] = ()) -> None:
    """
    A log scale on the ``which`` axis of ``axes``, labelled with plain numbers:
    at ``ticks``, or at 1, 2 and 5 times each power of ten.
    """
    from matplotlib.ticker import FixedLocator, LogLocator, NullLocator, ScalarFormatter

    (axes.set_xscale if which == "x" else axes.set_yscale)("log")
    axis = axes.xaxis if which == "x" else axes.yaxis
    axis.set_major_locator(FixedLocator(ticks) if ticks else LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ScalarFormatter())
    axis.set_minor_locator(NullLocator())
