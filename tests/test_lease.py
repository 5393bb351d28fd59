"""Leases stepped by hand on a real file system: the storage itself refuses a stale write,
expiry is judged on the observer's own clock, a claim follows its driver's lease."""

import json
import threading
import time

import pytest
import yaml

from sweeps.domain.spec import parse_spec
from sweeps.store import lease as lease_module
from sweeps.store.lease import ClaimLost, DriverLease, LeaseHeld, TrialClaim, Watch
from sweeps.store.ledger import sweep_file, trial_file
from sweeps.store.storage import Storage, WriteConflict
from testkit import HANG
from testkit.drivers import write_spec


@pytest.fixture
def paused(monkeypatch):
    """Heartbeats that never come within a test: every holder behaves as a paused one unless
    the test renews it by hand."""
    monkeypatch.setattr(lease_module, "beat", lambda: 3600.0)


class SteppedClock:
    """The observer's clock (lease.clock), moved by hand: a window's length without sleeping."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def step(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def stepped(monkeypatch):
    clock = SteppedClock()
    monkeypatch.setattr(lease_module, "clock", clock)
    return clock


def sweep_lease(tmp_path, monkeypatch, ttl: float):
    monkeypatch.setattr(lease_module, "TTL", ttl)
    spec = parse_spec(yaml.safe_load(write_spec(tmp_path).read_text()))
    storage = Storage(spec.storage)
    return storage, spec, lambda: DriverLease(storage, sweep_file(spec, "driver.lease"))


def test_write_if_is_decided_by_the_storage_one_winner_among_racing_writers(tmp_path):
    storage = Storage(str(tmp_path))
    v1 = storage.write_if("x/lease", b"one", None)
    with pytest.raises(WriteConflict):
        storage.write_if("x/lease", b"two", None)  # it exists
    v2 = storage.write_if("x/lease", b"two", v1)
    with pytest.raises(WriteConflict):
        storage.write_if("x/lease", b"stale", v1)  # a writer that saw v1: refused
    assert storage.read_versioned("x/lease") == (b"two", v2)
    # eight writers that all read v2, released at once: exactly one write lands
    start, won = threading.Barrier(8), []

    def race(i):
        start.wait()
        try:
            storage.write_if("x/lease", f"w{i}".encode(), v2)
            won.append(i)
        except WriteConflict:
            pass

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG / 10)
    assert len(won) == 1 and storage.read_versioned("x/lease")[0] == f"w{won[0]}".encode()
    assert not storage.delete_if("x/lease", v2) and storage.exists("x/lease")


def test_a_paused_holders_renewal_after_a_takeover_is_refused_by_the_storage(
        tmp_path, monkeypatch, paused):
    """Defect 2: A paused past the TTL, B took the lease over (fence 2), A resumed and wrote
    it back (fence 1). A's renewal is now a write conditional on the version A wrote last."""
    storage, _, lease = sweep_lease(tmp_path, monkeypatch, ttl=0.5)
    a, told = lease(), []
    a.on_lost = told.append
    a.acquire()
    assert storage.read_json(a.rel)["fence"] == 1 and a.renew()
    b = lease()
    t0 = time.monotonic()
    b.acquire()  # A renews no more: B watches the version unchanged for the TTL, then takes it
    assert time.monotonic() - t0 >= 0.5
    taken = storage.read_json(a.rel)
    assert taken["token"] == b.token and taken["fence"] == 2
    assert a.renew() is False  # refused: B's write changed the version
    assert [h["token"] for h in told] == [b.token]
    assert storage.read_json(a.rel) == taken
    a.release()  # a lease it lost: deletes nothing
    assert storage.read_json(a.rel)["token"] == b.token
    b.release()
    assert not storage.exists(b.rel)


def test_a_holder_trusts_its_lease_for_half_the_ttl_then_confirms_it(
        tmp_path, monkeypatch, paused, stepped):
    storage, _, lease = sweep_lease(tmp_path, monkeypatch, ttl=0.4)
    a, told = lease(), []
    a.on_lost = told.append
    a.acquire()
    version = a.version
    stepped.step(0.19)
    a.check()
    assert a.version == version  # within TTL/2: no write
    stepped.step(0.02)
    a.check()
    assert a.version != version and not told  # past TTL/2: a conditional renewal
    storage.write_json(a.rel, {"token": "someone-else", "fence": 9})
    stepped.step(0.19)
    a.check()
    assert not told  # trusted still: the renewal was 0.19 s ago on its own clock
    stepped.step(0.02)
    a.check()
    assert told == [{"token": "someone-else", "fence": 9}]


