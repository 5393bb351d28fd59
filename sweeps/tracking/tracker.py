"""MLflow lineage: one experiment per sweep, a parent run per cluster, one child run per trial.

Only the driver writes to MLflow (trials report to Tune; a Tune callback forwards here), so an
embedded SQLite store never sees concurrent writers. Ray's MLflowLoggerCallback is not used: it
cannot nest runs under a sweep parent, and it opens a new run whenever Tune restores a trial;
here a trial's run is found again by its content key, and epochs already logged are skipped.
The parent run is sweep_run.py; the transport, a queue and one writer thread, is writer.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.environment_variables import MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ..domain import faults
from ..domain.plan import Trial
from ..domain.record import TrialResult
from ..domain.spec import SweepSpec
from ..store.ledger import Ledger, TrialFile, TrialState, read_json_checked, trial_file
from ..store.storage import Storage, StorageFull
from .names import (
    ANALYSIS_PREFIX,
    OLD_PARENT_TAG,
    STATE_TAG,
    SWEEP_RUN_TAG,
    finite,
    param,
    unlogged,
)
from .sqlite_store import prepare_store
from .sweep_run import SweepRun
from .writer import EPOCH, Pending, Record, Writer

__all__ = ["Tracker"]
log = logging.getLogger(__name__)
SWEEP = "sweep"  # the lane key of the parent run's own records (results, end)


def _raised_to_the_caller(record: logging.LogRecord) -> bool:
    """MLflow's SQL store logs every database error with its traceback, then raises it: the
    writer reports each (one line; once for a full store), so MLflow's own copy is dropped."""
    return not record.getMessage().startswith("SQLAlchemy database error")


