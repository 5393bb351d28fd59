"""A trial's learning curve as a small PNG, drawn by the trial's own worker when it publishes
(stored beside its result, logged to its MLflow run by the driver): the driver never renders a
figure per trial (~40 ms of CPU each, a ceiling on trials per second at 10^5 trials).

Drawn on a bare Agg Figure (no pyplot state) with fixed margins: matplotlib's constrained
layout drew each figure twice to place its labels, half of a publish's plotting time, and a
fused job (kd_core/fused.py) plots once per member (benchmarks/fused_job.py).

A worker keeps its figure (one per set of metrics a history holds) and redraws only the lines'
data, the limits and the title: building the axes, ticks and legend was half of a curve's
CPU (0.05 of 0.1 s, digits' 20 epochs), paid by each of a fused job's members in turn at its
end. The PNG is the same, pixel for pixel, as a fresh figure's (tests/test_curve.py)."""

from __future__ import annotations

import io
import threading

ACCURACY = (("train_acc", "train (labels trained on)", "-"), ("test_acc", "test", "-"),
            ("val_acc", "validation", "--"))
LOSS = (("train_loss", "train", "-"), ("test_loss", "test", "-"), ("val_loss", "validation", "--"))


# (the metrics a history holds) -> (figure, its two axes, its line per metric, its title)
_figures: dict[tuple[str, ...], tuple] = {}
_drawing = threading.Lock()  # a figure is drawn by one thread at a time


def _figure(present: tuple[str, ...]) -> tuple:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if (held := _figures.get(present)) is not None:
        return held
    fig = Figure(figsize=(7.5, 2.8))
    FigureCanvasAgg(fig)  # files only
    axes = fig.subplots(1, 2)
    # fixed margins, fitted to the labels at this size (constrained layout draws twice)
    fig.subplots_adjust(left=0.08, right=0.985, bottom=0.16, top=0.87, wspace=0.25)
    lines = {}
    for ax, metrics, what in ((axes[0], ACCURACY, "accuracy %"), (axes[1], LOSS, "loss")):
        for name, label, style in metrics:
            if name in present:
                (lines[name],) = ax.plot([], [], style, label=label, lw=1.2)
        ax.set(xlabel="epoch", ylabel=what)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7, frameon=False)
    _figures[present] = held = fig, axes, lines, fig.suptitle("", fontsize=9)
    return held


def learning_curve_png(history: list[dict], title: str) -> bytes:
    """Accuracy and loss per epoch (the metrics the history holds), as PNG bytes."""
    present = tuple(name for name, _, _ in ACCURACY + LOSS
                    if any(h.get(name) is not None for h in history))
    out = io.BytesIO()
    with _drawing:
        fig, axes, lines, suptitle = _figure(present)
        for name, line in lines.items():
            x, y = zip(*((h["epoch"], h[name]) for h in history if h.get(name) is not None),
                       strict=True)
            scale = 100 if name.endswith("_acc") else 1
            line.set_data(x, [v * scale for v in y])
        for ax in axes:
            ax.relim()
            ax.autoscale_view()
        suptitle.set_text(title)
        fig.savefig(out, format="png", dpi=80)
    return out.getvalue()
