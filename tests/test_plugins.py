"""Plugins: a researcher's own losses, models and datasets, named in the spec (issue 45).

Validated before Ray starts (one line each, exit 2, nothing written); their code in the trials'
keys (an edited plugin trains its own trials again, nothing else); shipped to a worker node by
Ray's runtime environment; the example's losses as settings like any other."""

import math
import re
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from kd_core.losses import distillation_loss
from sweeps.domain.plan import build_plan
from sweeps.domain.spec import SpecError, load_spec, parse_spec
from testkit import HANG
from testkit.drivers import REPO, Cluster, fork_driver, ray_dir, write_spec

EXAMPLE = REPO / "examples" / "plugins"
LOSSES = (EXAMPLE / "kd_losses.py").read_text()


def spec_with(tmp_path: Path, plugin: str | None = LOSSES, **over) -> Path:
    if plugin is not None:
        (tmp_path / "my_plugin.py").write_text(plugin)
    spec = {
        "plugins": ["my_plugin.py"],
        "chains": [["cnn-small", "cnn-small"]],
        "grid": {"loss": ["kl", "rkl"], "tau": [4], "seeds": [0], "baselines": False},
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.02},
        **over,
    }
    return write_spec(tmp_path, **spec)


def test_example_losses_are_settings_and_kl_keeps_its_keys(tmp_path):
    with_plugins = load_spec(EXAMPLE / "digits-plugins.yaml")
    settings = {t.setting for t in build_plan(with_plugins).trials}
    assert settings == {"alone (ce)", "kl tau=4", "mse", "rkl tau=4", "dkd tau=4 beta=1",
                        "dkd tau=4 beta=8"}
    # the same grid without the plugin: kdsweep's own trials keep their keys exactly
    raw = yaml.safe_load((EXAMPLE / "digits-plugins.yaml").read_text())
    raw.pop("plugins")
    raw["grid"] = {**raw["grid"], "loss": ["kl", "mse"]}
    raw["grid"].pop("params")
    own = {t.key for t in build_plan(parse_spec(raw)).trials}
    plugin_trials = [t for t in build_plan(with_plugins).trials if t.loss in ("rkl", "dkd")]
    assert own == {t.key for t in build_plan(with_plugins).trials} - {t.key for t in
                                                                      plugin_trials}
    assert all(dict(t.plugins) == {"kd_losses": with_plugins.loaded_plugins[0].digest}
               for t in plugin_trials)


def test_an_edited_plugin_changes_its_own_trials_keys_only(tmp_path):
    before = build_plan(load_spec(spec_with(tmp_path))).trials
    again = build_plan(load_spec(spec_with(tmp_path))).trials
    assert [t.key for t in before] == [t.key for t in again]
    after = build_plan(load_spec(spec_with(tmp_path, LOSSES.replace("Reverse KL", "Reverse-KL"))))
    changed = {t.setting for t, u in zip(before, after.trials, strict=True) if t.key != u.key}
    assert changed == {"rkl tau=4"}