class Tracker:
    """The sweep's MLflow runs. Every write goes through the Writer's queue (callers only
    enqueue; ``flush()`` waits until all is written: end of sweep, exit). What a SIGKILL loses
    from the queue is written on the next run: runs are found again by key, and missing epochs
    come from the trial's stored history. ``reused`` and ``trained_by`` come from the trial's
    record (which cluster and sweep trained it), never from gaps in MLflow."""

    def __init__(self, spec: SweepSpec, storage: Storage, queue_size: int = 2_000):
        self.spec, self.storage = spec, storage
        prepare_store(spec.tracking_uri)
        # MLflow's client prints two "View run" lines per ended run into a server, after a
        # get_run of its own: 200k lines and 100k requests for a 100k sweep. The driver prints
        # the sweep's links once (sweep_run.py); the run's page is one click from there.
        MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT.set(True)
        logging.getLogger("mlflow.store.db.utils").addFilter(_raised_to_the_caller)
        self.client = MlflowClient(tracking_uri=spec.tracking_uri)
        self.sweep = SweepRun(self.client, spec, storage)
        self.experiment_id, self.parent_id = self.sweep.experiment_id, self.sweep.run_id
        self.ended: dict[str, str] = {}  # run id -> its end status (FINISHED, FAILED, KILLED)
        self.runs: dict[str, str] = {}  # trial key -> run id
        # Runs an earlier driver made but was killed before it marked them a trial (the role
        # tag, the last write of the log_batch after create_run): run id -> whether its params
        # are there (MLflow's SQL store writes a batch's params, metrics and tags in turn, not
        # in one transaction). Completed when their trial next comes.
        self.bare: dict[str, bool] = {}
        self.logged: dict[str, set[int]] = {}  # run id -> epochs logged
        self.warnings: dict[str, list[str]] = {}  # run id -> its workers' warnings so far
        # Called before each run is created: the driver's lease check, so a driver that lost
        # its lease (paused past its TTL) never adds a second run for a trial.
        self.check_lease = lambda: None
        local = spec.tracking_uri.startswith("sqlite:")
        # A trial's records share a lane with its lineage's (its teacher's run exists before
        # its own names it); lineages go in parallel.
        self.lineage: dict[str, str] = {}  # trial key -> its generation-0 ancestor's key
        self.trained_runs: dict[str, list[str]] | None = None  # key -> runs that trained it
        self.trained_lock = threading.Lock()
        self.inputs = DatasetInputs(self.client, spec)
        self.writer = Writer(self.client, local, self.handle, self._unsent, queue_size)
        # The runs an earlier run of the sweep made, found by one paged search (100 pages at
        # 100k trials): in a thread of its own, so the driver goes on meanwhile; the lanes
        # write once it is done (a run is never made twice), and not at all if it fails.
        self.known = threading.Event()
        threading.Thread(target=self._find_runs, daemon=True, name="mlflow-runs").start()

    # ---- what callers use: each call only enqueues ----------------------------------------
    def ensure_run(self, trial: Trial) -> None:
        """The trial's child run, created once (rerunning the sweep finds it by key)."""
        root = self.lineage.get(trial.teacher_key, trial.teacher_key) or trial.key
        self.lineage[trial.key] = root
        self.writer.put(root, "ensure", trial.key, trial)

    def log_epoch(self, key: str, metrics: dict) -> None:
        """Per-epoch metrics at step = epoch; an epoch already logged (a resumed trial) is
        skipped, so a run never holds a step twice."""
        self._put(EPOCH, key, [dict(metrics)])

    def finish(self, key: str, result: TrialResult, reused: bool = False,
               outputs: dict | None = None) -> None:
        """Final metrics and the model artifact; ``reused``: trained by an earlier sweep;
        ``outputs``: the analysis and curve its worker made, as data (log_outputs; None: read
        from storage in the lane)."""
        self._put("finish", key, result, reused, outputs)

    def fail(self, key: str, error: str, state: TrialState = TrialState.FAILED) -> None:
        """The trial failed, or was skipped (its run ends KILLED: it never started)."""
        self._put("fail", key, error, state)

    def warn(self, key: str, messages: list[str]) -> None:
        """Warnings a trial's worker raised, kept in its run as warnings.txt."""
        self._put("warn", key, list(messages))

    def results(self, rel: str) -> None:
        """The sweep's results file (``rel`` in storage, written) on the parent run, as itself
        and as CSV, with the headline metrics: in a lane, like every write."""
        self.writer.put(SWEEP, "results", "", rel)

    def _put(self, kind: str, key: str, *payload) -> None:
        self.writer.put(self.lineage.get(key, key), kind, key, *payload)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the sweep's runs are known and everything queued is written; False if
        ``timeout`` ran out first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self.known.wait(timeout):
            return False
        return self.writer.flush(None if deadline is None
                                 else max(0.0, deadline - time.monotonic()))

    @property
    def failed_writes(self) -> int:
        return self.writer.failed_writes

    def raise_if_full(self) -> None:
        """StorageFull when the store refused writes for lack of space (the writer stopped)."""
        if self.writer.full is not None:
            raise StorageFull(f"tracking_uri {self.spec.tracking_uri}: no space left for MLflow's "
                              "writes; free space, then run the same command again (it fills "
                              "MLflow in from storage)")

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def shutdown(self, timeout: float = 60.0) -> None:
        """Write what is queued, then stop the writer: nothing outlives the sweep."""
        self.writer.shutdown(timeout)

    def close(self, status: str = "FINISHED", wait: float | None = None) -> int:
        """End the parent run with ``status`` (queued after its results), write what is
        queued for at most ``wait`` seconds (None: until done), stop the writer; returns how
        many records were left unwritten (the next run of the sweep fills them in)."""
        self.writer.put(SWEEP, "end", "", status)
        self.flush(wait)
        left = self.writer.pending()
        self.shutdown(0.0 if left else 60.0)
        return left

    # ---- in the writer's lanes -------------------------------------------------------------
    def handle(self, record: Record) -> Pending | None:
        """One record from the writer's queue, as MLflow calls (epochs: the metrics to send)."""
        self.known.wait()  # the runs of earlier runs first: none is made twice
        kind, key, payload = record
        if kind == EPOCH:
            return self._epochs(key, *payload)
        handler = {"ensure": self._ensure_run, "finish": self._finish, "fail": self._fail,
                   "warn": self._warn, "results": self._results, "end": self._end}[kind]
        handler(key, *payload)
        return None

    def _runs_where(self, where: str):
        """Every run of the experiment matching the search filter ``where``, page by page."""
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], where, max_results=1000,
                                           page_token=token)
            yield from page
            if not (token := page.token):
                return

    def _find_runs(self) -> None:
        try:
            for key, run_id in self._existing_children().items():
                self.runs.setdefault(key, run_id)
        except Exception as e:  # no write is tried: a run could be made twice
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            self.writer.halted = e
            log.warning("MLflow: the sweep's runs could not be listed (%s); nothing is written "
                        "to MLflow in this run (rerun the sweep to fill it in)", first)
        finally:
            self.known.set()

    def _existing_children(self) -> dict[str, str]:
        runs = {}
        for tag in (SWEEP_RUN_TAG, OLD_PARENT_TAG):
            for r in self._runs_where(f"tags.`{tag}` = '{self.parent_id}'"):
                runs.setdefault(r.data.tags.get("kdsweep.key"), r.info.run_id)
                has_params = "setting" in r.data.params  # (older drivers tagged it first)
                if r.data.tags.get("kdsweep.role") != "trial" or not has_params:
                    self.bare[r.info.run_id] = has_params
                if r.info.status != "RUNNING":  # how an earlier run of the sweep left it
                    self.ended[r.info.run_id] = r.info.status
        return runs

    def _ensure_run(self, key: str, trial: Trial) -> str:
        """The trial's run, made in two requests: create_run with its lineage tags, then one
        log_batch of its params with the `trial` role tag (written after them), so a reader
        (the report, the UI's filter) never sees a trial's run without its params, and a run
        left without the tag by a kill is completed here when a later driver finds it."""
        if trial.key in self.runs:
            run_id = self.runs[trial.key]
            if (has_params := self.bare.pop(run_id, None)) is not None:
                if has_params:  # a kill after the batch's params, before its tag
                    self.client.set_tag(run_id, "kdsweep.role", "trial")
                else:
                    self._give_params(run_id, trial)
            return run_id
        tags = {
            SWEEP_RUN_TAG: self.parent_id,
            "kdsweep.key": trial.key,
            "kdsweep.generation": str(trial.generation),
            "kdsweep.chain": trial.chain,
            **self.sweep.common_tags,
        }
        for name, digest in trial.plugins:  # the plugins' code it used, by digest
            tags[f"kdsweep.plugin.{name}"] = digest
        if trial.params:  # which params are its loss's own (the report's setting names them)
            tags["kdsweep.loss_params"] = json.dumps(dict(trial.params), sort_keys=True)
        if trial.teacher_key:
            tags["kdsweep.teacher_key"] = trial.teacher_key
            if teacher_run := self.runs.get(trial.teacher_key):
                tags["kdsweep.teacher_run_id"] = teacher_run
        self.check_lease()
        run = self.client.create_run(self.experiment_id, run_name=trial.run_name, tags=tags)
        run_id = run.info.run_id
        faults.reached("run-created")
        self._give_params(run_id, trial)
        self.runs[trial.key] = run_id
        self.logged[run_id] = set()  # new: nothing logged, no history to ask MLflow for
        return run_id

    def _give_params(self, run_id: str, trial: Trial) -> None:
        """The run's params, then (the batch's last write) its `trial` role tag."""
        params = {
            **{k: v for k, v in trial.to_dict().items()
               if k not in ("key", "lineage", "params", "plugins")},
            **dict(trial.params),  # a plugin loss's own params, as typed (beta 8)
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
            params=[Param(k, param(v)) for k, v in params.items() if v is not None],
            metrics=numeric,
            tags=[RunTag("kdsweep.role", "trial")],
        )

    def _logged(self, run_id: str) -> set[int]:
        if run_id not in self.logged:  # train_loss is logged every epoch, test_* may not be
            hist = self.client.get_metric_history(run_id, "train_loss")
            self.logged[run_id] = {m.step for m in hist}
        return self.logged[run_id]

    def _unsent(self, run_id: str, steps: set[int]) -> None:
        """Steps a request failed to write are no longer counted as logged, so the trial's
        finish sends them again from its stored history (and a rerun, if that fails too)."""
        self.logged.get(run_id, set()).difference_update(steps)

    def _epochs(self, key: str, epochs: list[dict]) -> dict[str, list[Metric]]:
        run_id = self.runs[key]
        return {run_id: unlogged(epochs, self._logged(run_id))}

    def _finish(self, key: str, result: TrialResult, reused: bool,
                outputs: dict | None = None) -> None:
        """The run's last writes, in as few requests as MLflow allows (one batch of the
        analyses and every tag, the Dataset, the artifacts, the end): its status known from
        the sweep's one search at start, its logged epochs from that or from this run."""
        run_id = self.runs[key]
        # A diverged trial's run ends FAILED, with the reason; any other result's FINISHED.
        end = "FAILED" if result.state == TrialState.DIVERGED else "FINISHED"
        if self.ended.get(run_id) == end:
            return
        tags = {"kdsweep.labels_hash": result.labels_hash or "", STATE_TAG: result.state}
        if reused and self._reused(run_id, result):
            tags |= self._reused_tags(run_id, key, result)
        if result.state == TrialState.DONE:  # published with its model, before its result
            tags["kdsweep.model"] = trial_file(key, TrialFile.MODEL)
        if result.reason:
            tags["kdsweep.reason"] = result.reason
        # Epochs whose report died with a killed driver are filled in from the stored history.
        # A summary (a rerun's stored trial, as its snapshot holds it) reads its history here.
        history = result.history if result.history is not None else (
            Ledger(self.storage, repair=False).history(key) or [])
        self.writer.send(self._epochs(key, history))
        # The analyses of the final model at the last epoch's step (the per-epoch metrics are
        # not repeated: the trial's summary is its Parquet row).
        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(ANALYSIS_PREFIX + k, v, now, result.epochs)
                     for k, v in finite(result.analysis)],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        self.inputs.log(run_id, result)
        log_outputs(self.client, self.storage, run_id, key, result.state == TrialState.DONE,
                    outputs)
        if result.reason:
            self.client.log_text(run_id, f"{result.state}: {result.reason}", "error.txt")
        self.client.set_terminated(run_id, end)
        self.ended[run_id] = end

    def _reused(self, run_id: str, result: TrialResult) -> bool:
        """Trained by another cluster or sweep, as the trial's record says: a run of this
        sweep whose epochs an MLflow outage kept away is still this sweep's own. Records from
        before records named their sweep: a run with no epochs logged."""
        elsewhere = result.trained_elsewhere(self.spec.cluster, self.spec.name)
        return not self._logged(run_id) if elsewhere is None else elsewhere

    def _reused_tags(self, run_id: str, key: str, result: TrialResult) -> dict[str, str]:
        """A trial this cluster found trained in storage: say so, and by which cluster and run
        (when that run is in this experiment)."""
        tags = {"kdsweep.reused": "true", "kdsweep.trained_by": result.cluster or "unknown"}
        for trained in self._trained_runs().get(key, ()):
            if trained != run_id:  # this sweep's own run of the trial is not yet tagged
                tags["kdsweep.trained_by_run"] = trained
                break
        return tags

    def _trained_runs(self) -> dict[str, list[str]]:
        """Trial key -> the runs of this experiment that trained it into this same storage (no
        reuse), from one paged search when the first reused trial asks (not a search per
        trial: that grew with the experiment's runs)."""
        with self.trained_lock:  # lanes ask at once: one search
            if self.trained_runs is None:
                found: dict[str, list[str]] = {}
                for r in self._runs_where("tags.`kdsweep.role` = 'trial'"):
                    t = r.data.tags
                    here = t.get("kdsweep.storage") in (self.sweep.location, self.storage.uri)
                    if "kdsweep.reused" not in t and here:
                        found.setdefault(t.get("kdsweep.key"), []).append(r.info.run_id)
                self.trained_runs = found
        return self.trained_runs

    def _results(self, _key: str, rel: str) -> None:
        with tempfile.TemporaryDirectory() as d:
            parquet = self.storage.local_copy(rel, Path(d) / "results.parquet")
            rows = pd.read_parquet(parquet)
            rows.to_csv(Path(d) / "results.csv", index=False)  # for a spreadsheet, from the UI
            self.sweep.log_artifact(parquet)
            self.sweep.log_artifact(Path(d) / "results.csv")
        self.sweep.log_summary(rows)

    def _end(self, _key: str, status: str) -> None:
        self.sweep.end(status)

    def _warn(self, key: str, messages: list[str]) -> None:
        if (run_id := self.runs.get(key)) is None:
            return  # no run yet: the driver's output has them
        self.warnings.setdefault(run_id, []).extend(messages)
        self.client.log_text(run_id, "\n".join(self.warnings[run_id]) + "\n", "warnings.txt")

    def _fail(self, key: str, error: str, state: TrialState) -> None:
        run_id = self.runs[key]
        self.client.set_tag(run_id, STATE_TAG, state)
        self.client.log_text(run_id, error, "error.txt")
        end = "KILLED" if state is TrialState.SKIPPED else "FAILED"
        self.client.set_terminated(run_id, end)
        self.ended[run_id] = end


