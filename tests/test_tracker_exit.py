"""A driver stopped by SIGTERM (`ray job stop`) sends what its tracker has queued before it
exits (issue 18): Python shuts thread pools before exit handlers run, so a flush left to an
exit handler failed with "cannot schedule new futures after shutdown"."""

import subprocess
import sys
import textwrap

import pytest
from mlflow.tracking import MlflowClient

from testkit import HANG
from testkit.servers import mlflow_sqlite_server

pytestmark = pytest.mark.slow
RUNS, EPOCHS = 4, 60

DRIVER = textwrap.dedent("""
    import os, signal, sys
    from sweeps.domain.plan import build_plan
    from sweeps.domain.spec import parse_spec
    from sweeps.store.storage import Storage
    from sweeps.tracking.tracker import Tracker

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # as the CLI
    spec = parse_spec({{"name": "exit", "dataset": {{"name": "digits"}},
                       "chains": [["cnn-small", "cnn-small"]], "grid": {{"seeds": {seeds}}},
                       "storage": {storage!r}, "tracking_uri": {server!r}}})
    with Tracker(spec, Storage(spec.storage)) as tracker:
        trials = build_plan(spec).generations[0]
        for t in trials:
            tracker.ensure_run(t)
        for e in range(1, {epochs} + 1):
            for t in trials:
                tracker.log_epoch(t.key, {{"epoch": e, "train_loss": 1.0 / e}})
        os.kill(os.getpid(), signal.SIGTERM)  # with the epochs still queued
        signal.pause()
""")


def test_a_sigterm_sends_the_queued_epochs_before_the_driver_exits(tmp_path):
    with mlflow_sqlite_server(tmp_path) as server:
        code = DRIVER.format(seeds=list(range(RUNS)), storage=str(tmp_path / "store"),
                             server=server, epochs=EPOCHS)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=HANG)
        assert out.returncode == 128 + 15, out.stderr[-3000:]
        assert "MLflow write failed" not in out.stderr, out.stderr[-3000:]
        client = MlflowClient(server)
        exp = client.get_experiment_by_name("exit")
        runs = client.search_runs([exp.experiment_id], "tags.`kdsweep.role` = 'trial'")
        assert len(runs) == RUNS
        for r in runs:
            steps = [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")]
            assert sorted(steps) == list(range(1, EPOCHS + 1))
