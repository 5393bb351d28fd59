"""The Tracker's lanes against a real MLflow server: many lineages finishing at once into a new
experiment (the first logs of one dataset, from several lanes in the same moment)."""

import threading

import pytest
from mlflow import MlflowClient

from sweeps.domain.spec import parse_spec
from sweeps.store.ledger import Ledger
from sweeps.store.storage import Storage
from sweeps.tracking.tracker import DatasetInputs, Tracker
from testkit.fabricate import fabricate
from testkit.servers import mlflow_sqlite_server

EPOCHS = 3
LANES = 16


@pytest.mark.slow
def test_lanes_finish_every_run_of_one_dataset_at_once(tmp_path, capfd):
    """Eight lineages (seeds), a lane each (a server gets several), log one Dataset (clean
    labels: one digest for every seed) into a fresh experiment: each run ends FINISHED with its
    input and every epoch once, no "View run" line printed per run. Then the race itself,
    released by a barrier: MLflow's first log of a dataset in an experiment fails one of two
    concurrent callers on the datasets table's unique key (which left a trial's run RUNNING,
    its finish aborted); DatasetInputs never."""
    with mlflow_sqlite_server(tmp_path, workers=4) as server:
        spec = parse_spec({
            "name": "lanes", "dataset": {"name": "digits"},
            "chains": [["cnn-small", "cnn-small"]], "train": {"epochs": EPOCHS},
            "grid": {"loss": ["kl"], "tau": [4], "seeds": list(range(8)), "baselines": False},
            "storage": str(tmp_path / "store"), "tracking_uri": server,
        })
        trials = fabricate(spec)
        ledger = Ledger(Storage(spec.storage))
        tracker = Tracker(spec, ledger.storage)
        try:
            for t in trials:
                tracker.ensure_run(t)
            for t in trials:
                tracker.finish(t.key, ledger.result(t.key))
            assert tracker.flush(timeout=600)
        finally:
            tracker.shutdown()
        client = MlflowClient(server)
        runs = client.search_runs([tracker.experiment_id], "tags.`kdsweep.role` = 'trial'")
        assert len(runs) == len(trials) == 16
        for r in runs:
            assert r.info.status == "FINISHED", r.data.tags.get("kdsweep.key")
            assert len(r.inputs.dataset_inputs) == 1
            steps = [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")]
            assert sorted(steps) == list(range(1, EPOCHS + 1))
        assert tracker.failed_writes == 0
        assert "View run" not in capfd.readouterr().out  # no line per run: the sweep's links

        result = ledger.result(trials[0].key)
        errors = []
        for attempt in range(6):  # the unguarded race lost a caller in about 1 of 5 rounds of 8
            experiment = client.create_experiment(f"race-{attempt}")
            inputs = DatasetInputs(client, spec)  # a new experiment: no dataset row yet
            run_ids = [client.create_run(experiment).info.run_id for _ in range(LANES)]
            barrier = threading.Barrier(LANES)

            def log(run_id, inputs=inputs, barrier=barrier):
                barrier.wait()
                try:
                    inputs.log(run_id, result)
                except Exception as e:  # what the lane would have met
                    errors.append(str(e)[:200])

            threads = [threading.Thread(target=log, args=(r,)) for r in run_ids]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for r in run_ids:
                assert len(client.get_run(r).inputs.dataset_inputs) == 1
        assert errors == []
