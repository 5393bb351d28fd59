"""Checks before Ray starts: each bad setting ends `kdsweep run` (and `kdsweep plan`) within
seconds, with one line naming the field, exit code 2, no Ray started and nothing written.
(That the CLI's errors are one line without a traceback in a real process: test_spec.py.)"""

import re
import socket
import sqlite3
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient

from sweeps.app import preflight
from sweeps.app.preflight import check_tracking
from sweeps.domain.spec import SpecError, parse_spec
from sweeps.tracking.sqlite_store import prepare_store
from testkit import HANG
from testkit.drivers import free_port


def spec_file(tmp, **over):
    spec = {
        "name": "checks",
        "dataset": {"name": "digits"},
        "chains": [["cnn-small", "cnn-small"]],
        "train": {"epochs": 1},
        "storage": str(tmp / "store"),
        "tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
        **over,
    }
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def silent_server():
    """A port that accepts connections and never answers (a firewall, a hung server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


def old_schema_store(tmp):
    """A store holding a run, at an older schema."""
    db = tmp / "old.db"
    prepare_store(f"sqlite:///{db}")
    client = MlflowClient(f"sqlite:///{db}")
    client.create_run(client.create_experiment("earlier"))
    with sqlite3.connect(db) as c:
        c.execute("UPDATE alembic_version SET version_num = '0584bdc529eb'")  # an MLflow 2.x one
    return db


def users_database(tmp):
    """A user's own SQLite database, named by mistake as the tracking store."""
    db = tmp / "important.db"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE customers (name TEXT)")
        c.execute("INSERT INTO customers VALUES ('ada')")
    return db


def test_a_half_made_store_is_refused_and_left_as_it_is(tmp_path):
    """What an older kdsweep left when killed during the store's first migration: refused with
    one line, never moved or remade by a check (it may hold what the user wants back)."""
    db = tmp_path / "mlflow.db"
    prepare_store(f"sqlite:///{db}")
    with sqlite3.connect(db) as c:  # the migration stopped part way
        c.execute("DROP TABLE alembic_version")
    before = db.read_bytes()
    spec = parse_spec(yaml.safe_load(spec_file(tmp_path).read_text()))
    with pytest.raises(SpecError, match=r"mlflow.db is not an MLflow SQLite store \(a store "
                       r"kdsweep began; left as it is\)"):
        check_tracking(spec.tracking_uri)
    assert db.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "mlflow.db", "spec.yaml"]


