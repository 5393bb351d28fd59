"""The transport to MLflow: bounded FIFO queues of records, each drained by a writer thread.

Callers (Tune's callback on the driver's event loop) only enqueue, so no trial waits on MLflow
inside tune.report and Tune's loop never blocks on a database or server round trip. A queue
carries data: ``(kind, key, payload)`` records that the Tracker turns into MLflow calls (its
``handle``), as MLflow's own async_logging_queue carries run operations, never functions.

Records go to one of several lanes by a lane key that the Tracker gives (a trial's lineage:
a teacher and everything distilled from it share one). A lane keeps its records in order; lanes
run in parallel, so a tracking server's workers take several trials' runs at once (creating and
finishing 10,000 runs is a lane's work times 1/lanes). An embedded SQLite store has one writer:
one lane. A lane takes everything queued at once: epoch records are gathered into one
log_batch per run; any other record keeps its place in the order, after the epochs queued
before it. Errors never stop a lane: they are counted and logged (a rerun fills them in); once
the store says it is full, the rest is dropped uncounted by the store (``full``).

MLflow's own async logging (``log_batch(..., synchronous=False)``) was measured side by side
and is slower on both stores (benchmarks/RESULTS.md, "MLflow's async logging"): it sends one
request per call, where a lane merges what accumulates while its last request ran.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
import zlib
from collections.abc import Callable

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from ..domain.settings import env_number
from ..store.storage import is_full

log = logging.getLogger(__name__)
# Lanes into a tracking server (each one request at a time): a server's workers and its
# database take them in parallel; an embedded SQLite store has one writer and gets one lane.
SENDERS = env_number("KDSWEEP_MLFLOW_SENDERS", 8, integer=True)
BATCH = 1000  # MLflow's limit of metrics per log_batch request
EPOCH = "epoch"  # the record kind whose metrics are merged into one log_batch per run

Pending = dict[str, list[Metric]]  # run id -> metrics to send
Record = tuple[str, str, tuple]  # (kind, trial key, payload)


class Writer:
    """Args:
    client: the MLflow client.
    local: the store is embedded (SQLite, files): one lane.
    handle: turns a record into MLflow calls, in its lane's thread; for an EPOCH record it
        returns the metrics to send instead (run id -> metrics).
    on_unsent: called with (run id, steps) of metrics a request failed to write.
    """

    def __init__(self, client: MlflowClient, local: bool,
                 handle: Callable[[Record], Pending | None],
                 on_unsent: Callable[[str, set[int]], None], queue_size: int = 10_000):
        self.client, self.handle, self.on_unsent = client, handle, on_unsent
        self.failed_writes = 0
        self.full: Exception | None = None  # the error that said the store is full
        n = 1 if local else SENDERS
        self._queues = [queue.Queue(max(1, queue_size // n)) for _ in range(n)]
        self._threads = [threading.Thread(target=self._loop, args=(q,), daemon=True,
                                          name=f"mlflow-writer-{i}")
                         for i, q in enumerate(self._queues)]
        for t in self._threads:
            t.start()
        atexit.register(self.flush, 60.0)  # a last resort: the driver flushes on its way out

    # ---- what callers use: each call only enqueues ----------------------------------------
    def put(self, lane: str, kind: str, key: str, *payload) -> None:
        """Queue a record in ``lane``'s order (records of one lane key are handled in order)."""
        q = self._queues[zlib.crc32(lane.encode()) % len(self._queues)]
        q.put((kind, key, payload))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued is written; False if ``timeout`` ran out first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for q in self._queues:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            with q.all_tasks_done:
                if not q.all_tasks_done.wait_for(lambda q=q: q.unfinished_tasks == 0, left):
                    return False
        return True

    def shutdown(self, timeout: float = 60.0) -> None:
        """Write what is queued, then stop the lanes and drop the exit handler: nothing
        outlives the sweep. Idempotent."""
        if not any(t.is_alive() for t in self._threads):
            return
        self.flush(timeout)
        for q in self._queues:
            q.put(None)
        for t in self._threads:
            t.join(timeout)
        atexit.unregister(self.flush)

    def alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    # ---- a lane's thread ------------------------------------------------------------------
    def _loop(self, q: queue.Queue) -> None:
        while True:
            records = [q.get()]
            while len(records) < 1000:  # everything already queued goes in this round
                try:
                    records.append(q.get_nowait())
                except queue.Empty:
                    break
            pending: Pending = {}
            for record in records:
                if record is not None:
                    self._guarded(self._one, record, pending)
            self._guarded(self.send, pending)
            for _ in records:
                q.task_done()
            if records[-1] is None:  # shutdown() puts it last, after a flush
                return

    def _guarded(self, fn, *args) -> None:
        if self.full is not None:  # nothing more fits: what is left is dropped, not tried
            self.failed_writes += 1
            return
        try:
            fn(*args)
        except Exception as e:  # keep the sweep and the lane going; a rerun fills it in
            self.failed_writes += 1
            if is_full(e):
                self.full = e
                log.warning("MLflow: the store has no space left; no more writes are tried "
                            "(free space and rerun the sweep: it fills them in)")
                return
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            log.warning("MLflow write failed (a rerun of the sweep fills it in): %s", first)

    def _one(self, record: Record, pending: Pending) -> None:
        if record[0] == EPOCH:
            for run_id, metrics in (self.handle(record) or {}).items():
                pending.setdefault(run_id, []).extend(metrics)
        else:  # anything else keeps its place in the order: send the epochs before it
            self.send(pending)
            self.handle(record)

    def send(self, pending: Pending) -> None:
        """One log_batch per run and BATCH metrics, in the calling lane."""
        batches = [
            (run_id, metrics[i : i + BATCH])
            for run_id, metrics in pending.items()
            for i in range(0, len(metrics), BATCH)
        ]
        pending.clear()
        if errors := [e for e in (self._send_one(r, m) for r, m in batches) if e is not None]:
            raise errors[0]

    def _send_one(self, run_id: str, metrics: list[Metric]) -> Exception | None:
        """One log_batch (MLflow's client retries it for minutes: a server restart is waited
        out); the steps of a failed one go to ``on_unsent``."""
        try:
            self.client.log_batch(run_id, metrics=metrics)
            return None
        except Exception as e:
            self.on_unsent(run_id, {m.step for m in metrics})
            return e