def test_a_live_holder_is_refused_and_a_silent_one_waited_out_on_the_observers_clock(
        tmp_path, monkeypatch):
    """Defect 3: expiry compared the reader's wall clock with the writer's stamp. Now a lease
    whose stamps lie (an hour ahead, an hour behind) is judged by whether its version changes
    while the observer watches."""
    # a TTL well above a busy machine's scheduling delays: the holder renews every 0.1 s, so
    # the refusal comes in about 0.2 s, whatever the TTL; only the wait-out below costs it
    ttl = 3.0
    storage, spec, lease = sweep_lease(tmp_path, monkeypatch, ttl=ttl)
    rel = sweep_file(spec, "driver.lease")
    stop = threading.Event()

    written = threading.Event()

    def holder_an_hour_behind():  # a live driver on another host whose clock is 1 h behind
        version = None
        while not stop.wait(0.1):
            stamp = {"host": "other-host", "pid": 7, "token": "t", "fence": 3,
                     "since": time.time() - 3600, "renewed": time.time() - 3600}
            version = storage.write_if(rel, json.dumps(stamp).encode(), version)
            written.set()

    alive = threading.Thread(target=holder_an_hour_behind)
    alive.start()
    try:
        assert written.wait(HANG / 10)
        t0 = time.monotonic()
        with pytest.raises(LeaseHeld, match=r"another driver runs this sweep \(host other-host, "
                                            r"pid 7, lease 3 since"):
            lease().acquire()
        assert time.monotonic() - t0 < ttl  # told at its first renewal, before any expiry
    finally:
        stop.set()
        alive.join(HANG / 10)

    # a dead node's lease stamped an hour in the future: waited out for the TTL, no longer
    dead = {"host": "lost-node", "pid": 1, "since": time.time(), "token": "x", "fence": 4}
    storage.write_json(rel, {**dead, "renewed": time.time() + 3600})
    t0 = time.monotonic()
    mine = lease()
    mine.acquire()
    # the TTL, not the hour its stamp claims (10 s over it: a busy machine's scheduling)
    assert ttl <= time.monotonic() - t0 < ttl + 10
    assert storage.read_json(rel)["fence"] == 5
    mine.release()


def test_watch_counts_changes_on_its_own_clock(stepped):
    w = Watch()
    assert w.see("a") == 0 and w.changes == 0
    stepped.step(0.05)
    assert w.see("a") == pytest.approx(0.05) and w.changes == 0
    assert w.see("b") == 0 and w.changes == 1


def test_a_worker_whose_driver_lost_the_lease_gives_its_claim_up(tmp_path, monkeypatch):
    """Defect 4: a superseded driver's workers kept renewing their claims, and the successor
    waited on them ("trained by another sweep's driver"). A claim's heartbeat reads its
    driver's lease: once another driver holds it, the claim is released."""
    ttl = 2.0  # a claim beats every TTL/4: a busy machine may delay a beat, not by a TTL
    storage, spec, lease = sweep_lease(tmp_path, monkeypatch, ttl=ttl)
    rel = sweep_file(spec, "driver.lease")
    a = lease()
    a.acquire()
    claim = TrialClaim(storage, "k", a.token, rel)
    assert claim.acquire(finished=lambda: False)
    a.stop_renewing()  # A is paused: its heartbeat stops, its worker's claim heartbeat goes on
    b = lease()
    b.acquire()  # after the TTL
    successor = TrialClaim(storage, "k", b.token, rel)
    t0 = time.monotonic()
    assert successor.acquire(finished=lambda: False, poll=0.05)
    assert time.monotonic() - t0 < ttl  # given up at the old worker's next beat, not expired
    with pytest.raises(ClaimLost, match="driver lost the sweep's lease") as e:
        claim.check()
    assert e.value.superseded
    assert storage.read_json(trial_file("k", "claim.lease"))["driver_token"] == b.token
    successor.release()
    b.release()