def log_outputs(client: MlflowClient, storage: Storage, run_id: str, key: str,
                has_model: bool, outputs: dict | None = None) -> None:
    """The trial's analyses (analysis.json) and learning curve (curve.png, drawn by its
    worker) as artifacts: from ``outputs`` (file name -> the JSON text or bytes its worker
    wrote, carried in its last report: WorkerMessage.outputs) when the trial's worker ran
    under this driver, else read from storage (a stored trial; two GETs on S3); and its
    model when it kept one
    (a diverged trial does not): named by the run's `kdsweep.model` tag, its path relative to
    the run's `kdsweep.storage` (so it stays right when a store moves), and where storage is
    on the driver's machine also copied in as the file. Where storage is remote
    (S3) the reference is all: the driver never downloads a model to upload it again
    (45 MiB per WideResNet, the whole grid's models twice over)."""
    model = trial_file(key, TrialFile.MODEL)
    if has_model and storage.is_local and storage.exists(model):  # the tag is in the batch
        client.log_artifact(run_id, storage.path(model))
    if outputs is not None:
        if (text := outputs.get(TrialFile.ANALYSIS)) is not None:
            client.log_dict(run_id, json.loads(text), TrialFile.ANALYSIS)
        if (png := outputs.get(TrialFile.CURVE)) is not None:
            with tempfile.TemporaryDirectory() as d:
                (path := Path(d) / TrialFile.CURVE).write_bytes(png)
                client.log_artifact(run_id, str(path))
        return
    if (analysis := read_json_checked(storage, trial_file(key, TrialFile.ANALYSIS), repair=False)):
        client.log_dict(run_id, analysis, TrialFile.ANALYSIS)
    curve = trial_file(key, TrialFile.CURVE)  # drawn by the trial's worker (curve.py)
    if storage.is_local:
        if storage.exists(curve):
            client.log_artifact(run_id, storage.path(curve))
        return
    with contextlib.suppress(FileNotFoundError), tempfile.TemporaryDirectory() as d:
        client.log_artifact(run_id, str(storage.local_copy(curve, Path(d) / TrialFile.CURVE)))


