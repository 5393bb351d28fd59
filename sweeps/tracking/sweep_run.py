"""The sweep's experiment and its parent run: one per (sweep name, cluster), found again by tag.

A cluster is its name plus its storage: two clusters of one name that store apart are two
clusters, each with its own parent run (README, "Several clusters").
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from ..domain.plan import setting_name, student_name
from ..domain.record import TrialState
from ..domain.spec import SweepSpec
from ..store.storage import Storage
from .names import UI_MODE, finite, param
from .sqlite_store import artifact_root, prepare_store
from .view import saved_view, view_query

KIND = "custom_model_development"


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def ray_job_id() -> str | None:
    """The submission id when this driver runs inside `ray job submit`, else None."""
    # Ray's job supervisor hands the driver its job config (with the submission id) this way.
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return None
    try:
        return json.loads(raw).get("metadata", {}).get("job_submission_id")
    except (ValueError, AttributeError):
        return None


def ui_command(tracking_uri: str, here: bool = True) -> str:
    """The command that serves a local store's UI, quoted for a shell (paths with spaces); on
    this machine (``here``) with this environment's `mlflow`, else (a report) the bare name."""
    mlflow = Path(sys.executable).with_name("mlflow")
    exe = shlex.quote(str(mlflow)) if here and mlflow.exists() else "mlflow"
    return f"{exe} ui --backend-store-uri {shlex.quote(tracking_uri)} --port 5000"


def cluster_id(name: str, location: str) -> str:
    """A cluster's identity: its name and where it stores (hashed to fit MLflow tag filters)."""
    return f"{name}-{hashlib.sha256(location.encode()).hexdigest()[:10]}"


def storage_location(storage: Storage, tracking_uri: str) -> str:
    """Where a sweep stores, as its runs record it (tag `kdsweep.storage`): a local storage
    beside an embedded MLflow store relative to the store's folder, so the two moved or
    copied together still name each other (sqlite_store.relocate keeps the artifacts right);
    otherwise the storage's URI."""
    root = artifact_root(tracking_uri)
    if root is None or not storage.is_local:
        return storage.uri
    return Path(os.path.relpath(storage.path(""), Path(root).parent)).as_posix()


