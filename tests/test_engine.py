"""The dependency-driven engine's decisions, on a real store and a real MLflow SQLite store:
what is released when, in which order, and what is skipped. (Tune itself runs in
test_sweep.py; here the searcher is driven by hand, event by event.)"""

import io
from pathlib import Path

from sweeps.events import SweepEvents
from sweeps.plan import build_plan
from sweeps.preflight import check_dataset
from sweeps.progress import Progress
from sweeps.record import TrialResult
from sweeps.spec import load_spec, parse_spec
from sweeps.storage import Storage
from sweeps.store import TrialStore
from sweeps.sweep import make_searcher, record_stored
from sweeps.tracking import Tracker
from sweeps.trial import Job

ROOT = Path(__file__).resolve().parents[1]


def setup(tmp: Path, bank: str, taus=(4,)):
    spec = parse_spec({
        "name": "engine",
        "dataset": {"name": "digits"},
        # a slow, long chain and a fast, short one
        "chains": [["cnn-large", "cnn-medium", "cnn-small"], ["cnn-small", "cnn-medium"]],
        "train": {"epochs": 2, "teacher_bank": bank},
        "grid": {"loss": ["kl"], "tau": list(taus), "seeds": [0], "baselines": False},
        "storage": str(tmp / "store"),
        "tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
    })
    plan = build_plan(spec)
    store = TrialStore(Storage(spec.storage))
    out = io.StringIO()
    progress = Progress(plan, store, out)
    events = SweepEvents(plan, store, Tracker(spec, store.storage), progress)
    todo = record_stored(plan, store, events)
    searcher = make_searcher(spec, store, plan, todo, check_dataset(spec), events)
    return spec, plan, store, searcher, progress


def finish(store: TrialStore, config: dict, with_model: bool = True) -> None:
    job = Job.from_config(config)
    record = TrialResult.from_history(job.trial.to_dict(), [{"epoch": 2, "test_acc": 0.5}])
    store.publish(job.trial.key, b"weights" if with_model else None, record)


def test_students_start_when_their_own_teacher_is_stored_critical_path_first(tmp_path):
    spec, plan, store, searcher, progress = setup(tmp_path, bank="off")
    first, second = searcher.suggest("a"), searcher.suggest("b")
    # the teacher whose chain has the most work below it goes first
    assert [first["trial"]["model"], second["trial"]["model"]] == ["cnn-large", "cnn-small"]
    assert searcher.suggest("c") is None  # every student waits on a running teacher

    finish(store, second)  # the fast teacher ends: its student goes, the slow chain still waits
    searcher.on_trial_complete("b", {"epoch": 2})
    third = searcher.suggest("c")
    assert third["trial"]["lineage"] == ["cnn-small", "cnn-medium"]
    assert third["trial"]["teacher_key"] == second["trial"]["key"]
    assert searcher.suggest("d") is None

    # the slow teacher fails: both generations below it are skipped, never started
    searcher.on_trial_complete("a", error=True)
    below = {t.key for t in plan.trials if t.lineage[0] == "cnn-large" and t.generation > 0}
    assert all(progress.state[k] == "failed" for k in below)
    assert searcher.suggest("d") is None  # the fast student still runs
    finish(store, third)
    searcher.on_trial_complete("c", {"epoch": 2})
    assert searcher.suggest("d") == searcher.FINISHED


def test_a_bank_is_built_as_soon_as_its_teacher_ends_and_gates_its_students(tmp_path):
    # two students: a shared bank (one student would get a private one, built in its trial)
    spec, plan, store, searcher, _ = setup(tmp_path, bank="on", taus=(4, 20))
    slow = searcher.suggest("a")
    searcher.suggest("b")
    finish(store, slow)
    searcher.on_trial_complete("a", {"epoch": 2})
    bank = searcher.suggest("c")
    assert bank["job"] == "bank" and bank["trial"]["key"] == slow["trial"]["key"]
    assert searcher.suggest("d") is None  # its student waits for the bank
    searcher.on_trial_complete("c", {"bank_seconds": 1.0})  # (a failed build lets it go too)
    student = searcher.suggest("d")
    assert student["job"] == "train" and student["trial"]["teacher_key"] == slow["trial"]["key"]


def test_schedule_simulation_runs_and_beats_the_barrier():
    from benchmarks.schedule_sim import compare  # the model the benchmark prints, as numbers

    c = compare(load_spec(ROOT / "sweeps" / "configs" / "digits.yaml"), gpus=4, seeds=1)
    assert c["bound"] <= c["dependency"] <= c["barrier"]
    assert 0 < c["busy"] <= 1
