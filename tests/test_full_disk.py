"""Storage on a full disk (a small tmpfs): the run ends with one line naming the storage and
the file, exit 2, no traceback and no temporary file left; once space is freed, the same
command finishes the sweep with nothing lost."""

import json
import subprocess

import pandas as pd
import pytest

from sweeps.domain.spec import load_spec
from sweeps.store.ledger import trial_file
from testkit import HANG
from testkit.drivers import fork_driver, kill_leftovers, left_behind, write_spec

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs: a teacher and a student of 2 epochs need about 380 KiB."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def run(forks, spec_path, tmp):
    driver = fork_driver(forks, spec_path, tmp)
    try:
        code = driver.wait(HANG)
        assert left_behind(driver.pid) == []  # exit 2 with its Ray up: nothing left running
    finally:
        kill_leftovers(tmp)
    log = (tmp / "driver.log").read_text()
    (tmp / "driver.log").unlink()
    return code, log


def test_a_full_disk_stops_the_run_cleanly_and_a_rerun_finishes_it(tmp_path, small_disk,
                                                                   run_here, forks):
    spec_path = write_spec(tmp_path, name="full-disk", storage=str(small_disk / "store"),
                           chains=[["cnn-small", "cnn-small"]],
                           train={"epochs": 2, "batch_size": 64, "lr": 0.05},
                           grid={"loss": ["kl"], "tau": [4], "seeds": [0], "baselines": False})
    code, log = run(forks, spec_path, tmp_path)
    assert code == 2, log[-3000:]
    last = log.strip().splitlines()[-1]
    assert last.startswith(f"kdsweep run: error: storage {small_disk / 'store'}: no space left "
                           "writing "), last
    assert "free space, then run the same command again" in last
    assert "Traceback" not in log
    assert list(small_disk.rglob("*.tmp-*")) == []  # a failed write leaves no temporary file

    subprocess.run(["mount", "-o", "remount,size=32m", str(small_disk)], check=True)
    assert run_here(spec_path) == 0  # the same command, in this process
    spec = load_spec(spec_path)
    rows = pd.read_parquet(small_disk / "store" / "sweeps" / "full-disk" / "local" /
                           "results.parquet")
    assert sorted(rows.state) == ["done", "done"]
    for key in rows.key:  # every epoch of every trial, once
        history = json.loads((small_disk / "store" / trial_file(key, "history.json")).read_text())
        assert [h["epoch"] for h in history["history"]] == list(range(1, spec.train.epochs + 1))


def tmpfs(path, size: str):
    path.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {made.stderr.strip()}")
    return path


def test_an_mlflow_store_on_a_full_disk_is_one_line_and_a_rerun_fills_it_in(tmp_path,
                                                                           run_here, forks):
    """Defect 7: creating the store on a full disk printed an ENOSPC traceback and left a
    300 KB `.mlflow.db.creating-*`; a store filling mid-run printed ~107 SQLAlchemy tracebacks,
    then exit 1. Now: one line naming tracking_uri, exit 2, nothing left; freed, the same
    command fills MLflow in, every epoch once."""
    from mlflow.tracking import MlflowClient

    from testkit.fabricate import fabricate

    disk = tmpfs(tmp_path / "disk", "512k")  # the empty store is ~950 KB
    spec_path = write_spec(tmp_path, name="full-store", chains=[["cnn-small", "cnn-small"]],
                           train={"epochs": 3, "batch_size": 64, "lr": 0.05},
                           grid={"loss": ["kl", "mse"], "tau": [1, 4], "seeds": list(range(10)),
                                 "baselines": False},
                           tracking_uri=f"sqlite:///{disk / 'mlflow.db'}")
    # trials stored (no training): each run's MLflow writes are what fills the store
    keys = {t.key for t in fabricate(load_spec(spec_path))}
    try:
        code, log = run(forks, spec_path, tmp_path)
        assert code == 2 and "Traceback" not in log, log[-3000:]
        assert log.strip().splitlines()[-1] == (
            f"kdsweep run: error: tracking_uri sqlite:///{disk / 'mlflow.db'}: no space left "
            "creating the MLflow store; free space, then run the same command again")
        assert list(disk.iterdir()) == []
        # room for the store and a little: it fills up while the sweep runs
        subprocess.run(["mount", "-o", "remount,size=1100k", str(disk)], check=True)
        code, log = run(forks, spec_path, tmp_path)
        assert code == 2 and "Traceback" not in log, log[-3000:]
        assert log.strip().splitlines()[-1].startswith(
            f"kdsweep run: error: tracking_uri sqlite:///{disk / 'mlflow.db'}: no space left "
            "for MLflow's writes; free space, then run the same command again")
        assert log.count("no space left") == 2  # the writer's one warning, and the error
        subprocess.run(["mount", "-o", "remount,size=32m", str(disk)], check=True)
        assert run_here(spec_path) == 0  # the same command, in this process
        client = MlflowClient(f"sqlite:///{disk / 'mlflow.db'}")
        exp = client.get_experiment_by_name("full-store")
        runs = client.search_runs([exp.experiment_id], "tags.`kdsweep.role` = 'trial'",
                                  max_results=1000)
        assert sorted(r.data.tags["kdsweep.key"] for r in runs) == sorted(keys)
        assert {r.info.status for r in runs} == {"FINISHED"}
        for r in runs:
            steps = [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")]
            assert sorted(steps) == [1, 2, 3]
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
