"""Every private Ray, MLflow and Python attribute the project touches, with where and why: each
test fails when an upgrade moves or changes one, before a sweep does."""

import atexit
import inspect
import re
import threading


def test_ray_local_cluster_switch():
    """engine.connect: Ray turns a node address of 127.0.0.1 into the external IP unless it
    believes clusters are off; the switch and ray.init's node address keep a local Ray on
    loopback."""
    import ray
    from ray._private import ray_constants

    assert isinstance(ray_constants.ENABLE_RAY_CLUSTER, bool)
    # a keyword ray.init pops from its **kwargs (ray.init ignores nothing silently: an unknown
    # keyword raises), so its own source is the contract
    assert 'kwargs.pop("_node_ip_address"' in inspect.getsource(ray.init)


def test_tune_env_vars_copied_into_runtime_envs():
    """engine.run_experiment: Tune copies these variables into every trainable's runtime_env
    (which Ray's agent logs): the AWS credentials are taken out of the set."""
    from ray.tune.execution import class_cache

    from sweeps.store.storage import AWS_CREDENTIALS

    assert isinstance(class_cache.ENV_VARS_TO_PROPAGATE, set | frozenset)
    # Tune's own list still names them (the set itself is this process's: a sweep run earlier
    # in it has taken them out)
    source = inspect.getsource(class_cache)
    assert all(name in source for name in AWS_CREDENTIALS)


def test_mlflow_alembic_config():
    """sqlite_store.check_sqlite_store: the schema head this MLflow writes, to refuse an older
    store with one line instead of MLflow's migration traceback."""
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    head = ScriptDirectory.from_config(_get_alembic_config("sqlite:///x.db")).get_current_head()
    assert isinstance(head, str) and head


def test_interpreter_exit_steps():
    """cli._exit: the interpreter's own first steps of exiting (threads joined, exit handlers
    run), then os._exit, skipping the ~2 s teardown of every loaded module."""
    assert callable(threading._shutdown) and callable(atexit._run_exitfuncs)


def test_mlflow_ui_reads_a_shared_view_of_plain_json():
    """tracking/view.py: the UI bundle of this MLflow opens `viewStateShareKey=<key>` from the
    experiment tag `mlflow.sharedViewState.<key>`, falls back to plain JSON, and knows each
    field and chart type the saved view writes."""
    from pathlib import Path

    import mlflow

    from sweeps.tracking.view import SHARE_TAG, VIEW_FIELDS, view_state

    js = "".join(p.read_text(errors="ignore") for p in (
        Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    ).glob("*.js"))
    assert f'"{SHARE_TAG}"' in js and '"viewStateShareKey"' in js
    assert "JSON.parse(e))(t.value)" in js  # the fallback that takes a tag of plain JSON
    for field in VIEW_FIELDS:
        assert f'"{field}"' in js, field
    state = view_state()
    for chart in state["compareRunCharts"]:
        assert f'e.{chart["type"]}="{chart["type"]}"' in js
    assert 'e.SHOWALL="SHOW_ALL"' in js and 'q="Model metrics"' in js
    # the runs table's columns: the UI's own key for a column (makeCanonicalSortKey), with the
    # results and the sweep's axes visible, in order, best test accuracy first (issue 42)
    assert 'I=(e,t)=>e+".`"+t+"`"' in js
    assert state["selectedColumns"][:3] == ["metrics.`test_acc`", "metrics.`val_acc`",
                                            "params.`setting`"]
    assert {"params.`tau`", "params.`alpha`", "params.`noise_rate`", "params.`seed`",
            "params.`model`", "params.`generation`"} <= set(state["selectedColumns"])
    assert state["columnOrder"] == state["selectedColumns"]
    assert (state["orderByKey"], state["orderByAsc"]) == ("metrics.`test_acc`", False)


