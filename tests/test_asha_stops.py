"""ASHA's stops of a fused job's members (engine.StudentASHA, stops.StopNotes): decided in
Tune's loop, written to storage by a thread of their own, removed once the member ended.
StudentASHA is driven here as Tune's controller drives it (on_trial_result with each report,
in one thread: this test's), over real local storage whose writes are held at a gate."""

import threading

from ray.tune.experiment import Trial as TuneTrial

from sweeps.domain.plan import build_plan
from sweeps.domain.scheduler import Job
from sweeps.domain.spec import parse_spec
from sweeps.ray.engine import StudentASHA
from sweeps.ray.stops import THREAD
from sweeps.store.ledger import TrialFile, TrialState, trial_file
from sweeps.store.storage import Storage
from testkit import HANG

EPOCHS = 4


class GatedStorage(Storage):
    """Local storage whose writes and deletes say which thread made them; a write off the
    calling (Tune's) thread waits at ``gate``, so the caller goes on only if it never waits."""

    def __init__(self, root: str, loop: threading.Thread):
        super().__init__(root)
        self.loop, self.gate, self.calls = loop, threading.Event(), []

    def _called(self, what: str, rel: str) -> None:
        self.calls.append((what, rel, threading.current_thread().name))
        if threading.current_thread() is not self.loop:  # in Tune's loop it would hang it
            assert self.gate.wait(HANG)

    def write_bytes(self, rel: str, data: bytes) -> None:
        self._called("write", rel)
        super().write_bytes(rel, data)

    def delete(self, rel: str) -> None:
        self._called("delete", rel)
        super().delete(rel)


def test_asha_stop_notes_are_written_and_removed_off_tunes_loop(tmp_path):
    spec = parse_spec({
        "name": "stops", "dataset": {"name": "digits", "validation": 0.2},
        "chains": [["cnn-small", "cnn-small"]],
        "train": {"epochs": EPOCHS, "batch_size": 64, "lr": 0.02},
        "grid": {"loss": ["kl"], "tau": [0.5, 1, 2, 4, 8, 20], "seeds": [0],
                 "baselines": False},
        "search": {"type": "grid", "asha": {"grace_period": 1, "reduction_factor": 3}},
        "storage": str(tmp_path / "store"), "tracking_uri": f"sqlite:///{tmp_path / 'm.db'}",
    })
    members = [t for t in build_plan(spec).trials if t.generation == 1]
    job = TuneTrial("run_job", config=Job("train", members[0], tuple(members[1:])).config(),
                    stub=True)
    storage = GatedStorage(spec.storage, threading.current_thread())
    asha = StudentASHA(spec.search, EPOCHS, storage)
    metric = spec.search.metric

    def report(key: str, **fields) -> str:
        return asha.on_trial_result(None, job, {**fields, "kdsweep": {"member": key}}
                                    if "outcome" not in fields else
                                    {"kdsweep": {"member": key, "outcome": fields["outcome"]}})

    # epoch 1, each member worse than the last: ASHA stops the later ones at its first rung
    for i, t in enumerate(members):
        assert report(t.key, epoch=1, **{metric: 0.9 - 0.1 * i}) == asha.CONTINUE  # the job
    stopped = sorted(asha.stops.stopped)
    assert stopped and len(stopped) < len(members)
    # Tune's loop went on while every write waited at the gate: none was made in it
    assert not any((tmp_path / "store" / trial_file(k, TrialFile.STOP)).exists() for k in stopped)
    storage.gate.set()
    assert asha.stops.close()
    for k in stopped:
        assert storage.read_json(trial_file(k, TrialFile.STOP)) == {"job": job.trial_id,
                                                                    "epoch": 1}

    # the stopped members end (their results stored, then reported): their notes go; a
    # member that was never stopped costs no request
    storage.gate.clear()
    for t in members:
        report(t.key, outcome=TrialState.STOPPED_EARLY if t.key in stopped else TrialState.DONE)
    storage.gate.set()
    assert asha.stops.close()
    assert not any(storage.exists(trial_file(k, TrialFile.STOP)) for k in stopped)
    assert asha.stops.stopped == set()
    assert sorted(storage.calls) == sorted(
        [("write", trial_file(k, TrialFile.STOP), THREAD) for k in stopped]
        + [("delete", trial_file(k, TrialFile.STOP), THREAD) for k in stopped])
    assert not any(t.name == THREAD for t in threading.enumerate())  # nothing left running
