"""The embedded MLflow store moves with its artifacts: a store (mlflow.db and mlruns/ beside it)
moved to another folder keeps its artifacts readable once kdsweep opens it there."""

import shutil
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sweeps.spec import parse_spec
from sweeps.sqlite_store import ARTIFACTS, prepare_store
from sweeps.storage import Storage
from sweeps.tracking import Tracker


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