def test_plugin_losses_compute_what_they_say():
    load_spec(EXAMPLE / "digits-plugins.yaml")  # registers rkl and dkd
    g = torch.Generator().manual_seed(0)
    z_s, z_t = torch.randn(16, 10, generator=g), torch.randn(16, 10, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    # reverse KL is KL with the arguments swapped; DKD with alpha = beta = 1 is KL (its
    # target / non-target decomposition; Zhao et al., eq. 3 with (1 - p_t) = 1 weights off)
    rkl = distillation_loss(z_s, z_t, y, loss="rkl", tau=2.0, alpha=1.0)
    kl_swapped = distillation_loss(z_t, z_s, y, loss="kl", tau=2.0, alpha=1.0)
    assert torch.allclose(rkl, kl_swapped, atol=1e-6)
    dkd = distillation_loss(z_s, z_t, y, loss="dkd", tau=1.0, alpha=1.0, beta=1.0)
    kl = distillation_loss(z_s, z_t, y, loss="kl", tau=1.0, alpha=1.0)
    assert dkd.item() >= 0 and math.isfinite(dkd.item())
    assert not torch.allclose(dkd, kl)  # NCKD's weight (1 - p_t^T) is not there: DKD's point


BAD_MODEL = '''
import kd_core
from torch import nn

@kd_core.register_model("flat-net")
def flat(num_classes, in_channels):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 7 * 7, num_classes))
'''
NO_DEFAULT = '''
import kd_core

@kd_core.register_loss("gamma-kd", params=("gamma",))
def gamma_kd(s, t, y, *, gamma):
    return ((s - t) ** 2).mean() * gamma
'''


@pytest.mark.parametrize("plugin,over,expect", [
    (None, {}, r"plugins\[0\]: my_plugin.py: no such file"),
    ("import kd_core\nraise_here()\n", {},
     r"plugins\[0\]: my_plugin.py: cannot import: line 2: NameError: name 'raise_here'"),
    ("x = (\n", {}, r"plugins\[0\]: my_plugin.py: cannot import: line 1: SyntaxError"),
    (LOSSES, {"grid": {"loss": ["kl", "rkll"], "seeds": [0]}},
     r"grid.loss: unknown loss 'rkll': known losses are ce, kl, mse, rkl, dkd"),
    (LOSSES, {"grid": {"loss": ["kl", "dkd"], "params": {"gamma": [1]}, "seeds": [0]}},
     r"grid.params.gamma|params.gamma: no loss of grid.loss takes gamma"),
    (NO_DEFAULT, {"grid": {"loss": ["gamma-kd"], "seeds": [0]}},
     r"loss 'gamma-kd' \(plugin my_plugin\) takes gamma, which has no default: give it in "
     r"grid.params.gamma"),
    (BAD_MODEL, {"chains": [["cnn-small", "flat-net"]], "grid": {"loss": ["kl"], "seeds": [0]}},
     r"chains: model flat-net \(plugin my_plugin\) for digits \(10 classes, 1 channels\) fails "
     r"to build: RuntimeError"),
    ("import kd_core\n@kd_core.register_loss('kl')\ndef k(s, t, y): return s.sum()\n", {},
     r"plugins\[0\]: my_plugin.py: cannot import: line \d+: ValueError: register_loss\('kl'\): "
     r"kl is kdsweep's own loss"),
])
def test_bad_plugins_are_one_line_before_ray(tmp_path, kdsweep_here, plugin, over, expect):
    path = spec_with(tmp_path, plugin, **over)
    code, out, err = kdsweep_here("run", path)
    assert code == 2, out + err
    lines = err.splitlines()
    assert len(lines) == (2 if lines[0].endswith("invalid sweep spec:") else 1), err
    assert re.search(expect, lines[-1]), err
    assert "Traceback" not in err
    assert not (tmp_path / "store").exists()  # nothing written: the check came first
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_edited_plugin_trains_its_trials_again_and_nothing_else(tmp_path, forks, joined):
    """Three drivers on one storage: all trained; one character of the plugin edited (its rkl
    student trains again, the teacher and the kl student are reused); unchanged (nothing).
    Each driver forked from conftest's forks, which never imported the plugin: each imports
    the plugin's file as it is at its start."""
    path = spec_with(tmp_path)
    log = tmp_path / "driver.log"

    def run() -> str:
        start = log.stat().st_size if log.exists() else 0
        code = fork_driver(forks, path, tmp_path, address=joined).wait(HANG)
        said = log.read_bytes()[start:].decode()
        assert code == 0, said[-6000:]
        return said

    def trained() -> set[str]:
        return {p.name for p in (tmp_path / "store" / "trials").iterdir() if p.is_dir()}

    first = run()
    assert "generation 1: 2 trials" in first
    keys = trained()
    assert len(keys) == 3  # the teacher, the kl and the rkl student
    # downstream: the Parquet row and the MLflow run name the plugin and its digest
    digest = load_spec(path).loaded_plugins[0].digest
    rows = pd.read_parquet(next((tmp_path / "store").rglob("results.parquet")))
    by_loss = rows.set_index("loss")
    assert by_loss.loc["rkl", "plugins"] == f"my_plugin@{digest}"
    assert by_loss.loc["rkl", "tau"] == 4 and pd.isna(by_loss.loc["kl", "plugins"])
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("resume").experiment_id],
                              "params.loss = 'rkl'")
    assert [r.data.tags.get("kdsweep.plugin.my_plugin") for r in runs] == [digest]
    assert runs[0].data.params["setting"] == "rkl tau=4"
    (tmp_path / "my_plugin.py").write_text(LOSSES.replace("Reverse KL", "Reverse-KL"))
    second = run()
    assert "generation 0: 1 trials (cnn-small 1); 1 done, 0 to train" in second, second
    assert "generation 1: 2 trials (cnn-small>cnn-small 2); 1 done, 1 to train" in second
    new = trained() - keys
    assert len(new) == 1
    spec = load_spec(path)
    rkl = next(t for t in build_plan(spec).trials if t.loss == "rkl")
    assert new == {rkl.key}
    third = run()
    assert "1 done, 0 to train" in third and "2 done, 0 to train" in third, third
    assert trained() - keys == new


