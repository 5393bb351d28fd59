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
