"""Detection run reports: loss and COCO AP against epochs."""
from __future__ import annotations

import os

from ..plotting import pyplot, save_figure


def plot_detection_curves(history: list[dict], path: str | os.PathLike) -> None:
    """Training losses (total and per part) and validation AP (box, and mask when present) per epoch."""
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_ap) = pyplot().subplots(1, 2, figsize=(10, 3.6))
    parts = [key for key in history[0] if key.startswith("loss")]
    for key in parts:
        ax_loss.plot(epochs, [row[key] for row in history], "o-", label=key, linewidth=2 if key == "loss" else 1)
    ax_loss.set(title="training loss", xlabel="epoch")
    ax_loss.legend(fontsize=7)
    for key in ("bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50"):
        if key in history[0]:
            ax_ap.plot(epochs, [row[key] for row in history], "o-", label=key)
    ax_ap.set(title="validation AP (%)", xlabel="epoch")
    ax_ap.legend(fontsize=7)
    for ax in (ax_loss, ax_ap):
        ax.grid(alpha=0.3)
    save_figure(fig, path)
