"""A driver knows its trials from one listing of storage, then reads only what it lists: the
states it derives are the states a probe of every file gives, and stored results are read
once each. Local storage here; the same on S3, counted request by request, in test_s3.py."""

import dataclasses
import os

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
    held, full = snap.results[stored[0].key], ledger.result(stored[0].key)
    assert held.history is None and full.history  # the snapshot holds no history (issue 43)
    assert list(held.test_acc_curve) == full.test_acc_curve == [h["test_acc"]
                                                                for h in full.history]
    assert dataclasses.replace(held, history=full.history,
                               test_acc_curve=full.test_acc_curve) == full
    assert snap.has_bank(stored[0].key, "bfloat16") and not snap.has_bank(stored[1].key,
                                                                           "bfloat16")


def test_only_listed_results_are_read(mixed, monkeypatch):
    ledger, stored, planned = mixed
    read = []
    real = ledger.summary
    monkeypatch.setattr(ledger, "summary", lambda k: read.append(k) or real(k))
    monkeypatch.setattr(ledger.storage, "exists", lambda rel: pytest.fail(f"probed {rel}"))
    monkeypatch.setattr(ledger, "history", lambda k: pytest.fail(f"read {k}'s history"))
    Snapshot.load(ledger, [t.key for t in stored + planned])
    assert sorted(read) == sorted(t.key for t in stored)


def test_status_holds_states_not_histories_and_reads_the_same(mixed, monkeypatch):
    """Issue 43: `kdsweep status` keeps each trial's state, no record and no history (its
    memory stays flat in the epochs), and never reads a history file: its table is the one
    the states a probe of every file gives make, whether or not the histories are there."""
    import io

    from sweeps.app.progress import Progress, load_plan, sweep_status

    ledger, stored, planned = mixed
    spec = spec_at(ledger.storage.root, seeds=(0, 1, 2))
    plan = load_plan(spec, ledger)
    probed = states_by_probe(ledger, [t.key for t in plan.trials])
    expected = (f"sweep {spec.name} ({spec.storage})\n"
                + Progress(plan, probed.__getitem__, io.StringIO()).table())
    assert "generation 0: 1 done, 1 running, 0 pending, 1 failed" in expected
    assert "generation 1: 3 done, 0 running, 5 pending, 0 failed, 1 claimed" in expected
    snap = Snapshot.load(Ledger(ledger.storage, repair=False), probed, results=False)
    assert snap.states == probed and not any(snap.results.values()) and snap.listing is None
    assert sweep_status(spec) == expected
    for t in stored:  # status reads no history: without them, the same table
        ledger.storage.delete(trial_file(t.key, "history.json"))
    monkeypatch.setattr(Ledger, "history", lambda self, k: pytest.fail(f"read {k}'s history"))
    assert sweep_status(spec) == expected


def test_a_sweep_lists_only_its_own_trials_folders_on_a_shared_root(mixed, monkeypatch):
    """Issue 43: start-up and status read the sweep's own trials, not every sweep's the root
    holds (one read of the root's names, then only the planned keys' folders), and derive the
    states a listing of the whole root gives."""
    ledger, stored, planned = mixed
    keys = [t.key for t in planned]
    walked = []
    real = ledger.storage._walk
    monkeypatch.setattr(ledger.storage, "_walk",
                        lambda tops, *a: walked.extend(tops) or real(tops, *a))
    snap = Snapshot.load(ledger, keys)
    there = set(os.listdir(ledger.storage.path("trials")))
    assert sorted(walked) == sorted(ledger.storage.path(f"trials/{k}") for k in keys
                                    if k in there)  # no other sweep's folder
    assert set(snap.listing.trials) <= set(keys) and not snap.listing.covers(stored[0].key)
    whole = ledger.listing()
    assert snap.states == {k: ledger.state(k, ledger.result(k), whole.names(k)) for k in keys}
    assert {k: snap.listing.names(k) for k in keys} == {k: whole.names(k) for k in keys}
    # a key outside the listing is probed, not taken for one without files
    assert snap.has_bank(stored[0].key, "bfloat16")


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


