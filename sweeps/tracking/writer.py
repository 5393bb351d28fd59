"""The transport to MLflow: a bounded FIFO queue drained by one writer thread.

Callers (Tune's callback on the driver's event loop) only enqueue, so no trial waits on MLflow
inside tune.report and Tune's loop never blocks on a database or server round trip. The writer
takes everything queued at once: metric items are gathered into one log_batch per run (sent in
parallel to a server, whose workers take them at once; one at a time into an embedded SQLite
store, a single writer); any other call keeps its place in the order, after the metrics queued
before it. Errors never stop the writer: they are counted and logged (a rerun fills them in);
once the store says it is full, the rest is dropped uncounted by the store (``full``).

MLflow's own async logging (``log_batch(..., synchronous=False)``) was measured side by side
and is slower on both stores (benchmarks/RESULTS.md, "MLflow's async logging"): it sends one
request per call, where this writer merges what accumulates while the last request ran.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from ..settings import env_number
from ..storage import is_full

log = logging.getLogger(__name__)
# Concurrent log_batch requests to a tracking server (one run each): a server's workers and its
# database take them in parallel; an embedded SQLite store has one writer and gets one.
SENDERS = env_number("KDSWEEP_MLFLOW_SENDERS", 4, integer=True)
BATCH = 1000  # MLflow's limit of metrics per log_batch request

Pending = dict[str, list[Metric]]  # run id -> metrics to send


class Writer:
    """Args:
    client: the MLflow client.
    local: the store is embedded (SQLite, files): one sender.
    on_unsent: called with (run id, steps) of metrics a request failed to write.
    """

    def __init__(self, client: MlflowClient, local: bool,
                 on_unsent: Callable[[str, set[int]], None], queue_size: int = 10_000):
        self.client, self.on_unsent = client, on_unsent
        self.failed_writes = 0
        self.full: Exception | None = None  # the error that said the store is full
        self._queue: queue.Queue = queue.Queue(queue_size)
        senders = 1 if local else SENDERS
        self._senders = ThreadPoolExecutor(senders, "mlflow-send") if senders > 1 else None
        self._thread = threading.Thread(target=self._loop, name="mlflow-writer", daemon=True)
        self._thread.start()
        atexit.register(self.flush, 60.0)  # a last resort: the driver flushes on its way out

    # ---- what callers use: each call only enqueues ----------------------------------------
    def call(self, fn: Callable, *args) -> None:
        """Run ``fn(*args)`` in the writer, after everything queued before it is sent."""
        self._queue.put(("call", fn, args))

    def metrics(self, gather: Callable[..., Pending], *args) -> None:
        """Send what ``gather(*args)`` returns (run in the writer, in queue order) in the next
        log_batch of each run, merged with the metrics queued beside it."""
        self._queue.put(("metrics", gather, args))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued is written; False if ``timeout`` ran out first."""
        q = self._queue
        with q.all_tasks_done:
            return q.all_tasks_done.wait_for(lambda: q.unfinished_tasks == 0, timeout)

    def shutdown(self, timeout: float = 60.0) -> None:
        """Write what is queued, then stop the thread and the sender pool and drop the exit
        handler: nothing outlives the sweep. Idempotent."""
        if not self._thread.is_alive():
            return
        self.flush(timeout)
        self._queue.put(("stop",))
        self._thread.join(timeout)
        if self._senders is not None:
            self._senders.shutdown()
        atexit.unregister(self.flush)

    # ---- the writer thread ----------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            items = [self._queue.get()]
            while len(items) < 1000:  # everything already queued goes in this round
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            pending: Pending = {}
            for item in items:
                if item[0] != "stop":
                    self._guarded(self._one, item, pending)
            self._guarded(self.send, pending)
            for _ in items:
                self._queue.task_done()
            if items[-1][0] == "stop":  # shutdown() puts it last, after a flush
                return

    def _guarded(self, fn, *args) -> None:
        if self.full is not None:  # nothing more fits: what is left is dropped, not tried
            self.failed_writes += 1
            return
        try:
            fn(*args)
        except Exception as e:  # keep the sweep and the writer going; a rerun fills it in
            self.failed_writes += 1
            if is_full(e):
                self.full = e
                log.warning("MLflow: the store has no space left; no more writes are tried "
                            "(free space and rerun the sweep: it fills them in)")
                return
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            log.warning("MLflow write failed (a rerun of the sweep fills it in): %s", first)

    def _one(self, item: tuple, pending: Pending) -> None:
        kind, fn, args = item
        if kind == "metrics":
            for run_id, metrics in fn(*args).items():
                pending.setdefault(run_id, []).extend(metrics)
        else:  # anything else keeps its place in the order: send the metrics before it
            self.send(pending)
            fn(*args)

    def send(self, pending: Pending) -> None:
        """One log_batch per run and BATCH metrics (from the writer thread only)."""
        batches = [
            (run_id, metrics[i : i + BATCH])
            for run_id, metrics in pending.items()
            for i in range(0, len(metrics), BATCH)
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
        out); the steps of a failed one go to ``on_unsent``."""
        try:
            self.client.log_batch(run_id, metrics=metrics)
            return None
        except Exception as e:
            self.on_unsent(run_id, {m.step for m in metrics})
            return e