def test_a_worker_that_lost_its_trial_claim_stops_before_publishing(tmp_path, monkeypatch,
                                                                    paused):
    """A worker paused past its claim's TTL while another driver's worker took the trial
    over: its next epoch stops it (ClaimLost), and it publishes nothing of the trial."""
    from sweeps.domain.plan import build_plan
    from sweeps.ray.trial import train_trial
    from sweeps.store.ledger import Ledger
    from sweeps.store.resume import Attempts

    spec = parse_spec(yaml.safe_load(write_spec(
        tmp_path, train={"epochs": 2, "batch_size": 128, "lr": 0.02}).read_text()))
    ledger = Ledger(Storage(spec.storage))
    teacher = build_plan(spec).trials[0]
    claim = TrialClaim(ledger.storage, teacher.key, "driver-a")
    assert claim.acquire(finished=lambda: False)
    reports = []

    def report(metrics):  # after epoch 1: another driver's worker takes the claim over
        reports.append(metrics)
        taken = {**ledger.storage.read_json(claim.rel), "token": "other",
                 "driver_token": "driver-b"}
        ledger.storage.write_json(claim.rel, taken)
        claim.renew()  # what the heartbeat does every beat: refused by the storage

    with pytest.raises(ClaimLost, match="taken over by another driver's worker"):
        train_trial(spec, teacher, ledger, Attempts(ledger.storage, teacher.key), report,
                    claim)
    assert [r["epoch"] for r in reports] == [1]
    assert ledger.result(teacher.key) is None and not ledger.has_model(teacher.key)
    claim.release()
    assert json.loads(ledger.storage.read_bytes(claim.rel))["token"] == "other"  # untouched


def test_a_driver_refused_the_lease_repairs_nothing(tmp_path, monkeypatch, kdsweep_here):
    """Defect 5: a second `kdsweep run` moved a corrupt result.json aside before it was refused
    the lease. It reads without repairing until it holds the lease."""
    from sweeps.domain.plan import build_plan

    storage, spec, lease = sweep_lease(tmp_path, monkeypatch, ttl=1.0)
    holder = lease()
    holder.acquire()  # a live driver, renewing every 0.25 s
    corrupt = trial_file(build_plan(spec).trials[0].key, "result.json")
    storage.write_bytes(corrupt, b"{ torn")
    try:
        code, _, err = kdsweep_here("run", tmp_path / "spec.yaml")
    finally:
        holder.release()
    assert code == 2 and "another driver runs this sweep" in err.splitlines()[-1]
    # the snapshot, listed in a thread of its own beside the lease (issue 43), has ended
    import threading

    assert "kdsweep-snapshot" not in {t.name for t in threading.enumerate()}
    assert storage.read_bytes(corrupt) == b"{ torn"  # flagged, left where it was
    assert not list((tmp_path / "store" / "trials").glob("*/result.json.corrupt-*"))


def test_a_driver_paused_between_its_check_and_a_shared_write_cannot_replace_its_successors(
        tmp_path, monkeypatch, paused):
    """Issue 41: the trial list, added trials and the results carried a fence no reader
    compared: a driver paused between its check and its write landed that write over its
    successor's. A shared file is now written only on the version its writer read (the
    storage decides), and only while it is the writer's own or the lease is still the
    writer's: A, paused at the named point `shared-write` (its version read), resumes after B
    took the sweep over and wrote the file: A is told it lost (on_lost) and B's file stands;
    a later driver C (whose fence restarts after B released) writes over B's."""
    from sweeps.store import ledger as ledger_module
    from sweeps.store.ledger import Fenced, Ledger

    storage, spec, lease = sweep_lease(tmp_path, monkeypatch, ttl=0.5)
    a, told = lease(), []
    a.on_lost = told.append
    a.acquire()
    ours = Ledger(storage)
    ours.writer = a
    ours.save_trial_list(spec, [{"key": "first"}], a.check())  # A's own earlier write

    at_point, go, real = threading.Event(), threading.Event(), ledger_module.faults.reached

    def reached(point, value=None):
        if threading.current_thread().name == "A":
            at_point.set()
            go.wait(HANG / 10)
        real(point, value)

    monkeypatch.setattr(ledger_module.faults, "reached", reached)
    errors = []

    def write_a():
        try:
            ours.save_trial_list(spec, [{"key": "stale"}], a.check())
        except Fenced as e:
            errors.append(e)

    thread = threading.Thread(target=write_a, name="A")
    thread.start()
    # A checked (its lease trusted, the file's version read): paused
    assert at_point.wait(HANG / 10)
    b = lease()
    b.acquire()  # A renews no more: B takes over after the TTL
    theirs = Ledger(storage)
    theirs.writer = b
    theirs.save_trial_list(spec, [{"key": "successor"}], b.check())
    go.set()
    thread.join(30)
    rel = sweep_file(spec, "trials.json")
    stored = storage.read_json(rel)
    assert stored["trials"] == [{"key": "successor"}] and stored["token"] == b.token
    assert stored["fence"] == 2
    assert [h["token"] for h in told] == [b.token]  # A told it lost: its driver stops (exit 3)
    assert errors and "another driver" in str(errors[0])
    with pytest.raises(Fenced):  # and every later shared write of A's is refused
        ours.save_trial_list(spec, [], 1)
    assert storage.read_json(rel)["token"] == b.token

    b.release()
    c = lease()
    c.acquire()  # a fresh lease after a release: its fence starts again
    later = Ledger(storage)
    later.writer = c
    later.save_trial_list(spec, [{"key": "later"}], c.check())
    assert storage.read_json(rel)["token"] == c.token
    c.release()


