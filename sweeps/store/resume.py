"""What lets a trial survive preemption: its own checkpoints in storage, attempt accounting,
and a last checkpoint on SIGTERM.

Why not Tune's checkpoints: Tune keeps them per experiment and per Tune trial, but our trials are
content-addressed and outlive any one Tune experiment (a rerun after a driver kill, or a wider
grid, runs a new experiment holding the same trial). A checkpoint under the trial's key in
storage is found by whichever experiment, node or retry runs the trial next. Tune still does
what it is good at: scheduling, and retrying a trial whose node died (FailureConfig).
"""

from __future__ import annotations

import atexit
import logging
import threading
import time

from kd_core.checkpoint import CheckpointError, checkpoint_bytes, load_checkpoint
from kd_core.seal import sealed_digest
from kd_core.train import load_model

from .ledger import (
    CHECKPOINTS,
    Ledger,
    TrialFile,
    flag_corrupt,
    move_aside,
    read_json_checked,
    trial_file,
)
from .storage import Storage

log = logging.getLogger(__name__)


class TrialCheckpoints:
    """Two alternating slots, each written atomically: a corrupt newest one falls back to the
    previous good one. A save may upload in the background, one upload at a time, so the next
    epoch trains while the last one uploads (a kill then loses at most the epoch in flight and
    the one uploading); ``on_saved(epoch)`` runs once that epoch is in storage; ``guard()``
    runs before each write and raises once the trial is no longer this worker's (its claim).
    ``repair``: a corrupt slot is moved aside (the trial's own worker), else only flagged (a
    reader)."""

    def __init__(self, storage: Storage, key: str, on_saved=None, repair: bool = True,
                 guard=None):
        self.storage, self.key, self.repair = storage, key, repair
        self.on_saved = on_saved or (lambda epoch: None)
        self.guard = guard or (lambda: None)
        self.saved_epoch = 0
        self._next = 0  # the slot the next save overwrites: never the one holding the newest
        self._pending: tuple[int, bytes] | None = None
        self._lock = threading.Lock()  # writes come from the uploader and the exit path
        self._upload: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, state: dict, background: bool = False) -> None:
        # Serialised here, on the trial's thread: a snapshot that training can move on from.
        self._put(int(state["epoch"]), checkpoint_bytes(state), background)

    def remember(self, state: dict) -> None:
        """Hold an epoch-boundary state that is not yet saved (checkpoint_every > 1), as bytes:
        a state dict's tensors are the live weights, which the next epoch changes."""
        self._pending = (int(state["epoch"]), checkpoint_bytes(state))

    def wait(self) -> None:
        """Until the upload in flight is in storage; an upload's error is raised here."""
        if self._upload is not None:
            self._upload.join()
            self._upload = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def flush(self) -> int | None:
        """Make storage hold the newest epoch-boundary state (before publishing, SIGTERM, exit);
        returns the epoch written here, if any."""
        self.wait()
        pending = self._pending
        if pending is not None and pending[0] > self.saved_epoch:
            self._put(*pending, background=False)
            return pending[0]
        return None

    def _put(self, epoch: int, data: bytes, background: bool) -> None:
        self.wait()  # one upload at a time, in epoch order
        if not background:
            self._write(epoch, data)
            return
        self._upload = threading.Thread(
            target=self._write_catching, args=(epoch, data), name="checkpoint", daemon=True
        )
        self._upload.start()

    def _write_catching(self, epoch: int, data: bytes) -> None:
        try:
            self._write(epoch, data)
        except BaseException as e:  # handed to the trial's thread at its next wait()
            self._error = e

    def _write(self, epoch: int, data: bytes) -> None:
        with self._lock:
            self.guard()
            self.storage.write_bytes(trial_file(self.key, CHECKPOINTS[self._next]), data)
            self._next = 1 - self._next
            self.saved_epoch = epoch
            if self._pending is not None and self._pending[0] <= epoch:
                self._pending = None
        self.on_saved(epoch)

    def load_latest(self) -> dict | None:
        """The newest checkpoint that loads; a corrupt one is skipped with a warning."""
        found = []
        for i, slot in enumerate(CHECKPOINTS):
            rel = trial_file(self.key, slot)
            if not self.storage.exists(rel):
                continue
            try:
                state = load_checkpoint(self.storage.read_bytes(rel), self.storage.uri_of(rel))
            except CheckpointError as e:  # the other slot, or epoch 0, is the last good state
                (move_aside if self.repair else flag_corrupt)(self.storage, rel, str(e))
                continue
            found.append((int(state["epoch"]), i, state))
        if not found:
            return None
        epoch, slot, state = max(found, key=lambda f: f[0])
        self.saved_epoch, self._next = epoch, 1 - slot
        return state


