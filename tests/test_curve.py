"""A trial's learning curve (sweeps/ray/curve.py): a worker reuses its figure from one curve to
the next (a fused job's members in turn); each PNG is, pixel for pixel, the one a new figure
with the data plotted directly draws."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from sweeps.ray import curve


def _history(epochs: int, val: bool = False, skip_test: bool = False) -> list[dict]:
    rows = []
    for e in range(1, epochs + 1):
        row = {"epoch": e, "train_acc": 0.3 + 0.05 * e, "train_loss": 2.0 / e}
        if not (skip_test and e % 2):
            row |= {"test_acc": 0.2 + 0.04 * e, "test_loss": 2.2 / e}
        if val:
            row |= {"val_acc": 0.25 + 0.03 * e, "val_loss": 2.1 / e}
        rows.append(row)
    return rows


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def _fresh(history: list[dict], title: str) -> bytes:
    """The curve drawn on a new figure, plotting the data directly (as curve.py did before
    it kept its figures): the reference."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 2.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    fig.subplots_adjust(left=0.08, right=0.985, bottom=0.16, top=0.87, wspace=0.25)
    for ax, lines, what in ((axes[0], curve.ACCURACY, "accuracy %"),
                            (axes[1], curve.LOSS, "loss")):
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


def test_a_reused_figure_draws_what_a_fresh_one_draws():
    histories = [(_history(20), "kl tau=4"), (_history(1), "one epoch"),
                 (_history(7, val=True), "with validation"),
                 (_history(12, skip_test=True), "test every other epoch"),
                 ([{"epoch": 1, "train_acc": math.nan, "train_loss": math.inf}], "diverged")]
    fresh = [_pixels(_fresh(history, title)) for history, title in histories]
    curve._figures.clear()
    # each after the others, on the figures they left (the 4th on the 1st's, the 1st after
    # the 5th on the 4th's)
    for (history, title), want in zip([*histories, histories[0]], [*fresh, fresh[0]],
                                      strict=True):
        got = _pixels(curve.learning_curve_png(history, title))
        assert got.shape == want.shape and (got == want).all(), title
    assert len(curve._figures) == 3  # one per set of metrics held: the figures are reused
    # titles and data differ, so do the pictures (the comparison above can fail)
    assert not (fresh[0] == fresh[3]).all()
