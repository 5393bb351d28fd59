"""The Parquet export's rows at real history lengths: each stored result's ~30 scalars read off
the record as it is (results.row) against the deep copy of the record it made before
(``dataclasses.asdict``: every epoch's dict of its history copied to read the scalars).

    PYTHONPATH=. .venv/bin/python benchmarks/export_rows.py --seeds 100 --epochs 200 --rounds 3

Bound: the deep copy does the field read and a copy besides, so deep copy / fields >= 1. The
field read still grows a little with the history: the test_acc_curve column is one value per
epoch.
"""

from __future__ import annotations

import argparse
import dataclasses
from unittest import mock

from benchmarks.harness import bound, fmt, interleaved, paired, timed
from sweeps.domain.plan import build_plan
from sweeps.domain.record import TrialResult
from sweeps.domain.spec import parse_spec
from sweeps.store import results


def fabricated(seeds: int, epochs: int):
    spec = parse_spec({
        "name": "rows", "dataset": {"name": "digits"}, "chains": [["cnn-small", "cnn-small"]],
        "train": {"epochs": epochs}, "storage": "/nonexistent",
        "grid": {"loss": ["kl", "mse"], "tau": [1, 4, 20], "seeds": list(range(seeds)),
                 "baselines": False},
    })
    plan = build_plan(spec)
    history = [{"epoch": e, "train_loss": 1.0, "train_acc": 0.5, "test_acc": 0.5,
                "test_loss": 1.0, "test_ece": 0.1, "epoch_time": 0.1, "lr": 0.1,
                "train_acc_clean": 0.5, "val_acc": 0.5} for e in range(1, epochs + 1)]
    records = [TrialResult.from_history(t.to_dict(), history, cluster="c", sweep="rows")
               for t in plan.trials]
    return plan, records


def build(plan, records) -> None:
    for t, r in zip(plan.trials, records, strict=True):
        results.row(plan, t, "done", r, None)


def deep_copied(plan, records) -> None:
    """The rows as the export built them before: each record deep-copied first."""
    fields = results.RECORD_FIELDS
    for t, r in zip(plan.trials, records, strict=True):
        d = dataclasses.asdict(r)
        with mock.patch.object(results, "RECORD_FIELDS", fields & d.keys()):
            results.row(plan, t, "done", r, None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    plan, records = fabricated(a.seeds, a.epochs)
    short_plan, short = fabricated(a.seeds, 2)
    n = len(records)
    runs = interleaved({
        "fields": lambda: timed(lambda: build(plan, records)) / n * 1e6,
        "deep copy": lambda: timed(lambda: deep_copied(plan, records)) / n * 1e6,
        "fields, 2 epochs": lambda: timed(lambda: build(short_plan, short)) / n * 1e6,
    }, a.rounds)
    print(f"{n} trials, {a.epochs}-epoch histories; us per trial, min / median (n rounds)")
    for name, values in runs.items():
        print(f"  {name:18s} {fmt(values, 1)}")
    print(f"  deep copy / fields {fmt(paired(runs['deep copy'], runs['fields']), 1)}")
    growth = paired(runs["fields"], runs["fields, 2 epochs"])
    print(f"  fields {a.epochs} / 2 epochs {fmt(growth, 2)}")
    if line := bound("deep copy / fields", paired(runs["deep copy"], runs["fields"]), 1.0,
                     above=False):
        print(line)


if __name__ == "__main__":
    main()