def stopped(pid: int) -> bool:
    """The process is stopped (SIGSTOP): its state in /proc is T."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


@pytest.mark.slow
@pytest.mark.parametrize("shared", ["trials.json", "results.parquet", "states.json"])
def test_a_driver_stopped_before_a_shared_write_leaves_its_successors_file(tmp_path, shared):
    """Issue 41, end to end: driver A stops itself (SIGSTOP, the named point `shared-write`)
    with the file's version read under its lease; B takes the sweep over after the TTL and
    finishes it; A, continued, finds B's file, is refused and exits 3 in one line; B's file
    stands byte for byte.

    B tracks into an MLflow store of its own (its spec differs from A's in tracking_uri only,
    which is no part of the sweep's identity: storage, name and cluster are): the subject is
    the sweep's shared files in storage, and a SQLite store is one file with one writer's
    lock, which A, stopped while its tracker's lanes write (the sweep's parent run just
    created, the stored trials being logged), may hold for as long as it stands stopped. B's
    MLflow writes then waited on that lock (this test took 140 s and 159 s so, against ~30 s):
    what a writer stopped mid-write does to a shared SQLite store is not this test's
    subject."""
    import os
    import signal

    from sweeps.domain.spec import load_spec
    from testkit.drivers import kill_leftovers, start_driver
    from testkit.fabricate import fabricate

    spec_path = write_spec(tmp_path)
    spec = load_spec(spec_path)
    (tmp_path / "b").mkdir()
    spec_b = write_spec(tmp_path / "b", storage=spec.storage)  # its own mlflow.db, in b/
    assert load_spec(spec_b).tracking_uri != spec.tracking_uri
    fabricate(spec)  # every trial stored: the drivers only export (no Ray, seconds)
    env = {"KDSWEEP_LEASE_TTL": "3"}
    rel = sweep_file(spec, shared)
    storage = Storage(spec.storage)
    # A's heartbeat never comes first (its beat outlasts the test): once continued, only the
    # storage's refusal of its shared write can stop it (else its write would land)
    a = start_driver(spec_path, tmp_path, {**env, "KDSWEEP_PAUSE": f"shared-write={shared}",
                                           "KDSWEEP_LEASE_BEAT": "3600"})
    try:
        deadline = time.monotonic() + HANG
        while not stopped(a.pid):
            assert a.poll() is None and time.monotonic() < deadline, (
                tmp_path / "driver.log").read_text()[-3000:]
            time.sleep(0.2)
        b = start_driver(spec_b, tmp_path, env)
        assert b.wait(HANG) == 0, (tmp_path / "driver.log").read_text()[-3000:]
        theirs = storage.read_bytes(rel)
        os.kill(a.pid, signal.SIGCONT)
        assert a.wait(HANG) == 3, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        if a.poll() is None:
            os.killpg(a.pid, signal.SIGKILL)
        kill_leftovers(tmp_path, remove=True)
    assert storage.read_bytes(rel) == theirs  # the successor's file stands
    log = (tmp_path / "driver.log").read_text()
    assert "another driver took this sweep over" in log