def test_mlflow_records_artifact_locations_in_the_columns_relocate_rewrites(tmp_path):
    """sqlite_store.relocate: MLflow has no API to move a store, and records where an
    experiment's and a run's artifacts are as absolute locations in its own tables; relocate
    rewrites exactly these columns (sqlite_store.LOCATIONS) of a store kdsweep made."""
    import sqlite3

    from mlflow import MlflowClient

    from sweeps.tracking.sqlite_store import LOCATIONS, artifact_root, prepare_store

    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    prepare_store(uri)
    client = MlflowClient(uri)
    client.create_run(client.create_experiment("x", artifact_location=artifact_root(uri)))
    with sqlite3.connect(db) as conn:
        found = {}
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'"):
            for _, column, *_ in conn.execute(f"PRAGMA table_info({table})"):
                if column in LOCATIONS:
                    values = [v for (v,) in conn.execute(f"SELECT {column} FROM {table}")]
                    found[f"{table}.{column}"] = values
    # (logged_models.artifact_location too, in MLflow 3: relocate rewrites every such column)
    assert {"experiments.artifact_location", "runs.artifact_uri"} <= set(found)
    # absolute, under the store's folder: what a move leaves pointing at the old place
    located = [v for vs in found.values() for v in vs if v]
    assert located and all(v.startswith(str(tmp_path)) for v in located), found
    assert found["runs.artifact_uri"] and found["experiments.artifact_location"]


def test_tune_controller_trial_bookkeeping():
    """engine.FlatFIFO and prune_finished: Tune asks its scheduler, once per step and with a
    TrialRunnerWrapper of the controller, which trial to run, and starts its pending trials
    from its own queue when the answer is None; the controller keeps its trials in the list,
    sets and dicts that prune_finished drops finished trials from (tests/test_engine_controller
    runs a real controller through it, tests/test_sweep a sweep)."""
    from ray.tune.execution.tune_controller import TrialRunnerWrapper, TuneController

    from sweeps.ray.engine import CONTROLLER_TRIALS

    init = inspect.getsource(TuneController.__init__)
    kinds = {"_trials": "[]", "_trial_metadata": "{}", "_trial_to_actor": "{}"}
    for name in CONTROLLER_TRIALS:
        assert re.search(rf"self\.{name}\b[^=\n]*= {re.escape(kinds.get(name, 'set()'))}",
                         init), name
    add = inspect.getsource(TuneController._maybe_add_actors)
    assert "self._scheduler_alg.choose_trial_to_run(self._wrapped())" in add
    assert "if trial_to_run:" in add
    assert "self._pending_trials_list = _maybe_add_actors(self._pending_trials_list)" in add
    assert "self._tune_controller = tune_controller" in inspect.getsource(
        TrialRunnerWrapper.__init__)
    # the snapshot writes the JSON state of each trial in _trial_metadata, nothing else's
    assert "self._get_trial_checkpoints().values()" in inspect.getsource(TuneController.save_to_dir)


def test_tune_adds_no_progress_callback_of_its_own_when_given_one():
    """engine.QuietProgress: Tune's TrialProgressCallback keeps every trial it saw; Tune adds
    one to an experiment's callbacks unless one is among them (with Tune's old output, which
    sweep.py picks: RAY_AIR_NEW_OUTPUT=0)."""
    from ray.tune.progress_reporter import TrialProgressCallback
    from ray.tune.utils.callback import _create_default_callbacks

    from sweeps.ray.engine import QuietProgress

    quiet = QuietProgress()
    made = _create_default_callbacks([quiet], air_verbosity=None)
    assert [c for c in made if isinstance(c, TrialProgressCallback)] == [quiet]
    assert [c for c in _create_default_callbacks([], air_verbosity=None)
            if isinstance(c, TrialProgressCallback)]  # the one it adds otherwise


def test_ray_installs_its_sigterm_handlers_through_one_hook():
    """engine._keeps_sigterm_handler: ray.init installs SIGTERM handlers of its own (its
    node's while a local Ray starts, its driver's once connected), both through
    ray._private.utils.set_sigterm_handler, looked up on the module at the call; the CLI's
    handler stays in place while that hook installs nothing."""
    from ray._private import node, utils, worker

    assert callable(utils.set_sigterm_handler)
    for module in (node, worker):
        assert "ray._private.utils.set_sigterm_handler(" in inspect.getsource(module)


def test_module_to_empty_is_apply_of_a_new_tensor():
    """kd_core.models.base.to_cpu_storage: torch's ``Module.to_empty`` is ``_apply`` of an
    ``empty_like``; to_cpu_storage is the same ``_apply`` of an ``empty_strided`` (without the
    sympy import). tests/test_worker_imports.py compares the modules the two give."""
    from torch import nn

    source = inspect.getsource(nn.Module.to_empty)
    assert "self._apply(" in source and "torch.empty_like(" in source
