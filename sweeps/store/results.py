"""Results: one Parquet row per trial (its identity, the TrialResult's summary, cluster, run)."""

from __future__ import annotations

import dataclasses
import io
import json
from array import array

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kd_core.analysis import SCALARS

from ..domain.plan import Plan, Trial
from ..domain.record import FINAL_METRICS, TrialResult, renamed_in
from .ledger import TrialState
from .snapshot import Snapshot
from .storage import Storage

IDENTITY = [
    ("sweep", pa.string()),
    ("cluster", pa.string()),
    ("dataset", pa.string()),
    ("key", pa.string()),
    ("generation", pa.int32()),
    ("chain", pa.string()),
    ("model", pa.string()),
    ("teacher_key", pa.string()),
    ("loss", pa.string()),
    ("tau", pa.float64()),
    ("alpha", pa.float64()),
    ("noise_kind", pa.string()),
    ("noise_rate", pa.float64()),
    ("seed", pa.int64()),
    ("state", pa.string()),  # its ledger.TrialState when the run ended
]
_INTS = {"epochs", "preemptions", "errors"}
SCHEMA = pa.schema(
    IDENTITY
    + [(k, pa.int64() if k in _INTS else pa.float64()) for k in FINAL_METRICS]
    + [(k, pa.float64()) for k in SCALARS]  # the paper's analyses of the final model
    + [
        ("labels_hash", pa.string()),
        ("logit_source", pa.string()),
        ("trained_on", pa.string()),  # the cluster that trained it (this one, unless reused)
        ("started_at", pa.float64()),
        ("finished_at", pa.float64()),
        ("mlflow_run_id", pa.string()),
        # test accuracy per epoch (null where an epoch was not evaluated): learning curves and
        # the report's convergence flag without MLflow
        ("test_acc_curve", pa.list_(pa.float64())),
        # the metric a search chose or stopped this student on (Optuna, ASHA); null: nothing
        # was selected (a grid, a teacher). A test_ metric: selected on the test set.
        ("selected_on", pa.string()),
        ("validation", pa.float64()),  # the share of the training split held out (0: none)
        # a plugin loss's params beyond tau and alpha, as JSON ({"beta": 8}); null: none
        ("params", pa.string()),
        # the plugins whose code the trial used, "name@digest, ..."; null: kdsweep's own only
        ("plugins", pa.string()),
    ]
)


RECORD_FIELDS = {f.name for f in dataclasses.fields(TrialResult)}


def row(plan: Plan, trial: Trial, state: TrialState, result: TrialResult | None,
        run_id: str | None) -> dict:
    out = {name: None for name in SCHEMA.names}
    if result is not None:  # the record's fields read as they are (its summary: no history)
        out.update({k: getattr(result, k) for k in SCHEMA.names
                    if k in RECORD_FIELDS and k not in ("trial", "cluster")})
        out["trained_on"] = result.cluster
        out.update({k: result.analysis.get(k) for k in SCALARS})
        curve = result.test_acc_curve  # a list, or packed floats as a snapshot holds them
        out["test_acc_curve"] = None if curve is None else list(curve)
    out.update(
        sweep=plan.spec.name,
        cluster=plan.spec.cluster,
        dataset=plan.spec.dataset.name,
        key=trial.key,
        generation=trial.generation,
        chain=trial.chain,
        model=trial.model,
        teacher_key=trial.teacher_key,
        loss=trial.loss,
        tau=trial.tau,  # null where it does not apply (ce, mse); inf stays inf
        alpha=trial.alpha,
        noise_kind=trial.noise_kind,
        noise_rate=trial.noise_rate,
        seed=trial.seed,
        state=str(state),
        mlflow_run_id=run_id,
        selected_on=plan.spec.search.metric
        if plan.spec.search.selects and trial.generation > 0 else None,
        validation=plan.spec.dataset.validation,
        params=json.dumps(dict(trial.params), sort_keys=True) if trial.params else None,
        plugins=plugin_list(trial.plugins),
    )
    return out


def plugin_list(plugins) -> str | None:
    """"name@digest, ..." of a trial's plugins (pairs or a mapping); None for none."""
    return ", ".join(f"{n}@{d}" for n, d in sorted(dict(plugins).items())) or None


def curve_column(curves: list) -> pa.Array:
    """The ``test_acc_curve`` column from each row's curve (None, a list with None where an
    epoch was not evaluated, or the packed floats a snapshot holds): the values laid end to
    end once, as numbers, never a float object per epoch (20M of them at 100k trials of 200
    epochs)."""
    offsets, values, missing, rows_null = [0], [], [], []
    for c in curves:
        rows_null.append(c is None)
        if c is None:
            offsets.append(offsets[-1])
            continue
        if isinstance(c, array):
            v = np.frombuffer(c, dtype=np.float64) if len(c) else np.empty(0)
            missing.append(None)
        else:
            m = np.fromiter((x is None for x in c), dtype=bool, count=len(c))
            v = np.fromiter((np.nan if x is None else x for x in c), dtype=np.float64,
                            count=len(c))
            missing.append(m if m.any() else None)
        values.append(v)
        offsets.append(offsets[-1] + len(v))
    flat = np.concatenate(values) if values else np.empty(0)
    mask = None
    if any(m is not None for m in missing):
        mask = np.concatenate([np.zeros(len(v), bool) if m is None else m
                               for v, m in zip(values, missing, strict=True)])
    items = pa.array(flat, type=pa.float64(), mask=mask)
    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), items,
                                    mask=pa.array(rows_null, type=pa.bool_()))