SHIPPED = LOSSES + '''

import os as _os

@kd_core.register_loss("where", params=("tau",))
def where(student_logits, teacher_logits, targets, *, tau):
    """rkl that says which file it runs from (the test reads it)."""
    with open(_os.environ["PLUGIN_PROBE"], "a") as f:
        f.write(__file__ + "\\n")
    return reverse_kl(student_logits, teacher_logits, targets, tau=tau, alpha=1.0)
'''


@pytest.mark.slow
def test_plugin_only_on_the_driver_trains_on_a_worker_node(tmp_path):
    """The head takes no trial (0 CPUs): the student trains on the worker node, importing the
    plugin from the runtime environment Ray unpacked on that node, not from the driver's
    folder (which the job never names to it)."""
    probe = tmp_path / "probe.txt"
    plugin_dir = tmp_path / "driver-only"
    plugin_dir.mkdir()
    (plugin_dir / "my_plugin.py").write_text(SHIPPED)
    path = write_spec(
        tmp_path,
        name="plugin-cluster",
        plugins=[str(plugin_dir / "my_plugin.py")],
        chains=[["cnn-small", "cnn-small"]],
        grid={"loss": ["where"], "tau": [4], "seeds": [0], "baselines": False},
        train={"epochs": 1, "batch_size": 64, "lr": 0.02},
        cluster="loopback-plugin",
    )
    cluster = Cluster()
    cluster.env["PLUGIN_PROBE"] = str(probe)
    try:
        t0 = time.time()
        cluster.start_head()
        cluster.start_worker("w1")
        sub = cluster.submit(sys.executable, "-m", "sweeps.cli", "run", path, "--address",
                             "auto", wait=True, deadline_s=400)
        assert sub.returncode == 0, sub.stdout[-3000:] + sub.stderr[-3000:]
        files = set(probe.read_text().split())
        assert files, "the plugin loss never ran"
        for f in files:
            assert f.startswith(str(cluster.root / "w1")), files  # the worker node's own copy
            assert "runtime_resources" in f and "/kdsweep_plugins/" in f, files
            assert not f.startswith(str(plugin_dir))
        spec = load_spec(path)
        student = next(t for t in build_plan(spec).trials if t.generation == 1)
        assert (Path(spec.storage) / "trials" / student.key / "model.pt").exists()
        print(f"plugin on a worker node: {time.time() - t0:.0f} s")
    finally:
        cluster.stop()
        shutil.rmtree(ray_dir(tmp_path), ignore_errors=True)


