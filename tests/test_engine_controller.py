"""The searcher and ASHA inside Tune's own controller, stepped by hand with mock trainables, the
way Ray tests its TuneController (tune/tests/execution/test_controller_search_alg_integration.py):
what Tune does with what they answer (which job starts when, what stops early, when the
experiment ends), on the local Ray, without storage, MLflow or training."""

import sys
import time

import pytest
from ray import cloudpickle, tune
from ray.air.execution import FixedResourceManager
from ray.tune import Experiment
from ray.tune.execution.tune_controller import TuneController
from ray.tune.search import SearchGenerator
from ray.tune.utils import flatten_dict

from sweeps.domain.critical_path import remaining_work
from sweeps.domain.plan import build_plan
from sweeps.domain.scheduler import Job, Scheduler
from sweeps.domain.spec import parse_spec
from sweeps.ray.engine import DependencySearcher, FlatFIFO, StudentASHA
from sweeps.ray.trial import WorkerMessage, member_results
from sweeps.store.ledger import TrialState

# The mock trainable runs in Ray's workers, which cannot import this test module: sent by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
EPOCHS = 4


def mock_job(config, quality: dict, fails: frozenset):
    """A job as trial.run_job reports it, without training: an epoch's metrics each step
    (``quality[key]`` x epoch / EPOCHS), then its outcome; a key in ``fails`` ends without a
    model."""
    job = Job.from_config(config)
    if job.kind == "bank":
        tune.report({"bank_seconds": 0.0})
        return
    key = job.trial.key
    for epoch in range(1, EPOCHS + 1):
        last = epoch == EPOCHS
        outcome = TrialState.FAILED if key in fails else TrialState.DONE
        message = WorkerMessage(outcome=outcome.value) if last else WorkerMessage()
        tune.report({"epoch": epoch, "test_acc": quality[key] * epoch / EPOCHS,
                     **message.entry()})


class Recorder(tune.Callback):
    """What Tune did, in order: ("start" | "end", trial key, last epoch reported)."""

    def __init__(self):
        self.seen = []

    def on_trial_start(self, iteration, trials, trial, **info):
        self.seen.append(("start", trial.config["trial"]["key"], 0))

    def on_trial_complete(self, iteration, trials, trial, **info):
        epoch = (trial.last_result or {}).get("epoch", 0)
        self.seen.append(("end", trial.config["trial"]["key"], epoch))


class Skips:
    """The scheduler's listener: what it skipped (key -> why)."""

    def __init__(self):
        self.gone = {}

    def added(self, trial):
        pass

    def skipped(self, trial, reason):
        self.gone[trial.key] = reason


def spec_of(taus, asha=None):
    return parse_spec({
        "name": "ctl",
        "dataset": {"name": "digits"},
        "chains": [["cnn-medium", "cnn-small", "cnn-small"]],
        "train": {"epochs": EPOCHS, "teacher_bank": "off"},
        "grid": {"loss": ["kl"], "tau": list(taus), "seeds": [0], "baselines": False},
        "storage": "/nonexistent",
        "search": {"metric": "test_acc", "allow_test_metric": True,
                   **({"asha": asha} if asha else {})},
    })


def run_stepped(tmp_path, spec, quality, fails=frozenset(), cpus=1, quiet=300.0, held=None):
    """The plan's jobs through Tune's controller, stepped until it finishes: (what Tune did,
    what the scheduler skipped, the plan). The engine's schedulers drop finished trials from
    the controller at every end (a window of 1: every step crosses a boundary); ``held``, a
    list, gets how many trials the controller holds after each step. ``quiet``: a guard
    against a hang only, reset by every event Tune records (a job started or ended): a busy
    machine slows the steps (a worker's start most: seconds on a quiet machine, tens of seconds
    under load), never stops them. Workers are reused from job to job, as the engine's are."""
    plan = build_plan(spec)
    listener = Skips()
    unit = {m: 1.0 for chain in spec.chains for m in chain}
    scheduler = Scheduler(spec, plan.trials, plan.trials, done=(), banks=(), values={},
                          priority=remaining_work(spec.chains, unit),
                          wants_bank=lambda n: False, listener=listener)
    searcher = SearchGenerator(DependencySearcher(scheduler, spec.search.metric))
    experiment = Experiment("ctl", run=tune.with_parameters(mock_job, quality=quality,
                                                            fails=frozenset(fails)),
                            storage_path=str(tmp_path), num_samples=10**9)
    searcher.add_configurations([experiment])
    recorder = Recorder()
    early = spec.search.asha is not None
    controller = TuneController(
        search_alg=searcher,
        scheduler=StudentASHA(spec.search, EPOCHS, window=1) if early else FlatFIFO(window=1),
        callbacks=[recorder],
        # as the engine runs Tune (engine.run_tune): a worker kept for the next job, not one
        # started per job (what took these tests' seconds)
        reuse_actors=True,
        storage=experiment.storage,
        resource_manager_factory=lambda: FixedResourceManager({"CPU": cpus}),
    )
    seen, deadline = 0, time.monotonic() + quiet
    try:
        while not controller.is_finished():
            if len(recorder.seen) > seen:  # progress: the guard starts again
                seen, deadline = len(recorder.seen), time.monotonic() + quiet
            assert time.monotonic() < deadline, f"no Tune event for {quiet} s: {recorder.seen}"
            controller.step()
            if held is not None:
                held.append(len(controller.get_trials()))
    finally:
        controller.cleanup()
    return recorder.seen, listener.gone, plan