def test_trials_added_during_runs_are_folded_into_the_list_at_the_next_start(tmp_path):
    """Issue 43: a driver's start folds the added/ files into the trial list it writes, then
    removes them, so `kdsweep status` reads the list and an empty folder, not a file per trial
    ever sampled. A kill between the fold and the removal (the fault point, a real SIGKILL)
    leaves files that the next start folds again: the same list, nothing twice."""
    import subprocess
    import sys

    spec = parse_spec({"name": "fold", "dataset": {"name": "digits"},
                       "chains": [["cnn-small", "cnn-small"]], "storage": str(tmp_path)})
    folder = tmp_path / "sweeps/fold/local/added"
    planned, a, b, c = ({"key": k, "generation": 1} for k in ("p0", "aa", "bb", "cc"))
    run1 = Ledger(Storage(spec.storage))
    run1.save_trial_list(spec, [planned], fence=1)
    run1.save_added_trial(spec, a, fence=1)
    run1.save_added_trial(spec, b, fence=1)
    assert sorted(p.name for p in folder.iterdir()) == ["aa.json", "bb.json"]

    run2 = Ledger(Storage(spec.storage))
    run2.save_trial_list(spec, [planned], fence=2)  # the next run's start
    assert run2.trial_list(spec) == [planned, a, b] and not list(folder.iterdir())
    run2.save_added_trial(spec, a, fence=2)  # its sampler finds an earlier sample again
    assert not list(folder.iterdir())
    run2.save_added_trial(spec, c, fence=2)  # and a new one
    assert [p.name for p in folder.iterdir()] == ["cc.json"]

    # killed between the fold and the removal
    code = ("from types import SimpleNamespace as N; from sweeps.store.ledger import Ledger;"
            "from sweeps.store.storage import Storage;"
            f"Ledger(Storage({str(tmp_path)!r})).save_trial_list("
            "N(name='fold', cluster='local'), [{'key': 'p0', 'generation': 1}], fence=3)")
    env = {**os.environ, "KDSWEEP_FAULT": "added-folded"}
    killed = subprocess.run([sys.executable, "-c", code], env=env, start_new_session=True,
                            timeout=120)
    assert killed.returncode == -9
    assert [p.name for p in folder.iterdir()] == ["cc.json"]  # folded, not removed:
    assert Storage(spec.storage).read_json("sweeps/fold/local/trials.json")["added"] == [
        "aa", "bb", "cc"]
    assert run2.trial_list(spec) == [planned, a, b, c]
    run4 = Ledger(Storage(spec.storage))
    run4.save_trial_list(spec, [planned], fence=4)
    assert run4.trial_list(spec) == [planned, a, b, c] and not list(folder.iterdir())
    # a run whose plan changed keeps what earlier runs found
    other = {"key": "p1", "generation": 1}
    Ledger(Storage(spec.storage)).save_trial_list(spec, [other], fence=5)
    assert run4.trial_list(spec) == [other, a, b, c]


def test_status_reads_only_the_results_its_index_does_not_hold_as_they_are(mixed, monkeypatch):
    """Issue 43: a run leaves each stored result's state with its file's stamp
    (states.json: snapshot.state_index); `kdsweep status` then reads no result whose file is
    still that one, and reads every other: one changed since (a diverged record written over
    a done one), one gone, one new; an index that is corrupt or whose entries are not
    [size, mtime_ns, state] is read around, never believed. Each time the table is the one a
    probe of every file gives."""
    import io

    from sweeps.app.progress import Progress, load_plan, sweep_status
    from sweeps.store.ledger import SweepFile, sweep_file
    from sweeps.store.snapshot import state_index

    ledger, stored, planned = mixed
    spec = spec_at(ledger.storage.root, seeds=(0, 1, 2))
    keys = [t.key for t in load_plan(spec, ledger).trials]
    reads = []
    real = Ledger.stored_state
    monkeypatch.setattr(Ledger, "stored_state",
                        lambda self, k: reads.append(k) or real(self, k))

    def status_is_the_probes() -> list[str]:
        reads.clear()
        plan = load_plan(spec, ledger)
        probed = states_by_probe(Ledger(ledger.storage, repair=False), keys)
        expected = (f"sweep {spec.name} ({spec.storage})\n"
                    + Progress(plan, probed.__getitem__, io.StringIO()).table())
        assert sweep_status(spec) == expected
        return sorted(reads)

    every = sorted(t.key for t in stored)
    assert status_is_the_probes() == every  # no index yet: every result read
    # the run's end (a run read every result at its start: the listing's stamps, no re-read)
    reads.clear()
    snap = Snapshot.load(Ledger(ledger.storage, repair=False), keys)
    index = state_index(snap, keys)
    assert reads == [] and sorted(index) == every  # (the snapshot reads summaries)
    assert {e[2] for e in index.values()} == {"done"}
    ledger.save_state_index(spec, index, fence=1)
    assert ledger.state_index(spec) == index
    assert status_is_the_probes() == []

    diverged, gone = stored[1], stored[2]
    record = ledger.storage.read_json(trial_file(diverged.key, "result.json"))
    ledger.storage.write_json(trial_file(diverged.key, "result.json"),
                              {**record, "state": "diverged", "reason": "nan loss"})
    ledger.forget_result(gone.key)
    new = planned[4]
    ledger.storage.write_json(trial_file(new.key, "result.json"),
                              {**record, "trial": new.to_dict()})
    assert status_is_the_probes() == sorted([diverged.key, new.key])
    assert "1 diverged" in sweep_status(spec)
    # a run's end vouches for what it read again (the changed and the new), not the gone
    snap = Snapshot.load(Ledger(ledger.storage, repair=False), keys)
    index = state_index(snap, keys)
    assert index[diverged.key][2] == "diverged" and gone.key not in index and new.key in index

    rel = sweep_file(spec, SweepFile.STATES)
    ledger.save_state_index(spec, index, fence=2)
    data = bytearray(ledger.storage.read_bytes(rel))
    data[data.index(b'"done"') + 1] = ord("x")  # still JSON, no longer its seal
    ledger.storage.write_bytes(rel, bytes(data))
    assert status_is_the_probes() == sorted(index)  # corrupt: every result read
    assert ledger.storage.read_bytes(rel) == bytes(data)  # status changes nothing
    bad = {k: ["1", e[1], e[2]] for k, e in index.items()}
    bad[stored[0].key] = [*index[stored[0].key][:2], "finished"]
    ledger.storage.write_json(rel, {"trials": bad})
    assert ledger.state_index(spec) == {}
    assert status_is_the_probes() == sorted(index)


