"""Lease fencing, stepped by hand: a holder renews only the lease it still holds."""

import time

import pytest
import yaml

from sweeps import lease as lease_module
from sweeps.lease import DriverLease
from sweeps.ledger import sweep_file
from sweeps.spec import parse_spec
from sweeps.storage import Storage
from testkit.drivers import write_spec


def held_lease(tmp_path, monkeypatch, ttl: float) -> tuple[Storage, DriverLease, list, object]:
    """A driver's lease taken under ``ttl``; returns (storage, lease, what on_lost was told,
    the spec)."""
    monkeypatch.setattr(lease_module, "TTL", ttl)
    spec = parse_spec(yaml.safe_load(write_spec(tmp_path).read_text()))
    storage = Storage(spec.storage)
    lease, told = DriverLease(storage, sweep_file(spec, "driver.lease")), []
    lease.on_lost = told.append
    lease.acquire()
    return storage, lease, told, spec


def test_a_holder_that_lost_its_lease_is_told_and_never_writes_it_again(tmp_path, monkeypatch):
    storage, first, lost, spec = held_lease(tmp_path, monkeypatch, 60.0)  # no heartbeat here
    assert storage.read_json(first.rel)["fence"] == 1
    assert first.renew() and not lost

    # `first` pauses past its TTL; a second driver takes the sweep over (its fence grows)
    record = storage.read_json(first.rel)
    storage.write_json(first.rel, {**record, "renewed": time.time() - 61})
    second = DriverLease(storage, sweep_file(spec, "driver.lease"))
    second.acquire()
    taken = storage.read_json(first.rel)
    assert taken["token"] == second.token and taken["fence"] == 2

    # `first` resumes: its renewal is a compare-and-swap that fails, and it is told once
    assert first.renew() is False
    first.check()
    assert [h["token"] for h in lost] == [second.token]
    assert storage.read_json(first.rel) == taken  # not written back
    first.release()  # releasing a lease it lost deletes nothing
    assert storage.read_json(first.rel)["token"] == second.token
    second.release()
    assert not storage.exists(second.rel)


def test_the_heartbeat_stops_once_the_lease_is_lost(tmp_path, monkeypatch):
    storage, mine, told, _ = held_lease(tmp_path, monkeypatch, 0.4)  # a beat every 0.1 s
    other = {**storage.read_json(mine.rel), "token": "someone-else", "fence": 7}
    storage.write_json(mine.rel, other)
    deadline = time.time() + 10
    while not told and time.time() < deadline:
        time.sleep(0.02)
    assert told and told[0]["fence"] == 7
    time.sleep(0.3)  # several heartbeats' worth: none writes the lease back
    assert storage.read_json(mine.rel)["token"] == "someone-else"



def test_a_worker_that_lost_its_trial_claim_stops_before_publishing(tmp_path, monkeypatch):
    """A worker paused past its claim's TTL while another driver's worker took the trial
    over: its next epoch stops it (ClaimLost), and it publishes nothing of the trial."""
    from sweeps.lease import ClaimLost, TrialClaim
    from sweeps.ledger import Ledger
    from sweeps.plan import build_plan
    from sweeps.resume import Attempts
    from sweeps.trial import _train

    monkeypatch.setattr(lease_module, "TTL", 60.0)  # no heartbeat beats during the test
    spec = parse_spec(yaml.safe_load(write_spec(
        tmp_path, train={"epochs": 2, "batch_size": 128, "lr": 0.02}).read_text()))
    ledger = Ledger(Storage(spec.storage))
    teacher = build_plan(spec).trials[0]
    claim = TrialClaim(ledger.storage, teacher.key, "driver-a")
    assert claim.acquire(finished=lambda: False)
    reports = []

    def report(metrics):  # after epoch 1: another driver's worker takes the claim over
        reports.append(metrics)
        taken = {**ledger.storage.read_json(claim.rel), "token": "other", "driver": "driver-b"}
        ledger.storage.write_json(claim.rel, taken)
        claim.holds()  # what the heartbeat does every TTL/4

    with pytest.raises(ClaimLost, match="taken over by another driver's worker"):
        _train(spec, teacher, ledger, Attempts(ledger.storage, teacher.key), report, claim)
    assert [r["epoch"] for r in reports] == [1]
    assert ledger.result(teacher.key) is None and not ledger.has_model(teacher.key)
    claim.release()
    assert ledger.storage.read_json(claim.rel)["token"] == "other"  # its claim, untouched