def by_generation(plan):
    out = {}
    for t in plan.trials:
        out.setdefault(t.generation, []).append(t)
    return out


@pytest.mark.slow
def test_students_start_once_their_teacher_ended_with_a_model_and_the_experiment_ends(
        local_ray, tmp_path):
    spec = spec_of(taus=(1.0, 4.0))
    gens = by_generation(build_plan(spec))
    quality = {t.key: 0.5 for ts in gens.values() for t in ts}
    held = []
    seen, skipped, plan = run_stepped(tmp_path, spec, quality, cpus=2, held=held)
    at = {(what, key): i for i, (what, key, _) in enumerate(seen)}
    assert skipped == {}
    # finished trials dropped as they end: at most 2 running, 1 pending and 1 just ended
    assert max(held) <= 4 < len(plan.trials), held
    assert {key for what, key, _ in seen if what == "end"} == {t.key for t in plan.trials}
    for t in plan.trials:
        assert seen[at["end", t.key]][2] == EPOCHS  # every job ran to its end
        if t.teacher_key is not None:  # never before its teacher's job ended
            assert at["start", t.key] > at["end", t.teacher_key]


@pytest.mark.slow
def test_a_teacher_not_done_skips_its_students_and_the_experiment_still_ends(
        local_ray, tmp_path):
    spec = spec_of(taus=(1.0, 4.0))
    gens = by_generation(build_plan(spec))
    teacher = gens[0][0]
    quality = {t.key: 0.5 for ts in gens.values() for t in ts}
    seen, skipped, plan = run_stepped(tmp_path, spec, quality, fails={teacher.key})
    assert [key for what, key, _ in seen if what == "start"] == [teacher.key]
    below = {t.key for t in plan.trials if t.generation > 0}
    assert set(skipped) == below  # each student, and theirs, skipped: none handed to Tune


@pytest.mark.slow
def test_asha_stops_weak_students_of_a_generation_never_a_teacher(local_ray, tmp_path):
    """One slot, students in plan order from best to worst: ASHA (grace 1 epoch, factor 2)
    keeps the first, stops later ones that rank below it at a rung; the teacher, weakest of
    all, runs every epoch; a stopped student is not done, so its own student is skipped."""
    spec = spec_of(taus=(1.0, 4.0, 20.0), asha={"grace_period": 1, "reduction_factor": 2})
    gens = by_generation(build_plan(spec))
    quality = {gens[0][0].key: 0.1}
    for rank, t in enumerate(gens[1]):
        quality[t.key] = 0.9 - 0.2 * rank
    for t in gens[2]:
        quality[t.key] = 0.5
    seen, skipped, plan = run_stepped(tmp_path, spec, quality, cpus=1)
    ended = {key: epoch for what, key, epoch in seen if what == "end"}
    assert ended[gens[0][0].key] == EPOCHS
    students = [ended[t.key] for t in gens[1]]
    assert students[0] == EPOCHS and min(students) < EPOCHS, students
    stopped = {t.key for t in gens[1] if ended[t.key] < EPOCHS}
    below_stopped = {t.key for t in gens[2] if t.teacher_key in stopped}
    assert below_stopped and below_stopped <= set(skipped)
    assert not below_stopped & set(ended)  # never handed to Tune


