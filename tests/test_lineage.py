"""Lineage comes from the trial's record, never from gaps in MLflow (issue 18): a trial this
cluster's sweep trained, whose epochs an MLflow outage kept from its run, is found again on the
rerun as its own (not reused) and its epochs are filled in from the stored history; a trial
another cluster trained is tagged reused, naming that cluster."""

from mlflow.tracking import MlflowClient

from sweeps.domain.plan import build_plan
from sweeps.domain.record import TrialResult
from sweeps.domain.spec import parse_spec
from sweeps.store.storage import Storage
from sweeps.tracking.tracker import Tracker

HISTORY = [{"epoch": e, "train_loss": 1.0 / e, "test_acc": 0.5 + e / 10} for e in (1, 2, 3)]


def setup(tmp_path):
    spec = parse_spec({
        "name": "lineage", "cluster": "here", "dataset": {"name": "digits"},
        "chains": [["cnn-small", "cnn-small"]], "grid": {"seeds": [0, 1, 2]},
        "storage": str(tmp_path / "store"), "tracking_uri": f"sqlite:///{tmp_path / 'm.db'}",
    })
    return spec, Tracker(spec, Storage(spec.storage)), build_plan(spec).generations[0]


def finish_found_in_storage(tracker, trial, **record) -> dict:
    """What the rerun's driver does with a trial it finds done in storage (events.reused)."""
    tracker.ensure_run(trial)
    result = TrialResult.from_history(trial.to_dict(), HISTORY, **record)
    tracker.finish(trial.key, result, reused=True)
    assert tracker.flush(30)
    run = tracker.client.get_run(tracker.runs[trial.key])
    steps = [m.step for m in tracker.client.get_metric_history(run.info.run_id, "train_loss")]
    return {"tags": run.data.tags, "steps": sorted(steps), "status": run.info.status}


def test_lineage_is_the_records_not_inferred_from_what_mlflow_lacks(tmp_path):
    spec, tracker, (own, other, old) = setup(tmp_path)
    # trained by this cluster's own sweep; the outage left its run without epochs
    mine = finish_found_in_storage(tracker, own, cluster="here", sweep="lineage")
    assert "kdsweep.reused" not in mine["tags"] and "kdsweep.trained_by" not in mine["tags"]
    assert mine["steps"] == [1, 2, 3] and mine["status"] == "FINISHED"  # from its history
    # trained by another cluster sharing the storage
    theirs = finish_found_in_storage(tracker, other, cluster="there", sweep="lineage")
    assert theirs["tags"]["kdsweep.reused"] == "true"
    assert theirs["tags"]["kdsweep.trained_by"] == "there"
    # a record from before records named their sweep: as before, a run without epochs
    before = finish_found_in_storage(tracker, old, cluster="here")
    assert before["tags"]["kdsweep.reused"] == "true"
    tracker.close()
    assert MlflowClient(spec.tracking_uri).get_run(tracker.parent_id).info.status == "FINISHED"
    assert not tracker.writer.alive()  # nothing of the tracker outlives its sweep


def test_backfill_is_a_function_of_the_history_and_the_steps_mlflow_holds():
    from sweeps.tracking.names import unlogged

    history = [{"epoch": 1, "train_loss": 2.0, "test_acc": 0.5, "pid": 7},
               {"epoch": 2, "train_loss": float("nan"), "test_acc": 0.6},
               {"epoch": 3, "train_loss": 1.0}]
    logged = {1}
    sent = unlogged(history, logged)
    assert sorted((m.step, m.key, m.value) for m in sent) == [
        (2, "test_acc", 0.6), (3, "train_loss", 1.0)]  # no step twice, nothing non-finite
    assert logged == {1, 2, 3} and unlogged(history, logged) == []


def test_trial_runs_are_rows_and_runs_made_under_mlflows_parent_tag_are_still_found(tmp_path):
    spec, tracker, (new, old, _) = setup(tmp_path)
    tracker.ensure_run(new)
    assert tracker.flush(30)
    tags = tracker.client.get_run(tracker.runs[new.key]).data.tags
    assert tags["kdsweep.sweep_run"] == tracker.parent_id and "mlflow.parentRunId" not in tags
    # a run an earlier version made, as a child under MLflow's parent tag
    before = tracker.client.create_run(tracker.experiment_id, tags={
        "mlflow.parentRunId": tracker.parent_id, "kdsweep.key": old.key,
        "kdsweep.role": "trial"}).info.run_id
    tracker.close()
    again = Tracker(spec, Storage(spec.storage))  # the rerun's tracker
    assert again.flush(30)  # its search of the runs made before, in a thread of its own
    assert again.runs == {new.key: tracker.runs[new.key], old.key: before}  # no second run
    again.close()