@pytest.mark.parametrize(
    "setting, expect",
    [
        (lambda tmp, port: {"tracking_uri": f"http://127.0.0.1:{free_port()}"},
         "tracking_uri: no MLflow server answers at http://127.0.0.1:"),
        (lambda tmp, port: {"tracking_uri": f"http://127.0.0.1:{port}"},
         "tracking_uri: http://127.0.0.1:.*: no answer within 2 s"),
        (lambda tmp, port: {"tracking_uri": f"sqlite:///{old_schema_store(tmp)}"},
         r"tracking_uri: .*old.db holds an MLflow store of an older schema .*mlflow db upgrade"),
        (lambda tmp, port: {"tracking_uri": f"sqlite:///{tmp / 'junk.db'}"},
         "tracking_uri: .*junk.db is not an MLflow SQLite store"),
        (lambda tmp, port: {"tracking_uri": f"sqlite:///{users_database(tmp)}"},
         r"tracking_uri: .*important.db is not an MLflow SQLite store \(no MLflow tables"),
        (lambda tmp, port: {"tracking_uri": f"sqlite:///{tmp / 'empty.txt'}"},
         r"tracking_uri: .*empty.txt is not an MLflow SQLite store \(no MLflow tables"),
        (lambda tmp, port: {"tracking_uri": f"file://{tmp / 'mlruns'}"},
         r"tracking_uri: file://.*mlruns is MLflow's file store, which takes no new runs"),
        (lambda tmp, port: {"tracking_uri": "mlflow.db"},
         r"tracking_uri: mlflow.db is MLflow's file store, which takes no new runs"),
        (lambda tmp, port: {"storage": "mock://bucket/x"},
         r"storage: mock:// is not supported: give a directory \(local or NFS\) or s3://"),
        (lambda tmp, port: {"storage": "gs://bucket/x"},
         r"storage: gs:// is not supported"),
        (lambda tmp, port: {"dataset": {"name": "cifar100", "root": str(tmp / "no-cifar")}},
         r"dataset: .*no-cifar"),
        (lambda tmp, port: {"resources": {"cpu": 64}},
         "resources: a cnn-small trial asks for cpu 64, more than this machine has"),
        (lambda tmp, port: {"storage": str(tmp / "a-file")},
         "storage: .*a-file is a file, not a directory"),
        (lambda tmp, port: {"resources": {"gpu": 1}},
         "resources: a cnn-small trial asks for gpu 1, more than this machine has"),
    ],
    ids=["refused", "silent", "old-schema", "not-sqlite", "users-db", "empty-file", "file-store",
         "no-scheme", "mock-storage", "gs-storage", "no-cifar", "cpu", "storage-file", "gpu"],
)
def test_bad_settings_stop_run_before_ray(tmp_path, kdsweep_here, monkeypatch, silent_server,
                                          setting, expect):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # a Ray started here would show up
    monkeypatch.setattr(preflight, "TIMEOUT", 2.0)
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 10)
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "empty.txt").write_text("")
    path = spec_file(tmp_path, **setting(tmp_path, silent_server))
    before = {p.name: p.is_file() and p.read_bytes() for p in tmp_path.iterdir()}
    for args in (("run", str(path)), ("plan", str(path))):  # plan runs every check run runs
        t0 = time.time()
        code, out, err = kdsweep_here(*args)
        seconds = time.time() - t0
        assert code == 2, out + err
        # one line, no traceback (a spec's own fields: the file, then the field)
        lines = err.splitlines()
        assert len(lines) == (2 if lines[0].endswith("invalid sweep spec:") else 1), err
        assert re.search(expect, lines[-1]), err
        # the check gives up after 2 s, not after Ray's or MLflow's own retries (minutes)
        assert seconds < HANG / 10
    # no store, no Ray session, and every file there before untouched, byte for byte
    assert {p.name: p.is_file() and p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_silent_server_is_a_timeout_whichever_timeout_fires_first(monkeypatch, silent_server):
    """The server probe alone, without the check's own deadline: the socket's read timeout
    fires, which requests raises as a ConnectionError wrapping urllib3's ReadTimeoutError
    (MLflow's Retry): still 'no answer', never 'no server answers' (seen once on a loaded
    machine, where the socket's timeout beat the check's)."""
    monkeypatch.setattr(preflight, "TIMEOUT", 0.5)
    uri = f"http://127.0.0.1:{silent_server}"
    with pytest.raises(SpecError, match=rf"tracking_uri: {uri}: no answer within 0.5 s"):
        preflight._probe_server(uri)


def test_printed_commands_paste_into_a_shell(tmp_path):
    """A store under a folder with a space and a quote: the printed `mlflow ui` and `mlflow db
    upgrade` commands split back into exactly the URI."""
    import shlex

    from sweeps.tracking.sweep_run import ui_command

    uri = f"sqlite:///{tmp_path}/my runs/o'brien.db"
    words = shlex.split(ui_command(uri))
    assert words[1:4] == ["ui", "--backend-store-uri", uri]
    old = old_schema_store(tmp_path)
    with pytest.raises(SpecError) as e:
        check_tracking(parse_spec(yaml.safe_load(spec_file(
            tmp_path, tracking_uri=f"sqlite:///{old}").read_text())).tracking_uri)
    pasted = re.search(r"`(mlflow db upgrade .*)`", str(e.value))[1]
    assert shlex.split(pasted) == ["mlflow", "db", "upgrade", f"sqlite:///{old}"]


def test_status_names_storage_it_cannot_read(tmp_path, kdsweep_here, monkeypatch):
    """`status` on a path with a typo said "1 pending" (exit 0); with the S3 endpoint down it
    printed an OSError traceback. Both: one line naming the storage, exit 2, nothing made."""
    monkeypatch.setattr(preflight, "TIMEOUT", 2.0)
    typo = spec_file(tmp_path, storage=str(tmp_path / "no-such-store"))
    code, out, err = kdsweep_here("status", typo)
    assert code == 2 and out == ""
    assert err.strip() == (f"kdsweep status: error: storage: {tmp_path / 'no-such-store'} does "
                           "not exist: nothing was stored there (check the path)")
    assert not (tmp_path / "no-such-store").exists()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nobody there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    down = spec_file(tmp_path, storage="s3://bucket/x")
    code, out, err = kdsweep_here("status", down)
    [line] = err.splitlines()
    assert code == 2 and line.startswith("kdsweep status: error: storage: s3://bucket/x"), err


def test_bad_environment_settings_name_the_variable(tmp_path):
    import os
    import subprocess
    import sys

    # a process of its own: the setting is read when its module is first imported
    out = subprocess.run([sys.executable, "-m", "sweeps.cli", "run", str(spec_file(tmp_path))],
                         capture_output=True, text=True, timeout=HANG, cwd=tmp_path,
                         env={**os.environ, "KDSWEEP_LEASE_TTL": "two minutes"})
    assert out.returncode == 2
    assert out.stderr.strip() == ("kdsweep run: error: KDSWEEP_LEASE_TTL: not a number (got "
                                  "'two minutes')")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


def test_a_spec_nested_too_deeply_is_one_error(tmp_path, kdsweep_here):
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 20000 + "]" * 20000 + "\n")
    code, _, err = kdsweep_here("plan", deep)
    assert code == 2 and err.strip() == (
        f"kdsweep plan: error: {deep}: nested too deeply to be a sweep spec")