OWN_DATA_AND_MODEL = '''
import numpy as np
import kd_core
from kd_core.models import Classifier
from torch import nn


@kd_core.register_dataset("stripes")
def stripes(root=None, download=False):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    x = (np.arange(6)[None, None, :, None] == y[:, None, None, None] * 2).repeat(6, 3)
    x = (x * 255).astype(np.uint8)
    return x[:60], y[:60], x[60:], y[60:]


class Tiny(Classifier):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.LazyLinear(8), nn.ReLU())
        self.head = nn.Linear(8, num_classes)

    def features(self, x):
        return self.body(x.float())


@kd_core.register_model("tiny-D", pattern=r"tiny-(\\d+)")
def tiny(num_classes, in_channels, depth):
    return Tiny(num_classes, in_channels)
'''


def test_a_plugins_dataset_and_model_are_named_like_kdsweeps_own(tmp_path):
    from kd_core.data import load_dataset
    from sweeps.app.preflight import check_models

    path = spec_with(tmp_path, OWN_DATA_AND_MODEL, dataset={"name": "stripes"},
                     chains=[["tiny-2", "cnn-small"]], grid={"loss": ["kl"], "seeds": [0]})
    spec = load_spec(path)
    data = load_dataset("stripes")
    assert (data.num_classes, data.in_channels, len(data.train_labels)) == (3, 1, 60)
    check_models(spec, data)  # both build on the meta device for 3 classes, 1 channel
    digest = spec.loaded_plugins[0].digest
    # the dataset is the plugin's: every trial's key covers its code, the teacher's too
    assert all(dict(t.plugins) == {"my_plugin": digest} for t in build_plan(spec).trials)
    # outside the spec that lists it, the plugin's names are unknown
    with pytest.raises(SpecError, match="unknown dataset 'stripes'"):
        parse_spec({"name": "x", "dataset": {"name": "stripes"}, "chains": [["cnn-small"]]})


def test_a_plugin_arm_is_in_the_tables_and_figures_never_in_the_claims(tmp_path):
    """A plugin loss is a setting like any other: its row in the accuracy table and its line in
    the accuracy figures; the paper's claims (C1-C6) are computed on the arms they name only,
    so adding it changes no claim's evidence."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sweeps.report import report
    from sweeps.report.claims import claims
    from sweeps.report.load import load
    from sweeps.store.results import SCHEMA
    from tests.test_report import claim_rows

    values = {("A>B", 0.0, "kl4"): ([72, 73, 75], [2.0, 2.3, 2.1]),
              ("A>B", 0.0, "klinf"): ([74, 75, 75], [1.5, 1.7, 1.6]),
              ("A>B", 0.0, "mse"): ([66, 67, 69], [1.0, 1.1, 1.3])}
    paper = claim_rows(values)
    # dkd students far from their teacher yet accurate: in C3 they would turn its correlation
    plugin = [{**r, "key": r["key"].replace("mse", "dkd"), "loss": "dkd", "tau": 4.0,
               "params": '{"beta": 8.0}', "plugins": "kd_losses@0123456789abcdef",
               "test_acc": r["test_acc"] + 0.2, "train_logit_distance_median": 9.0}
              for r in paper if r["loss"] == "mse"]
    frames = {}
    for name, rows_ in (("paper", paper), ("both", paper + plugin)):
        path = tmp_path / f"{name}.parquet"
        pq.write_table(pa.Table.from_pylist(rows_, schema=SCHEMA), path)
        frames[name] = (path, load([str(path)])[0])
    assert [s.text() for s in claims(frames["paper"][1])] == \
        [s.text() for s in claims(frames["both"][1])]
    text, paths = report([str(frames["both"][0])], tmp_path / "rep")
    table = text.split("== A>B (noise=0)")[1].split("==")[0]
    assert "dkd tau=4 beta=8" in table and "87.3" in table  # (66 + 67 + 69) / 3 + 20
    assert "accuracy_vs_tau.png" in {p.name for p in paths}