def trained_model(storage: Storage, key: str):
    """The model of finished trial ``key`` (a teacher), loaded without executing code, reading
    only (the caller is another trial's worker). A model file that is missing or corrupt is
    read from the trial's final checkpoint, which holds the same weights; a corrupt one is
    flagged, for the driver to move aside, and the next run's reconcile (snapshot.py) has the
    trial publish it again. CheckpointError when the checkpoints lack the final epoch too (the
    next run trains the rest of the trial)."""
    reader = Ledger(storage, repair=False)
    rel = trial_file(key, TrialFile.MODEL)
    result = reader.summary(key)
    if storage.exists(rel):
        try:
            data, uri = reader.model_bytes(key)
            published = (result.model_file or {}) if result is not None else {}
            if published.get("sha256") not in (None, sealed_digest(data)):
                raise CheckpointError(f"checkpoint {uri} is not the model its result "
                                      "published (another SHA-256)")
            return load_model(data, uri)  # its seal proven: every byte read is checked
        except CheckpointError as e:
            flag_corrupt(storage, rel, str(e))
    state = TrialCheckpoints(storage, key, repair=False).load_latest()
    if state is None or result is None or int(state["epoch"]) != result.epochs:
        raise CheckpointError(
            f"{reader.model_uri(key)}: missing or corrupt, and the trial's checkpoints lack its "
            "final epoch; the next run trains the trial again"
        )
    log.warning("%s: missing or corrupt; read from the trial's final checkpoint (the next run "
                "publishes it again)", reader.model_uri(key))
    model = {"model_spec": state["model_spec"], "model": state["model"], "trial": result.trial}
    return load_model(checkpoint_bytes(model), reader.model_uri(key))


class Attempts:
    """Counts a trial's starts and its own errors, so preemptions (a start that follows neither
    an error nor nothing) are told apart from real failures."""

    def __init__(self, storage: Storage, key: str):
        self.storage, self.rel = storage, trial_file(key, TrialFile.ATTEMPTS)
        fresh = {"starts": 0, "errors": 0, "resumed_from": []}
        self.data = read_json_checked(storage, self.rel) or fresh
        if not fresh.keys() <= self.data.keys():  # valid JSON, not ours: count afresh
            self.data = fresh

    def start(self, resumed_from_epoch: int) -> None:
        self.data.setdefault("first_start", time.time())
        self.data["starts"] += 1
        self.data["resumed_from"].append(resumed_from_epoch)
        self.storage.write_json(self.rel, self.data)

    def error(self, text: str) -> int:
        self.data["errors"] += 1
        self.data["last_error"] = text
        self.storage.write_json(self.rel, self.data)
        return self.data["errors"]

    @property
    def preemptions(self) -> int:
        return max(0, self.data["starts"] - 1 - self.data["errors"])


def flush_on_exit(checkpoints: TrialCheckpoints):
    """Register a final flush; Ray turns SIGTERM into SystemExit, so exit handlers run."""

    def flush():
        if (epoch := checkpoints.flush()) is not None:
            log.warning("trial %s: saved epoch %d on exit", checkpoints.key, epoch)

    atexit.register(flush)
    return lambda: atexit.unregister(flush)