def results_table(plan: Plan, snapshot: Snapshot, runs: dict[str, str],
                  metadata: dict | None = None) -> pa.Table:
    """Every planned trial's row (``row``'s, the same table) built a column at a time: each
    record's fields read as they are, the curves laid end to end (curve_column)."""
    trials = plan.trials
    states = [snapshot.state(t.key) for t in trials]
    results = [snapshot.result(t.key) for t in trials]
    spec = plan.spec

    def field(get) -> list:
        return [None if r is None else get(r) for r in results]

    cols: dict[str, list | pa.Array] = {}
    for name in SCHEMA.names:
        if name in RECORD_FIELDS and name not in ("trial", "cluster", "test_acc_curve"):
            cols[name] = field(lambda r, name=name: getattr(r, name))
    cols["trained_on"] = field(lambda r: r.cluster)
    for k in SCALARS:
        cols[k] = field(lambda r, k=k: r.analysis.get(k))
    cols["test_acc_curve"] = curve_column(field(lambda r: r.test_acc_curve))
    n = len(trials)
    selects = spec.search.metric if spec.search.selects else None
    cols.update(
        sweep=[spec.name] * n, cluster=[spec.cluster] * n, dataset=[spec.dataset.name] * n,
        key=[t.key for t in trials], generation=[t.generation for t in trials],
        chain=[t.chain for t in trials], model=[t.model for t in trials],
        teacher_key=[t.teacher_key for t in trials], loss=[t.loss for t in trials],
        tau=[t.tau for t in trials], alpha=[t.alpha for t in trials],
        noise_kind=[t.noise_kind for t in trials], noise_rate=[t.noise_rate for t in trials],
        seed=[t.seed for t in trials], state=[str(s) for s in states],
        mlflow_run_id=[runs.get(t.key) for t in trials],
        selected_on=[selects if t.generation > 0 else None for t in trials],
        validation=[spec.dataset.validation] * n,
        params=[json.dumps(dict(t.params), sort_keys=True) if t.params else None
                for t in trials],
        plugins=[plugin_list(t.plugins) for t in trials],
    )
    schema = SCHEMA.with_metadata(metadata) if metadata else SCHEMA
    return pa.Table.from_arrays([pa.array(cols[f.name], type=f.type)
                                 if not isinstance(cols[f.name], pa.Array) else cols[f.name]
                                 for f in SCHEMA], schema=schema)


def write_results(plan: Plan, snapshot: Snapshot, runs: dict[str, str],
                  fence: int | None = None) -> str:
    """Write every planned trial's state and result to the sweep's Parquet file; return its
    URI. ``fence``: the driver lease's number it is written under (in the file's metadata)."""
    ledger = snapshot.ledger
    token = ledger.writer.token if ledger.writer is not None else None
    table = results_table(plan, snapshot, runs, {"kdsweep.fence": str(fence), TOKEN: str(token)})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    rel = ledger.results_file(plan.spec)
    ledger.write_shared(rel, buf.getvalue, written_by)  # under the lease (Ledger.write_shared)
    return ledger.storage.uri_of(rel)


# the Parquet metadata key of the driver lease token a results file was written under
TOKEN = "kdsweep.token"


def written_by(data: bytes) -> str | None:
    """The driver lease's token a results file was written under (its Parquet metadata)."""
    meta = pq.read_metadata(io.BytesIO(data)).metadata or {}
    return meta.get(TOKEN.encode(), b"").decode() or None


# Columns a results file must have (identity and outcome); later ones default when absent
# (files written before they existed: report/load.py fills them in).
REQUIRED = [name for name, _ in IDENTITY] + ["test_acc"]


def read_results(uris: list[str]) -> pd.DataFrame:
    """Load one or more results files (local or s3://) into one frame, tagged by source. A
    file that is missing, not Parquet, or not kdsweep's (a column missing or of another type)
    is a ValueError naming it and what is wrong."""
    frames = []
    for uri in uris:
        storage = Storage(uri.rsplit("/", 1)[0]) if "/" in uri else Storage(".")
        try:
            data = storage.read_bytes(uri.rsplit("/", 1)[-1])
        except FileNotFoundError:
            raise ValueError(f"{uri}: no such results file") from None
        try:
            table = pq.read_table(io.BytesIO(data))
        except (pa.ArrowException, OSError) as e:
            raise ValueError(f"{uri}: not a Parquet file ({str(e).splitlines()[0]})") from None
        renamed = renamed_in(table.column_names)
        table = table.rename_columns([renamed.get(c, c) for c in table.column_names])
        if missing := [c for c in REQUIRED if c not in table.column_names]:
            raise ValueError(f"{uri}: not a kdsweep results file (no column "
                             f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})")
        known = [f for f in SCHEMA if f.name in table.column_names]
        for field in known:
            have = table.schema.field(field.name).type
            if have != field.type and not pa.types.is_null(have):
                try:
                    table = table.set_column(table.column_names.index(field.name), field,
                                             table[field.name].cast(field.type))
                except (pa.ArrowException, ValueError):
                    raise ValueError(f"{uri}: column {field.name} holds {have}, not "
                                     f"{field.type}: not a kdsweep results file") from None
        df = table.to_pandas()
        df["source"] = uri
        frames.append(df)
    return pd.concat(frames, ignore_index=True)
