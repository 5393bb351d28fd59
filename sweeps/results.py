"""Results: one Parquet row per trial (config, lineage, final metrics, timings, cluster)."""

from __future__ import annotations

import io
import math

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .plan import Plan, Trial
from .storage import Storage, trial_file

SCHEMA = pa.schema(
    [
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
        ("status", pa.string()),
        ("epochs", pa.int64()),
        ("test_acc", pa.float64()),
        ("best_test_acc", pa.float64()),
        ("test_loss", pa.float64()),
        ("test_ece", pa.float64()),
        ("train_acc", pa.float64()),
        ("train_acc_clean", pa.float64()),
        ("logit_distance", pa.float64()),
        ("test_logit_distance", pa.float64()),
        ("test_agreement", pa.float64()),
        ("realised_noise_rate", pa.float64()),
        ("labels_hash", pa.string()),
        ("wall_time", pa.float64()),
        ("preemptions", pa.int64()),
        ("errors", pa.int64()),
        ("teacher_path", pa.string()),
        ("finished_at", pa.float64()),
        ("mlflow_run_id", pa.string()),
    ]
)


def results_path(sweep: str) -> str:
    return f"sweeps/{sweep}/results.parquet"


def row(plan: Plan, trial: Trial, result: dict | None, run_id: str | None) -> dict:
    r = result or {}
    out = {name: r.get(name) for name in SCHEMA.names}
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
        tau=math.nan if trial.tau is None else trial.tau,
        alpha=math.nan if trial.alpha is None else trial.alpha,
        noise_kind=trial.noise_kind,
        noise_rate=trial.noise_rate,
        seed=trial.seed,
        status=r.get("status", "done") if result else "missing",
        mlflow_run_id=run_id,
    )
    return out


def write_results(plan: Plan, storage: Storage, runs: dict[str, str]) -> str:
    """Write every planned trial's stored result to the sweep's Parquet file; return its URI."""
    rows = [
        row(plan, t, storage.read_json(trial_file(t.key, "result.json")), runs.get(t.key))
        for t in plan.trials
    ]
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    rel = results_path(plan.spec.name)
    storage.write_bytes(rel, buf.getvalue())
    return storage.uri_of(rel)


def read_results(uris: list[str]) -> pd.DataFrame:
    """Load one or more results files (local or s3://) into one frame, tagged by source."""
    frames = []
    for uri in uris:
        storage = Storage(uri.rsplit("/", 1)[0]) if "/" in uri else Storage(".")
        table = pq.read_table(io.BytesIO(storage.read_bytes(uri.rsplit("/", 1)[-1])))
        df = table.to_pandas()
        df["source"] = uri
        frames.append(df)
    return pd.concat(frames, ignore_index=True)
