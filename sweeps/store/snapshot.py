"""A driver's run-long view of the ledger (ledger.py): each stored result read once, then kept
current by the run's own events; and ``reconcile``, the driver's repairs before it trains."""

from __future__ import annotations

import logging
import threading
from array import array
from collections.abc import Callable, Iterable

from ..domain.record import TrialResult
from .ledger import (
    RESULT_STATES,
    Ledger,
    Listing,
    Proven,
    TrialFile,
    TrialState,
    trial_file,
)
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
        # the state of each result read at load, as the listing's stamp (taken before the
        # read) found it: what state_index vouches for without reading it again
        self.proven: dict[str, TrialState] = {}

    @classmethod
    def load(cls, ledger: Ledger, keys: Iterable[str], results: bool = True,
             index: dict[str, list] | None = None) -> Snapshot:
        """The state of ``keys`` now: one listing of their files (only theirs: Ledger.listing),
        then each result it lists read once, concurrently where storage is remote (a trial
        with no result is a listing fact). ``results`` False: keep the states alone (what
        `kdsweep status` needs), no record; then ``index`` (the sweep's Ledger.state_index)
        gives the state of each result whose file is still the one it was proven under (its
        stamp: on local storage a stat each instead of a listing), and only the others are
        listed and read."""
        keys = list(dict.fromkeys(keys))
        snap, storage = cls(ledger), ledger.storage
        index = {} if results else (index or {})
        indexed: dict[str, TrialState] = {}

        def known(key: str, stamp: list[int] | None) -> bool:
            entry = index.get(key)
            if entry is None or stamp is None or stamp != entry[:2]:
                return False
            indexed[key] = TrialState(entry[2])
            return True

        if index and storage.is_local:  # a stat is cheaper than listing the trial's folder
            ours = [k for k in keys if k in index]
            for key, stamp in zip(ours, concurrently(
                    lambda k: storage.stamp(trial_file(k, TrialFile.RESULT)), ours,
                    storage.width), strict=True):
                known(key, stamp)
        rest = [k for k in keys if k not in indexed] if indexed else keys
        listing = ledger.listing(rest, stamps=results)  # states need the names alone
        snap.listing = listing
        stored = [k for k in rest if TrialFile.RESULT in listing.names(k)
                  and not known(k, listing.stamp(k, TrialFile.RESULT))]

        def read(key: str) -> TrialResult | TrialState | None:  # what is kept, as it is read
            return held(ledger.summary(key)) if results else ledger.stored_state(key)

        found = dict(zip(stored, concurrently(read, stored, ledger.storage.width), strict=True))
        for key in keys:
            if key in indexed:
                snap.states[key] = indexed[key]
                continue
            r = found.pop(key, None)
            if isinstance(r, TrialState):
                snap.states[key] = r
            else:
                snap.states[key] = ledger.state(key, r, listing.names(key))
                snap.results[key] = r
                if r is not None:  # proven as the listing stamped it (state_index)
                    snap.proven[key] = snap.states[key]
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


def state_index(snapshot: Snapshot, keys: Iterable[str]) -> dict[str, list]:
    """What a run leaves for `kdsweep status` (Ledger.save_state_index): key -> [size,
    mtime_ns, state] of each of ``keys``' stored results, with the stamp its file had before
    its state was read from it, so a reader that finds another stamp reads the file again
    (never the other way round). A result the snapshot read at load, its state unchanged
    since: the listing's stamp; one that ended in this run (or changed): its stamp, then its
    state read from the file (a stat or HEAD and a read per such trial)."""
    ledger, listing = snapshot.ledger, snapshot.listing
    out, fresh = {}, []
    for key in keys:
        state = snapshot.states.get(key)
        if state not in RESULT_STATES:
            continue
        stamp = listing.stamp(key, TrialFile.RESULT) if listing and listing.covers(key) else None
        if stamp is not None and snapshot.proven.get(key) == state:
            out[key] = [*stamp, str(state)]
        else:
            fresh.append(key)

    def prove(key: str) -> tuple[list[int] | None, TrialState | None]:
        stamp = ledger.storage.stamp(trial_file(key, TrialFile.RESULT))
        return stamp, (ledger.stored_state(key) if stamp is not None else None)

    for key, (stamp, state) in zip(fresh, concurrently(prove, fresh, ledger.storage.width),
                                   strict=True):
        if stamp is not None and state is not None:
            out[key] = [*stamp, str(state)]
    return out


class Loading:
    """``Snapshot.load`` in a thread of its own, started where the driver's start-up begins
    and joined where its result first decides something: the listing (a root shared by many
    sweeps lists for seconds at 50 ms a request) runs while the driver takes its lease and
    starts Ray, which it does either way. Reads only (``repair`` False ledgers)."""

    def __init__(self, ledger: Ledger, keys: Iterable[str]):
        keys = list(keys)
        self._snapshot: Snapshot | None = None
        self._error: BaseException | None = None

        def load() -> None:
            try:
                self._snapshot = Snapshot.load(ledger, keys)
            except BaseException as e:  # raised where the driver joins, as it was raised here
                self._error = e

        self._thread = threading.Thread(target=load, name="kdsweep-snapshot", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """The listing ended (on an error path too: never left running past its caller)."""
        self._thread.join()

    def join(self) -> Snapshot:
        """The snapshot, or what its loading raised (a storage error: one line, as before)."""
        self.wait()
        if self._error is not None:
            raise self._error
        assert self._snapshot is not None
        return self._snapshot


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