class SweepRun:
    """The experiment (created once, its kind set) and this cluster's parent run."""

    def __init__(self, client: MlflowClient, spec: SweepSpec, storage: Storage):
        self.client, self.spec, self.storage = client, spec, storage
        exp = client.get_experiment_by_name(spec.name)
        self.experiment_id = exp.experiment_id if exp else self._create_experiment()
        # MLflow 3 opens an experiment of no declared kind on its GenAI overview: ours are
        # model training; and the saved view the links open (view.py). Written when they
        # differ from what the experiment holds, not at every start.
        held = exp.tags if exp else {}
        for key, value in {"mlflow.experimentKind": KIND, **saved_view()}.items():
            if held.get(key) != value:
                client.set_experiment_tag(self.experiment_id, key, value)
        self.location = storage_location(storage, spec.tracking_uri)
        self.cluster_id = cluster_id(spec.cluster, self.location)
        self.common_tags = {  # on the parent and every trial's run
            "kdsweep.cluster": spec.cluster,
            "kdsweep.cluster_id": self.cluster_id,
            "kdsweep.storage": self.location,
            # MLflow's own columns (Source, Version, User); the client API leaves them empty
            "mlflow.source.name": "kdsweep run",
            "mlflow.source.type": "JOB",
            "mlflow.source.git.commit": git_commit(),
            "mlflow.user": getpass.getuser(),
        }
        if job := ray_job_id():
            self.common_tags["kdsweep.ray_job_id"] = job
        self.run_id = self._parent_run()

    def _create_experiment(self) -> str:
        """An embedded store's experiment keeps its artifacts beside the store's file (MLflow's
        default is the working directory's mlruns/), so store and artifacts move together."""
        root = artifact_root(self.spec.tracking_uri)
        where = None if root is None else f"{root}/{uuid.uuid4().hex[:12]}"
        return self.client.create_experiment(self.spec.name, artifact_location=where)

    def _parent_run(self) -> str:
        found = []
        # a store written before locations were relative knows the cluster by its absolute URI
        for cid in dict.fromkeys([self.cluster_id, cluster_id(self.spec.cluster,
                                                              self.storage.uri)]):
            found = found or self.client.search_runs(
                [self.experiment_id],
                f"tags.`kdsweep.role` = 'sweep' and tags.`kdsweep.cluster_id` = '{cid}'",
                max_results=1,
                order_by=["attributes.start_time ASC"],
            )
        if found:
            run_id = found[0].info.run_id
            if found[0].data.tags.get("kdsweep.cluster_id") != self.cluster_id:  # now relative
                self.client.log_batch(run_id, tags=[RunTag(k, v)
                                                    for k, v in self.common_tags.items()])
        else:
            run = self.client.create_run(
                self.experiment_id,
                run_name=f"{self.spec.name} on {self.spec.cluster}",
                tags={"kdsweep.role": "sweep", **self.common_tags},
            )
            run_id = run.info.run_id
            self.client.log_text(run_id, self.spec.model_dump_json(indent=1), "spec.json")
            # Params are immutable in MLflow: the sweep's identity, set once; the grid (which a
            # rerun may widen) goes in the description, rewritten every run.
            params = {"dataset": self.spec.dataset.name, "cluster": self.spec.cluster,
                      "chains": " | ".join(" > ".join(c) for c in self.spec.chains),
                      "epochs": self.spec.train.epochs}
            self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        tags = {**self.common_tags, "mlflow.note.content": self.description}
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        return run_id

    @property
    def description(self) -> str:
        """The parent run's description (Markdown): what the sweep is."""
        s, g = self.spec, self.spec.grid
        return (
            f"**kdsweep** sweep `{s.name}` on cluster `{s.cluster}`: {s.dataset.name}, chains "
            + ", ".join(" → ".join(c) for c in s.chains)
            + f"; losses {', '.join(g.loss)}, tau {', '.join(param(t) for t in g.tau)}, "
            f"noise {g.noise.kind} {', '.join(f'{r:g}' for r in g.noise.rate)}, "
            f"{len(g.seeds)} seed(s); {s.train.epochs} epochs. Storage `{self.location}`."
        )

    def links(self) -> list[str]:
        """Where to look: the experiment's runs table and the parent run, in the MLflow UI."""
        uri = self.spec.tracking_uri
        base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else None
        path = f"#/experiments/{self.experiment_id}/runs"
        run = f"{path}/{self.run_id}?{UI_MODE}"
        if base is None:
            base = "http://127.0.0.1:5000"
            lines = [f"MLflow: {ui_command(uri)}, then:"]
        else:
            lines = []
        return lines + [f"MLflow trials: {base}/{path}?{view_query()}",
                        f"MLflow curves: {base}/{path}?{view_query(charts=True)}",
                        f"MLflow sweep run: {base}/{run}"]

    def log_summary(self, rows) -> None:
        """Headline metrics (trials done and not), and each cell's mean test accuracy over
        seeds as a table, `cells.csv` (a cell is what the report compares; a mean over
        students, settings or noise rates would mean nothing): an artifact, not a metric per
        cell, so the charts open on the trials' curves, and lineages keep their ">"."""
        done = rows[rows.state == TrialState.DONE]
        metrics = {"trials_done": len(done), "trials_not_done": len(rows) - len(done)}
        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in finite(metrics)]
        )
        cells = done.assign(
            student=[student_name(g, c) for g, c in zip(done.generation, done.chain,
                                                         strict=True)],
            setting=[setting_name(r.generation, r.loss, r.tau, r.alpha)
                     for r in done.itertuples()])
        table = cells.groupby(["student", "setting", "noise_rate"]).test_acc.agg(
            ["mean", "count"]).reset_index().rename(
            columns={"mean": "test_acc_mean", "count": "seeds"})
        self.client.log_text(self.run_id, table.to_csv(index=False), "cells.csv")

    def start(self) -> None:
        self.client.update_run(self.run_id, status="RUNNING")

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


def publish_report(specs: list, text: str, paths: list[Path], out_dir: Path) -> None:
    """A report's files (those under ``out_dir``, in their folders) and text on each sweep's
    run, under report/ (what `kdsweep report` does after the report is made: the report
    itself only reads)."""
    for spec in specs:
        prepare_store(spec.tracking_uri)
        client = MlflowClient(spec.tracking_uri)
        run = SweepRun(client, spec, Storage(spec.storage))
        for p in paths:
            run.log_artifact(p, (Path("report") / p.relative_to(out_dir).parent).as_posix())
        client.log_text(run.run_id, text, "report/report.txt")