def test_a_cluster_that_does_not_answer_is_one_line_before_anything_is_written(
        tmp_path, kdsweep_here, monkeypatch):
    """Issue 29, item 7: `--address` with nothing listening left the driver in Ray's retries
    for minutes, its lease and store already written."""
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.setattr(preflight, "TIMEOUT", 2.0)
    path = spec_file(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    port = free_port()
    for args in (("run", path, "--address", f"127.0.0.1:{port}"),
                 ("plan", path, "--address", f"127.0.0.1:{port}")):
        t0 = time.time()
        code, _, err = kdsweep_here(*args)
        [line] = err.splitlines()
        assert code == 2 and time.time() - t0 < HANG / 10  # not Ray's minutes
        assert line == (f"kdsweep {args[0]}: error: --address 127.0.0.1:{port}: no Ray cluster "
                        f"answers at 127.0.0.1:{port} (Connection refused); start its head "
                        "(`ray start --head`), or leave --address out to run on a Ray of this "
                        "sweep's own")
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")  # what `ray job submit` sets
    code, _, err = kdsweep_here("run", path, "--address", "auto")
    assert code == 2 and "--address auto: no Ray cluster answers" in err
    code, _, err = kdsweep_here("run", path, "--address", "head-without-port")
    assert code == 2 and "--address head-without-port: not HOST:PORT" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no store, no lease, no Ray


MODELS_PLUGIN = '''
import kd_core
import torch
from kd_core.models import Classifier
from torch import nn


class Net(Classifier):
    def __init__(self, num_classes, in_channels, out=None):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4, out or num_classes)

    def features(self, x):
        return self.body(x)


class MetaOnly(Net):  # a forward the CPU refuses, the meta device not (no values there)
    def features(self, x):
        if x.device.type == "cpu":
            raise RuntimeError("needs an accelerator")
        return super().features(x)


class Broken(Net):
    def features(self, x):
        raise ValueError("no forward")


kd_core.register_model("net")(Net)
kd_core.register_model("metaonly")(MetaOnly)
kd_core.register_model("broken")(Broken)
kd_core.register_model("wide")(lambda num_classes, in_channels: Net(num_classes, in_channels, 7))
'''


@pytest.mark.parametrize("model, error", [
    ("net", None),
    ("metaonly", None),  # the CPU's failure is not the model's: the meta device decides
    ("broken", r"chains: model broken \(plugin my_plugin\) for digits \(10 classes, 1 channels\) "
               r"fails to build: ValueError: no forward"),
    ("wide", r"chains: model wide .*: logits of shape \(2, 7\) for a batch of 2, not \(2, 10\)"),
], ids=["net", "metaonly", "broken", "wide"])
@pytest.mark.parametrize("cpu_bytes", [preflight.CPU_CHECK_BYTES, 0], ids=["cpu", "meta"])
def test_a_model_is_checked_on_the_cpu_when_small_and_on_the_meta_device_else(
        tmp_path, monkeypatch, model, error, cpu_bytes):
    """check_models' answer is the same on either device: a small model's forward runs on the
    CPU (no torch._dynamo import, which every meta forward makes), a large one's on the meta
    device, and a CPU failure is a failure only where the meta device fails too."""
    from kd_core.data import load_dataset
    from sweeps.app.preflight import check_models
    from sweeps.domain.spec import load_spec
    from tests.test_plugins import spec_with

    monkeypatch.setattr(preflight, "CPU_CHECK_BYTES", cpu_bytes)
    spec = load_spec(spec_with(tmp_path, MODELS_PLUGIN, chains=[["cnn-small", model]],
                               grid={"loss": ["kl"], "seeds": [0]}))
    data = load_dataset("digits")
    if error is None:
        check_models(spec, data)
    else:
        with pytest.raises(SpecError, match=error):
            check_models(spec, data)


def test_a_small_models_cpu_check_gives_its_logits_and_leaves_lazy_or_large_ones_to_meta(
        monkeypatch):
    import torch
    from torch import nn

    from sweeps.app.preflight import _logits_on_cpu

    with torch.device("meta"):
        small = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
        lazy = nn.Sequential(nn.Flatten(), nn.LazyLinear(3))
    out = _logits_on_cpu(small, (2, 1, 3, 4))
    assert out.device.type == "cpu" and tuple(out.shape) == (2, 3)
    assert _logits_on_cpu(lazy, (2, 1, 3, 4)) is None  # its weights are made by a forward
    monkeypatch.setattr(preflight, "CPU_CHECK_BYTES", 12 * 3 * 4)  # under its 15 floats
    with torch.device("meta"):
        small = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    assert _logits_on_cpu(small, (2, 1, 3, 4)) is None
