"""The embedded MLflow store moves with its artifacts: a store (mlflow.db and mlruns/ beside it)
moved to another folder keeps its artifacts readable once kdsweep opens it there."""

import json
import shutil
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sweeps.domain.spec import parse_spec
from sweeps.store.storage import Storage
from sweeps.tracking.sqlite_store import ARTIFACTS, prepare_store
from sweeps.tracking.tracker import Tracker
from testkit import HANG


def tracker(folder):
    spec = parse_spec({
        "name": "moving", "dataset": {"name": "digits"}, "chains": [["cnn-small", "cnn-small"]],
        "storage": str(folder / "store"), "tracking_uri": f"sqlite:///{folder / 'mlflow.db'}",
    })
    return Tracker(spec, Storage(spec.storage))


def test_a_moved_store_keeps_its_artifacts(tmp_path):
    a = tmp_path / "a"
    t = tracker(a)
    run = t.parent_id  # its spec.json is an artifact
    t.close()
    assert (a / ARTIFACTS).is_dir()  # beside the store, not in the working directory
    b = tmp_path / "elsewhere" / "b"
    b.parent.mkdir()
    shutil.move(a, b)
    uri = f"sqlite:///{b / 'mlflow.db'}"
    # as MLflow left it, the moved store points at the old folder
    with pytest.raises(MlflowException, match="Failed to download artifacts"):
        MlflowClient(uri).download_artifacts(run, "spec.json", str(tmp_path))
    prepare_store(uri)  # what every kdsweep command on the store does first
    client = MlflowClient(uri)
    got = client.download_artifacts(run, "spec.json", str(tmp_path))
    assert '"name": "moving"' in Path(got).read_text()
    assert client.get_experiment_by_name("moving").artifact_location.startswith(str(b))
    prepare_store(uri)  # idempotent: nothing more to rewrite
    assert client.get_run(run).info.artifact_uri.startswith(str(b))
    # the run's storage is named relative to the store: still right after the move, and the
    # moved sweep finds its own parent run again (the cluster is the same cluster)
    assert client.get_run(run).data.tags["kdsweep.storage"] == "store"
    # the saved view the printed links open: trial rows, their curves first
    exp = client.get_experiment_by_name("moving")
    view = json.loads(exp.tags["mlflow.sharedViewState.kdsweep"])
    assert view["searchFilter"] == "tags.`kdsweep.role` = 'trial'"
    assert view["compareRunSections"][0]["name"] == "Model metrics"
    assert view["compareRunCharts"][0]["metricKey"] == "test_acc"
    moved = tracker(b)
    assert moved.parent_id == run
    moved.close()


def test_a_store_written_with_absolute_locations_is_found_and_retagged(tmp_path):
    from sweeps.tracking.sweep_run import cluster_id

    t = tracker(tmp_path)
    run, storage = t.parent_id, t.storage.uri
    t.close()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    old = cluster_id("local", storage)  # as kdsweep named the cluster before
    client.set_tag(run, "kdsweep.cluster_id", old)
    client.set_tag(run, "kdsweep.storage", storage)
    again = tracker(tmp_path)
    assert again.parent_id == run  # not a second parent run
    again.close()
    assert client.get_run(run).data.tags["kdsweep.storage"] == "store"
    assert client.get_run(run).data.tags["kdsweep.cluster_id"] != old


def test_new_stores_are_copies_of_one_migrated_template(tmp_path, monkeypatch):
    monkeypatch.setenv("KDSWEEP_CACHE", str(tmp_path / "cache"))
    first, second = tmp_path / "one" / "mlflow.db", tmp_path / "two" / "mlflow.db"
    prepare_store(f"sqlite:///{first}")  # migrates, and keeps the empty store as the template
    [template] = (tmp_path / "cache").glob("mlflow-*-empty.db")
    prepare_store(f"sqlite:///{second}")  # a copy of it
    client = MlflowClient(f"sqlite:///{second}")
    assert client.get_experiment("0").artifact_location == str(second.parent / ARTIFACTS / "0")
    client.create_experiment("works")
    assert client.get_experiment_by_name("works") is not None
    assert template.read_bytes() != second.read_bytes()  # the copy is the store; the template stays
    assert "kdsweep_store" not in template.read_bytes().decode("latin-1")  # no mark in it


KILLED_WRITER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA cache_size = 1")  # the transaction spills pages into the file itself
db.execute("BEGIN IMMEDIATE")
db.execute("UPDATE experiments SET name = name || '-half-written'")
db.execute("CREATE TABLE half_written (x BLOB)")
db.executemany("INSERT INTO half_written VALUES (?)", [(b"x" * 4096,) for _ in range(500)])
print("inside", flush=True)
time.sleep(120)
"""


def test_a_store_whose_writer_was_killed_mid_transaction_is_rolled_back_and_used(tmp_path):
    """SIGKILL inside an MLflow write leaves a hot journal; the next command's read-only check
    must not refuse the store (it did: "not an MLflow SQLite store"), and the half-written
    transaction is gone."""
    import signal
    import subprocess
    import sys

    from sweeps.domain.spec import SpecError
    from sweeps.tracking.sqlite_store import check_sqlite_store

    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    prepare_store(uri)
    MlflowClient(uri).create_experiment("before-the-kill")
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(db)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "inside"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(HANG / 10)
    journal = tmp_path / "mlflow.db-journal"
    assert journal.stat().st_size > 0  # hot
    check_sqlite_store(uri, db, timeout=10)
    assert not journal.exists() or journal.stat().st_size == 0
    client = MlflowClient(uri)
    assert client.get_experiment_by_name("before-the-kill") is not None  # rolled back
    client.create_experiment("after-the-kill")

    # someone else's database with a hot journal is refused, and left exactly as it is
    other = tmp_path / "theirs.db"
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER.replace(
        "UPDATE experiments SET name = name || '-half-written'",
        "CREATE TABLE experiments (name TEXT)"), str(other)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "inside"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(HANG / 10)
    before = (other.read_bytes(), (tmp_path / "theirs.db-journal").read_bytes())
    with pytest.raises(SpecError, match="theirs.db"):
        check_sqlite_store(f"sqlite:///{other}", other, timeout=10)
    assert (other.read_bytes(), (tmp_path / "theirs.db-journal").read_bytes()) == before
