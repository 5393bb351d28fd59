"""A sweep logging over HTTP, with basic auth, to the MLflow server of cluster/mlflow, backed
by a real PostgreSQL that this test starts."""

import time
import urllib.error
import urllib.request

import psycopg2
import pytest
import yaml
from mlflow.tracking import MlflowClient

from sweeps.plan import build_plan
from sweeps.spec import parse_spec

from .drivers import kill_leftovers, start_driver, write_spec
from .servers import mlflow_server, postgres

pytestmark = pytest.mark.slow
PASSWORD = "kd-test-password-1"


def test_sweep_logs_to_mlflow_server_on_postgres_with_basic_auth(tmp_path, monkeypatch):
    with postgres(("mlflow", "mlflow_auth")) as pg_port, \
            mlflow_server(pg_port, tmp_path, PASSWORD) as url:
        # Without credentials the server refuses.
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/search?max_results=1",
                                   timeout=10)
        assert err.value.code == 401

        creds = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": PASSWORD}
        spec_path = write_spec(tmp_path, name="pg-sweep", tracking_uri=url,
                               chains=[["cnn-medium", "cnn-small"]],
                               train={"epochs": 3, "batch_size": 128, "lr": 0.05})
        spec = parse_spec(yaml.safe_load(spec_path.read_text()))
        t0 = time.time()
        driver = start_driver(spec_path, tmp_path, creds)
        try:
            assert driver.wait(300) == 0, (tmp_path / "driver.log").read_text()[-3000:]
        finally:
            kill_leftovers(tmp_path, remove=True)
        print(f"sweep against the server: {time.time() - t0:.1f}s")

        for k, v in creds.items():
            monkeypatch.setenv(k, v)
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
