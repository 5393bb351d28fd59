"""How a driver process ends: a lost local Ray is one line with its cause and the next step
(exit 4), and whatever the exit (0, 2, 3, 4), nothing the driver started is left running in its
process group or Unix session. Real drivers, a real local Ray; waits follow events (a trial's
progress file, the lease changing hands) and are bounded by HANG against a hang only."""

import io
import os
import re
import signal
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.tracking import MlflowClient

from sweeps.domain.plan import build_plan
from sweeps.domain.spec import parse_spec
from sweeps.ray.engine import EXIT_RAY_LOST
from sweeps.store.ledger import trial_file
from sweeps.store.storage import Storage
from testkit import HANG
from testkit.drivers import (
    fork_driver,
    kill_leftovers,
    left_behind,
    session,
    start_driver,
    write_spec,
)

pytestmark = pytest.mark.slow

SMALL = {"chains": [["cnn-small", "cnn-small"]],
         "train": {"epochs": 3, "batch_size": 64, "lr": 0.05}}


def nothing_left(pid: int) -> list[str]:
    """What a driver (``pid``) left running, once the SIGKILLs it sent on its way out have
    landed (at once when quiet; a guard of HANG / 10 against a hang)."""
    deadline = time.monotonic() + HANG / 10
    while (left := left_behind(pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def wait_until(condition, driver, log: Path, what: str) -> None:
    deadline = time.monotonic() + HANG
    while not condition():
        assert driver.poll() is None and time.monotonic() < deadline, (
            what, log.read_text()[-3000:])
        time.sleep(0.05)


def test_a_lost_local_ray_is_one_line_and_the_rerun_finishes(tmp_path, forks):
    """The raylet of a running sweep SIGKILLed (as the out-of-memory killer does): the driver
    ends with one line (the cause, what is kept, the next step, where Ray's messages went),
    exit 4, nothing left running; the same command then finishes the sweep."""
    spec_path = write_spec(tmp_path, name="lost", **SMALL)
    spec = parse_spec(yaml.safe_load(spec_path.read_text()))
    storage = Storage(spec.storage)
    plan = build_plan(spec)
    log = tmp_path / "driver.log"
    driver = fork_driver(forks, spec_path, tmp_path)
    try:
        teacher = plan.trials[0]
        wait_until(lambda: storage.exists(trial_file(teacher.key, "progress.json")), driver, log,
                   "the teacher never started")
        [raylet] = [p for p in session(driver.pid) if p.name() == "raylet"]
        raylet.kill()
        assert driver.wait(HANG) == EXIT_RAY_LOST, log.read_text()[-3000:]
        assert nothing_left(driver.pid) == []
        said = log.read_text()
        lines = [ln for ln in said.splitlines() if "error" in ln.lower()]
        assert len(lines) == 1, said[-5000:]
        [line] = lines
        assert line.startswith(f"kdsweep run: error: the local Ray stopped: its raylet "
                               f"(pid {raylet.pid}) was killed by SIGKILL"), line
        assert "everything stored is kept" in line and "run the same command" in line
        assert "Traceback" not in said
        ray_log = Path(re.search(r"Ray's messages: (\S+)\)$", line)[1])
        assert "the local Ray stopped" in ray_log.read_text()
        ray_log.unlink()

        kill_leftovers(tmp_path)
        rerun = fork_driver(forks, spec_path, tmp_path)
        assert rerun.wait(HANG) == 0, log.read_text()[-3000:]
        assert nothing_left(rerun.pid) == []
    finally:
        kill_leftovers(tmp_path, remove=True)
    for t in plan.trials:
        result = storage.read_json(trial_file(t.key, "result.json"))
        assert result["state"] == "done"
        history = storage.read_json(trial_file(t.key, "history.json"))["history"]
        assert [h["epoch"] for h in history] == [1, 2, 3]


def test_a_driver_leaves_no_process_behind_whatever_its_exit(tmp_path):
    """Three drivers of one sweep: B is refused while A runs (exit 2; A's trial paused the
    while); A is paused (SIGSTOP) past its lease's TTL, C takes the sweep over and finishes it
    (exit 0) while A is still paused (A's workers give their claims up once their driver is
    superseded: C never waits on them); A resumes and stops at once on its lost lease (exit 3),
    in one line naming C, writing nothing more. After each exit, nothing runs in that driver's
    process group or Unix session: not its local Ray, its agents (DashboardAgent,
    RuntimeEnvAgent) or workers. MLflow holds one run per trial, every epoch once, and the
    sweep's shared files carry C's fence (split brain, one test: each driver costs a Ray)."""
    env = {"KDSWEEP_LEASE_TTL": "6"}
    spec_path = write_spec(tmp_path, name="exits", **SMALL)
    spec = parse_spec(yaml.safe_load(spec_path.read_text()))
    storage = Storage(spec.storage)
    rel = "sweeps/exits/local/driver.lease"
    teacher = build_plan(spec).trials[0]
    for d in "bc":
        (tmp_path / d).mkdir()
    a = start_driver(spec_path, tmp_path, env)  # plain: KDSWEEP_LEASE_TTL is read at import
    try:
        wait_until(lambda: storage.exists(trial_file(teacher.key, "progress.json")), a,
                   tmp_path / "driver.log", "A never started training")
        assert [p for p in session(a.pid) if p.name() == "raylet"]  # a local Ray to end
        # A's trial paused, so that A is still running when B starts (however slow B's start)
        worker = storage.read_json(trial_file(teacher.key, "progress.json"))["pid"]
        os.kill(worker, signal.SIGSTOP)

        b = start_driver(spec_path, tmp_path / "b", env)
        assert b.wait(HANG) == 2, (tmp_path / "b" / "driver.log").read_text()[-3000:]
        assert nothing_left(b.pid) == []
        os.kill(worker, signal.SIGCONT)

        a.send_signal(signal.SIGSTOP)
        c = start_driver(spec_path, tmp_path / "c", env)
        wait_until(lambda: (storage.read_json(rel) or {}).get("pid") == c.pid, c,
                   tmp_path / "c" / "driver.log", "C never took the lease")
        assert c.wait(HANG) == 0, (tmp_path / "c" / "driver.log").read_text()[-3000:]
        assert nothing_left(c.pid) == []

        a.send_signal(signal.SIGCONT)
        assert a.wait(HANG) == 3, (tmp_path / "driver.log").read_text()[-3000:]
        assert nothing_left(a.pid) == []
        log = (tmp_path / "driver.log").read_text()
        [line] = [ln for ln in log.splitlines() if "another driver took this sweep over" in ln]
        assert "(since released" in line and "Traceback" not in log  # C finished: no lease
    finally:
        if a.poll() is None:
            a.send_signal(signal.SIGCONT)
        for folder in (tmp_path, tmp_path / "b", tmp_path / "c"):
            kill_leftovers(folder, remove=True)
    epochs = list(range(1, SMALL["train"]["epochs"] + 1))
    client = MlflowClient(spec.tracking_uri)
    exp = client.get_experiment_by_name("exits")
    runs = client.search_runs([exp.experiment_id], "tags.`kdsweep.role` = 'trial'")
    keys = [r.data.tags["kdsweep.key"] for r in runs]
    assert sorted(keys) == sorted(t.key for t in build_plan(spec).trials)  # one run each
    for r in runs:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")]
        assert sorted(steps) == epochs, steps  # every epoch once
        history = storage.read_json(trial_file(r.data.tags["kdsweep.key"], "history.json"))
        assert [h["epoch"] for h in history["history"]] == epochs
    assert len(client.search_runs([exp.experiment_id], "tags.`kdsweep.role` = 'sweep'")) == 1
    # the sweep's shared files carry the fence of the driver that wrote them last: C's (B, refused,
    # never held the lease)
    assert storage.read_json("sweeps/exits/local/trials.json")["fence"] == 2
    meta = pq.read_schema(io.BytesIO(storage.read_bytes("sweeps/exits/local/results.parquet")))
    assert meta.metadata[b"kdsweep.fence"] == b"2"


@pytest.mark.parametrize("moment", ["after-lease", "ray-start", "training"])
def test_a_sigterm_is_one_line_and_exit_143_and_leaves_nothing_held(tmp_path, forks, moment):
    """SIGTERM (`ray job stop`, a scheduler, a spot node shutting down) to a driver holding the
    sweep's lease before Ray starts, while its local Ray starts (the raylet just spawned: Ray's
    node installs a SIGTERM handler of its own that ends its processes and exits 1), or while
    its trial trains (ray.init installs another, and a SystemExit raised inside a Ray call
    comes out as exit 1): each time exit 143 and one line naming the stop and the next step,
    no traceback, the lease released (the rerun never waits out its TTL), nothing left
    running (what a rerun then does is a killed driver's rerun: test_resume)."""
    import psutil

    from sweeps.cli import STOPPED_LINE

    spec_path = write_spec(tmp_path, name="stopped", **SMALL)
    spec = parse_spec(yaml.safe_load(spec_path.read_text()))
    storage = Storage(spec.storage)
    plan = build_plan(spec)
    log = tmp_path / "driver.log"
    paused = {"KDSWEEP_PAUSE": "after-lease"} if moment == "after-lease" else None
    driver = fork_driver(forks, spec_path, tmp_path, env=paused)
    try:
        if paused:  # the driver stops itself there (SIGSTOP): the signal lands at that point
            wait_until(lambda: psutil.Process(driver.pid).status() == psutil.STATUS_STOPPED,
                       driver, log, "the driver never reached after-lease")
            assert storage.exists("sweeps/stopped/local/driver.lease")
            driver.send_signal(signal.SIGTERM)
            driver.send_signal(signal.SIGCONT)
        elif moment == "ray-start":
            wait_until(lambda: any(p.name() == "raylet" for p in session(driver.pid)),
                       driver, log, "no raylet started")
            driver.send_signal(signal.SIGTERM)
        else:
            wait_until(lambda: storage.exists(trial_file(plan.trials[0].key, "progress.json")),
                       driver, log, "the teacher never started")
            driver.send_signal(signal.SIGTERM)
        assert driver.wait(HANG) == 128 + signal.SIGTERM, log.read_text()[-3000:]
        assert nothing_left(driver.pid) == []
        said = log.read_text()
        assert said.splitlines()[-1] == STOPPED_LINE and "Traceback" not in said, said[-3000:]
        assert not storage.exists("sweeps/stopped/local/driver.lease")
    finally:
        kill_leftovers(tmp_path, remove=True)


def test_an_orphan_of_a_drivers_descendant_is_its_own_to_end(tmp_path):
    """cli.adopt_orphans: a process whose parent ended (a raylet's agent, its raylet gone
    during Ray's start) is re-parented to the driver, not to init, so the driver's exit finds
    it among its own processes and ends it."""
    import subprocess
    import sys

    code = (
        "import subprocess, sys\n"
        "from sweeps import cli\n"
        "from sweeps.ray import engine\n"
        "if sys.argv[1] == 'adopt':\n"
        "    cli.adopt_orphans()\n"
        # a child that starts a grandchild and exits: the grandchild is an orphan
        "out = subprocess.run(['sh', '-c', 'sleep 60 >/dev/null 2>&1 & echo $!'],\n"
        "                     capture_output=True, text=True).stdout\n"
        "orphan = int(out)\n"
        "mine = [p.pid for p in engine.own_processes()]\n"
        "print(orphan in mine)\n"
        "import os, signal\n"
        "os.kill(orphan, signal.SIGKILL)\n"
    )
    said = {how: subprocess.run([sys.executable, "-c", code, how], capture_output=True,
                                text=True, timeout=HANG / 10, check=True).stdout.strip()
            for how in ("adopt", "plain")}
    assert said == {"adopt": "True", "plain": "False"}, said
