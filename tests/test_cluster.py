"""A two-node Ray cluster on loopback with token auth: `ray job submit` of a sweep, the worker
node lost mid-trial, a new node joins, and the sweep completes with the trial resumed."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from sweeps.plan import build_plan
from sweeps.spec import parse_spec
from sweeps.storage import Storage
from sweeps.store import trial_file

from .drivers import EPOCHS, free_port, kill_matching, write_spec

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


class Cluster:
    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="kdc-", dir="/tmp"))  # short: socket paths
        home = self.root / "home"
        home.mkdir()
        # A fresh token for this cluster; every ray command and process gets it.
        subprocess.run(
            [BIN / "ray", "get-auth-token", "--generate"],
            check=True,
            capture_output=True,
            env={**os.environ, "HOME": str(home)},
            timeout=60,
        )
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(home / ".ray" / "auth_token"),
            "PATH": f"{BIN}:{os.environ['PATH']}",
        }
        self.gcs_port, self.dash_port = free_port(), free_port()

    def ray(self, *args, timeout=120, check=True):
        return subprocess.run(
            [BIN / "ray", *map(str, args)],
            env=self.env,
            timeout=timeout,
            capture_output=True,
            text=True,
            check=check,
        )

    def start_head(self):
        self.ray(
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={self.gcs_port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dash_port}",
            "--num-cpus=0",
            f"--temp-dir={self.root / 'h'}",
            "--disable-usage-stats",
        )

    def start_worker(self, name):
        self.ray(
            "start",
            f"--address=127.0.0.1:{self.gcs_port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=1",
            f"--temp-dir={self.root / name}",
            "--disable-usage-stats",
        )

    def kill_node(self, name):
        """A spot node vanishing: SIGKILL every process of that node."""
        kill_matching(str(self.root / name))

    def stop(self):
        for name in ("w1", "w2", "h"):
            self.kill_node(name)
        # Helpers such as Ray's client server name the GCS address, not the temp dir.
        kill_matching(f":{self.gcs_port}")
        shutil.rmtree(self.root, ignore_errors=True)


def test_job_submit_survives_losing_the_worker_node(tmp_path):
    spec_path = write_spec(
        tmp_path,
        name="cluster-sweep",
        chains=[["cnn-medium", "cnn-small"]],
        grid={"loss": ["kl"], "tau": [4], "seeds": [0], "baselines": False},
        cluster="loopback-2node",
    )
    spec = parse_spec(yaml.safe_load(spec_path.read_text()))
    storage = Storage(spec.storage)
    teacher, student = build_plan(spec).trials
    cluster = Cluster()
    try:
        t0 = time.time()
        cluster.start_head()
        cluster.start_worker("w1")
        deadline = time.time() + 180
        while True:  # the job server may come up a little after `ray start` returns
            sub = cluster.ray(
                "job",
                "submit",
                f"--address=http://127.0.0.1:{cluster.dash_port}",
                "--no-wait",
                "--",
                sys.executable,
                "-m",
                "sweeps.cli",
                "run",
                spec_path,
                "--address",
                "auto",
                check=False,
            )
            if sub.returncode == 0 or time.time() > deadline:
                break
            time.sleep(2)
        assert sub.returncode == 0, sub.stdout[-2000:] + sub.stderr[-2000:]
        job_id = re.search(r"raysubmit_\w+", sub.stdout + sub.stderr)[0]

        deadline = time.time() + 180
        while time.time() < deadline:  # lose the node in the middle of the student
            p = storage.read_json(trial_file(student.key, "progress.json"))
            if p and 2 <= p["epoch"] < EPOCHS:
                break
            time.sleep(0.1)
        else:
            logs = cluster.ray(
                "job",
                "logs",
                f"--address=http://127.0.0.1:{cluster.dash_port}",
                job_id,
                check=False,
            )
            pytest.fail(f"student never started:\n{logs.stdout[-3000:]}")
        lost_at = p["epoch"]
        cluster.kill_node("w1")
        cluster.start_worker("w2")

        status = ""
        deadline = time.time() + 300
        while time.time() < deadline:
            status = cluster.ray(
                "job",
                "status",
                f"--address=http://127.0.0.1:{cluster.dash_port}",
                job_id,
                check=False,
            ).stdout
            if re.search(r"succeeded|failed|stopped", status, re.IGNORECASE):
                break
            time.sleep(2)
        logs = cluster.ray(
            "job", "logs", f"--address=http://127.0.0.1:{cluster.dash_port}", job_id, check=False
        ).stdout
        assert re.search("succeeded", status, re.IGNORECASE), logs[-4000:]
        print(f"two-node job with a lost worker: {time.time() - t0:.1f}s, lost at epoch {lost_at}")
    finally:
        cluster.stop()

    result = storage.read_json(trial_file(student.key, "result.json"))
    assert result["starts"] >= 2 and result["preemptions"] >= 1 and result["errors"] == 0
    assert result["resumed_from"][-1] >= lost_at  # resumed from its checkpoint, not epoch 0
    assert [h["epoch"] for h in result["history"]] == list(range(1, EPOCHS + 1))
    assert storage.exists(trial_file(teacher.key, "result.json"))

    client = MlflowClient(spec.tracking_uri)
    exp = client.get_experiment_by_name("cluster-sweep")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 3  # parent + 2 trials
    assert all(r.data.tags.get("kdsweep.ray_job_id") == job_id for r in runs)
    assert all(r.data.tags.get("kdsweep.cluster") == "loopback-2node" for r in runs)
    run = next(r for r in runs if r.data.tags.get("kdsweep.key") == student.key)
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert sorted(steps) == list(range(1, EPOCHS + 1))
    assert json.loads(json.dumps(result["resumed_from"]))
