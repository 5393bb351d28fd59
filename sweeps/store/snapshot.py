"""A driver's run-long view of the ledger (ledger.py): each stored result read once, then kept
current by the run's own events; and ``reconcile``, the driver's repairs before it trains."""

from __future__ import annotations

import logging
from array import array
from collections.abc import Callable, Iterable

from ..domain.record import TrialResult
from .ledger import Ledger, Listing, Proven, TrialFile, TrialState, trial_file
from .storage import concurrently

log = logging.getLogger(__name__)


def held(result: TrialResult | None) -> TrialResult | None:
    """What a snapshot holds of a result: its summary (no history: TrialResult.summary), its
    test accuracy curve as packed floats where every epoch was evaluated (8 bytes an epoch,
    not a list of float objects)."""
    if result is None:
        return None
    result = result.summary()
    curve = result.test_acc_curve
    if isinstance(curve, list) and all(type(v) is float for v in curve):
        result.test_acc_curve = array("d", curve)
    return result


class Snapshot:
    """A driver's view of its trials: each stored result read once per run (its summary:
    Ledger.summary, never its history), then kept current by the run's own events, in memory.
    ``listing``: the trials' files when it was loaded."""

    def __init__(self, ledger: Ledger, listing: Listing | None = None):
        self.ledger, self.listing = ledger, listing
        self.results: dict[str, TrialResult | None] = {}
        self.states: dict[str, TrialState] = {}

    @classmethod
    def load(cls, ledger: Ledger, keys: Iterable[str], results: bool = True) -> Snapshot:
        """The state of ``keys`` now: one listing of their files (only theirs: Ledger.listing),
        then each result it lists read once, concurrently where storage is remote (a trial
        with no result is a listing fact). ``results`` False: keep the states alone (what
        `kdsweep status` needs), no record."""
        keys = list(dict.fromkeys(keys))
        listing = ledger.listing(keys, stamps=results)  # states need the names alone
        snap = cls(ledger, listing)
        stored = [k for k in keys if TrialFile.RESULT in listing.names(k)]

        def read(key: str) -> TrialResult | TrialState | None:  # what is kept, as it is read
            r = ledger.summary(key)
            return held(r) if results or r is None else TrialState(r.state)

        found = dict(zip(stored, concurrently(read, stored, ledger.storage.width), strict=True))
        for key in keys:
            r = found.pop(key, None)
            if isinstance(r, TrialState):
                snap.states[key] = r
            else:
                snap.states[key] = ledger.state(key, r, listing.names(key))
                snap.results[key] = r
        if not results:  # the states stand for every key: never read again one by one
            snap.results = dict.fromkeys(keys)
            snap.listing = None
        return snap

    def result(self, key: str) -> TrialResult | None:
        """The trial's record as held: its summary (its history: Ledger.history)."""
        if key not in self.results:
            self.results[key] = r = held(self.ledger.summary(key))
            self.states[key] = self.ledger.state(key, r)
        return self.results[key]

    def reread(self, key: str) -> TrialResult | None:
        self.results.pop(key, None)
        return self.result(key)

    def state(self, key: str) -> TrialState:
        self.result(key)
        return self.states[key]

    def set(self, key: str, state: TrialState, result: TrialResult | None = None) -> None:
        """An event of this run: the trial is now in ``state`` (with its record once ended:
        its summary is held)."""
        self.states[key], self.results[key] = state, held(result)

    def ended(self) -> set[str]:
        """Keys known to hold a result."""
        return {k for k, r in self.results.items() if r is not None}

    def has_bank(self, key: str, dtype: str) -> bool:
        """Whether trained teacher ``key``'s bank was stored when the snapshot was taken."""
        if self.listing is None or not self.listing.covers(key):
            return self.ledger.has_bank(key, dtype)
        return self.ledger.bank_file(key, dtype).rsplit("/", 1)[1] in self.listing.names(key)


def reconcile(
    snapshot: Snapshot,
    trials: Iterable,
    retry_failed: bool,
    check_lease: Callable[[], None],
    teachers: Iterable[str] = (),
) -> None:
    """The driver's repairs before it trains, each under its lease (``check_lease`` raises once
    another driver holds it): from here on the snapshot's ledger repairs what it reads. Of
    ``trials`` (plan.Trial): a diverged one is reset when ``retry_failed``; a finished one (of
    ``trials``, or of ``teachers``: optuna's) whose model is gone or fails its SHA-256 forgets
    its result, so it publishes again from its checkpoints, else retrains; one that failed
    before is retried."""
    ledger, trials = snapshot.ledger, list(trials)
    # What the snapshot found corrupt before the lease was held (read without repairing): read
    # again, now repairing (a file rewritten whole meanwhile is kept).
    ledger.repair = True
    for rel in sorted(r for r in ledger.found if r.endswith(f"/{TrialFile.RESULT}")):
        check_lease()
        snapshot.reread(rel.split("/")[1])
    ledger.found.clear()

    def repair(key: str, how: Callable[[str], None]) -> None:
        check_lease()
        how(key)
        snapshot.set(key, TrialState.PENDING)

    for t in trials:
        if retry_failed and snapshot.state(t.key) is TrialState.DIVERGED:
            repair(t.key, ledger.reset)
    # Every trained model is proven: by the listing's size against the size its result
    # published with it (no byte read: its bytes are proven in full where they are used, a
    # student loading its teacher), or, for a result stored before, by reading it and its
    # seal (concurrently). One that is gone, of another size or fails its SHA-256 is moved
    # aside and its trial forgets its result, so it publishes again from its checkpoints,
    # else trains what they lack (a teacher before its students).
    done = sorted(k for k in {t.key for t in trials} | set(teachers)
                  if snapshot.state(k) is TrialState.DONE)
    proven = Proven.load()

    def fault(key: str) -> str | None:
        record = snapshot.result(key)
        return ledger.model_fault(key, proven, snapshot.listing,
                                  record.model_file if record is not None else None)

    faults = dict(zip(done, concurrently(fault, done, ledger.storage.width), strict=True))
    proven.save()
    for key, fault in faults.items():
        if fault is None:
            continue
        if fault == "gone":
            log.warning("%s: gone; its trial publishes it again", ledger.model_uri(key))
        else:
            check_lease()
            ledger.move_aside(trial_file(key, TrialFile.MODEL), fault)
        repair(key, ledger.forget_result)
    for t in trials:
        if snapshot.state(t.key) is TrialState.FAILED:
            repair(t.key, ledger.clear_failure)
