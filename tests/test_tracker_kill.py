"""A driver killed between making a trial's MLflow run and logging its params (the fault point
`run-created`): the report never reads that bare run as a trial (it raised AttributeError on
its missing setting, issue 46), and the rerun gives the same run its params: no second run."""

import os
import subprocess
import sys
import textwrap

import pytest
from mlflow.tracking import MlflowClient

from sweeps.domain.plan import build_plan
from sweeps.domain.spec import parse_spec
from sweeps.report.load import from_mlflow
from sweeps.tracking.names import SWEEP_RUN_TAG
from testkit import HANG

pytestmark = pytest.mark.slow
SEEDS = 2
DRIVER = textwrap.dedent("""
    from sweeps.domain.plan import build_plan
    from sweeps.domain.spec import parse_spec
    from sweeps.store.storage import Storage
    from sweeps.tracking.tracker import Tracker

    spec = parse_spec({{"name": "bare", "dataset": {{"name": "digits"}},
                       "chains": [["cnn-small", "cnn-small"]], "grid": {{"seeds": {seeds}}},
                       "storage": {storage!r}, "tracking_uri": {uri!r}}})
    with Tracker(spec, Storage(spec.storage)) as tracker:
        for t in build_plan(spec).generations[0]:
            tracker.ensure_run(t)
        assert tracker.flush(timeout=600)
""")


def drive(tmp_path, uri: str, **env) -> subprocess.CompletedProcess:
    code = DRIVER.format(seeds=list(range(SEEDS)), storage=str(tmp_path / "store"), uri=uri)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=HANG, env={**os.environ, **env},
                          start_new_session=True)  # the fault kills its own process group


def trial_runs(client: MlflowClient):
    """The sweep's child runs, bare or not (found by their parent tag, as the tracker does)."""
    exp = client.get_experiment_by_name("bare")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`kdsweep.role` = 'sweep'")
    return client.search_runs([exp.experiment_id],
                              f"tags.`{SWEEP_RUN_TAG}` = '{parent.info.run_id}'")


def test_a_run_left_without_params_is_no_trial_to_the_report_and_the_rerun_completes_it(
        tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    first = build_plan(parse_spec({"name": "bare", "dataset": {"name": "digits"},
                                   "chains": [["cnn-small", "cnn-small"]],
                                   "grid": {"seeds": list(range(SEEDS))},
                                   "storage": str(tmp_path / "store")})).generations[0]

    killed = drive(tmp_path, uri, KDSWEEP_FAULT="run-created")
    assert killed.returncode == -9, killed.stderr[-3000:]
    (bare,) = trial_runs(client)  # the first run made, nothing logged into it
    assert "setting" not in bare.data.params and "kdsweep.role" not in bare.data.tags
    assert from_mlflow(uri, "bare").empty  # not a trial yet: nothing to misread

    # The other shapes a kill leaves, made by hand on the bare run and a second trial's run:
    # the params logged, not the tag (MLflow's SQL store writes a batch's params, then its
    # tags, in separate transactions), and a run as an older kdsweep left it (the role tag
    # came with create_run, the params after): the first is no trial yet, the second is
    # skipped and counted.
    client.log_param(bare.info.run_id, "setting", "alone (ce)")
    other = next(t for t in first if t.key != bare.data.tags["kdsweep.key"])
    old = client.create_run(bare.info.experiment_id, tags={
        **{k: v for k, v in bare.data.tags.items() if k.startswith("kdsweep.")},
        "kdsweep.key": other.key, "kdsweep.role": "trial"}).info.run_id
    assert from_mlflow(uri, "bare").empty
    assert "1 MLflow runs of 'bare' without their params" in capsys.readouterr().err

    done = drive(tmp_path, uri)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = trial_runs(client)
    assert len(runs) == len(first) == 2  # each trial once: the bare runs reused
    assert {bare.info.run_id, old} <= {r.info.run_id for r in runs}
    for r in runs:
        assert r.data.params["setting"] == "alone (ce)" and r.data.tags["kdsweep.role"] == "trial"
    rows = from_mlflow(uri, "bare")
    assert len(rows) == len(first) and "without their params" not in capsys.readouterr().err
