"""Every private Ray, MLflow and Python attribute the project touches, with where and why: each
test fails when an upgrade moves or changes one, before a sweep does."""

import atexit
import inspect
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

    from sweeps.storage import AWS_CREDENTIALS

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
