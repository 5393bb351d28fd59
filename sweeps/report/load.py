"""The report's input: trial rows from results files (Parquet, local or s3://), spec files (their
stored results) or an MLflow experiment, each trial once, with the names the tables group by
(setting, student), its teacher's numbers joined in and its convergence flags."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from kd_core.analysis import SCALARS
from kd_core.names import DATASET_FACTS

from ..domain.plan import setting_name, student_name
from ..domain.record import FINAL_METRICS, TrialState
from ..domain.spec import load_spec
from ..store.ledger import Ledger
from ..store.results import read_results
from ..store.storage import Storage
from ..tracking.names import ANALYSIS_PREFIX, STATE_TAG
from .stats import late_rise, resolution, still_rising


def specs_in(inputs: list[str]) -> list:
    """The sweep specs among a report's inputs (spec files; the rest are results files)."""
    return [load_spec(i) for i in dict.fromkeys(inputs) if i.endswith((".yaml", ".yml"))]


def load(
    inputs: list[str], tracking_uri: str | None = None, experiment: str | None = None
) -> tuple[pd.DataFrame, list]:
    """Every trial row (done or not) and the specs among ``inputs``. Inputs are spec files
    (their stored results are read) or Parquet paths/URIs; and/or an MLflow experiment."""
    uris, specs = [], []
    for item in dict.fromkeys(inputs):  # the same input given twice counts once
        if item.endswith((".yaml", ".yml")):
            spec = load_spec(item)
            specs.append(spec)
            uris.append(Storage(spec.storage).uri_of(Ledger.results_file(spec)))
        else:
            uris.append(item)
    frames = [read_results(uris)] if uris else []
    if experiment:
        frames.append(from_mlflow(tracking_uri or "sqlite:///mlflow.db", experiment))
    df = pd.concat(frames, ignore_index=True)
    for column in ("trained_on", "test_acc_curve", "train_feature_cka", "selected_on",
                   "validation", "params", "plugins"):
        if column not in df:  # results written before the column existed
            df[column] = df["cluster"] if column == "trained_on" else None
    df = _once(df)
    if df.empty:  # nothing to derive from: the caller says there is nothing to report
        return df, specs
    df["setting"] = [setting_name(r.generation, r.loss, r.tau, r.alpha,
                                  json.loads(r.params) if isinstance(r.params, str) else None)
                     for r in df.itertuples()]
    df["student"] = [student_name(r.generation, r.chain) for r in df.itertuples()]
    df["origin"] = df["cluster"] + "/" + df["sweep"]
    df = _with_teacher(df)
    df = _with_flags(df)
    left_out = df[df["state"] != TrialState.DONE].state.value_counts()
    if not left_out.empty:  # counted (and listed in the report), never silently dropped
        counts = ", ".join(f"{n} {s}" for s, n in left_out.items())
        print(f"not in the tables: {counts} (of {len(df)} trials)", file=sys.stderr)
    return df, specs


def from_mlflow(tracking_uri: str, experiment: str) -> pd.DataFrame:
    """The trial rows of an MLflow experiment (every cluster's runs), in the Parquet's columns,
    for a researcher who has the MLflow server but not the clusters' storage."""
    if tracking_uri.startswith("sqlite:///"):  # read only: never made by reading it
        path = Path(tracking_uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise ValueError(f"--tracking-uri {tracking_uri}: no MLflow store at {path}")
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"--experiment {experiment!r}: no such experiment at {tracking_uri}")
    rows, bare, token = [], 0, None
    while True:
        page = client.search_runs(
            [exp.experiment_id], "tags.`kdsweep.role` = 'trial'", max_results=1000,
            page_token=token,
        )
        for r in page:
            if "setting" in r.data.params:
                rows.append(_mlflow_row(client, r, f"{tracking_uri}#{experiment}", experiment))
            else:  # made by a driver killed before it gave the run its params (older kdsweep)
                bare += 1
        token = page.token
        if not token:
            break
    if bare:
        print(f"not in the tables: {bare} MLflow runs of {experiment!r} without their params "
              "(a driver was killed as it made them: rerunning the sweep fills them in)",
              file=sys.stderr)
    return pd.DataFrame(rows)


