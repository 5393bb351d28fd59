"""Fused siblings in a sweep (issue 44), end to end on a real local Ray and MLflow store: a
teacher's students trained as fused jobs (spread over the two CPU slots), and their own
students (cousins: one per teacher) fused too, are each still their own trial (key, result,
MLflow run with every epoch once, checkpoints), their results those of separate training, and
a run killed in the middle of a fused job resumes each member from its own checkpoint."""

import io
import math
import signal
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from sweeps.app.sweep import run_sweep
from sweeps.domain.fusion import group_size, sibling_key
from sweeps.domain.plan import build_plan
from sweeps.domain.spec import parse_spec
from sweeps.ray.engine import tune_dir
from sweeps.store.ledger import CHECKPOINTS, Ledger, trial_file
from sweeps.store.storage import Storage
from testkit import HANG
from testkit.drivers import EPOCHS, fork_driver, kill_leftovers, progress, write_spec

pytestmark = pytest.mark.slow

# one teacher's four sibling students: kl at tau 4 and inf, mse, and standard KD at alpha 0.9
GRID = {"loss": ["kl", "mse"], "tau": [4, math.inf], "seeds": [0], "baselines": False,
        "extra": [{"loss": "kl", "tau": 4, "alpha": 0.9}]}


def spec_with(tmp: Path, name: str, fuse, epochs: int = 3, chain=("cnn-small", "cnn-small")):
    return parse_spec({
        "name": name, "dataset": {"name": "digits"}, "chains": [list(chain)],
        "train": {"epochs": epochs, "batch_size": 128, "lr": 0.05},
        "grid": GRID,
        "resources": {"cpu": 1, "fuse": fuse},
        "storage": str(tmp / f"store-{name}"), "tracking_uri": f"sqlite:///{tmp / name}.db",
    })


def split(ready: int, limit: int) -> list[int]:
    """The fused jobs ``ready`` students of one teacher make when every slot of this machine's
    Ray is free (fusion.group_size: spread over the free slots, one fewer free each job)."""
    import ray

    free, sizes = int(ray.cluster_resources()["CPU"]), []
    while ready:
        sizes.append(group_size(ready, free, limit))
        ready, free = ready - sizes[-1], max(1, free - 1)
    return sizes


def jobs_run(spec) -> list[str]:
    """The training jobs (Tune trials) of the spec's latest run, by folder name."""
    runs = sorted(tune_dir(spec, Storage(spec.storage).uri).glob("run-*"))
    return sorted(p.name for p in runs[-1].iterdir() if p.name.startswith("train-"))


def trial_runs(spec) -> dict:
    client = MlflowClient(spec.tracking_uri)
    exp = client.get_experiment_by_name(spec.name)
    runs = client.search_runs([exp.experiment_id], "tags.`kdsweep.role` = 'trial'")
    return client, {r.data.tags["kdsweep.key"]: r for r in runs}


def test_fused_members_are_trials_of_their_own_with_separate_trainings_results(
        local_ray, tmp_path):
    chain = ("cnn-small",) * 3
    fused = spec_with(tmp_path, "fused", 4, chain=chain)
    alone = spec_with(tmp_path, "alone", "off", chain=chain)
    plan = build_plan(fused)
    students = [t for t in plan.trials if t.generation == 1]
    assert len(students) == 4 and len({sibling_key(t) for t in students}) == 1
    cousins = [t for t in plan.trials if t.generation == 2]  # one under each student
    assert len(cousins) == 4 and len({sibling_key(t) for t in cousins}) == 4
    assert [t.key for t in plan.trials] == [t.key for t in build_plan(alone).trials]  # fuse
    # is no part of a trial's key: a stored trial is the same trial whether fused or not
    t0 = time.time()
    run_sweep(fused, out=io.StringIO())
    t1 = time.time()
    run_sweep(alone, out=io.StringIO())
    print(f"fused {t1 - t0:.1f} s, separate {time.time() - t1:.1f} s")
    # the fused run trained the four students as jobs over the free CPU slots (2 + 2 on two),
    # and their four students (cousins, each under its own teacher) in fewer jobs than four
    # (when a group's slot frees, its members' students are all ready); the separate run: 9
    by_lead = {t.key[:12]: t.generation for t in plan.trials}
    jobs = [by_lead[name.removeprefix("train-")] for name in jobs_run(fused)]
    assert jobs.count(1) == len(split(4, 4)), jobs
    if jobs.count(1) < 4:  # fused (on a machine of four slots or more each job is one student)
        assert jobs.count(2) < 4, jobs
    assert len(jobs_run(alone)) == 9

    a, b = Ledger(Storage(fused.storage)), Ledger(Storage(alone.storage))
    for t in plan.trials:
        x, y = a.result(t.key), b.result(t.key)
        assert x.state == y.state == "done" and x.epochs == epochs_of(fused)
        assert x.logit_source == y.logit_source
        assert x.logit_source == {0: None, 1: "shared"}.get(t.generation, x.logit_source)
        assert x.resumed_from == [0] and x.starts == 1
        for hx, hy in zip(x.history, y.history, strict=True):
            for k in ("train_loss", "train_acc", "test_acc", "test_loss", "logit_distance"):
                if hy.get(k) is None:
                    assert hx.get(k) is None
                    continue
                # float32: grouped convolutions round differently from separate ones
                assert hx[k] == pytest.approx(hy[k], rel=2e-3, abs=2e-3), (t.run_name, k)
        assert x.test_acc == pytest.approx(y.test_acc, abs=0.01)
        # its own model and checkpoints
        assert a.has_model(t.key)
        assert any(a.storage.exists(trial_file(t.key, slot)) for slot in CHECKPOINTS)

    client, runs = trial_runs(fused)
    assert set(runs) == {t.key for t in plan.trials}
    for r in runs.values():
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")]
        assert sorted(steps) == list(range(1, epochs_of(fused) + 1)), steps  # each epoch once
        assert r.info.status == "FINISHED" and r.data.tags["kdsweep.state"] == "done"

    # a rerun trains nothing: every member is reused from storage
    finished = {t.key: a.result(t.key).finished_at for t in plan.trials}
    run_sweep(fused, out=io.StringIO())
    assert {t.key: a.result(t.key).finished_at for t in plan.trials} == finished


