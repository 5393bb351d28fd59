"""Preemption safety on a real local Ray and MLflow: SIGKILLed drivers, SIGTERMed trials,
corrupt checkpoints. Each test kills what it started. Its waits are guards against a hang,
sized for a machine ten times slower than a quiet one (HANG, minutes), or follow an event (a
log line, a file); where an interval is the subject (a TTL), it is measured from the test's
own events, never with an allowance for start-up."""

import contextlib
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from sweeps.domain.plan import build_plan
from sweeps.domain.spec import parse_spec
from sweeps.store import lease as lease_module
from sweeps.store.lease import DriverLease, TrialClaim
from sweeps.store.ledger import CHECKPOINTS, sweep_file, trial_file
from sweeps.store.resume import TrialCheckpoints
from sweeps.store.storage import Storage
from sweeps.tracking.sqlite_store import prepare_store
from testkit import HANG
from testkit.drivers import (
    EPOCHS,
    fork_driver,
    kill_leftovers,
    progress,
    start_driver,
    wait_idle,
    write_spec,
)

pytestmark = pytest.mark.slow


KILL_SEED = 20261130
# The named fault points (sweeps/domain/faults.py) and a seeded real-time moment, in the order a run
# reaches them, as two sequences (two tests the suite's workers can run side by side): start-up
# (after the lease, while the MLflow store is created, a real-time kill among the imports, Ray
# and the first epochs) and training (mid-epoch in each generation, between a trial's
# checkpoint and its publish, mid-export of the results). The epochs are drawn per generation.
_rng = random.Random(KILL_SEED)
START_KILLS = ["after-lease", "store-creating", _rng.uniform(0.5, 12.0)]
TRAINING_KILLS = [f"epoch=0.{_rng.randint(1, EPOCHS - 2)}", "before-publish",
                  f"epoch=1.{_rng.randint(1, EPOCHS - 2)}",
                  f"epoch=2.{_rng.randint(1, EPOCHS - 2)}", "mid-export"]


@pytest.mark.parametrize("kills", [START_KILLS, TRAINING_KILLS], ids=["start-up", "training"])
def test_driver_killed_at_random_moments_then_rerun(tmp_path, kills, forks, joined):
    """The run's process group SIGKILLed at each of ``kills`` in turn (what losing the machine
    does), then a plain rerun ends with every trial once, every epoch once, no step logged
    twice, and each kill cost at most the epoch in flight. The killed drivers each start a Ray
    of their own (lost with them); the rerun joins the test process's (conftest's joined)."""
    spec_path = write_spec(tmp_path)
    spec = parse_spec(yaml.safe_load(spec_path.read_text()))
    plan = build_plan(spec)
    storage = Storage(spec.storage)
    keys = {t.key: t for t in plan.trials}
    seen_at_kill: list[dict[str, int]] = []
    t0 = time.time()
    # a driver killed at a named point is forked from one that has imported its modules (the
    # imports are not what it tests: conftest's forks); the real-time kill and the rerun are
    # plain processes, the rerun joining this process's Ray
    try:
        for kill in kills:
            if isinstance(kill, float):
                driver = start_driver(spec_path, tmp_path)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    driver.wait(kill)
                assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
                os.killpg(driver.pid, signal.SIGKILL)
                code = driver.wait(HANG)
            else:
                forks.start(tmp_path, "run", spec_path, env={"KDSWEEP_FAULT": kill})
                code = forks.wait()
            # a named point kills the run itself: it must have been reached
            assert code == -signal.SIGKILL, (kill, (tmp_path / "driver.log").read_text()[-3000:])
            # what a lost machine leaves: Ray's workers (groups of their own) die too, and only
            # then is storage read (a surviving worker would go on writing)
            kill_leftovers(tmp_path)
            seen_at_kill.append(progress(storage, keys))
        final = start_driver(spec_path, tmp_path, address=joined)
        assert final.wait(HANG) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        kill_leftovers(tmp_path, remove=True)
    print(f"{len(seen_at_kill)} kills and the rerun in {time.time() - t0:.0f} s")

    # Every trial finished exactly once, with each epoch trained into its history once.
    results = {k: storage.read_json(trial_file(k, "result.json")) for k in keys}
    assert all(results.values())
    for k in keys:
        history = storage.read_json(trial_file(k, "history.json"))["history"]
        assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    # Each kill cost at most the epoch in flight: a restart resumed from >= the last epoch seen.
    lost = []
    for kill, snapshot in zip(kills, seen_at_kill, strict=True):
        for key, epoch in snapshot.items():
            resumed = [e for e in results[key]["resumed_from"][1:] if e >= 0]
            assert resumed, f"{key} was interrupted at epoch {epoch} but never restarted"
            # what a failure needs to be read (a rare one: seen once, at epoch 5 resumed from 0)
            said = {f: results[key][f] for f in ("resumed_from", "starts", "preemptions")}
            assert max(resumed) >= epoch, (kill, key, epoch, said)
            lost.append(epoch - max(resumed))
    assert max(lost, default=0) <= 0
    if kills is TRAINING_KILLS:  # one per generation, and the one before its publish
        assert sum(r["preemptions"] for r in results.values()) >= 3
    assert all(r["errors"] == 0 for r in results.values())

    client = MlflowClient(spec.tracking_uri)
    exp = client.get_experiment_by_name("resume")
    children = client.search_runs([exp.experiment_id], "tags.`kdsweep.role` = 'trial'")
    assert sorted(r.data.tags["kdsweep.key"] for r in children) == sorted(keys)
    for r in children:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), steps  # no step twice, none missing
        assert r.info.status == "FINISHED"
    parents = client.search_runs([exp.experiment_id], "tags.`kdsweep.role` = 'sweep'")
    assert len(parents) == 1
    df = pd.read_parquet(Path(spec.storage) / "sweeps" / "resume" / "local" / "results.parquet")
    assert len(df) == len(keys) and df.key.is_unique and (df.state == "done").all()


