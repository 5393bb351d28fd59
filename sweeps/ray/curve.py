"""A trial's learning curve as a small PNG, drawn by the trial's own worker when it publishes
(stored beside its result, logged to its MLflow run by the driver): the driver never renders a
figure per trial (~40 ms of CPU each, a ceiling on trials per second at 10^5 trials).

Drawn on a bare Agg Figure (no pyplot state) with fixed margins: matplotlib's constrained
layout drew each figure twice to place its labels, half of a publish's plotting time, and a
fused job (kd_core/fused.py) plots once per member (benchmarks/fused_job.py)."""

from __future__ import annotations

import io

ACCURACY = (("train_acc", "train (labels trained on)", "-"), ("test_acc", "test", "-"),
            ("val_acc", "validation", "--"))
LOSS = (("train_loss", "train", "-"), ("test_loss", "test", "-"), ("val_loss", "validation", "--"))


def learning_curve_png(history: list[dict], title: str) -> bytes:
    """Accuracy and loss per epoch (the metrics the history holds), as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 2.8))
    FigureCanvasAgg(fig)  # files only
    axes = fig.subplots(1, 2)
    # fixed margins, fitted to the labels at this size (constrained layout draws twice)
    fig.subplots_adjust(left=0.08, right=0.985, bottom=0.16, top=0.87, wspace=0.25)
    for ax, lines, what in ((axes[0], ACCURACY, "accuracy %"), (axes[1], LOSS, "loss")):
        for name, label, style in lines:
            points = [(h["epoch"], h[name]) for h in history if h.get(name) is not None]
            if points:
                x, y = zip(*points, strict=True)
                scale = 100 if name.endswith("_acc") else 1
                ax.plot(x, [v * scale for v in y], style, label=label, lw=1.2)
        ax.set(xlabel="epoch", ylabel=what)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=9)
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=80)
    return out.getvalue()
