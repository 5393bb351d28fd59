"""MLflow lineage: one experiment per sweep, a parent run, one child run per trial.

Only the driver writes to MLflow (trials report to Tune; a Tune callback forwards here), so an
embedded SQLite store never sees concurrent writers. Ray's MLflowLoggerCallback is not used: it
cannot nest runs under a sweep parent, and it opens a new run whenever Tune restores a trial;
here a trial's run is found again by its content key, and epochs already logged are skipped.
"""

from __future__ import annotations

import atexit
import dataclasses
import getpass
import hashlib
import json
import logging
import math
import os
import queue
import re
import shlex
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from kd_core.metrics import EpochMetrics

from .plan import Trial, setting_name, student_name
from .record import TrialResult
from .spec import SweepSpec
from .sqlite_store import artifact_root, prepare_store
from .storage import Storage
from .store import read_json_checked, trial_file

log = logging.getLogger(__name__)
PARENT_TAG = "mlflow.parentRunId"
KIND = "custom_model_development"
# Concurrent log_batch requests to a tracking server (one run each): a server's workers and its
# database take them in parallel; an embedded SQLite store has one writer and gets one.
SENDERS = int(os.environ.get("KDSWEEP_MLFLOW_SENDERS", "4"))
# The final model's analyses go under their own prefix: the MLflow UI shows them in a section
# of their own, apart from the per-epoch charts.
ANALYSIS_PREFIX = "analysis/"
# A trial's own per-epoch metrics; Tune's bookkeeping in each result (pid, timestamp,
# time_this_iter_s, ...) is not logged.
EPOCH_METRICS = {f.name for f in dataclasses.fields(EpochMetrics)} - {"epoch"}


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


def ui_command(tracking_uri: str) -> str:
    """The command that serves a local store's UI, quoted for a shell (paths with spaces)."""
    mlflow = Path(sys.executable).with_name("mlflow")
    exe = shlex.quote(str(mlflow)) if mlflow.exists() else "mlflow"
    return f"{exe} ui --backend-store-uri {shlex.quote(tracking_uri)} --port 5000"


def cluster_id(name: str, storage_uri: str) -> str:
    """A cluster's identity: its name and where it stores (hashed to fit MLflow tag filters)."""
    return f"{name}-{hashlib.sha256(storage_uri.encode()).hexdigest()[:10]}"


def _param(v) -> str:
    """A param as a user types it in a filter: tau 4, 20, inf (not 4.0)."""
    if isinstance(v, float):
        return f"{v:g}"
    return "inf" if v == "inf" else str(v)


def _finite(metrics: dict) -> list[tuple[str, float]]:
    return [
        (k, float(v))
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    ]


def _metric_name(text: str) -> str:
    """``text`` in the characters MLflow allows in a metric's name ("kl tau=4" -> "kl tau 4",
    "a>b" -> "a_b", "alone (ce)" -> "alone ce")."""
    text = text.replace(">", "_").replace("=", " ")
    return re.sub(r"[^\w.\- /]", "", text)