def logged_epochs(spec, key: str) -> list[int]:
    """The epochs of trial ``key`` the driver has logged to MLflow so far."""
    if not Path(spec.tracking_uri.removeprefix("sqlite:///")).exists():
        return []
    client = MlflowClient(spec.tracking_uri)
    exp = client.get_experiment_by_name(spec.name)
    runs = exp and client.search_runs([exp.experiment_id], f"tags.`kdsweep.key` = '{key}'")
    if not runs:
        return []
    return [m.step for m in client.get_metric_history(runs[0].info.run_id, "train_loss")]


def test_sigterm_writes_a_checkpoint_before_exit(tmp_path, forks, joined):
    """A spot-termination notice: the trial's worker gets SIGTERM between checkpoints (its
    driver joins this process's Ray: the subject is the worker)."""
    spec_path = write_spec(tmp_path, chains=[["cnn-medium"]],
                           train={"epochs": 40, "batch_size": 16, "lr": 0.02,
                                  "checkpoint_every": 1000})
    spec = parse_spec(yaml.safe_load(spec_path.read_text()))
    (trial,) = build_plan(spec).trials
    storage = Storage(spec.storage)
    driver = fork_driver(forks, spec_path, tmp_path, address=joined)
    try:
        # The worker's pid: in progress.json from its start. Its epochs: in MLflow (storage
        # holds none until a checkpoint).
        deadline = time.monotonic() + HANG
        epochs = 0
        while time.monotonic() < deadline:
            p = storage.read_json(trial_file(trial.key, "progress.json"))
            epochs = len(logged_epochs(spec, trial.key)) if p else 0
            if epochs >= 3:
                break
            time.sleep(0.2)
        else:
            pytest.fail("trial did not start")
        assert not any(storage.exists(trial_file(trial.key, s)) for s in CHECKPOINTS)
        os.kill(p["pid"], signal.SIGTERM)
        deadline = time.monotonic() + HANG / 5  # a save of one epoch: ~1 s when quiet
        while time.monotonic() < deadline and not any(
                storage.exists(trial_file(trial.key, s)) for s in CHECKPOINTS):
            time.sleep(0.05)
        state = TrialCheckpoints(storage, trial.key).load_latest()
        assert state is not None and state["epoch"] >= epochs
        driver.send_signal(signal.SIGKILL)
        driver.wait(HANG)
    finally:
        driver.kill()
        kill_leftovers(tmp_path, remove=True)


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
    storage = Storage(str(tmp_path))
    ckpts = TrialCheckpoints(storage, "k")
    ckpts.save({"epoch": 1, "w": torch.ones(3)})
    ckpts.save({"epoch": 2, "w": torch.full((3,), 2.0)})
    newest = trial_file("k", CHECKPOINTS[1])
    raw = storage.read_bytes(newest)
    storage.write_bytes(newest, raw[: len(raw) // 3])  # torn by a broken filesystem
    again = TrialCheckpoints(storage, "k")
    state = again.load_latest()
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert "truncated or corrupt" in caplog.text and "checkpoint-b.pt" in caplog.text
    assert list(tmp_path.glob("trials/k/checkpoint-b.pt.corrupt-*"))  # kept for a post-mortem
    again.save({"epoch": 2, "w": torch.zeros(3)})  # overwrites the corrupt slot, not the good one
    newest = TrialCheckpoints(storage, "k").load_latest()
    assert newest["epoch"] == 2 and torch.equal(newest["w"], torch.zeros(3))


def test_checkpoints_upload_in_the_background_one_at_a_time(tmp_path):
    """The next epoch trains while the last checkpoint uploads; progress names an epoch only
    once it is in storage; a failed upload fails the trial at its next save."""
    storage = Storage(str(tmp_path))
    saved = []
    ckpts = TrialCheckpoints(storage, "k", on_saved=saved.append)
    state = {"epoch": 1, "w": torch.zeros(1000, 1000)}  # 4 MB
    ckpts.save(state, background=True)
    state["w"] += 1.0  # training moves on: the upload holds the epoch-1 snapshot
    state["epoch"] = 2
    ckpts.save(state, background=True)  # waits for epoch 1's upload first: one at a time
    assert saved[0] == 1
    ckpts.wait()
    assert saved == [1, 2] and ckpts.saved_epoch == 2
    latest = TrialCheckpoints(storage, "k").load_latest()
    assert latest["epoch"] == 2 and torch.equal(latest["w"], torch.ones(1000, 1000))
    # remember() snapshots too: a later change to the live tensors is not what flush() saves
    state["epoch"] = 3
    ckpts.remember(state)
    state["w"] += 1.0
    assert ckpts.flush() == 3 and saved[-1] == 3
    assert torch.equal(TrialCheckpoints(storage, "k").load_latest()["w"], torch.ones(1000, 1000))

    (tmp_path / "trials" / "bad").write_text("a file where the trial's folder should be")
    broken = TrialCheckpoints(storage, "bad")
    broken.save({"epoch": 1}, background=True)
    with pytest.raises(OSError):
        broken.save({"epoch": 2}, background=True)


def test_a_kill_while_the_mlflow_store_is_created_leaves_nothing_broken(tmp_path):
    """A SIGKILL after MLflow's migration and before the store is moved into place (the fault
    point "store-creating"; with no cached template, so the migration itself runs) must not
    leave a half-made mlflow.db that every later run would fail on."""
    db = tmp_path / "mlflow.db"
    code = f"from sweeps.tracking.sqlite_store import prepare_store; prepare_store('sqlite:///{db}')"
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, env={
        **os.environ, "KDSWEEP_FAULT": "store-creating", "KDSWEEP_CACHE": str(tmp_path / "cache")})
    assert proc.wait(HANG) == -signal.SIGKILL
    assert list(tmp_path.glob(".mlflow.db.creating-*"))  # killed half-way, as intended
    assert not db.exists()
    prepare_store(f"sqlite:///{db}")  # the next run builds it whole
    assert db.exists() and not list(tmp_path.glob(".mlflow.db.creating-*"))
    client = MlflowClient(f"sqlite:///{db}")
    client.create_experiment("after-the-kill")
    assert client.get_experiment_by_name("after-the-kill") is not None


def test_one_driver_per_sweep_and_a_killed_driver_never_blocks_the_rerun(tmp_path, monkeypatch,
                                                                         kdsweep_here, joined):
    """The drivers join this process's Ray (the subject is the sweep's lease): the killed one's
    trials are ended by Ray, and waited for, before the rerun, as a lost machine's would be."""
    spec_path = write_spec(tmp_path, chains=[["cnn-small"]],
                           train={"epochs": 2, "batch_size": 64, "lr": 0.02})
    spec = parse_spec(yaml.safe_load(spec_path.read_text()))
    lease = Path(spec.storage) / "sweeps" / "resume" / "local" / "driver.lease"
    monkeypatch.setattr(lease_module, "TTL", 4.0)  # the second driver watches for a renewal
    first = start_driver(spec_path, tmp_path, {"KDSWEEP_LEASE_TTL": "4"},  # renews every 1 s
                         address=joined)
    try:
        deadline = time.monotonic() + HANG
        while time.monotonic() < deadline and not lease.exists():
            assert first.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            time.sleep(0.05)
        code, _, err = kdsweep_here("run", spec_path)  # in this process: it stops before Ray
        assert code == 2
        assert "another driver runs this sweep" in err and f"pid {first.pid}" in err
        os.killpg(first.pid, signal.SIGKILL)  # no release, no heartbeat: its pid is gone
        first.wait(HANG)
        kill_leftovers(tmp_path)
        wait_idle()  # its trials, which Ray ends
        t0 = time.time()
        rerun = start_driver(spec_path, tmp_path, address=joined)  # takes the dead lease at once
        assert rerun.wait(HANG) == 0, (tmp_path / "driver.log").read_text()[-3000:]
        assert "taking it over if none comes" not in (tmp_path / "driver.log").read_text()
        assert not lease.exists()  # released at the end
        print(f"rerun in {time.time() - t0:.1f} s")
    finally:
        first.kill()
        kill_leftovers(tmp_path, remove=True)


def test_a_lease_that_stopped_renewing_is_waited_out(tmp_path, monkeypatch):
    """A driver on a lost node (another host): its lease is taken once it has stood unchanged
    for the TTL on this driver's clock, whatever its own stamp says."""
    monkeypatch.setattr(lease_module, "TTL", 2.0)
    spec = parse_spec(yaml.safe_load(write_spec(tmp_path).read_text()))
    storage = Storage(spec.storage)
    rel = "sweeps/resume/local/driver.lease"
    held = {"host": "lost-node", "pid": 1, "since": time.time() - 60, "token": "x"}
    storage.write_json(rel, {**held, "renewed": time.time() + 600})  # a clock ahead
    t0 = time.monotonic()
    mine = DriverLease(storage, sweep_file(spec, "driver.lease"))
    mine.acquire()
    # the TTL, measured here (no start-up in it): not the 600 s the holder's stamp claims; the
    # 10 s over it are for a busy machine's scheduling of this process's sleeps and reads
    assert 2.0 <= time.monotonic() - t0 < 2.0 + 10
    assert storage.read_json(rel)["token"] == mine.me["token"]
    mine.release()
    assert not storage.exists(rel)


def test_a_trial_another_sweep_trains_is_waited_for_never_trained_twice(tmp_path):
    """Two sweeps on one storage share trials: a worker waits while another driver's worker
    holds the trial's claim, and trains nothing if that one published the result; a claim left
    by its own driver's earlier worker (Tune's retry after a lost node) is taken at once."""
    storage = Storage(str(tmp_path))
    result = trial_file("k", "result.json")
    other = TrialClaim(storage, "k", driver_token="sweep-a")
    assert other.acquire(finished=lambda: False)
    waited: dict = {}
    told = threading.Event()  # the waiting worker said whom it waits for

    class Told(logging.Handler):
        def emit(self, record):
            if "held by another sweep's driver" in record.getMessage():
                told.set()

    def wait_for_it():
        waited["trains"] = TrialClaim(storage, "k", driver_token="sweep-b").acquire(
            finished=lambda: storage.exists(result), poll=0.05)

    handler = Told()
    logging.getLogger("sweeps.store.lease").addHandler(handler)
    try:
        t = threading.Thread(target=wait_for_it)
        t.start()
        assert told.wait(HANG / 10)
    finally:
        logging.getLogger("sweeps.store.lease").removeHandler(handler)
    assert t.is_alive() and "trains" not in waited  # waiting, not training
    storage.write_json(result, {"state": "done"})  # sweep A publishes, then lets go
    other.release()
    t.join(HANG / 10)
    assert waited["trains"] is False

    # Sweep A's worker takes it again and dies on a lost node (its claim stays, renewed by
    # nobody); A's driver retries the trial on another worker: taken over at once.
    storage.delete(result)
    lost = TrialClaim(storage, "k", driver_token="sweep-a")
    assert lost.acquire(finished=lambda: False)
    lost.stop_renewing()  # the heartbeat of a process that is gone
    t0 = time.time()
    retry = TrialClaim(storage, "k", driver_token="sweep-a")
    # at once: not after the claim's TTL (120 s), which a lost worker's claim would cost
    assert retry.acquire(finished=lambda: False) and time.time() - t0 < lease_module.TTL / 4
    assert storage.read_json(trial_file("k", "claim.lease"))["token"] == retry.me["token"]
    # ... while sweep B, once A lets go without a result (it failed), trains it itself
    retry.release()
    assert TrialClaim(storage, "k", driver_token="sweep-b").acquire(finished=lambda: False)


def faked_clock(offset: str) -> tuple[str, ...]:
    """Run under a clock ``offset`` from the machine's (libfaketime; its monotonic clock is
    offset too, which changes no interval: with FAKETIME_DONT_FAKE_MONOTONIC, libfaketime
    breaks Python's time.sleep, EINVAL from clock_nanosleep)."""
    if shutil.which("faketime") is None:
        pytest.fail("faketime is not installed (testkit/install-test-tools.sh installs it)")
    return ("faketime", "-f", offset)


HOLDER = """
import sys, time
from sweeps.store.lease import DriverLease
from sweeps.store.storage import Storage
lease = DriverLease(Storage(sys.argv[1]), sys.argv[2])
lease.acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_clock_skew_neither_steals_nor_blocks_the_lease(tmp_path):
    """Defect 3: a driver whose wall clock was 1 h ahead took a live driver's lease; one 1 h
    behind was told to wait 3413 s for a dead node's lease. Expiry is now judged on the
    observer's own clock: +1 h is refused while the holder (on a node of another name: its pid
    means nothing here) renews; -1 h takes that node's lease once it is lost, after the TTL of
    its own time; the sweep ends with one run per trial, every epoch once."""
    ttl = 6.0
    env = {"KDSWEEP_LEASE_TTL": str(ttl)}
    spec_path = write_spec(tmp_path, name="skew", chains=[["cnn-small", "cnn-small"]],
                           train={"epochs": 3, "batch_size": 64, "lr": 0.05})
    spec = parse_spec(yaml.safe_load(spec_path.read_text()))
    storage = Storage(spec.storage)
    rel = "sweeps/skew/local/driver.lease"
    holder = subprocess.Popen(
        ["unshare", "-u", "sh", "-c", 'hostname other-node && exec "$@"', "sh",
         sys.executable, "-c", HOLDER, spec.storage, rel],
        stdout=subprocess.PIPE, text=True, env={**os.environ, **env}, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        dead = storage.read_json(rel)
        assert dead["host"] == "other-node"
        (tmp_path / "ahead").mkdir()
        ahead = start_driver(spec_path, tmp_path / "ahead", env, prefix=faked_clock("+1h"))
        assert ahead.wait(HANG) == 2, (tmp_path / "ahead" / "driver.log").read_text()[-3000:]
        said = (tmp_path / "ahead" / "driver.log").read_text()
        assert "another driver runs this sweep (host other-node" in said
        assert holder.poll() is None and storage.read_json(rel)["token"] == dead["token"]
        os.killpg(holder.pid, signal.SIGKILL)  # the other node is lost
        holder.wait(HANG)
        (tmp_path / "behind").mkdir()
        log = tmp_path / "behind" / "driver.log"
        behind = start_driver(spec_path, tmp_path / "behind", env, prefix=faked_clock("-1h"))
        # its start-up (imports, checks: seconds when quiet, a minute under load) is not the
        # subject: the interval starts when it says it began watching the lease
        deadline, began = time.monotonic() + HANG, None
        while (storage.read_json(rel) or {}).get("token") == dead["token"]:  # until taken
            if began is None and log.exists() and "watching it for a renewal" in log.read_text():
                began = time.monotonic()
            assert behind.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        assert began is not None, log.read_text()[-3000:]  # it watched, never took at sight
        waited = time.monotonic() - began
        # the TTL on its own clock, not the hour its clock is behind: from the line it prints
        # after its first read of the lease (so a little under the TTL) to the take it writes;
        # 20 s over it for a busy machine's scheduling, still far from an hour
        print(f"took the lost node's lease {waited:.1f} s after it began watching (TTL {ttl})")
        assert ttl / 2 <= waited < ttl + 20, waited
        assert behind.wait(HANG) == 0, (tmp_path / "behind" / "driver.log").read_text()[-3000:]
    finally:
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
        for d in (tmp_path / "ahead", tmp_path / "behind"):
            if d.exists():
                kill_leftovers(d, remove=True)
    client = MlflowClient(spec.tracking_uri)
    exp = client.get_experiment_by_name("skew")
    runs = client.search_runs([exp.experiment_id], "tags.`kdsweep.role` = 'trial'")
    assert sorted(r.data.tags["kdsweep.key"] for r in runs) == sorted(
        t.key for t in build_plan(spec).trials)
    for r in runs:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")]
        assert sorted(steps) == [1, 2, 3], steps


MLFLOW_KILL_SEED = 20261204


def test_twenty_real_time_kills_inside_mlflow_writes_then_rerun(tmp_path, forks):
    """A sweep whose trials are all stored and whose SQLite store has none of their runs: each
    start writes run after run (the writer's busiest phase, every write an SQLite transaction).
    SIGKILLed 20 times at seeded moments inside that phase, each time followed by the same
    command: every rerun starts (a hot journal left by a kill is rolled back, not refused), and
    the last one ends with one run per trial, every epoch once."""
    from testkit.fabricate import fabricate

    spec_path = write_spec(tmp_path, name="kills", chains=[["cnn-small", "cnn-small"]],
                           train={"epochs": 3, "batch_size": 64, "lr": 0.05},
                           grid={"loss": ["kl", "mse"], "tau": [1, 2, 4, 8, 16],
                                 "seeds": list(range(20)), "baselines": False})
    spec = parse_spec(yaml.safe_load(spec_path.read_text()))
    keys = {t.key for t in fabricate(spec)}
    db = tmp_path / "mlflow.db"
    rng = random.Random(MLFLOW_KILL_SEED)
    log = tmp_path / "driver.log"
    hot = kills = 0
    # each driver forked from one that has imported its modules (conftest's forks): the kills
    # cost no imports
    try:
        for i in range(20):
            start = len(log.read_bytes()) if log.exists() else 0
            pid = forks.start(tmp_path, "run", spec_path)
            deadline = time.monotonic() + HANG
            while not log.exists() or b"mlflow ui --backend" not in log.read_bytes()[start:]:
                assert time.monotonic() < deadline, (i, log.exists() and log.read_text()[-3000:])
                time.sleep(0.02)
            time.sleep(rng.uniform(0.05, 0.6))  # the parent run is there: the trials' next
            with contextlib.suppress(ProcessLookupError):  # gone already: its code says how
                os.killpg(pid, signal.SIGKILL)
            code = forks.wait()
            if code == 0:
                # Every run was written before this kill's moment (each killed start writes
                # more; a quiet machine writes them all sooner): no later start has a write
                # left to kill.
                break
            assert code == -signal.SIGKILL, (i, code, log.read_text()[-2000:])
            kills += 1
            journal = tmp_path / "mlflow.db-journal"
            hot += journal.exists() and journal.stat().st_size > 0
        print(f"{kills} kills, {hot} of them inside an SQLite transaction (a hot journal left)")
        assert kills >= 5 and hot >= 1  # the window is the subject: kills land inside writes
        final = start_driver(spec_path, tmp_path)  # a plain process, as a user runs it
        assert final.wait(HANG) == 0, log.read_text()[-3000:]
        assert "Traceback" not in log.read_text()
    finally:
        kill_leftovers(tmp_path, remove=True)
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("kills")
    runs = client.search_runs([exp.experiment_id], "tags.`kdsweep.role` = 'trial'",
                              max_results=1000)
    assert sorted(r.data.tags["kdsweep.key"] for r in runs) == sorted(keys)  # one run each
    for r in runs:
        assert r.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")]
        assert sorted(steps) == [1, 2, 3], steps
    assert len(client.search_runs([exp.experiment_id], "tags.`kdsweep.role` = 'sweep'")) == 1
