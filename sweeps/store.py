"""TrialStore: the one owner of where a trial's files live in storage and what its outcome is.

Layout under the storage root (trials are shared by every sweep that stores there):
    trials/<key>/result.json       the TrialResult: written last, its presence means "ended"
    trials/<key>/model.pt          the trained model (what the next generation distils from)
    trials/<key>/analysis.json     distributions of the paper's analyses of the final model
    trials/<key>/bank-<dtype>.pt   the teacher-logit bank of a trained model (teacher_bank.py)
    trials/<key>/bank-<dtype>.json its size and SHA-256 (a node's fetched copy is checked)
    trials/<key>/failed.json       the error of a trial that failed for good
    trials/<key>/progress.json     the last epoch of a running trial that is in storage
    trials/<key>/attempts.json     starts and errors (resume.Attempts)
    trials/<key>/checkpoint-{a,b}.pt  the trial's own checkpoints (resume.TrialCheckpoints)
    sweeps/<name>/<cluster>/trials.json      every trial the sweep knows (sampled ones too)
    sweeps/<name>/<cluster>/results.parquet  one row per trial
    sweeps/<name>/<cluster>/tune/            Ray Tune's experiment state
(Trials are shared by every cluster that stores here; a sweep's own files are per cluster.)

Outcomes, in order of precedence: done (a result: with a model when trained to the end; without
one when ASHA stopped it early), diverged (a result without a model: a non-finite loss or
metric), failed (failed.json), running (progress.json), pending.
"""

from __future__ import annotations

import logging
import os
import time

from .record import TrialResult
from .storage import Storage

log = logging.getLogger(__name__)
STATES = ("done", "running", "pending", "failed", "diverged")


def trial_file(key: str, name: str) -> str:
    return f"trials/{key}/{name}"


def quarantine(storage: Storage, rel: str, why: str) -> None:
    """Move a corrupt file aside (kept for a post-mortem) so that what it held is derived again."""
    dest = f"{rel}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
    log.warning("%s: %s; moved aside to %s", storage.uri_of(rel), why, dest)
    try:
        storage.write_bytes(dest, storage.read_bytes(rel))
    finally:
        storage.delete(rel)


def read_json_checked(storage: Storage, rel: str) -> dict | None:
    """A JSON file from storage, or None when it is missing or corrupt (then quarantined)."""
    try:
        data = storage.read_json(rel)
    except (ValueError, UnicodeDecodeError) as e:
        quarantine(storage, rel, f"not valid JSON ({e})")
        return None
    if data is not None and not isinstance(data, dict):
        quarantine(storage, rel, "not a JSON object")
        return None
    return data


def sweep_file(spec, name: str) -> str:
    """A file of the sweep ``spec`` as run by its cluster."""
    return f"sweeps/{spec.name}/{spec.cluster}/{name}"


