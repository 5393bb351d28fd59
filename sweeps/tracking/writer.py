"""The transport to MLflow: FIFO lanes of records, each drained by a writer thread.

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

A put never waits on MLflow: a lane holds up to its bound in memory and appends what comes past
it to a file of its own on the driver's disk (records as data, pickled; the file is this
process's, in a private folder, removed when the writer stops), read back in order once the
records before it are written. A driver that exits first (its bounded wait spent, a kill)
loses what it had not written; the next run of the sweep fills that in from storage (runs are
found by key, epochs from the stored history).

MLflow's own async logging (``log_batch(..., synchronous=False)``) was measured side by side
and is slower on both stores (benchmarks/RESULTS.md, "MLflow's async logging"): it sends one
request per call, where a lane merges what accumulates while its last request ran.
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import shutil
import tempfile
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from pathlib import Path

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from ..domain.settings import env_number
from ..store.storage import is_full

log = logging.getLogger(__name__)
# Lanes into a tracking server (each one request at a time): a server's workers and its
# database take them in parallel; an embedded SQLite store has one writer and gets one lane.
SENDERS = env_number("KDSWEEP_MLFLOW_SENDERS", 8, integer=True)
STOP = 30  # seconds shutdown waits for a lane's request in flight once it stops waiting
BATCH = 1000  # MLflow's limit of metrics per log_batch request
EPOCH = "epoch"  # the record kind whose metrics are merged into one log_batch per run

DROPPED = ("dropped", "", ())  # a record the lane's file lost: counted, not handled
Pending = dict[str, list[Metric]]  # run id -> metrics to send
Record = tuple[str, str, tuple]  # (kind, trial key, payload)


class Lane:
    """One lane's records in their order: up to ``bound`` in memory, the rest appended to
    ``path`` (from the first record past the bound until the file is read back empty, every
    record goes there, so none overtakes another). ``put`` takes a lock only around a list
    append or a local file append, never a request."""

    def __init__(self, bound: int, path: Path):
        self.bound, self.path = bound, path
        self.cv = threading.Condition()
        self.memory: deque = deque()
        self.spilled = 0  # records in the file not yet read back
        self.spills = 0  # records that went through the file, in all
        self.unfinished = 0  # put and not yet handled
        self.out = self.inp = None  # the file's append and read handles, while it has records

    def put(self, record) -> bool:
        """False: the record was past the bound and the file refused it (a full disk):
        dropped, for the next run to fill in."""
        with self.cv:
            if self.spilled or len(self.memory) >= self.bound:
                try:
                    if self.out is None:  # both live until the file is read back empty
                        self.out = open(self.path, "wb")  # noqa: SIM115
                        self.inp = open(self.path, "rb")  # noqa: SIM115
                    self.out.write(pickle.dumps(record, pickle.HIGHEST_PROTOCOL))
                except OSError:
                    return False
                self.spilled += 1
                self.spills += 1
            else:
                self.memory.append(record)
            self.unfinished += 1
            self.cv.notify_all()
            return True

    def take(self, most: int) -> list:
        """The next records in order (waits for one): from memory, else from the file."""
        with self.cv:
            while not self.memory and not self.spilled:
                self.cv.wait()
            if self.memory:
                return [self.memory.popleft() for _ in range(min(most, len(self.memory)))]
            self.out.flush()  # what is counted is in the file; later appends go after it
            n, inp = min(most, self.spilled), self.inp
        records = []
        try:
            for _ in range(n):  # outside the lock: puts go on
                records.append(pickle.load(inp))
        except (OSError, EOFError, pickle.UnpicklingError) as e:  # a write cut short (disk full)
            log.warning("MLflow: %d records lost from %s (%s); the next run fills them in",
                        n - len(records), self.path, e)
            records += [DROPPED] * (n - len(records))
        with self.cv:
            self.spilled -= n
            if not self.spilled:  # read back empty: the next spill starts a new file
                self.out.close()
                self.inp.close()
                self.out = self.inp = None
                self.path.unlink(missing_ok=True)
        return records

    def done(self, n: int) -> None:
        with self.cv:
            self.unfinished -= n
            self.cv.notify_all()

    def wait(self, timeout: float | None) -> bool:
        with self.cv:
            return self.cv.wait_for(lambda: self.unfinished == 0, timeout)

    def close(self) -> None:
        with self.cv:
            for f in (self.out, self.inp):
                if f is not None:
                    f.close()
            self.out = self.inp = None


FOLDER = "kdsweep-mlflow-"  # + the writing process's pid + "-" + mkdtemp's suffix


def remove_orphans() -> int:
    """Remove the lanes' folders that writers killed before their shutdown left in the temp
    folder (a SIGKILLed driver runs no cleanup): those whose process is gone, or whose pid now
    belongs to a process started after the folder was made. Their records were never written
    and never will be (the next run of a sweep fills MLflow in from storage). Returns how many."""
    import psutil

    removed = 0
    for folder in Path(tempfile.gettempdir()).glob(f"{FOLDER}*-*"):
        pid = folder.name.removeprefix(FOLDER).split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            made = folder.stat().st_mtime  # last changed by its writer, alive then
            alive = psutil.Process(int(pid)).create_time() <= made + 1
        except psutil.NoSuchProcess:
            alive = False
        except (OSError, psutil.Error):
            continue  # not ours to judge (another user's, or gone meanwhile)
        if not alive:
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


class Writer:
    """Args:
    client: the MLflow client.
    local: the store is embedded (SQLite, files): one lane.
    handle: turns a record into MLflow calls, in its lane's thread; for an EPOCH record it
        returns the metrics to send instead (run id -> metrics).
    on_unsent: called with (run id, steps) of metrics a request failed to write.
    queue_size: records held in memory (all lanes together) before the lanes' files take them.
    """

    def __init__(self, client: MlflowClient, local: bool,
                 handle: Callable[[Record], Pending | None],
                 on_unsent: Callable[[str, set[int]], None], queue_size: int = 2_000):
        self.client, self.handle, self.on_unsent = client, handle, on_unsent
        self.failed_writes = 0
        self.full: Exception | None = None  # the error that said the store is full
        self.halted: Exception | None = None  # why no write may be tried (the Tracker says)
        self.longest_put = 0.0  # seconds: the longest a caller spent in put (never a request)
        self.spill_failed = False
        self.abandoned = False  # shutdown's wait ran out: what is left is dropped, not written
        n = 1 if local else SENDERS
        remove_orphans()
        self.folder = Path(tempfile.mkdtemp(prefix=f"{FOLDER}{os.getpid()}-"))
        self._lanes = [Lane(max(1, queue_size // n), self.folder / f"lane-{i}.pickle")
                       for i in range(n)]
        self._threads = [threading.Thread(target=self._loop, args=(lane,), daemon=True,
                                          name=f"mlflow-writer-{i}")
                         for i, lane in enumerate(self._lanes)]
        for t in self._threads:
            t.start()
        atexit.register(self.flush, 60.0)  # a last resort: the driver flushes on its way out

    # ---- what callers use: each call only enqueues ----------------------------------------
    def put(self, lane: str, kind: str, key: str, *payload) -> None:
        """Queue a record in ``lane``'s order (records of one lane key are handled in order);
        past the memory bound it goes to the lane's file: never a wait on MLflow."""
        t0 = time.perf_counter()
        if not self._lanes[zlib.crc32(lane.encode()) % len(self._lanes)].put((kind, key, payload)):
            self.failed_writes += 1
            if not self.spill_failed:
                self.spill_failed = True
                log.warning("MLflow: the driver's disk refused records past the memory bound "
                            "(%s); they are dropped (the next run fills them in)", self.folder)
        self.longest_put = max(self.longest_put, time.perf_counter() - t0)

    def pending(self) -> int:
        """Records put and not yet handled (in memory, in the lanes' files, in hand)."""
        return sum(lane.unfinished for lane in self._lanes)

    def spilled(self) -> int:
        """Records in the lanes' files now."""
        return sum(lane.spilled for lane in self._lanes)

    def spills(self) -> int:
        """Records that went through the lanes' files, in all."""
        return sum(lane.spills for lane in self._lanes)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued is written; False if ``timeout`` ran out first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for lane in self._lanes:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not lane.wait(left):
                return False
        return True

    def shutdown(self, timeout: float = 60.0) -> bool:
        """Write what is queued (for at most ``timeout`` seconds), then stop the lanes and drop
        the exit handler: nothing outlives the sweep. What is not written by then is dropped
        (each lane ends its request in flight, then stops: the next run fills the rest in);
        returns whether everything was written. Idempotent."""
        atexit.unregister(self.flush)
        written = self.flush(timeout)
        if self.alive():
            self.abandoned = not written
            for lane in self._lanes:
                lane.put(None)
            stop = time.monotonic() + STOP  # one bound for all the lanes together
            for t in self._threads:
                t.join(max(0.0, stop - time.monotonic()))
            if self.alive():
                log.warning("MLflow: a request still in flight after %d s; left to end "
                            "with the process", STOP)
        for lane in self._lanes:
            lane.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        return written

    def alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    # ---- a lane's thread ------------------------------------------------------------------
    def _loop(self, lane: Lane) -> None:
        while True:
            records = lane.take(1000)  # everything already queued goes in this round
            stop = records[-1] is None  # shutdown() puts it last
            pending: Pending = {}
            for record in records[:-1] if stop else records:
                if self.abandoned:  # shutdown's wait is spent: the rest is dropped
                    pending.clear()
                    break
                self._guarded(self._one, record, pending)
            self._guarded(self.send, pending)
            lane.done(len(records))
            if stop:
                return

    def _guarded(self, fn, *args) -> None:
        if self.full is not None or self.halted is not None:  # dropped, not tried
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
        if record is DROPPED:
            self.failed_writes += 1
        elif record[0] == EPOCH:
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
