"""The report's figures keep the rules their captions state, on a grid near the top of the scale
(where an unclipped band leaves [0, 100]): at most two bands per panel, each within [0, 100];
and the per-image views (per-class table, McNemar) from stored predictions, by hand."""

import io
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from matplotlib.collections import PolyCollection
from scipy import stats

from sweeps.report import draw
from sweeps.report.fidelity import calibration_table, paired_tests, per_class
from sweeps.report.figures import BANDS
from sweeps.report.load import load
from sweeps.store.results import SCHEMA

SETTINGS = [("kl", 0.5, 1.0), ("kl", 4.0, 1.0), ("kl", math.inf, 1.0), ("kl", 4.0, 0.9),
            ("mse", None, 1.0)]


def grid_rows():
    """Chain A>B at noise 0 and 0.4, three seeds, five settings; accuracies near 100% with a
    wide spread over seeds."""
    out = []
    for noise in (0.0, 0.4):
        for seed in range(3):
            spread = (seed - 1) * 0.015
            base = {"sweep": "s", "cluster": "c", "dataset": "digits", "noise_kind": "symmetric",
                    "noise_rate": noise, "seed": seed, "state": "done"}
            teacher = f"A-{noise}-{seed}"
            out.append(base | {"key": teacher, "generation": 0, "chain": "A", "model": "A",
                               "loss": "ce", "test_acc": 0.99 - noise / 10 + spread / 3,
                               "test_ece": 0.02})
            out.append(base | {"key": f"B-{noise}-{seed}", "generation": 0, "chain": "B",
                               "model": "B", "loss": "ce", "test_acc": 0.97 + spread / 3,
                               "test_ece": 0.03})
            for i, (loss, tau, alpha) in enumerate(SETTINGS):
                out.append(base | {
                    "key": f"AB-{loss}{tau}{alpha}-{noise}-{seed}", "generation": 1,
                    "chain": "A>B", "model": "B", "teacher_key": teacher, "loss": loss,
                    "tau": tau, "alpha": alpha, "test_acc": 0.985 - noise / 10 + spread,
                    "train_acc": 0.99, "test_ece": 0.02 + 0.05 * (i == 0),
                    "test_agreement": 0.98 + spread / 2,
                    "train_logit_distance_median": 1.0 + i + seed / 10})
    return out


@pytest.fixture(scope="module")
def df(tmp_path_factory):
    path = tmp_path_factory.mktemp("grid") / "results.parquet"
    pq.write_table(pa.Table.from_pylist(grid_rows(), schema=SCHEMA), path)
    return load([str(path)])[0]