class TrialStore:
    def __init__(self, storage: Storage):
        self.storage = storage

    # ---- reading outcomes ------------------------------------------------------------------
    def result(self, key: str) -> TrialResult | None:
        """The trial's result record; a corrupt one is quarantined (the trial then publishes
        again from its checkpoints, or retrains what they lack)."""
        rel = trial_file(key, "result.json")
        d = read_json_checked(self.storage, rel)
        if d is None:
            return None
        try:
            return TrialResult.from_dict(d)
        except TypeError as e:
            quarantine(self.storage, rel, f"not a result record ({e})")
            return None

    def is_done(self, key: str) -> bool:
        """Ended with a valid result (trained, stopped early, diverged): never trained again."""
        return self.result(key) is not None

    def has_model(self, key: str) -> bool:
        return self.storage.exists(trial_file(key, "model.pt"))

    def failure(self, key: str) -> dict | None:
        return self.storage.read_json(trial_file(key, "failed.json"))

    def progress(self, key: str) -> dict | None:
        return self.storage.read_json(trial_file(key, "progress.json"))

    def state(self, key: str) -> str:
        """One of STATES, from storage alone (works while another process runs the sweep)."""
        if (result := self.result(key)) is not None:
            return result.state
        if self.storage.exists(trial_file(key, "failed.json")):
            return "failed"
        if self.storage.exists(trial_file(key, "progress.json")):
            return "running"  # started; an interrupted trial resumes from its checkpoint
        return "pending"

    # ---- writing outcomes ------------------------------------------------------------------
    def publish(
        self, key: str, model: bytes | None, result: TrialResult, analysis: dict | None = None
    ) -> None:
        """The model and analyses, then the result: a result in storage always has its model
        beside it (``model`` None: stopped early or diverged, no model to distil from)."""
        if model is not None:
            self.storage.write_bytes(trial_file(key, "model.pt"), model)
        if analysis is not None:
            self.storage.write_json(trial_file(key, "analysis.json"), analysis)
        self.storage.write_json(trial_file(key, "result.json"), result.to_dict())

    def analysis(self, key: str) -> dict | None:
        """The distributions of the trial's analyses (kd_core.analysis), None if absent."""
        return read_json_checked(self.storage, trial_file(key, "analysis.json"))

    def mark_failed(self, key: str, error: str, **extra) -> None:
        self.storage.write_json(
            trial_file(key, "failed.json"), {"error": error, "time": time.time(), **extra}
        )

    def clear_failure(self, key: str) -> None:
        """A rerun retries a trial that failed before."""
        self.storage.delete(trial_file(key, "failed.json"))

    def forget_result(self, key: str) -> None:
        """The trial publishes again on its next start: from its checkpoints when they hold
        every epoch (nothing retrained), else it trains what they lack."""
        self.storage.delete(trial_file(key, "result.json"))

    def reset(self, key: str) -> None:
        """Forget a trial's result and progress so that it trains again from its first epoch
        (its checkpoints would only lead it to the same end: resume is exact)."""
        for name in ("result.json", "model.pt", "progress.json", "attempts.json", "failed.json"):
            self.storage.delete(trial_file(key, name))
        for slot in ("checkpoint-a.pt", "checkpoint-b.pt"):
            self.storage.delete(trial_file(key, slot))

    def write_progress(self, key: str, epoch: int, epochs: int) -> None:
        self.storage.write_json(
            trial_file(key, "progress.json"),
            {
                "epoch": epoch,
                "epochs": epochs,
                "pid": os.getpid(),
                "node": os.uname().nodename,
                "time": time.time(),
            },
        )

    # ---- files other modules read and write through the store ------------------------------
    def model_bytes(self, key: str) -> tuple[bytes, str]:
        """The trained model's bytes and URI (for messages)."""
        rel = trial_file(key, "model.pt")
        return self.storage.read_bytes(rel), self.storage.uri_of(rel)

    def model_uri(self, key: str) -> str:
        return self.storage.uri_of(trial_file(key, "model.pt"))

    def bank_file(self, key: str, dtype: str) -> str:
        return trial_file(key, f"bank-{dtype}.pt")

    def has_bank(self, key: str, dtype: str) -> bool:
        return self.storage.exists(self.bank_file(key, dtype))

    # ---- sweep-level files -----------------------------------------------------------------
    def trial_list(self, spec) -> list[dict] | None:
        """Every trial the sweep's last run knew (sampled ones too); None when missing or
        corrupt (quarantined: the plan and the stored results give it again)."""
        trials = (read_json_checked(self.storage, sweep_file(spec, "trials.json")) or {}).get(
            "trials"
        )
        return trials if isinstance(trials, list) else None

    def save_trial_list(self, spec, trials: list[dict]) -> None:
        self.storage.write_json(sweep_file(spec, "trials.json"), {"trials": trials})

    @staticmethod
    def results_file(spec) -> str:
        return sweep_file(spec, "results.parquet")

    def tune_location(self, spec):
        return self.storage.tune_location(sweep_file(spec, "tune"))
