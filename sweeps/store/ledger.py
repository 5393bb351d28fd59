"""The ledger: the one owner of a trial's state and of where its files live in storage.

Layout under the storage root (trials are shared by every sweep that stores there):
    trials/<key>/result.json       the TrialResult without its history (its scalars, and its
                                   test accuracy per epoch as text: record.curve_text): written
                                   last, its presence means "ended"
    trials/<key>/history.json      its per-epoch metrics (EpochMetrics dicts), written before
                                   it: read where they are used (MLflow's epochs), never by a
                                   driver's snapshot or `kdsweep status` (results stored before
                                   it existed hold their history inline, still read)
    trials/<key>/model.pt          the trained model (what the next generation distils from),
                                   sealed with its SHA-256 like every checkpoint (kd_core/seal.py)
    trials/<key>/analysis.json     distributions of the paper's analyses of the final model
    trials/<key>/predictions.npz   per test image: predicted class, confidence, the true class's
                                   probability, the teacher's class (kd_core.analysis.predictions),
                                   sealed as a checkpoint is
    trials/<key>/curve.png         its learning curve, drawn by its worker (curve.py)
    trials/<key>/bank-<dtype>.pt   the teacher-logit bank of a trained model (teacher_bank.py)
    trials/<key>/bank-<dtype>.json its size and SHA-256 (a node's fetched copy is checked)
    trials/<key>/failed.json       the error of a trial that failed for good
    trials/<key>/claim.lease       the claim of the worker training it (lease.TrialClaim)
    trials/<key>/progress.json     the last epoch of a running trial that is in storage
    trials/<key>/attempts.json     starts and errors (resume.Attempts)
    trials/<key>/checkpoint-{a,b}.pt  the trial's own checkpoints (resume.TrialCheckpoints)
    trials/<key>/stop.json         ASHA stopped this member of a fused job (engine.StudentASHA):
                                   the job's Tune trial id and the epoch; its job reads it;
                                   removed once the member's outcome is reported (stops.py)
    sweeps/<name>/<cluster>/trials.json      every trial the sweep knew at its run's start: its
                                             plan, and the trials earlier runs found (folded in
                                             from added/, their keys in its ``added``)
    sweeps/<name>/<cluster>/added/<key>.json a trial found during a run (sampled by optuna, or
                                             below a sampled one): one file each, not the list,
                                             until the next run's start folds it into the list
    sweeps/<name>/<cluster>/results.parquet  one row per trial
    sweeps/<name>/<cluster>/states.json      each stored result's state as the last run
                                             proved it, with the [size, mtime_ns] it had then
                                             (snapshot.state_index): `kdsweep status` reads
                                             a result only where its file is not that one
    sweeps/<name>/<cluster>/driver.lease     the driver's fenced lease (lease.DriverLease)
    sweeps/<name>/<cluster>/fusion.json      `plan --measure`'s fused / separate figures, which
                                             `fuse: auto` reads (measured.py)
(Ray Tune's experiment state is not in storage: kdsweep never restores it, so it stays on the
driver's own disk, engine.tune_dir, and costs the shared storage no request per trial.)
(Trials are shared by every cluster that stores here; a sweep's own files are per cluster.)

A trial's state (TrialState) follows from its files, in order of precedence: its result's
state (done, stopped_early, diverged), failed (failed.json), running (progress.json), claimed
(a claim and nothing trained yet), pending. `skipped` (its teacher ended not done) exists only in
a driver's run and its Parquet rows: nothing is stored for a trial that never started.

Who writes: a trial's own worker writes its own trial's files. The driver writes the sweep's
files, the result of a trial ASHA stopped (its worker was stopped before it could), a fused
member's stop.json (its job then publishes it stopped early), and
repairs trials' files only in ``reconcile``, at the start of its run, under its lease. The
driver reads each stored result once per run (snapshot.py); `kdsweep status` reads with
``repair=False`` and changes nothing. What a driver knows of many trials at once comes from one
listing of its own trials' files (``Ledger.listing``: each key's folder, or ``trials/`` whole
where that costs less), then a read of each result it lists.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
import zipfile
from collections.abc import Iterable
from enum import StrEnum

import numpy as np

from kd_core.seal import CheckpointError, SealBroken, seal, sealed_digest, unseal, unseal_json

from ..domain import faults
from ..domain.record import TrialResult, TrialState, curve_text
from .storage import Storage, WriteConflict, concurrently, node_cache

log = logging.getLogger(__name__)


class TrialFile(StrEnum):
    """Every file of a trial, by name (the layout above): the one place they are spelled."""

    RESULT = "result.json"
    HISTORY = "history.json"
    MODEL = "model.pt"
    ANALYSIS = "analysis.json"
    PREDICTIONS = "predictions.npz"
    CURVE = "curve.png"
    FAILED = "failed.json"
    CLAIM = "claim.lease"
    PROGRESS = "progress.json"
    ATTEMPTS = "attempts.json"
    CHECKPOINT_A = "checkpoint-a.pt"
    CHECKPOINT_B = "checkpoint-b.pt"
    STOP = "stop.json"  # ASHA stopped this fused job's member: {job: Tune trial id, epoch}


# the trial's two checkpoint slots, written in turn (resume.TrialCheckpoints)
CHECKPOINTS = (TrialFile.CHECKPOINT_A, TrialFile.CHECKPOINT_B)


class SweepFile(StrEnum):
    """Every file of a sweep as run by one cluster (sweeps/<name>/<cluster>/...)."""

    TRIALS = "trials.json"
    ADDED = "added"
    RESULTS = "results.parquet"
    LEASE = "driver.lease"
    STATES = "states.json"
    FUSION = "fusion.json"  # `kdsweep plan --measure`'s fused / separate figures (measured.py)


def bank_name(dtype: str) -> str:
    """The teacher-logit bank of a trained model, one per dtype."""
    return f"bank-{dtype}.pt"


def trial_file(key: str, name: TrialFile | str) -> str:
    """A trial's file: a TrialFile, or its bank (bank_name)."""
    return f"trials/{key}/{name}"


