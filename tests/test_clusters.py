"""Several clusters, one MLflow server (a real `mlflow server` on 127.0.0.1): each cluster keeps
its own parent and child runs, a cluster that finds trials trained in shared storage records
them as reused, and the report compares the same trials across clusters."""

import signal
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from sweeps.domain.plan import build_plan
from sweeps.domain.spec import parse_spec
from sweeps.report import report
from sweeps.store.ledger import Ledger
from sweeps.store.storage import Storage
from testkit import HANG
from testkit.drivers import fork_driver, kill_leftovers, write_spec
from testkit.servers import mlflow_sqlite_server

pytestmark = pytest.mark.slow
NAME = "multi"
EPOCHS = 4  # the kill lands at a student's epoch 2, mid-way


def cluster_spec(tmp: Path, cluster: str, storage: Path, server: str) -> Path:
    folder = tmp / cluster
    folder.mkdir()
    return write_spec(
        folder, name=NAME, cluster=cluster, storage=str(storage), tracking_uri=server,
        chains=[["cnn-medium", "cnn-small"]],
        train={"epochs": EPOCHS, "batch_size": 64, "lr": 0.02},
        grid={"loss": ["kl"], "tau": [4], "seeds": [0, 1], "baselines": False},
    )


def runs_of(client: MlflowClient, exp_id: str, cluster: str) -> list:
    return client.search_runs([exp_id], f"tags.`kdsweep.cluster` = '{cluster}'")


def snapshot(client: MlflowClient, runs) -> dict:
    return {
        r.info.run_id: (
            r.info.status, r.info.end_time, r.data.tags.get("kdsweep.key"),
            [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, "train_loss")],
        )
        for r in runs
    }


def test_clusters_keep_their_own_runs_and_are_compared(tmp_path, run_here, forks):
    with mlflow_sqlite_server(tmp_path) as server:
        alpha = cluster_spec(tmp_path, "alpha", tmp_path / "store-a", server)
        beta = cluster_spec(tmp_path, "beta", tmp_path / "store-b", server)
        gamma = cluster_spec(tmp_path, "gamma", tmp_path / "store-a", server)  # shares alpha's
        spec_a = parse_spec(yaml.safe_load(alpha.read_text()))
        keys = {t.key for t in build_plan(spec_a).trials}
        client = MlflowClient(server)

        assert run_here(alpha) == 0
        exp_id = client.get_experiment_by_name(NAME).experiment_id
        before = snapshot(client, runs_of(client, exp_id, "alpha"))

        # beta: killed in the middle of a student (the fault point at its epoch 2), then rerun:
        # its runs continue, alpha's stay
        driver = fork_driver(forks, beta, beta.parent, env={"KDSWEEP_FAULT": "epoch=1.2"})
        try:
            assert driver.wait(HANG) == -signal.SIGKILL, (
                (beta.parent / "driver.log").read_text()[-3000:])
        finally:
            kill_leftovers(beta.parent, remove=True)
        store_b = Ledger(Storage(str(tmp_path / "store-b")))
        assert not all(store_b.has_result(k) for k in keys)
        assert run_here(beta) == 0

        parents = client.search_runs([exp_id], "tags.`kdsweep.role` = 'sweep'")
        assert sorted(p.data.tags["kdsweep.cluster"] for p in parents) == ["alpha", "beta"]
        for p in parents:
            children = client.search_runs(
                [exp_id], f"tags.`kdsweep.sweep_run` = '{p.info.run_id}'")
            assert {c.data.tags["kdsweep.key"] for c in children} == keys
            assert len(children) == len(keys)
            cluster = p.data.tags["kdsweep.cluster"]
            for c in children:
                assert c.data.tags["kdsweep.cluster"] == cluster and c.info.status == "FINISHED"
                steps = [m.step for m in client.get_metric_history(c.info.run_id, "train_loss")]
                assert sorted(steps) == list(range(1, EPOCHS + 1))  # complete, none twice
        assert len(runs_of(client, exp_id, "beta")) == 1 + len(keys)  # the filter: beta only
        assert snapshot(client, runs_of(client, exp_id, "alpha")) == before  # untouched

        # gamma shares alpha's storage: it trains nothing, and lists every trial as reused
        store_a = Ledger(Storage(str(tmp_path / "store-a")))
        finished = {k: store_a.result(k).finished_at for k in keys}
        assert run_here(gamma) == 0
        assert {k: store_a.result(k).finished_at for k in keys} == finished
        (parent,) = client.search_runs(
            [exp_id], "tags.`kdsweep.role` = 'sweep' and tags.`kdsweep.cluster` = 'gamma'")
        children = client.search_runs(
            [exp_id], f"tags.`kdsweep.sweep_run` = '{parent.info.run_id}'")
        alpha_runs = {r.data.tags.get("kdsweep.key"): r.info.run_id
                      for r in runs_of(client, exp_id, "alpha")}
        assert len(children) == len(keys)
        for c in children:
            assert c.data.tags["kdsweep.reused"] == "true"
            assert c.data.tags["kdsweep.trained_by"] == "alpha"
            assert c.data.tags["kdsweep.trained_by_run"] == alpha_runs[c.data.tags["kdsweep.key"]]
            assert len(client.get_metric_history(c.info.run_id, "train_loss")) == EPOCHS

        # the same trials across clusters: from the clusters' Parquet files, and from MLflow
        files = [str(tmp_path / s / "sweeps" / NAME / c / "results.parquet")
                 for s, c in (("store-a", "alpha"), ("store-b", "beta"))]
        assert (pd.read_parquet(files[1]).trained_on == "beta").all()
        for text in (
            report(files, tmp_path / "rep-parquet")[0],
            report([], tmp_path / "rep-mlflow", server, NAME)[0],
        ):
            repro = text.split("== reproducibility:")[1]
            assert f"{len(keys)} trials trained on more than one cluster" in repro
            assert "alpha" in repro and "beta" in repro and "gamma" not in repro
            # CPU training is deterministic: the two clusters agree to the last digit
            assert "whole sweep, beta - alpha: mean +0.00, worst 0.00" in repro
        print(text)