class Tracker:
    """The sweep's MLflow runs. Writes go through one background writer thread and a bounded
    FIFO queue: Tune's callback only enqueues, so no trial waits on MLflow inside tune.report
    and Tune's loop never blocks on a database or server round trip. The writer sends the epoch
    results it finds queued together as one log_batch per run; ``flush()`` waits until all that
    is queued is written (end of sweep, exit). What a SIGKILL loses from the queue is written
    on the next run: runs are found again by key, and missing epochs come from the history."""

    def __init__(self, spec: SweepSpec, storage: Storage, queue_size: int = 10_000):
        self.spec = spec
        self.storage = storage
        prepare_store(spec.tracking_uri)
        self.client = MlflowClient(tracking_uri=spec.tracking_uri)
        exp = self.client.get_experiment_by_name(spec.name)
        self.experiment_id = exp.experiment_id if exp else self._create_experiment()
        # MLflow 3 opens an experiment of no declared kind on its GenAI overview: ours are
        # model training, so the UI opens on the runs table.
        self.client.set_experiment_tag(self.experiment_id, "mlflow.experimentKind", KIND)
        # A cluster is its name plus its storage: two clusters of one name that store apart
        # are two clusters, each with its own parent run (README, "Several clusters").
        self.cluster_id = cluster_id(spec.cluster, storage.uri)
        self.common_tags = {
            "kdsweep.cluster": spec.cluster,
            "kdsweep.cluster_id": self.cluster_id,
            "kdsweep.storage": storage.uri,
            # MLflow's own columns (Source, Version, User); the client API leaves them empty
            "mlflow.source.name": "kdsweep run",
            "mlflow.source.type": "JOB",
            "mlflow.source.git.commit": git_commit(),
            "mlflow.user": getpass.getuser(),
        }
        if job := ray_job_id():
            self.common_tags["kdsweep.ray_job_id"] = job
        self.parent_id = self._parent_run()
        self.runs: dict[str, str] = self._existing_children()  # trial key -> run id
        self.logged: dict[str, set[int]] = {}  # run id -> epochs logged
        self.warnings: dict[str, list[str]] = {}  # run id -> its workers' warnings so far
        self.failed_writes = 0
        # Called before each run is created: the driver's lease check, so a driver that lost
        # its lease (paused past its TTL) never adds a second run for a trial.
        self.fence = lambda: None
        self._queue: queue.Queue = queue.Queue(queue_size)
        senders = SENDERS if not spec.tracking_uri.startswith(("sqlite:", "file:")) else 1
        self._senders = ThreadPoolExecutor(senders, "mlflow-send") if senders > 1 else None
        self._writer = threading.Thread(target=self._write_loop, name="mlflow-writer",
                                        daemon=True)
        self._writer.start()
        atexit.register(self.flush, 60.0)  # a last resort: the driver flushes on its way out

    # ---- what callers use: each call only enqueues ----------------------------------------
    def ensure_run(self, trial: Trial) -> None:
        """The trial's child run, created once (rerunning the sweep finds it by key)."""
        self._queue.put(("call", self._ensure_run, (trial,)))

    def log_epoch(self, key: str, metrics: dict) -> None:
        """Per-epoch metrics at step = epoch; an epoch already logged (a resumed trial) is
        skipped, so a run never holds a step twice."""
        self._queue.put(("epoch", key, dict(metrics)))

    def finish(self, key: str, result: TrialResult, reused: bool = False) -> None:
        """Final metrics and the model artifact; ``reused``: trained by an earlier sweep."""
        self._queue.put(("call", self._finish, (key, result, reused)))

    def fail(self, key: str, error: str, status: str = "FAILED") -> None:
        self._queue.put(("call", self._fail, (key, error, status)))

    def warn(self, key: str, messages: list[str]) -> None:
        """Warnings a trial's worker raised, kept in its run as warnings.txt."""
        self._queue.put(("call", self._warn, (key, list(messages))))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued is written; False if ``timeout`` ran out first."""
        q = self._queue
        with q.all_tasks_done:
            return q.all_tasks_done.wait_for(lambda: q.unfinished_tasks == 0, timeout)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def shutdown(self, timeout: float = 60.0) -> None:
        """Write what is queued, then stop the writer thread and the sender pool and drop the
        exit handler: nothing of a sweep's tracker outlives it. Idempotent."""
        if not self._writer.is_alive():
            return
        self.flush(timeout)
        self._queue.put(("stop",))
        self._writer.join(timeout)
        if self._senders is not None:
            self._senders.shutdown()
        atexit.unregister(self.flush)

    # ---- the writer thread ----------------------------------------------------------------
    def _write_loop(self) -> None:
        while True:
            items = [self._queue.get()]
            while len(items) < 1000:  # everything already queued goes in this round
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            pending: dict[str, list[Metric]] = {}
            for item in items:
                if item[0] != "stop":
                    self._guarded(self._write, item, pending)
            self._guarded(self._send, pending)
            for _ in items:
                self._queue.task_done()
            if items[-1][0] == "stop":  # shutdown() puts it last, after a flush
                return

    def _guarded(self, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as e:  # keep the sweep and the writer going; a rerun fills it in
            self.failed_writes += 1
            log.warning("MLflow write failed (a rerun of the sweep fills it in): %s", e)

    def _write(self, item: tuple, pending: dict[str, list[Metric]]) -> None:
        if item[0] == "epoch":
            self._collect(pending, item[1], item[2])
        else:  # anything else keeps its place in the order: send the epochs before it
            self._send(pending)
            item[1](*item[2])

    def _collect(self, pending: dict[str, list[Metric]], key: str, metrics: dict) -> None:
        run_id, step = self.runs[key], int(metrics["epoch"])
        logged = self._logged(run_id)
        if step in logged:
            return
        now = int(time.time() * 1000)
        own = {k: v for k, v in metrics.items() if k in EPOCH_METRICS}
        pending.setdefault(run_id, []).extend(Metric(k, v, now, step) for k, v in _finite(own))
        logged.add(step)

    def _send(self, pending: dict[str, list[Metric]]) -> None:
        """One log_batch per run; runs in parallel against a server (its workers take them
        at once), one at a time into an embedded SQLite store (a single writer)."""
        batches = [
            (run_id, metrics[i : i + 1000])  # MLflow's per-request limit
            for run_id, metrics in pending.items()
            for i in range(0, len(metrics), 1000)
        ]
        pending.clear()
        if len(batches) < 2 or self._senders is None:
            errors = [self._send_one(r, m) for r, m in batches]
        else:
            errors = list(self._senders.map(lambda b: self._send_one(*b), batches))
        if errors := [e for e in errors if e is not None]:
            raise errors[0]

    def _send_one(self, run_id: str, metrics: list[Metric]) -> Exception | None:
        """One log_batch (MLflow's client retries it for minutes: a server restart is waited
        out). Steps it could not write are no longer counted as logged, so the trial's finish
        sends them again from its stored history (and a rerun, if that fails too)."""
        try:
            self.client.log_batch(run_id, metrics=metrics)
            return None
        except Exception as e:
            self.logged.get(run_id, set()).difference_update(m.step for m in metrics)
            return e

    # ---- runs ----------------------------------------------------------------------------
    def _create_experiment(self) -> str:
        """An embedded store's experiment keeps its artifacts beside the store's file (MLflow's
        default is the working directory's mlruns/), so store and artifacts move together."""
        root = artifact_root(self.spec.tracking_uri)
        where = None if root is None else f"{root}/{uuid.uuid4().hex[:12]}"
        return self.client.create_experiment(self.spec.name, artifact_location=where)

    def _parent_run(self) -> str:
        found = self.client.search_runs(
            [self.experiment_id],
            f"tags.`kdsweep.role` = 'sweep' and tags.`kdsweep.cluster_id` = '{self.cluster_id}'",
            max_results=1,
            order_by=["attributes.start_time ASC"],
        )
        if found:
            run_id = found[0].info.run_id
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
            + f"; losses {', '.join(g.loss)}, tau {', '.join(_param(t) for t in g.tau)}, "
            f"noise {g.noise.kind} {', '.join(f'{r:g}' for r in g.noise.rate)}, "
            f"{len(g.seeds)} seed(s); {s.train.epochs} epochs. Storage `{self.storage.uri}`."
        )

    def links(self) -> list[str]:
        """Where to look: the experiment's runs table and the parent run, in the MLflow UI."""
        uri = self.spec.tracking_uri
        base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else None
        path = f"#/experiments/{self.experiment_id}/runs"
        if base is None:
            return [f"MLflow: {ui_command(uri)}, then http://127.0.0.1:5000/{path}/{self.parent_id}"]
        return [f"MLflow runs: {base}/{path}", f"MLflow sweep run: {base}/{path}/{self.parent_id}"]

    def log_summary(self, rows) -> None:
        """Headline metrics on the parent run: trials done and not, and each cell's mean test
        accuracy over seeds, named `cell/<student>/<setting>/noise <rate>` (a cell is what the
        report compares; a mean over students, settings or noise rates would mean nothing)."""
        done = rows[rows.status == "done"]
        metrics = {"trials_done": len(done), "trials_not_done": len(rows) - len(done)}
        cells = done.assign(
            student=[_metric_name(student_name(g, c)) for g, c in zip(
                done.generation, done.chain, strict=True)],
            setting=[_metric_name(setting_name(r.generation, r.loss, r.tau, r.alpha))
                     for r in done.itertuples()])
        for (student, s, noise), acc in cells.groupby(
                ["student", "setting", "noise_rate"]).test_acc.mean().items():
            metrics[f"cell/{student}/{s}/noise {noise:g}"] = acc
        now = int(time.time() * 1000)
        self.client.log_batch(
            self.parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in _finite(metrics)]
        )

    def _existing_children(self) -> dict[str, str]:
        runs, token = {}, None
        while True:
            page = self.client.search_runs(
                [self.experiment_id],
                f"tags.`{PARENT_TAG}` = '{self.parent_id}'",
                max_results=1000,
                page_token=token,
            )
            for r in page:
                runs.setdefault(r.data.tags.get("kdsweep.key"), r.info.run_id)
            token = page.token
            if not token:
                return runs

    def _ensure_run(self, trial: Trial) -> str:
        if trial.key in self.runs:
            return self.runs[trial.key]
        tags = {
            PARENT_TAG: self.parent_id,
            "kdsweep.key": trial.key,
            "kdsweep.generation": str(trial.generation),
            "kdsweep.chain": trial.chain,
            "kdsweep.role": "trial",
            **self.common_tags,
        }
        if trial.teacher_key:
            tags["kdsweep.teacher_key"] = trial.teacher_key
            if teacher_run := self.runs.get(trial.teacher_key):
                tags["kdsweep.teacher_run_id"] = teacher_run
        self.fence()
        run = self.client.create_run(self.experiment_id, run_name=trial.run_name, tags=tags)
        run_id = run.info.run_id
        params = {
            **{k: v for k, v in trial.to_dict().items() if k not in ("key", "lineage")},
            "setting": trial.setting,  # what to group by: with `student`, one cell of a table
            "student": trial.student,
            "dataset": self.spec.dataset.name,
            **{f"train.{k}": v for k, v in self.spec.train.model_dump().items()},
        }
        # Params are strings (the UI orders tau 1, 20, 4, inf): tau as a number for charts and
        # range filters, 1/tau so that inf is 0.
        now = int(time.time() * 1000)
        numeric = [] if trial.tau is None else [Metric("inv_tau", 1 / trial.tau, now, 0)]
        self.client.log_batch(
            run_id,
            params=[Param(k, _param(v)) for k, v in params.items() if v is not None],
            metrics=numeric,
        )
        self.runs[trial.key] = run_id
        return run_id

    # ---- metrics -------------------------------------------------------------------------
    def _logged(self, run_id: str) -> set[int]:
        if run_id not in self.logged:  # train_loss is logged every epoch, test_* may not be
            hist = self.client.get_metric_history(run_id, "train_loss")
            self.logged[run_id] = {m.step for m in hist}
        return self.logged[run_id]

    def _finish(self, key: str, result: TrialResult, reused: bool) -> None:
        run_id = self.runs[key]
        # A diverged trial's run ends FAILED, with the reason; any other result's FINISHED.
        end = "FAILED" if result.status == "diverged" else "FINISHED"
        if self.client.get_run(run_id).info.status == end:
            return
        if reused and self._reused(run_id, result):
            self._tag_reused(run_id, key, result)
        # Epochs whose report died with a killed driver are filled in from the stored history.
        pending: dict[str, list[Metric]] = {}
        for h in result.history:
            self._collect(pending, key, h)
        self._send(pending)
        # The analyses of the final model at the last epoch's step (the per-epoch metrics are
        # not repeated: the trial's summary is its Parquet row).
        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(ANALYSIS_PREFIX + k, v, now, result.epochs)
                     for k, v in _finite(result.analysis)],
            tags=[RunTag("kdsweep.labels_hash", result.labels_hash or "")],
        )
        self._log_input(run_id, result)
        self._log_outputs(run_id, key)
        if result.reason:
            self.client.set_tag(run_id, "kdsweep.reason", result.reason)
            self.client.log_text(run_id, f"{result.status}: {result.reason}", "error.txt")
        self.client.set_terminated(run_id, end)

    def _log_outputs(self, run_id: str, key: str) -> None:
        """The trial's analyses (analysis.json) as an artifact, and its model when it kept one
        (a diverged trial does not): named by the run's `kdsweep.model_uri` tag, and where
        storage is on the driver's machine also copied in as the file. Where storage is remote
        (S3) the reference is all: the driver never downloads a model to upload it again
        (45 MiB per WideResNet, the whole grid's models twice over)."""
        model = trial_file(key, "model.pt")
        if self.storage.exists(model):
            self.client.set_tag(run_id, "kdsweep.model_uri", self.storage.uri_of(model))
            if self.storage.is_local:
                self.client.log_artifact(run_id, self.storage.path(model))
        if (analysis := read_json_checked(self.storage, trial_file(key, "analysis.json"))):
            self.client.log_dict(run_id, analysis, "analysis.json")

    def _log_input(self, run_id: str, result: TrialResult) -> None:
        """The training data as MLflow's Dataset (the UI's Dataset column): the digest is the
        hash of the labels trained on, so runs on the same noisy labels share it."""
        d, t = self.spec.dataset, result.trial
        noise = f" noise={t['noise_kind']}:{t['noise_rate']:g}" if t["noise_rate"] else ""
        dataset = Dataset(
            name=f"{d.name}{noise}",
            digest=(result.labels_hash or "unknown")[:36],
            source_type="kdsweep",
            source=d.root or d.name,
        )
        context = InputTag(key="mlflow.data.context", value="train")
        self.client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[context])])

    def _reused(self, run_id: str, result: TrialResult) -> bool:
        """Trained by another cluster or sweep, as the trial's record says: a run of this
        sweep whose epochs an MLflow outage kept away is still this sweep's own. Records from
        before records named their sweep: a run with no epochs logged."""
        elsewhere = result.trained_elsewhere(self.spec.cluster, self.spec.name)
        return not self._logged(run_id) if elsewhere is None else elsewhere

    def _tag_reused(self, run_id: str, key: str, result: TrialResult) -> None:
        """A trial this cluster found trained in storage: say so, and by which cluster and run
        (when that run is in this experiment)."""
        tags = {"kdsweep.reused": "true", "kdsweep.trained_by": result.cluster or "unknown"}
        for r in self.client.search_runs(
            [self.experiment_id], f"tags.`kdsweep.key` = '{key}'", max_results=100
        ):
            t = r.data.tags  # the run that trained it stored to this same storage
            trained = r.info.run_id != run_id and "kdsweep.reused" not in t
            if trained and t.get("kdsweep.storage") == self.storage.uri:
                tags["kdsweep.trained_by_run"] = r.info.run_id
                break
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def _warn(self, key: str, messages: list[str]) -> None:
        if (run_id := self.runs.get(key)) is None:
            return  # no run yet: the driver's output has them
        self.warnings.setdefault(run_id, []).extend(messages)
        self.client.log_text(run_id, "\n".join(self.warnings[run_id]) + "\n", "warnings.txt")

    def _fail(self, key: str, error: str, status: str) -> None:
        run_id = self.runs[key]
        self.client.log_text(run_id, error, "error.txt")
        self.client.set_terminated(run_id, status)

    def start(self) -> None:
        self.client.update_run(self.parent_id, status="RUNNING")

    def log_parent_artifact(self, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.parent_id, str(path), folder)

    def close(self, status: str = "FINISHED") -> None:
        self.flush()
        self.client.set_terminated(self.parent_id, status)
        self.shutdown()
