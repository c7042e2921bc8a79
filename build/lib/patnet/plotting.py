"""Matplotlib without a screen, and figures written atomically: every plot the project draws goes through here."""
from __future__ import annotations

import os

from .fileio import atomic_path


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (imported on first use: it is slow to load)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> None:
    """Lay out ``fig``, write it to ``path`` (PNG) atomically and close it."""
    fig.tight_layout()
    with atomic_path(path) as temporary:
        fig.savefig(temporary, dpi=dpi)
    pyplot().close(fig)