def test_every_panel_draws_at_most_two_bands_within_the_scale(df, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    seen = {}
    real_savefig = plt.Figure.savefig

    def inspect(fig, path, **kw):
        name = str(path).rsplit("/", 1)[-1]
        for ax in fig.axes:
            bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
            assert len(bands) <= BANDS, (name, ax.get_title(), len(bands))
            for band in bands:
                for poly in band.get_paths():
                    ys = poly.vertices[:, 1]
                    assert ys.min() >= 0 and ys.max() <= 100, (name, ax.get_title(), ys.max())
            seen[name] = seen.get(name, 0) + len(bands)
        return real_savefig(fig, path, **kw)

    monkeypatch.setattr(plt.Figure, "savefig", inspect)
    made = draw(df, tmp_path, {})
    names = {p.name for p, _ in made}
    assert {"accuracy_vs_generation.png", "accuracy_vs_tau.png", "accuracy_vs_noise.png",
            "calibration_and_agreement.png", "alpha_tau_maps.png"} <= names
    # bands are drawn (three seeds each), and the ones near 100% were clipped, not dropped
    assert seen["accuracy_vs_generation.png"] > 0 and seen["accuracy_vs_tau.png"] > 0
    captions = dict((p.name, c) for p, c in made)
    assert "bands only for kl tau=inf and mse" in captions["accuracy_vs_generation.png"]
    assert "0.1 CE + 0.9 tau^2 KL" in captions["accuracy_vs_tau.png"]


def test_calibration_table_carries_its_numbers(df):
    [section] = calibration_table(df, 100 / 450, 1)
    assert section.numbers is not None and len(section.numbers) == len(section.table) * 2
    row = [k for k in section.numbers.index if "kl tau=0.5" in k[0] and k[1] == "ECE %"][0]
    assert section.numbers.loc[[row], "estimate"].iloc[0] == pytest.approx(7.0)


def test_per_class_and_mcnemar_from_stored_predictions(df):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 45).astype(np.int16)
    preds = {}
    students = df[(df.generation == 1) | (df.model == "B") | (df.model == "A")]
    for r in students.itertuples():
        pred = labels.copy()
        wrong = rng.choice(len(labels), 10 + 5 * (r.generation == 0), replace=False)
        pred[wrong] = (pred[wrong] + 1) % 10
        p = {"label": labels, "pred": pred, "confidence": np.full(len(labels), 0.9, np.float16),
             "p_true": np.full(len(labels), 0.9, np.float16)}
        if r.generation:
            p["teacher_pred"] = labels
        preds[r.key] = p
    [section] = paired_tests(df, preds, 1)
    assert len(section.table) == 5 * 2 * 3  # settings x noise rates x seeds
    # one test by hand: a student against B alone, same seed and noise rate
    key = "AB-kl4.01.0-0.0-1"
    a, b = preds[key], preds["B-0.0-1"]
    ra, rb = a["pred"] == labels, b["pred"] == labels
    only_a, only_b = int((ra & ~rb).sum()), int((~ra & rb).sum())
    p = stats.binomtest(only_a, only_a + only_b, 0.5).pvalue
    row = section.table.loc["noise 0 | kl tau=4 | seed 1"]
    assert (row["only the student right"], row["only alone right"]) == (only_a, only_b)
    assert f"p={p:.3f}" in row["McNemar"] or (p < 0.001 and "p=<0.001" in row["McNemar"])
    tables = per_class(df, preds, 1, str)
    accuracy = [t for t in tables if "accuracy % per test class" in t.title]
    agreement = [t for t in tables if "agreement with the teacher" in t.title]
    assert len(accuracy) == 2 and len(agreement) == 2  # per noise rate
    assert "alone (ce)" in accuracy[0].table.columns and "alone (ce)" not in agreement[0].table
    # class 0 of B alone at noise 0: each seed's share right, meaned
    shares = [float((preds[f"B-0.0-{s}"]["pred"] == labels)[labels == 0].mean()) for s in range(3)]
    got = accuracy[0].numbers.loc[[("0", "alone (ce)")], "estimate"].iloc[0]
    assert got == pytest.approx(np.mean(shares) * 100)


def test_a_predictions_file_that_does_not_read_is_flagged_not_fatal(tmp_path, caplog):
    from sweeps.store.ledger import Ledger, TrialFile, predictions_bytes, trial_file
    from sweeps.store.storage import Storage

    ledger = Ledger(Storage(str(tmp_path)), repair=False)
    assert ledger.predictions("nokey") is None  # a trial from before: none stored
    ledger.storage.write_bytes(trial_file("k", TrialFile.PREDICTIONS), b"not a zip")
    assert ledger.predictions("k") is None
    assert "not a predictions file" in caplog.text
    arrays = {"label": np.arange(3, dtype=np.int16), "pred": np.arange(3, dtype=np.int16)}
    ledger.storage.write_bytes(trial_file("j", TrialFile.PREDICTIONS), predictions_bytes(arrays))
    assert ledger.predictions("j")["pred"].tolist() == [0, 1, 2]
    # one byte changed inside the archive: its seal says so, whether or not the zip would
    data = bytearray(ledger.storage.read_bytes(trial_file("j", TrialFile.PREDICTIONS)))
    data[len(data) // 3] ^= 0x01
    ledger.storage.write_bytes(trial_file("b", TrialFile.PREDICTIONS), bytes(data))
    caplog.clear()
    assert ledger.predictions("b") is None
    assert "fails its SHA-256" in caplog.text and "trials/b/predictions.npz" in caplog.text
    # a file from before seals reads, proven by its zip's CRC-32s
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    ledger.storage.write_bytes(trial_file("old", TrialFile.PREDICTIONS), buf.getvalue())
    assert ledger.predictions("old")["label"].tolist() == [0, 1, 2]