def epochs_of(spec) -> int:
    return spec.train.epochs


def test_a_killed_fused_job_resumes_each_member_from_its_own_checkpoint(tmp_path, forks,
                                                                          joined):
    """The run's process group SIGKILLed in the middle of a fused job: its first member's
    last epoch checkpointed (a last epoch's save is not in the background) but not published,
    the others' last epoch trained but not yet checkpointed. (The four students are two jobs,
    one per CPU slot; the other job may or may not have started by then.) The rerun resumes
    every member from its own latest checkpoint, so its groups are formed differently (the
    first publishes without training; the others train on in a group), none trains an epoch
    twice, and MLflow holds each epoch of each once."""
    spec_path = write_spec(tmp_path, chains=[["cnn-small", "cnn-small"]], grid=GRID,
                           resources={"cpu": 1, "fuse": 4})
    spec = parse_spec(yaml.safe_load(spec_path.read_text()))
    plan = build_plan(spec)
    students = [t.key for t in plan.trials if t.generation == 1]
    storage = Storage(spec.storage)
    t0 = time.time()
    try:
        driver = fork_driver(forks, spec_path, tmp_path, env={"KDSWEEP_FAULT": f"epoch=1.{EPOCHS}"})
        assert driver.wait(HANG) == -signal.SIGKILL, (tmp_path / "driver.log").read_text()[-3000:]
        kill_leftovers(tmp_path)
        at_kill = progress(storage, students)
        final = fork_driver(forks, spec_path, tmp_path, address=joined)  # this process's Ray
        assert final.wait(HANG) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        kill_leftovers(tmp_path, remove=True)
    print(f"the kill and the rerun in {time.time() - t0:.0f} s; progress at the kill {at_kill}")
    # killed mid-job, none published: the killed job's members (and the other job's, if it
    # had started) have progress
    assert set(at_kill) <= set(students) and len(at_kill) >= 2
    assert max(at_kill.values()) == EPOCHS and min(at_kill.values()) < EPOCHS

    ledger = Ledger(storage)
    for key in students:
        r = ledger.result(key)
        assert r.state == "done"
        assert [h["epoch"] for h in r.history] == list(range(1, EPOCHS + 1))  # each once
        if key not in at_kill:  # its job had not started: one start, the rerun's
            assert r.starts == 1 and r.preemptions == 0 and r.resumed_from == [0]
            continue
        # started twice (the killed job, the rerun's), resumed from what it had stored
        assert r.starts == 2 and r.preemptions == 1 and r.errors == 0
        assert r.resumed_from[0] == 0 and r.resumed_from[1] >= at_kill[key]
    resumed = sorted(ledger.result(k).resumed_from[1] for k in at_kill)
    assert resumed[-1] == EPOCHS and resumed[0] < EPOCHS  # one publishes, the rest train on

    client, runs = trial_runs(spec)
    assert set(runs) == {t.key for t in plan.trials}
    for r in runs.values():
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), steps  # none twice, none missing
        assert r.info.status == "FINISHED"


def test_asha_stops_fused_members_one_by_one_and_the_others_go_on(local_ray, tmp_path):
    """ASHA (grace 1 epoch, factor 3) over a teacher's six students fused as two jobs of three
    (the two CPU slots): each member is ranked on its own (engine.StudentASHA); a member it
    stops leaves its job at the epoch of the decision, stopped early with its own result and
    no model (so no students), while the others train to the end in the same job."""
    raw = spec_with(tmp_path, "asha", 6, epochs=4).model_dump(mode="json")
    raw |= {"dataset": {"name": "digits", "validation": 0.2},
            "grid": {"loss": ["kl"], "tau": [0.5, 1, 2, 4, 8, 20], "seeds": [0],
                     "baselines": False},
            "search": {"type": "grid", "asha": {"grace_period": 1, "reduction_factor": 3}}}
    spec = parse_spec(raw)
    members = [t for t in build_plan(spec).trials if t.generation == 1]
    t0 = time.time()
    run_sweep(spec, out=io.StringIO())
    print(f"the sweep in {time.time() - t0:.1f} s")
    # the teacher, and its six students over the free slots (3 + 3 on two)
    assert len(jobs_run(spec)) == 1 + len(split(6, 6))
    ledger = Ledger(Storage(spec.storage))
    results = {t.key: ledger.result(t.key) for t in members}
    stopped = [k for k, r in results.items() if r.state == "stopped_early"]
    assert stopped and len(stopped) < len(members), {k: r.state for k, r in results.items()}
    client, runs = trial_runs(spec)
    for key, r in results.items():
        steps = [m.step for m in client.get_metric_history(runs[key].info.run_id, "train_loss")]
        assert sorted(steps) == [h["epoch"] for h in r.history]  # each epoch once, as recorded
        if key in stopped:
            assert r.epochs < 4 and not ledger.has_model(key) and "ASHA" in r.reason
            assert runs[key].data.tags["kdsweep.state"] == "stopped_early"
        else:
            assert r.state == "done" and r.epochs == 4 and ledger.has_model(key)
    # ASHA's notes to the job (stop.json) are gone once their members' results are stored
    assert not any(ledger.storage.exists(trial_file(k, "stop.json")) for k in results)