class DatasetInputs:
    """Each trial run's training data as MLflow's Dataset (the UI's Dataset column): the
    digest is the hash of the labels trained on, so runs on the same noisy labels share it.

    MLflow inserts a dataset's row on its first log in an experiment, after a lookup and with no
    lock of its own: two first logs at once (two lanes into a server) fail one of them on the
    table's unique key (experiment, name, digest), which ended that trial's finish with its run
    RUNNING. So the first log of each dataset goes alone; once its row exists, logs go in
    parallel. Another driver logging the same new dataset into the experiment in the same
    moment is the one race left: that log is tried once more (the row exists then)."""

    def __init__(self, client: MlflowClient, spec: SweepSpec):
        self.client, self.spec = client, spec
        self.lock = threading.Lock()
        self.created: set[tuple[str, str]] = set()  # (name, digest) whose row exists

    def log(self, run_id: str, result: TrialResult) -> None:
        d, t = self.spec.dataset, result.trial
        noise = f" noise={t['noise_kind']}:{t['noise_rate']:g}" if t["noise_rate"] else ""
        dataset = Dataset(
            name=f"{d.name}{noise}",
            digest=(result.labels_hash or "unknown")[:36],
            source_type="kdsweep",
            source=d.root or d.name,
        )
        ident = (dataset.name, dataset.digest)
        if ident in self.created:
            return self._send(run_id, dataset)
        with self.lock:
            self._send(run_id, dataset)
            self.created.add(ident)

    def _send(self, run_id: str, dataset: Dataset) -> None:
        inputs = [DatasetInput(dataset, tags=[InputTag(key="mlflow.data.context", value="train")])]
        try:
            self.client.log_inputs(run_id, datasets=inputs)
        except MlflowException as e:
            if not any(w in str(e) for w in ("UNIQUE constraint", "duplicate key")):
                raise
            self.client.log_inputs(run_id, datasets=inputs)  # the row exists now
