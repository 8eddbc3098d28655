"""Figure plumbing shared by the report's plots: pyplot-free matplotlib, PNG saving, trial colours.

Figures are ``matplotlib.figure.Figure`` objects rendered by the Agg canvas:
no pyplot, so no global backend or figure registry is touched inside a sweep
driver, and nothing needs closing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .labels import slug

DPI = 110


@dataclass
class Plot:
    path: Path
    title: str
    section: str


def new_figure(n_axes: int = 1, ncols: int = 2, width: float = 6.0, height: float = 4.2):
    """A figure with ``n_axes`` subplots in rows of ``ncols``; returns (figure, flat list of axes)."""
    ncols = max(1, min(ncols, n_axes))
    nrows = -(-n_axes // ncols)
    fig = Figure(figsize=(width * ncols, height * nrows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n_axes:]:
        ax.set_visible(False)
    return fig, axes[:n_axes]


def save(fig: Figure, out_dir: Path, name: str, title: str, section: str) -> Plot:
    path = Path(out_dir) / f"{slug(name)}.png"
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return Plot(path, title, section)


def interval_bars(ax, x, low, high, color="black", label: str | None = "95 % interval", width: float = 6) -> bool:
    """Vertical 95 % interval bars (with caps) at ``x`` from ``low`` to ``high`` where both ends are finite; drawn
    from the ends themselves, not as ± around a point (a bootstrap interval need not contain its estimate).
    Whether any bar was drawn."""
    x, low, high = (np.asarray(v, dtype=float) for v in (x, low, high))
    known = np.isfinite(low) & np.isfinite(high) & np.isfinite(x)
    if not known.any():
        return False
    ax.vlines(x[known], low[known], high[known], color=color, lw=1.2, alpha=0.8, zorder=2, label=label)
    for end in (low, high):
        ax.plot(x[known], end[known], ls="none", marker="_", ms=width, color=color, alpha=0.8, zorder=2)
    return True


def trial_colors(n: int) -> list:
    """Distinct colours for ``n`` trials (tab10, tab20, then a continuous map)."""
    from matplotlib import colormaps

    if n <= 10:
        cmap = colormaps["tab10"]
        return [cmap(i) for i in range(n)]
    if n <= 20:
        cmap = colormaps["tab20"]
        return [cmap(i) for i in range(n)]
    cmap = colormaps["viridis"]
    return [cmap(i / max(1, n - 1)) for i in range(n)]