def test_the_searchers_snapshot_is_counts_not_keys(tmp_path):
    """Tune snapshots the searcher every few seconds, and kdsweep never restores it: what it
    writes is a few counts, whatever the size of the sweep (it was every waiting key)."""
    import json

    spec = spec_of(taus=(1.0, 4.0))
    plan = build_plan(spec)
    scheduler = Scheduler(spec, plan.trials, plan.trials, done=(), banks=(), values={},
                          priority=remaining_work(spec.chains, {m: 1.0 for m in spec.chains[0]}),
                          wants_bank=lambda n: False, listener=Skips())
    searcher = DependencySearcher(scheduler, spec.search.metric)
    assert searcher.suggest("t0") is not None  # the teacher runs, its students wait
    searcher.save(str(tmp_path / "searcher.json"))
    state = json.loads((tmp_path / "searcher.json").read_text())
    assert state == {"waiting": len(plan.trials) - 1, "running": 1, "banks": 0, "handed": 1}
    assert not any(t.key in json.dumps(state) for t in plan.trials)


def test_a_report_is_metrics_and_one_message_that_reads_back():
    """The worker's report: its metrics and one typed entry; the driver reads the message
    back as sent, after Tune's state wrote it as JSON, flattened as Tune hands results to
    searchers, and as an empty one from a report that has none."""
    import json

    message = WorkerMessage(warnings=("a bank fetched again",),
                            corrupt=(("trials/k/model.pt", "bad checksum"),),
                            outcome=TrialState.DONE.value)
    report = {"epoch": 3, "test_acc": 0.5, **message.entry()}
    assert set(report) == {"epoch", "test_acc", "kdsweep"}
    assert WorkerMessage.of(report) == message
    assert WorkerMessage.of(json.loads(json.dumps(report))) == message
    assert WorkerMessage.of(flatten_dict(report)) == message  # as Tune hands it to a searcher
    assert WorkerMessage.of({"epoch": 1}) == WorkerMessage() and WorkerMessage().entry() == {
        "kdsweep": {}}


def test_a_group_epochs_report_reads_as_its_members_own_reports():
    """A fused job reports a group epoch once (WorkerMessage.members, trial.train_group): the
    driver's consumers read it as the members' own reports, in order, as a job reporting each
    member's epoch by itself sent them (its metrics, its key; the warnings with the first),
    sent or flattened as Tune hands it to a searcher or a scheduler; any other report is read
    as itself, the same object (a callback takes its outputs out of it in place)."""
    import json

    epochs = [{"epoch": 2, "test_acc": 0.25 * i, "train_loss": 1.0 + i,
               "realised_noise_rate": 0.0} for i in range(3)]
    keys = ["k0", "k1", "k2"]
    group = {**WorkerMessage(warnings=("a bank fetched again",),
                             members=tuple({**m, "member": k} for m, k in zip(
                                 epochs, keys, strict=True))).entry(),
             "training_iteration": 5}  # one of Tune's own entries
    own = [{**m, **WorkerMessage(member=k, warnings=("a bank fetched again",) if i == 0 else ()
                                 ).entry()}
           for i, (m, k) in enumerate(zip(epochs, keys, strict=True))]
    for sent in (group, json.loads(json.dumps(group)), flatten_dict(group)):
        out = member_results(sent)
        assert [WorkerMessage.of(r) for r in out] == [WorkerMessage.of(r) for r in own]
        for r, o in zip(out, own, strict=True):
            assert {k: v for k, v in r.items() if not k.startswith("kdsweep")} == {
                **{k: v for k, v in o.items() if k != "kdsweep"}, "training_iteration": 5}
    for single in (own[1], {"epoch": 1}, flatten_dict(own[0])):
        assert member_results(single)[0] is single and len(member_results(single)) == 1


def test_a_trial_runs_at_the_drivers_priority_not_rays_plus_15(local_ray):
    """A Ray of kdsweep's own starts its workers at the driver's niceness (engine.
    OWN_RAY_CONFIG), not Ray's +15, which left trials ~1% of a CPU beside other work."""
    import os

    import ray

    from testkit import HANG

    @ray.remote(num_cpus=0)
    def niceness() -> int:
        return os.nice(0)

    assert ray.get(niceness.remote(), timeout=HANG) == os.nice(0)
