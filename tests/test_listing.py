"""A driver knows its trials from one listing of storage, then reads only what it lists: the
states it derives are the states a probe of every file gives, and stored results are read
once each. Local storage here; the same on S3, counted request by request, in test_s3.py."""

import pytest

from sweeps.domain.plan import build_plan
from sweeps.domain.spec import parse_spec
from sweeps.store.ledger import Ledger, TrialState, trial_file
from sweeps.store.snapshot import Snapshot
from sweeps.store.storage import Storage
from testkit.fabricate import fabricate


def spec_at(root, seeds=(0,)):
    return parse_spec({
        "name": "listing", "dataset": {"name": "digits"}, "chains": [["cnn-small", "cnn-small"]],
        "train": {"epochs": 2},
        "grid": {"loss": ["kl", "mse"], "tau": [1, 4], "seeds": list(seeds), "baselines": False},
        "storage": str(root),
    })


def states_by_probe(ledger, keys):
    return {k: ledger.state(k, ledger.result(k)) for k in keys}


@pytest.fixture
def mixed(tmp_path):
    """One sweep stored whole, a second planned around it with a trial in every state."""
    stored = fabricate(spec_at(tmp_path / "store"))
    planned = build_plan(spec_at(tmp_path / "store", seeds=(1, 2))).trials
    ledger = Ledger(Storage(str(tmp_path / "store")))
    failed, running, claimed = planned[:3]
    ledger.mark_failed(failed.key, "boom")
    ledger.write_progress(running.key, 1, 2)
    ledger.storage.write_bytes(trial_file(claimed.key, "claim.lease"), b"{}")
    ledger.storage.write_bytes(trial_file(stored[0].key, "bank-bfloat16.pt"), b"x")
    return ledger, stored, planned


def test_states_from_a_listing_are_the_states_a_probe_of_every_file_gives(mixed):
    ledger, stored, planned = mixed
    keys = [t.key for t in stored + planned]
    snap = Snapshot.load(ledger, keys)
    assert snap.states == states_by_probe(ledger, keys)
    assert [snap.states[t.key] for t in planned[:4]] == [
        TrialState.FAILED, TrialState.RUNNING, TrialState.CLAIMED, TrialState.PENDING]
    assert snap.ended() == {t.key for t in stored}
    assert snap.results[stored[0].key] == ledger.result(stored[0].key)
    assert snap.has_bank(stored[0].key, "bfloat16") and not snap.has_bank(stored[1].key,
                                                                           "bfloat16")


def test_only_listed_results_are_read(mixed, monkeypatch):
    ledger, stored, planned = mixed
    read = []
    real = ledger.result
    monkeypatch.setattr(ledger, "result", lambda k: read.append(k) or real(k))
    monkeypatch.setattr(ledger.storage, "exists", lambda rel: pytest.fail(f"probed {rel}"))
    Snapshot.load(ledger, [t.key for t in stored + planned])
    assert sorted(read) == sorted(t.key for t in stored)


def test_a_listing_holds_every_file_with_its_stamp(tmp_path):
    storage = Storage(str(tmp_path))
    rels = [f"trials/{k:020x}/{name}" for k in range(40) for name in ("a.json", "b.pt")]
    for i, rel in enumerate(rels):
        storage.write_bytes(rel, b"x" * i)
    storage.write_bytes("sweeps/other.json", b"{}")  # outside the listed folder
    listed = storage.list_files("trials", shards="0123456789abcdef")
    assert listed == {rel: storage.stamp(rel) for rel in rels}
    assert storage.list_files("nothing-here") == {}


def test_trials_found_during_a_run_are_a_file_each_and_join_the_list(tmp_path):
    spec = parse_spec({"name": "added", "dataset": {"name": "digits"},
                       "chains": [["cnn-small", "cnn-small"]], "storage": str(tmp_path)})
    ledger = Ledger(Storage(spec.storage))
    assert ledger.trial_list(spec) is None  # nothing recorded yet
    first, second = ({"key": k, "generation": 1} for k in ("aa", "bb"))
    ledger.save_trial_list(spec, [first], fence=1)
    ledger.save_added_trial(spec, second, fence=1)
    ledger.save_added_trial(spec, first, fence=1)  # already listed: not twice
    assert ledger.trial_list(spec) == [first, second]
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.rglob("*.json")}
    ledger.save_added_trial(spec, {"key": "cc", "generation": 1}, fence=1)
    after = {p.name: p.stat().st_mtime_ns for p in tmp_path.rglob("*.json")}
    assert {k: after[k] for k in before} == before  # an addition rewrites nothing
    (tmp_path / "sweeps/added/local/added/bb.json").write_text("{not json")
    assert [t["key"] for t in ledger.trial_list(spec)] == ["aa", "cc"]  # corrupt: moved aside
    assert list(tmp_path.rglob("bb.json.corrupt-*"))