def test_the_names_pass_is_weighed_by_its_own_pages_not_the_files():
    """Issue 43: a fresh 2,000-trial sweep beside 50k trials of 8 files each (400 pages of
    files, 50 of names): the names pass (4 rounds of 16 shards) costs less than 2,000 listings
    of a folder each (63 rounds of 32), though the files' 400 pages (25 rounds of 16) would
    not have (the rule weighed those and listed each folder: 1,999 requests against 51)."""
    from sweeps.store.storage import names_first, per_name

    assert per_name(2000, 400)  # against the files' pages: a listing per name
    assert names_first(2000, 400, 1 / 8)  # against the names' pages: the names first
    assert not names_first(2000, 400, 1.0)  # a file a trial: its names are its pages
    assert not names_first(50, 400, 1 / 8)  # a few names: a listing each


def test_ray_starts_beside_the_listing_only_where_a_planned_trial_is_missing(tmp_path):
    """Issue 43: the driver starts a local Ray while its snapshot lists (snapshot.Loading) only
    where probes of its plan find a trial without a result (sweep._wants_ray): a fresh sweep
    does; a stored sweep's rerun, which only exports, does not (no Ray, as before); one probed
    trial's result gone, it does; failed trials retried, it does."""
    from sweeps.app.sweep import PROBES, _wants_ray

    spec = spec_at(tmp_path / "store", seeds=range(4))
    plan, storage = build_plan(spec), Storage(spec.storage)
    assert len(plan.trials) > PROBES  # probes, not every trial
    assert _wants_ray(spec, plan, storage, retry_failed=False)  # fresh
    fabricate(spec)
    assert not _wants_ray(spec, plan, storage, retry_failed=False)  # all stored
    assert _wants_ray(spec, plan, storage, retry_failed=True)
    os.remove(storage.path(trial_file(plan.trials[-1].key, "result.json")))  # the last: probed
    assert _wants_ray(spec, plan, storage, retry_failed=False)


def test_the_snapshots_listing_in_its_thread_ends_and_raises_at_its_join(tmp_path):
    """snapshot.Loading: the snapshot of Snapshot.load, from a thread that has ended by the
    join (a failed listing: test_s3.py)."""
    from sweeps.store.snapshot import Loading

    spec = spec_at(tmp_path / "store")
    keys = [t.key for t in fabricate(spec)]
    ledger = Ledger(Storage(spec.storage), repair=False)
    loading = Loading(ledger, keys)
    snap = loading.join()
    assert not loading._thread.is_alive()
    assert snap.states == Snapshot.load(ledger, keys).states
    assert set(snap.ended()) == set(keys)
