"""ASHA's decisions on a fused job's members, told to the job through storage: each member's
``stop.json`` ({job: the job's Tune trial id, epoch}), which its job reads after each of the
member's epochs (trial.asha_stops). The decisions are made in Tune's loop
(engine.StudentASHA.on_trial_result); the writes are not: Tune's loop only enqueues them, and a
thread of their own writes them in order, so no trial's report waits on storage (a PUT is
50 ms and more on S3). A member's ``stop.json`` is removed once its outcome is reported (its
result is in storage by then: a worker publishes before it reports): a note said for one job
has no reader after it, and nothing of it stays in the trial's folder.

A decision that reaches storage late costs the member the epochs its job trained meanwhile
(it publishes those: stopped early at the epoch it left the group); it was never otherwise,
since the job goes on training while the driver decides.
"""

from __future__ import annotations

import logging
import queue
import threading

from ..store.ledger import TrialFile, trial_file
from ..store.storage import Storage

log = logging.getLogger(__name__)
THREAD = "asha-stops"  # the writer thread's name


class StopNotes:
    """The members' ``stop.json`` writes and removals, queued (as data) for one writer thread,
    started at the first note. ``said``/``ended``/``close`` are called from one thread (Tune's
    loop, then the driver's end of the experiment)."""

    def __init__(self, storage: Storage):
        self.storage = storage
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.stopped: set[str] = set()  # members whose stop.json was written, not yet removed
        self.failed = 0  # writes storage refused (logged; the member then trains to its end)

    def __getstate__(self) -> dict:
        # Tuner pickles its config (the scheduler, so this, included) for Tuner.restore, which
        # kdsweep never uses: the storage only, no thread, no queue.
        return {"storage": self.storage}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["storage"])

    def said(self, key: str, job: str, epoch: int) -> None:
        """ASHA stopped member ``key`` of Tune trial ``job`` at ``epoch``: its job is told."""
        self.stopped.add(key)
        self._put(("write", key, {"job": job, "epoch": epoch}))

    def ended(self, key: str) -> None:
        """Member ``key``'s outcome was reported: its note (if one was written) is removed."""
        if key in self.stopped:
            self.stopped.discard(key)
            self._put(("delete", key, None))

    def close(self, timeout: float = 30.0) -> bool:
        """Write what is queued (for at most ``timeout`` seconds), then stop the thread; False
        if it was still writing when the time ran out (a note left is only ever read by its
        own job, which has ended)."""
        if self.thread is None:
            return True
        self.queue.put(None)
        self.thread.join(timeout)
        alive, self.thread = self.thread.is_alive(), None
        return not alive

    def _put(self, note: tuple) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._write, args=(self.queue,), daemon=True,
                                           name=THREAD)
            self.thread.start()
        self.queue.put(note)

    def _write(self, notes: queue.SimpleQueue) -> None:
        while (note := notes.get()) is not None:
            what, key, body = note
            rel = trial_file(key, TrialFile.STOP)
            try:
                if what == "write":
                    self.storage.write_json(rel, body)
                else:
                    self.storage.delete(rel)
            except Exception as e:  # a stop lost: the member trains on to its last epoch
                self.failed += 1
                log.warning("ASHA: %s of %s failed (%s)", what, self.storage.uri_of(rel),
                            str(e).strip().splitlines()[0] if str(e).strip() else
                            type(e).__name__)
