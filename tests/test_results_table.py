"""The Parquet table is built a column at a time (results.results_table), the curves laid end
to end as numbers: it must be the table the rows make (results.row, pyarrow's from_pylist),
value for value, whatever a row holds: no result, a packed curve, a curve with epochs not
evaluated, a NaN, an empty curve, none, a plugin's params and code."""

import dataclasses
import json
import math

import pyarrow as pa

from sweeps.domain.plan import build_plan
from sweeps.domain.record import TrialResult
from sweeps.domain.spec import parse_spec
from sweeps.store.ledger import Ledger, TrialState
from sweeps.store.results import SCHEMA, TOKEN, results_table, row
from sweeps.store.snapshot import Snapshot
from sweeps.store.storage import Storage
from testkit.fabricate import fabricate


def test_the_columns_make_the_table_the_rows_make(tmp_path):
    spec = parse_spec({
        "name": "table", "dataset": {"name": "digits", "validation": 0.1},
        "chains": [["cnn-small", "cnn-small"]], "train": {"epochs": 3},
        "grid": {"loss": ["kl", "mse"], "tau": [1, 4], "seeds": [0, 1], "baselines": False},
        "search": {"type": "grid", "metric": "val_acc"},
        "storage": str(tmp_path / "store"),
    })
    trials = fabricate(spec)
    plan = build_plan(spec)
    snap = Snapshot.load(Ledger(Storage(spec.storage)), [t.key for t in plan.trials])
    students = [t for t in plan.trials if t.generation == 1]
    base = snap.result(students[0].key)
    variants = [[0.5, None, 0.7], [0.5, math.nan, math.inf], [], None]
    for t, curve in zip(students, variants, strict=False):
        snap.set(t.key, TrialState.DONE, dataclasses.replace(
            base, trial=t.to_dict(), test_acc_curve=curve, history=None,
            analysis={"agreement": 0.5}))
    snap.set(students[4].key, TrialState.RUNNING)  # no result
    held = {type(snap.result(t.key).test_acc_curve).__name__ for t in trials
            if snap.result(t.key) is not None}
    assert held == {"array", "list", "NoneType"}  # packed, with epochs not evaluated, none
    # a trial with a plugin loss's params and code, as a sampled one joins the plan
    plugin = dataclasses.replace(students[5], key="f" * 20, params=(("beta", 8.0),),
                                 plugins=(("my-losses", "abc123"),))
    plan.add(plugin)
    snap.set(plugin.key, TrialState.DIVERGED, TrialResult(
        trial=plugin.to_dict(), state="diverged", test_acc=math.nan, epochs=2,
        test_acc_curve=[0.1, math.nan]))
    runs = {students[1].key: "run-1"}
    meta = {"kdsweep.fence": "3", TOKEN: "tok"}

    table = results_table(plan, snap, runs, meta)
    rows = [row(plan, t, snap.state(t.key), snap.result(t.key), runs.get(t.key))
            for t in plan.trials]
    expected = pa.Table.from_pylist(rows, schema=SCHEMA.with_metadata(meta))
    assert table.schema.equals(expected.schema, check_metadata=True)
    # value for value (NaN as NaN: JSON writes it as such)
    assert json.dumps(table.to_pylist()) == json.dumps(expected.to_pylist())
    curves = dict(zip(table.column("key").to_pylist(),
                      table.column("test_acc_curve").to_pylist(), strict=True))
    assert [curves[t.key] for t in students[:5]][::2] == [[0.5, None, 0.7], [], None]
    assert curves[students[1].key][2] == math.inf and math.isnan(curves[students[1].key][1])