def sweep_file(spec, name: str) -> str:
    """A file of the sweep ``spec`` as run by its cluster."""
    return f"sweeps/{spec.name}/{spec.cluster}/{name}"


def digest_file(rel: str) -> str:
    """Beside each stored bank (``rel``): its size and SHA-256, to verify a fetched copy."""
    return rel.removesuffix(".pt") + ".json"


# The `extra` key of a warning that names a corrupt file of another trial (a student reading
# its teacher's model or bank): the worker only reads; its driver moves the file aside.
CORRUPT = "kdsweep_corrupt"


def predictions_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A trial's per-image test predictions (kd_core.analysis.predictions) as its
    predictions.npz: compressed numpy arrays, no pickled objects, sealed with the SHA-256 of
    the archive as a checkpoint is (kd_core/seal.py: a trailer numpy's zip reader ignores)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return seal(buf.getvalue())


def read_predictions(data: bytes, label: str = TrialFile.PREDICTIONS) -> dict[str, np.ndarray]:
    """The arrays of a predictions.npz, proven first (its seal; a file from before seals, its
    zip's CRC-32s): CheckpointError names ``label`` otherwise. No pickled object is ever
    loaded."""
    with np.load(io.BytesIO(unseal(data, label)), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def flag_corrupt(storage: Storage, rel: str, why: str) -> None:
    """Say that ``rel`` is corrupt, for whoever may repair it (Ledger.move_aside, in the driver)."""
    log.warning("%s: %s", storage.uri_of(rel), why, extra={CORRUPT: rel})


def move_aside(storage: Storage, rel: str, why: str) -> None:
    """Move a corrupt file aside (kept for a post-mortem) so that what it held is derived again."""
    dest = f"{rel}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        storage.write_bytes(dest, storage.read_bytes(rel))
    finally:
        storage.delete(rel)
    log.warning("%s: %s; moved aside to %s", storage.uri_of(rel), why, dest)


def read_json_checked(storage: Storage, rel: str, repair: bool = True,
                      found: dict | None = None) -> dict | None:
    """A JSON file from storage, its seal proven (Storage.read_json), or None when it is
    missing or corrupt: not JSON, not an object, or a byte changed under its seal (then moved
    aside, or with ``repair`` False only flagged, and noted in ``found``: rel -> why)."""

    def corrupt(why: str) -> None:
        (move_aside if repair else flag_corrupt)(storage, rel, why)
        if not repair and found is not None:
            found[rel] = why

    try:
        data = storage.read_json(rel)
    except SealBroken as e:
        return corrupt(str(e).removeprefix(f"{storage.uri_of(rel)} "))
    except (ValueError, UnicodeDecodeError) as e:
        return corrupt(f"not valid JSON ({e})")
    if data is not None and not isinstance(data, dict):
        return corrupt("not a JSON object")
    return data


class Listing:
    """Which files each trial has in storage, from one listing: key -> file name -> [size,
    mtime_ns]. A file it does not hold was not there when it was taken, for a key it
    ``covers`` (every key, or the keys it was taken for: Ledger.listing)."""

    def __init__(self, files: dict[str, list[int]], keys: set[str] | None = None):
        self.keys = keys
        self.trials: dict[str, dict[str, list[int]]] = {}
        for rel, stamp in files.items():
            _, key, name = rel.split("/", 2)
            self.trials.setdefault(key, {})[name] = stamp

    def covers(self, key: str) -> bool:
        return self.keys is None or key in self.keys

    def names(self, key: str) -> dict[str, list[int]]:
        return self.trials.get(key, {})

    def stamp(self, key: str, name: str) -> list[int] | None:
        return self.names(key).get(name)


# The states a stored result holds
RESULT_STATES = frozenset({TrialState.DONE, TrialState.STOPPED_EARLY, TrialState.DIVERGED})

# The files that tell a trial's state without a result, in order of precedence
STATE_FILES = ((TrialFile.FAILED, TrialState.FAILED), (TrialFile.PROGRESS, TrialState.RUNNING),
               (TrialFile.CLAIM, TrialState.CLAIMED))


class Proven(dict):
    """Models this node has proven (uri -> [size, mtime_ns]), kept in its cache between runs
    (storage.node_cache): a rerun reads a stored model again only when it changed. A file
    damaged in place under the same size and time is still caught where it is read (a student
    proves its teacher's model)."""

    FILE = "proven-models.json"

    @classmethod
    def load(cls) -> Proven:
        try:
            return cls(json.loads((node_cache() / cls.FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return cls()

    def save(self) -> None:
        path = node_cache() / self.FILE
        with contextlib.suppress(OSError):  # a cache: a read-only home proves every time
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(self))
            os.replace(tmp, path)


def _writer(writer_of, data: bytes) -> str | None:
    """The lease token a shared file was written under; None when it carries none (written
    before tokens) or cannot be read (corrupt: replaced by whoever holds the lease)."""
    try:
        return writer_of(data)
    except Exception:  # noqa: BLE001  a corrupt file names no writer
        return None


class Fenced(WriteConflict):
    """A shared file of the sweep was written by another driver, which holds the sweep's lease
    now: this driver lost it and may not replace that file."""


class Ledger:
    """Trials' files in one storage. ``repair``: move corrupt files aside found on reading (a
    driver under its lease, a trial's own worker); False for readers that must change nothing
    (`kdsweep status`, a driver before it holds its lease), which note what they found in
    ``found`` (rel -> why) for the driver's reconcile."""

    def __init__(self, storage: Storage, repair: bool = True):
        self.storage, self.repair = storage, repair
        self.found: dict[str, str] = {}
        # The driver's lease (lease.DriverLease), once held: the sweep's shared files are
        # written under it (write_shared).
        self.writer = None
        # The keys of the trial list this ledger wrote (save_trial_list): not added again.
        self.listed: set[str] = set()

    # ---- reading ---------------------------------------------------------------------------
    def result(self, key: str) -> TrialResult | None:
        """The trial's result record with its history (history.json, or inline in a record
        stored before it); a corrupt record is moved aside (the trial then publishes again
        from its checkpoints, or retrains what they lack)."""
        record = self._record(key)
        if record is not None and record.history is None:
            record.history = self.history(key) or []
        return record

    def summary(self, key: str) -> TrialResult | None:
        """The trial's result record without its history (TrialResult.summary): one small
        read whatever the number of epochs (a record stored with its history inline is read
        whole, its history dropped)."""
        record = self._record(key)
        return None if record is None else record.summary()

    def history(self, key: str) -> list[dict] | None:
        """The trial's per-epoch metrics, read where they are used (a record stored before
        history.json holds them inline); None when neither is there."""
        d = read_json_checked(self.storage, trial_file(key, TrialFile.HISTORY), self.repair,
                              self.found)
        if d is not None and isinstance(d.get("history"), list):
            return d["history"]
        inline = read_json_checked(self.storage, trial_file(key, TrialFile.RESULT),
                                   self.repair, self.found) or {}
        return inline.get("history") if isinstance(inline.get("history"), list) else None

    def stored_state(self, key: str) -> TrialState | None:
        """The state the trial's stored result says (its seal proven, as for summary), without
        building its record: what `kdsweep status` reads per trial; None when there is none
        (or it is corrupt: moved aside, or noted in ``found``)."""
        return self._record(key, TrialResult.stored_state)

    def _record(self, key: str, read=TrialResult.from_dict):
        rel = trial_file(key, TrialFile.RESULT)
        d = read_json_checked(self.storage, rel, self.repair, self.found)
        if d is None:
            return None
        try:
            return read(d)
        except TypeError as e:
            if self.repair:
                move_aside(self.storage, rel, f"not a result record ({e})")
            else:
                self.found[rel] = f"not a result record ({e})"
            return None

    def has_result(self, key: str) -> bool:
        """Ended with a valid result (trained, stopped early, diverged): never trained again."""
        return self._record(key) is not None

    def state(self, key: str, result: TrialResult | None = None,
              names: dict | None = None) -> TrialState:
        """The trial's state from storage alone (``result``: its record, when read already;
        ``names``: its files, from a listing, when listed already)."""
        if result is not None:
            return TrialState(result.state)
        for name, state in STATE_FILES:
            listed = names is not None and name in names
            if listed or (names is None and self.storage.exists(trial_file(key, name))):
                return state
        return TrialState.PENDING

    def listing(self, keys: Iterable[str] | None = None, stamps: bool = True) -> Listing:
        """The trials' files, from one listing of ``trials/`` (sharded by the keys' first hex
        digit once it outgrows a page). ``keys``: only these trials' (a sweep's, on a root
        every sweep shares), from one listing of each key's folder, concurrently, where that
        costs less than the root's listing (Storage.list_files, ``only``). ``stamps`` False:
        the files' names, their stamps None where they cost more (a local stat each)."""
        wanted = None if keys is None else set(keys)
        return Listing(self.storage.list_files("trials", shards="0123456789abcdef",
                                               only=wanted, stamps=stamps), wanted)

    def has_model(self, key: str) -> bool:
        return self.storage.exists(trial_file(key, TrialFile.MODEL))

    def model_fault(self, key: str, proven: Proven | None = None,
                    listing: Listing | None = None,
                    published: dict | None = None) -> str | None:
        """What is wrong with a trained model in storage: "gone", a size other than the one
        published with it, or the file fails its SHA-256 (kd_core.checkpoint.unseal); None
        when it is proven. ``published``: the size and seal's digest its result stores
        (TrialResult.model_file): the listing's size proves it, no byte read (its bytes are
        proven in full where they are used: resume.trained_model); without it (a result
        stored before) the file is read and its seal proven. ``proven``: files this node
        proved before, read again only when their size or time changed; ``listing``: the
        model's stamp, when listed already."""
        rel = trial_file(key, TrialFile.MODEL)
        stamp = (listing.stamp(key, TrialFile.MODEL) if listing and listing.covers(key)
                 else self.storage.stamp(rel))
        if stamp is None:
            return "gone"
        size = published.get("size") if isinstance(published, dict) else None
        if isinstance(size, int):
            return None if stamp[0] == size else (
                f"{stamp[0]:,} bytes where its result published {size:,}: not the model "
                "its trial stored")
        uri = self.storage.uri_of(rel)
        if proven is not None and proven.get(uri) == stamp:
            return None
        try:
            unseal(self.storage.read_bytes(rel), uri)
        except CheckpointError as e:
            return str(e)
        if proven is not None:
            proven[uri] = stamp
        return None

    def failure(self, key: str) -> dict | None:
        return read_json_checked(self.storage, trial_file(key, TrialFile.FAILED), self.repair,
                                 self.found)

    def predictions(self, key: str) -> dict | None:
        """A trial's per-image test predictions (kd_core.analysis.predictions), or None: a
        trial from before they were stored, or a file that does not read (flagged)."""
        rel = trial_file(key, TrialFile.PREDICTIONS)
        try:
            return read_predictions(self.storage.read_bytes(rel), self.storage.uri_of(rel))
        except FileNotFoundError:
            return None
        except (CheckpointError, ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
            flag_corrupt(self.storage, rel, f"not a predictions file ({e})")
            return None

    def analysis(self, key: str) -> dict | None:
        """The distributions of the trial's analyses (kd_core.analysis), None if absent."""
        return read_json_checked(self.storage, trial_file(key, TrialFile.ANALYSIS), self.repair,
                                 self.found)

    # ---- a trial's worker writes its own trial's outcome ------------------------------------
    def publish(
        self, key: str, model: bytes | None, result: TrialResult, analysis: dict | None = None,
        curve: bytes | None = None, predictions: dict | None = None,
    ) -> None:
        """The model, analyses, per-image test predictions, learning curve and history, then
        the result (without its history): a result in storage always has its model and its
        history beside it (``model`` None: stopped early or diverged, no model to distil
        from)."""
        if model is not None:
            self.storage.write_bytes(trial_file(key, TrialFile.MODEL), model)
            result.model_file = {"size": len(model), "sha256": sealed_digest(model)}
        if analysis is not None:
            self.storage.write_json(trial_file(key, TrialFile.ANALYSIS), analysis)
        if predictions is not None:
            self.storage.write_bytes(trial_file(key, TrialFile.PREDICTIONS),
                                     predictions_bytes(predictions))
        if curve is not None:
            self.storage.write_bytes(trial_file(key, TrialFile.CURVE), curve)
        record = result.to_dict()
        if record.get("test_acc_curve") is not None:
            record["test_acc_curve"] = curve_text(record["test_acc_curve"])
        history = record.pop("history")
        if history is not None:
            self.storage.write_json(trial_file(key, TrialFile.HISTORY), {"history": history})
        self.storage.write_json(trial_file(key, TrialFile.RESULT), record)

    def mark_failed(self, key: str, error: str, **extra) -> None:
        self.storage.write_json(
            trial_file(key, TrialFile.FAILED), {"error": error, "time": time.time(), **extra}
        )

    def write_progress(self, key: str, epoch: int, epochs: int) -> None:
        self.storage.write_json(
            trial_file(key, TrialFile.PROGRESS),
            {
                "epoch": epoch,
                "epochs": epochs,
                "pid": os.getpid(),
                "node": os.uname().nodename,
                "time": time.time(),
            },
        )

    # ---- the driver's repairs (reconcile, and files its workers flagged) --------------------
    def move_aside(self, rel: str, why: str) -> bool:
        """Move aside a trial's file that a worker of another trial flagged corrupt (a
        teacher's model or bank; a bank's digest goes with it). False when it is gone."""
        if not rel.startswith("trials/") or not self.storage.exists(rel):
            return False
        move_aside(self.storage, rel, why)
        if "/bank-" in rel:
            self.storage.delete(digest_file(rel))
        return True

    def clear_failure(self, key: str) -> None:
        """A rerun retries a trial that failed before."""
        self.storage.delete(trial_file(key, TrialFile.FAILED))

    def forget_result(self, key: str) -> None:
        """The trial publishes again on its next start: from its checkpoints when they hold
        every epoch (nothing retrained), else it trains what they lack."""
        self.storage.delete(trial_file(key, TrialFile.RESULT))

    def reset(self, key: str) -> None:
        """Forget a trial's result and progress so that it trains again from its first epoch
        (its checkpoints would only lead it to the same end: resume is exact)."""
        for name in (TrialFile.RESULT, TrialFile.HISTORY, TrialFile.MODEL, TrialFile.PROGRESS,
                     TrialFile.ATTEMPTS, TrialFile.FAILED, *CHECKPOINTS):
            self.storage.delete(trial_file(key, name))

    # ---- files other modules read and write through the ledger -----------------------------
    def model_bytes(self, key: str) -> tuple[bytes, str]:
        """The trained model's bytes and URI (for messages)."""
        rel = trial_file(key, TrialFile.MODEL)
        return self.storage.read_bytes(rel), self.storage.uri_of(rel)

    def model_uri(self, key: str) -> str:
        return self.storage.uri_of(trial_file(key, TrialFile.MODEL))

    def bank_file(self, key: str, dtype: str) -> str:
        return trial_file(key, bank_name(dtype))

    def has_bank(self, key: str, dtype: str) -> bool:
        return self.storage.exists(self.bank_file(key, dtype))

    # ---- sweep-level files -----------------------------------------------------------------
    def trial_list(self, spec) -> list[dict] | None:
        """Every trial the sweep's runs knew (sampled ones too): the list its last run began
        with (every trial found before it folded in: save_trial_list), and each trial added
        since (one listing, the files read concurrently); None when neither is there (a
        corrupt one is moved aside: the plan and the stored results give it again)."""
        trials = self._listed_trials(spec)[0]
        added = [t for _, _, t in self._added(spec)]
        if trials is None and not added:
            return None
        known = {t.get("key") for t in trials or []}
        return (trials or []) + [t for t in added if t.get("key") not in known]

    def _listed_trials(self, spec) -> tuple[list[dict] | None, set]:
        """The trial list's trials and the keys of those found at run time (folded in)."""
        d = read_json_checked(self.storage, sweep_file(spec, SweepFile.TRIALS), self.repair,
                              self.found) or {}
        trials = d.get("trials") if isinstance(d.get("trials"), list) else None
        trials = None if trials is None else [t for t in trials if isinstance(t, dict)]
        found = d.get("added") if isinstance(d.get("added"), list) else []
        return trials, {k for k in found if isinstance(k, str)}

    def _added(self, spec) -> list[tuple[str, str | None, dict]]:
        """The files of trials added during runs: (file, its version, the trial), read
        concurrently (a corrupt one is moved aside, or flagged: read_json_checked)."""
        folder = sweep_file(spec, SweepFile.ADDED)
        files = sorted(f for f in self.storage.list_files(folder) if f.endswith(".json"))

        def read(rel: str) -> tuple[str, str | None, dict | None]:
            data, version = self.storage.read_versioned(rel)
            try:
                d = unseal_json(json.loads(data), self.storage.uri_of(rel)) if data else None
            except (ValueError, UnicodeDecodeError):  # corrupt (SealBroken is a ValueError)
                d = read_json_checked(self.storage, rel, self.repair, self.found)
            t = d.get("trial") if isinstance(d, dict) else None
            return rel, version, t

        return [(f, v, t) for f, v, t in concurrently(read, files, self.storage.width)
                if isinstance(t, dict)]

    def state_index(self, spec) -> dict[str, list]:
        """The sweep's index of stored results' states (save_state_index): key -> [size,
        mtime_ns, state]; empty when there is none, or it is corrupt (moved aside, or with
        ``repair`` False flagged) or an entry is not of that shape (that entry left out): a
        reader then reads those results."""
        d = read_json_checked(self.storage, sweep_file(spec, SweepFile.STATES), self.repair,
                              self.found) or {}
        trials = d.get("trials") if isinstance(d.get("trials"), dict) else {}
        return {k: e for k, e in trials.items()
                if isinstance(e, list) and len(e) == 3 and all(type(x) is int for x in e[:2])
                and e[2] in RESULT_STATES}

    def save_state_index(self, spec, entries: dict[str, list], fence: int | None = None
                         ) -> None:
        """Write the sweep's index of stored results' states (snapshot.state_index), under the
        driver's lease like every shared file of the sweep (write_shared)."""
        self._write_shared_json(sweep_file(spec, SweepFile.STATES),
                                {"fence": fence, "trials": entries}, indent=None)

    def save_added_trial(self, spec, trial: dict, fence: int | None = None) -> None:
        """A trial found during a run, in a file of its own (O(1) per trial, where rewriting
        the list was O(trials)); ``fence`` as for the list. Nothing for a trial the list this
        ledger wrote holds already (a rerun's sampler finds its earlier samples again)."""
        if trial["key"] in self.listed:
            return
        rel = f"{sweep_file(spec, SweepFile.ADDED)}/{trial['key']}.json"
        self._write_shared_json(rel, {"fence": fence, "trial": trial})

    def save_trial_list(self, spec, trials: list[dict], fence: int | None = None) -> None:
        """The run's trial list, written at its start under its lease: ``trials`` (its plan),
        then every trial earlier runs found (sampled) that the list held or added/ holds, in
        the list's ``added``; the added/ files folded in are removed after, each only if it is
        still the version read (a crash between the write and the removal leaves them to be
        folded again, which changes nothing: folding is idempotent). ``fence``: the number of
        the driver lease it is written under (carried, with the lease's token, to tell which
        driver wrote it: write_shared)."""
        before, found = self._listed_trials(spec)
        files = self._added(spec)
        listed, added = {t.get("key") for t in trials}, []
        for t in [t for t in before or [] if t.get("key") in found] + [t for _, _, t in files]:
            if t.get("key") not in listed:
                listed.add(t.get("key"))
                added.append(t)
        self._write_shared_json(sweep_file(spec, SweepFile.TRIALS), {
            "fence": fence, "trials": trials + added, "added": [t["key"] for t in added]})
        self.listed = listed
        faults.reached("added-folded")
        for rel, version, _ in files:
            if version is not None:
                self.storage.delete_if(rel, version)  # one changed since is folded next time

    def _write_shared_json(self, rel: str, obj: dict, indent: int | None = 1) -> None:
        token = self.writer.token if self.writer is not None else None
        self.write_shared(rel, lambda: self.storage.json_bytes({**obj, "token": token}, indent),
                          lambda data: (json.loads(data) or {}).get("token"))

    def write_shared(self, rel: str, render, writer_of) -> None:
        """Write a shared file of the sweep (the trial list, an added trial, the results)
        under this driver's lease, so that a driver that lost it cannot replace what its
        successor wrote: the file's version is read, and the write lands only on that version
        (Storage.write_if: the storage decides) and only if the file is this driver's own
        (``writer_of(bytes)``: the lease token it was written under) or the lease is still
        this driver's now. A driver paused between its check and its write finds the version
        changed, reads its successor's token, and is told (the lease's ``on_lost``: it stops,
        exit 3) or gets Fenced. ``render()``: the bytes. Without a lease (tests, tools): a plain
        write."""
        lease = self.writer
        if lease is None:
            self.storage.write_bytes(rel, render())
            return
        name = rel.rsplit("/", 2)[-2] if "/added/" in rel else rel.rsplit("/", 1)[-1]
        while True:
            data, version = self.storage.read_versioned(rel)
            if data is not None and _writer(writer_of, data) != lease.token and not lease.mine():
                held = lease.read()[0]
                lease.lose(held)  # the driver stops here (on_lost), else:
                raise Fenced(f"{self.storage.uri_of(rel)}: written by another driver, which "
                             "holds the sweep's lease now; this driver lost it and stops")
            faults.reached("shared-write", name)
            try:
                self.storage.write_if(rel, render(), version)
                return
            except WriteConflict:
                continue  # changed since read: whose it is now decides

    @staticmethod
    def results_file(spec) -> str:
        return sweep_file(spec, SweepFile.RESULTS)