def _mlflow_row(client: MlflowClient, r, source: str, experiment: str) -> dict:
    p, t, m = r.data.params, r.data.tags, r.data.metrics
    done = r.info.status == "FINISHED" and "test_acc" in m
    row = {
        "sweep": experiment,
        "cluster": t.get("kdsweep.cluster"),
        "dataset": p.get("dataset"),
        "key": t.get("kdsweep.key"),
        "generation": int(t.get("kdsweep.generation", p.get("generation", 0))),
        "chain": t.get("kdsweep.chain"),
        "model": p.get("model"),
        "teacher_key": t.get("kdsweep.teacher_key"),
        "loss": p.get("loss"),
        "tau": _number(p.get("tau")),
        "alpha": _number(p.get("alpha")),
        "noise_kind": p.get("noise_kind"),
        "noise_rate": _number(p.get("noise_rate")),
        "seed": int(p.get("seed", 0)),
        "state": t.get(STATE_TAG) or (TrialState.DONE if done else TrialState.RUNNING
                                       if r.info.status == "RUNNING" else TrialState.FAILED),
        "trained_on": t.get("kdsweep.trained_by", t.get("kdsweep.cluster")),
        "mlflow_run_id": r.info.run_id,
        "source": source,
        "params": t.get("kdsweep.loss_params"),
        "plugins": ", ".join(f"{k.removeprefix('kdsweep.plugin.')}@{v}"
                             for k, v in sorted(t.items())
                             if k.startswith("kdsweep.plugin.")) or None,
    }
    # a metric's latest value is its last epoch's; the analyses under their prefix (older runs
    # logged them bare)
    row.update({k: m.get(k) for k in FINAL_METRICS})
    row.update({k: m.get(ANALYSIS_PREFIX + k, m.get(k)) for k in SCALARS})
    if done:  # the learning curve, for the convergence figure and flag
        hist = sorted(client.get_metric_history(r.info.run_id, "test_acc"), key=lambda h: h.step)
        row["test_acc_curve"] = [h.value for h in hist]
    return row


def _number(v: str | None) -> float:
    try:
        return float(v)  # "inf" included
    except (TypeError, ValueError):
        return math.nan  # "None": not applicable


def _once(df: pd.DataFrame) -> pd.DataFrame:
    """Each trial of each cluster's sweep once: inputs that overlap (the same results file by
    two names, or a Parquet file and the MLflow experiment it was logged to) are counted once,
    with a warning. The same trial on two clusters stays twice (the reproducibility table)."""
    dup = df.duplicated(["cluster", "sweep", "key"])
    if dup.any():
        sources = ", ".join(sorted(set(df[dup].source)))
        print(f"warning: {int(dup.sum())} trial rows given more than once (in {sources}) are "
              "counted once", file=sys.stderr)
    return df[~dup].reset_index(drop=True)


def _with_teacher(df: pd.DataFrame) -> pd.DataFrame:
    """The teacher's test accuracy and feature norm beside each student (the noise claim reads
    the first, the penultimate claim the second), from the teacher's own row."""
    done = df[df.state == TrialState.DONE].drop_duplicates(["origin", "key"])
    teacher = done.set_index(["origin", "key"])
    index = pd.MultiIndex.from_arrays([df.origin, df.teacher_key])
    for mine, theirs in (("teacher_acc", "test_acc"),
                         ("teacher_feature_norm", "train_feature_norm")):
        df[mine] = teacher[theirs].reindex(index).to_numpy() if len(teacher) else math.nan
    return df


def _with_flags(df: pd.DataFrame) -> pd.DataFrame:
    """Per run, once: `rise` (points its test accuracy climbed over the last fifth of its
    epochs), `rising` (still rising, stats.still_rising) and `stuck` (did not learn: below
    halfway from chance to the mean of its architecture trained alone at its noise rate)."""
    step = resolution(df)[0] or 0.1
    chance = df.dataset.map(lambda d: 1 / DATASET_FACTS.get(d, {}).get("classes", 1e9))
    done = df[(df.generation == 0) & (df.state == TrialState.DONE)]
    alone = done.groupby(["model", "noise_rate"]).test_acc.mean()
    reference = pd.Series(list(zip(df.model, df.noise_rate, strict=True)), index=df.index).map(
        lambda k: alone.get(k, math.nan))
    return df.assign(
        rise=[late_rise(c) * 100 for c in df.test_acc_curve],
        rising=[still_rising(c, step / 100) for c in df.test_acc_curve],
        stuck=df.test_acc < (chance + reference) / 2)


def distance_column(df: pd.DataFrame) -> tuple[str, str]:
    """The paper's logit-distance measure when the results have it (the median over the
    unaugmented training set, final models in eval mode), else the per-epoch running mean."""
    if "train_logit_distance_median" in df and df.train_logit_distance_median.notna().any():
        return "train_logit_distance_median", "median ||z_s - z_t|| (train set, final models)"
    return "logit_distance", "mean ||z_s - z_t|| (last epoch's training views)"


def full_chains(df: pd.DataFrame) -> list[str]:
    """The spec's chains as the results show them: students' lineages that no deeper student
    continues (a chain's shorter prefixes are its earlier generations)."""
    lineages = sorted(set(df[df.generation > 0].chain))
    return [c for c in lineages if not any(o.startswith(c + ">") for o in lineages)]


def chain_frame(df: pd.DataFrame, chain: str) -> pd.DataFrame:
    """The trials of one chain A>B>C, one row each, with a `column` per generation: the teacher
    (and every architecture trained alone) at its generation's column, the students of each
    generation under their setting; a generation-g student's lineage is chain[:g+1]."""
    models = chain.split(">")
    parts = []
    for g, model in enumerate(models):
        alone = df[(df.generation == 0) & (df.model == model)].assign(row="alone (ce)")
        parts.append(alone.assign(g=g))
        if g:
            lineage = ">".join(models[: g + 1])
            mine = df[(df.generation == g) & (df.chain == lineage)]
            parts.append(mine.assign(row=mine.setting, g=g))
    out = pd.concat(parts, ignore_index=True)
    out["column"] = [f"g{g} {models[g]}" for g in out.g]
    return out
