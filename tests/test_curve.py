"""A trial's learning curve (sweeps/ray/curve.py): a worker reuses its figure from one curve to
the next (a fused job's members in turn); each PNG is the one a fresh figure draws."""

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


def test_a_reused_figure_draws_what_a_fresh_one_draws():
    histories = [(_history(20), "kl tau=4"), (_history(1), "one epoch"),
                 (_history(7, val=True), "with validation"),
                 (_history(12, skip_test=True), "test every other epoch"),
                 ([{"epoch": 1, "train_acc": math.nan, "train_loss": math.inf}], "diverged")]
    fresh = []
    for history, title in histories:
        curve._figures.clear()
        fresh.append(_pixels(curve.learning_curve_png(history, title)))
    curve._figures.clear()
    for _ in range(2):  # each after the others, on the figures they left
        for (history, title), want in zip(histories, fresh, strict=True):
            got = _pixels(curve.learning_curve_png(history, title))
            assert got.shape == want.shape and (got == want).all(), title
    assert len(curve._figures) == 3  # one per set of metrics held: the figures are reused
    # titles and data differ, so do the pictures (the comparison above can fail)
    assert not (fresh[0] == fresh[3]).all()
