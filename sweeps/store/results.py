"""Results: one Parquet row per trial (its identity, the TrialResult's summary, cluster, run)."""

from __future__ import annotations

import dataclasses
import io
import json

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


def write_results(plan: Plan, snapshot: Snapshot, runs: dict[str, str],
                  fence: int | None = None) -> str:
    """Write every planned trial's state and result to the sweep's Parquet file; return its
    URI. ``fence``: the driver lease's number it is written under (in the file's metadata)."""
    rows = [row(plan, t, snapshot.state(t.key), snapshot.result(t.key), runs.get(t.key))
            for t in plan.trials]
    ledger = snapshot.ledger
    token = ledger.writer.token if ledger.writer is not None else None
    table = pa.Table.from_pylist(rows, schema=SCHEMA.with_metadata(
        {"kdsweep.fence": str(fence), TOKEN: str(token)}))
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
