"""The driver's record keeper stepped by hand: how each way a job can end (its worker's
message, or none) lands in the snapshot, storage and MLflow, on a real ledger (local storage)
and a real MLflow store; no Ray, no training."""

import io
from pathlib import Path

import pytest
from mlflow import MlflowClient

from sweeps.app.events import SweepEvents
from sweeps.app.progress import Progress
from sweeps.domain.plan import build_plan
from sweeps.domain.record import TrialResult
from sweeps.domain.spec import parse_spec
from sweeps.store.ledger import Ledger, TrialFile, TrialState, trial_file
from sweeps.store.snapshot import Snapshot
from sweeps.store.storage import Storage
from sweeps.tracking.tracker import Tracker

EPOCHS = 4
EPOCH = {"epoch": 2, "train_loss": 0.7, "test_acc": 0.6}
TUNE = {"pid": 123, "timestamp": 1, "time_this_iter_s": 0.1, "trial_id": "x"}


@pytest.fixture
def driver(tmp_path):
    """(events, ledger, snapshot, the teacher and its student, MLflow client and experiment)."""
    spec = parse_spec({
        "name": "events", "dataset": {"name": "digits"}, "chains": [["cnn-small", "cnn-small"]],
        "train": {"epochs": EPOCHS},
        "grid": {"loss": ["kl"], "tau": [4], "seeds": [0], "baselines": False},
        "storage": str(tmp_path / "store"), "tracking_uri": f"sqlite:///{tmp_path / 'm.db'}",
    })
    plan = build_plan(spec)
    ledger = Ledger(Storage(spec.storage))
    snapshot = Snapshot.load(ledger, [t.key for t in plan.trials])
    tracker = Tracker(spec, ledger.storage)
    events = SweepEvents(plan, snapshot, tracker, Progress(plan, snapshot.state, io.StringIO()))
    teacher, student = plan.trials
    try:
        yield events, ledger, snapshot, teacher, student, tracker
    finally:
        tracker.shutdown()


def run_of(tracker, key):
    tracker.flush()
    runs = tracker.client.search_runs([tracker.experiment_id], f"tags.`kdsweep.key` = '{key}'")
    assert len(runs) == 1
    return runs[0]


def test_an_outcome_reads_the_stored_result_once_and_ends_the_run(driver):
    events, ledger, snapshot, teacher, _, tracker = driver
    record = TrialResult.from_history(teacher.to_dict(), [EPOCH], state="diverged",
                                      reason="epoch 2: nan", cluster="local", sweep="events")
    ledger.publish(teacher.key, None, record)
    events.started(teacher)
    events.ended(teacher, TrialState.DIVERGED.value, None, {**EPOCH, **TUNE}, False)
    assert snapshot.state(teacher.key) is TrialState.DIVERGED
    assert snapshot.result(teacher.key).reason == "epoch 2: nan"
    run = run_of(tracker, teacher.key)
    assert run.info.status == "FAILED" and run.data.tags["kdsweep.state"] == "diverged"


def test_failed_for_good_is_taken_from_the_message(driver):
    events, ledger, snapshot, teacher, _, tracker = driver
    events.started(teacher)
    events.ended(teacher, TrialState.FAILED.value, "Traceback: boom", {}, False)
    assert snapshot.state(teacher.key) is TrialState.FAILED
    assert ledger.failure(teacher.key) is None  # the worker stores its failure, not the driver
    run = run_of(tracker, teacher.key)
    assert run.info.status == "FAILED"
    text = MlflowClient(tracker.spec.tracking_uri).download_artifacts(run.info.run_id,
                                                                       "error.txt")
    assert Path(text).read_text() == "Traceback: boom"


def test_stopped_by_asha_publishes_the_last_epoch_and_nothing_of_tune(driver):
    events, ledger, snapshot, _, student, tracker = driver
    events.started(student)
    events.ended(student, None, None, {**EPOCH, **TUNE, "kdsweep": {}}, True)
    stored = ledger.result(student.key)
    assert stored.state == TrialState.STOPPED_EARLY and stored.epochs == 2
    assert stored.history == [EPOCH]  # Tune's bookkeeping and the message are not the trial's
    assert snapshot.state(student.key) is TrialState.STOPPED_EARLY
    assert not ledger.has_model(student.key)


def test_a_silent_end_is_its_stored_failure_or_a_failure_that_names_the_storage(driver):
    events, ledger, snapshot, teacher, student, tracker = driver
    ledger.mark_failed(teacher.key, "killed between its failure and its report")
    events.started(teacher)
    events.ended(teacher, None, None, {}, False)
    assert snapshot.state(teacher.key) is TrialState.FAILED

    # every epoch reported, no result and no failure in storage: storage is not shared
    events.started(student)
    events.ended(student, None, None, {**EPOCH, "epoch": EPOCHS}, True)
    assert snapshot.state(student.key) is TrialState.FAILED
    assert "storage must be shared" in ledger.failure(student.key)["error"]
    assert not ledger.storage.exists(trial_file(student.key, TrialFile.RESULT))


def test_an_outcome_whose_result_storage_lacks_is_a_failure_naming_the_storage(driver):
    events, ledger, snapshot, teacher, _, tracker = driver
    events.started(teacher)
    events.ended(teacher, TrialState.DONE.value, None, {**EPOCH, "epoch": EPOCHS}, False)
    assert snapshot.state(teacher.key) is TrialState.FAILED
    assert ledger.storage.uri in ledger.failure(teacher.key)["error"]
