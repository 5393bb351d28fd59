"""A sweep logging over HTTP, with basic auth, to the MLflow server of cluster/mlflow, backed
by a real PostgreSQL that this test starts."""

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg2
import pytest
import yaml
from mlflow.tracking import MlflowClient

from sweeps.domain.plan import build_plan
from sweeps.domain.record import TrialResult
from sweeps.domain.spec import parse_spec
from sweeps.store.storage import Storage
from sweeps.tracking.tracker import Tracker
from testkit import HANG
from testkit.drivers import free_port, write_spec
from testkit.servers import mlflow_server, mlflow_sqlite_server, postgres

pytestmark = pytest.mark.slow
PASSWORD = "kd-test-password-1"


def test_sweep_logs_to_mlflow_server_on_postgres_with_basic_auth(tmp_path, monkeypatch,
                                                                kdsweep_here, run_here):
    with postgres(("mlflow", "mlflow_auth")) as pg_port, \
            mlflow_server(pg_port, tmp_path, PASSWORD) as url:
        # Without credentials the server refuses.
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/search?max_results=1",
                                   timeout=HANG / 10)
        assert err.value.code == 401

        # The check before Ray authenticates: a wrong or missing password is one line, exit 2,
        # before anything starts (/health alone would have passed both).
        (tmp_path / "bad").mkdir()
        bad_spec = write_spec(tmp_path / "bad", name="pg-bad", tracking_uri=url)
        for env, said in (({"MLFLOW_TRACKING_PASSWORD": "wrong"}, "were refused"),
                          ({}, "are missing")):
            monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
            monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
            for k, v in env.items():
                monkeypatch.setenv(k, v)
            t0 = time.time()
            code, _, err = kdsweep_here("plan", bad_spec)
            assert code == 2
            [line] = err.splitlines()
            assert f"tracking_uri: the MLflow server at {url} answered 401" in line, line
            # refused at once, not after MLflow's own retries (minutes): 1-2 s when quiet
            assert said in line and "wrong" not in line and time.time() - t0 < HANG / 10
        assert not (tmp_path / "bad" / "store").exists()
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")

        creds = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": PASSWORD}
        spec_path = write_spec(tmp_path, name="pg-sweep", tracking_uri=url,
                               chains=[["cnn-medium", "cnn-small"]],
                               train={"epochs": 3, "batch_size": 128, "lr": 0.05})
        spec = parse_spec(yaml.safe_load(spec_path.read_text()))
        for k, v in creds.items():  # as a driver gets them: from its environment
            monkeypatch.setenv(k, v)
        t0 = time.time()
        assert run_here(spec_path) == 0
        print(f"sweep against the server: {time.time() - t0:.1f}s")

        client = MlflowClient(url)
        exp = client.get_experiment_by_name("pg-sweep")
        runs = client.search_runs([exp.experiment_id], "tags.`kdsweep.role` = 'trial'")
        keys = {t.key for t in build_plan(spec).trials}
        assert {r.data.tags["kdsweep.key"] for r in runs} == keys and len(runs) == len(keys)
        for r in runs:
            steps = [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")]
            assert sorted(steps) == [1, 2, 3]
            assert "model.pt" in [a.path for a in client.list_artifacts(r.info.run_id)]
        # ... and it all lives in PostgreSQL.
        with psycopg2.connect(host="127.0.0.1", port=pg_port, user="postgres",
                              dbname="mlflow") as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM runs WHERE experiment_id = %s",
                        (int(exp.experiment_id),))
            assert cur.fetchone()[0] == len(keys) + 1  # trials + the sweep's parent run


def _epoch(e: int) -> dict:
    return {"epoch": e, "lr": 0.1, "train_loss": 1.0 / e, "train_acc": 0.5, "epoch_time": 1.0}


def test_the_writer_outlasts_a_server_restart_and_refills_what_an_outage_lost(
    tmp_path, monkeypatch
):
    """The driver's MLflow writer against a real server that goes away mid-sweep. A restart
    within the client's retries loses nothing; a longer outage loses nothing either once the
    trial's finish resends, from its stored history, the steps the server never took."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")  # retries 1, 2, 4, 8 s...
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    spec = parse_spec({"name": "restart", "dataset": {"name": "digits"},
                       "chains": [["cnn-small"]], "storage": str(tmp_path / "store"),
                       "tracking_uri": url})
    trial = build_plan(spec).trials[0]
    with mlflow_sqlite_server(tmp_path, port=port):
        tracker = Tracker(spec, Storage(spec.storage))
        tracker.ensure_run(trial)
        for e in (1, 2, 3):
            tracker.log_epoch(trial.key, _epoch(e))
        assert tracker.flush(60)
    for e in (4, 5, 6):  # the server is down: the writer retries until it is back
        tracker.log_epoch(trial.key, _epoch(e))
    with mlflow_sqlite_server(tmp_path, port=port):
        assert tracker.flush(180) and tracker.failed_writes == 0

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # an outage past the retries
    for e in (7, 8):
        tracker.log_epoch(trial.key, _epoch(e))
    assert tracker.flush(60) and tracker.failed_writes >= 1
    failed = tracker.failed_writes
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    with mlflow_sqlite_server(tmp_path, port=port):
        history = [_epoch(e) for e in range(1, 9)]
        tracker.finish(trial.key, TrialResult.from_history(trial.to_dict(), history))
        assert tracker.flush(120) and tracker.failed_writes == failed
        client = MlflowClient(url)
        run_id = tracker.runs[trial.key]
        steps = [m.step for m in client.get_metric_history(run_id, "train_loss")]
        assert sorted(steps) == list(range(1, 9))  # every epoch, each once
        assert client.get_run(run_id).info.status == "FINISHED"


def test_the_start_script_says_why_a_server_does_not_come_up(tmp_path):
    """cluster/mlflow/start-mlflow.sh waits for /health: a server that cannot start (its port
    taken) ends the script with one clear line and exit 1, not a port that never answers."""
    script = Path(__file__).resolve().parents[1] / "cluster" / "mlflow" / "start-mlflow.sh"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # bound, not listening: the server's bind fails
        env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'b.db'}",
               "MLFLOW_AUTH_DATABASE_URI": f"sqlite:///{tmp_path / 'auth.db'}",
               "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "artifacts"),
               "MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD, "MLFLOW_HOST": "127.0.0.1",
               "MLFLOW_PORT": str(taken.getsockname()[1]),
               "MLFLOW_STATE_DIR": str(tmp_path / "state"),
               "MLFLOW_BIN": str(Path(sys.executable).parent / "mlflow")}
        out = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True,
                             timeout=HANG)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("start-mlflow: the server exited before answering on port"), last
