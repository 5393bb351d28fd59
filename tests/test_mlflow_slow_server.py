"""A rerun of a stored sweep into an MLflow server a slow network away (100 ms per request,
testkit's latency proxy): the driver's main thread never waits on MLflow, the Parquet is
written before MLflow has caught up, and MLflow ends complete once a later run has filled in
what the first left (one run per trial, every epoch once, FINISHED)."""

import io
import time

import pandas as pd
import pytest
from mlflow import MlflowClient

from sweeps.app import sweep as sweep_module
from sweeps.domain.spec import parse_spec
from sweeps.store.ledger import Ledger
from sweeps.store.storage import Storage
from sweeps.tracking.tracker import Tracker
from testkit.fabricate import fabricate
from testkit.latency import LatencyProxy
from testkit.servers import mlflow_sqlite_server

EPOCHS = 3
DELAY = 0.1  # seconds per request


class Kept(Tracker):
    """The Tracker, kept for the test to read its writer's figures after the run; 8 records
    in memory (one a lane): the rest go through the lanes' files."""

    made: list = []

    def __init__(self, *a, **k):
        super().__init__(*a, queue_size=8, **k)
        Kept.made.append(self)


@pytest.mark.slow
def test_a_rerun_into_a_slow_server_never_waits_on_it(tmp_path, monkeypatch):
    with mlflow_sqlite_server(tmp_path, workers=2) as server, \
            LatencyProxy(int(server.rsplit(":", 1)[1]), delay=DELAY) as proxy:
        spec = parse_spec({
            "name": "slow", "dataset": {"name": "digits"},
            "chains": [["cnn-small", "cnn-small"]], "train": {"epochs": EPOCHS},
            "grid": {"loss": ["kl"], "tau": [1, 4, 20], "seeds": list(range(10)),
                     "baselines": False},
            "storage": str(tmp_path / "store"), "tracking_uri": proxy.endpoint,
        })
        trials = fabricate(spec)
        assert len(trials) == 40
        stalls = []

        def timed(*a, **k):  # the driver's main thread, recording every stored trial
            t0 = time.perf_counter()
            try:
                return record_stored(*a, **k)
            finally:
                stalls.append(time.perf_counter() - t0)

        record_stored = sweep_module.record_stored
        monkeypatch.setattr(sweep_module, "record_stored", timed)
        monkeypatch.setattr(sweep_module, "Tracker", Kept)
        monkeypatch.setenv("KDSWEEP_MLFLOW_WAIT", "1")
        out = io.StringIO()
        t0 = time.monotonic()
        uri = sweep_module.run_sweep(spec, out=out)
        print(f"first run {time.monotonic() - t0:.1f} s, record_stored {stalls[0]:.3f} s")

        # the Parquet is complete; MLflow is not (at least 40 x 9 requests of 100 ms over
        # 8 lanes: seconds more than the wait of 1 s), and the driver said so in one line
        rows = pd.read_parquet(uri)
        assert len(rows) == 40 and (rows.state == "done").all()
        first = Kept.made[-1].writer
        assert stalls[0] < 1.0 and first.longest_put < 1.0, (stalls, first.longest_put)
        assert first.spills() > 20  # most went through the lanes' files
        said = [line for line in out.getvalue().splitlines() if line.startswith("MLflow: ")]
        assert len(said) == 1 and "writes not made after 1 s" in said[0], out.getvalue()
        assert int(said[0].split()[1]) > 0
        client = MlflowClient(server)
        exp = client.get_experiment_by_name("slow").experiment_id
        runs = client.search_runs([exp], "tags.`kdsweep.role` = 'trial'", max_results=1000)
        assert sum(r.info.status == "FINISHED" for r in runs) < 40
        assert not first.alive() and not first.folder.exists()  # stopped, files removed
        assert rows.mlflow_run_id.isna().any()  # runs MLflow had not made: no id yet

        # the next run (waiting as long as it takes) fills in what the first left
        monkeypatch.delenv("KDSWEEP_MLFLOW_WAIT")
        out = io.StringIO()
        t0 = time.monotonic()
        uri = sweep_module.run_sweep(spec, out=out)
        print(f"second run {time.monotonic() - t0:.1f} s, record_stored {stalls[1]:.3f} s")
        assert "writes not made" not in out.getvalue()
        assert stalls[1] < 1.0 and Kept.made[-1].writer.longest_put < 1.0
        runs = client.search_runs([exp], "tags.`kdsweep.role` = 'trial'", max_results=1000)
        keys = [r.data.tags["kdsweep.key"] for r in runs]
        assert sorted(keys) == sorted(t.key for t in trials)  # one run per trial
        ledger = Ledger(Storage(spec.storage))
        for r in runs:
            assert r.info.status == "FINISHED", r.data.tags["kdsweep.key"]
            steps = [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")]
            assert sorted(steps) == list(range(1, EPOCHS + 1))
            assert ledger.result(r.data.tags["kdsweep.key"]) is not None
        rows = pd.read_parquet(uri)  # written again with the ids of the runs made meanwhile
        assert dict(zip(rows.key, rows.mlflow_run_id, strict=True)) == {
            r.data.tags["kdsweep.key"]: r.info.run_id for r in runs}
        parent = client.search_runs([exp], "tags.`kdsweep.role` = 'sweep'")[0]
        assert parent.info.status == "FINISHED"
        assert proxy.total() > 40 * 5  # the requests went through the slow proxy
