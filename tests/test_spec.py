import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sweeps.spec import SpecError, load_spec, parse_spec

CONFIGS = Path(__file__).resolve().parents[1] / "sweeps" / "configs"

GOOD = {
    "name": "t",
    "dataset": {"name": "digits"},
    "chains": [["cnn-large", "cnn-small"]],
    "train": {"epochs": 2},
    "grid": {"loss": ["kl", "mse"], "tau": [1, "inf"], "noise": {"rate": [0.0, 0.4]}},
}


def bad(path: str, value):
    """GOOD with one field set (dotted path; value None deletes it)."""
    data = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
    if value is None:
        del node[last]
    else:
        node[last] = value
    return data


def test_good_spec_parses_with_inf_tau_and_defaults():
    spec = parse_spec(GOOD)
    assert spec.grid.tau == [1.0, float("inf")]
    assert spec.train.lr == 0.1 and spec.resources.cpu == 1.0 and spec.search.type == "grid"


@pytest.mark.parametrize(
    "path, value, expect",
    [
        ("colour", "red", r"colour: unknown key \(allowed here: name, dataset, chains"),
        ("grid.taus", [1], r"grid.taus: unknown key \(allowed here: loss, tau"),
        ("grid.noise.kindd", "x", r"grid.noise.kindd: unknown key"),
        ("grid.tau", [1, 0], r"grid.tau: tau must be a positive number or inf, got 0.0"),
        ("grid.tau", [-2], r"grid.tau: tau must be a positive"),
        ("grid.noise.rate", [0.2, 1.0], r"grid.noise: noise rate must lie in \[0, 1\), got 1.0"),
        ("grid.noise.rate", -0.1, r"grid.noise: noise rate must lie in \[0, 1\)"),
        ("grid.noise.kind", "pairflip", r"grid.noise: unknown noise kind 'pairflip'"),
        ("grid.loss", ["kl", "hinge"], r"grid.loss: .*unknown loss 'hinge'"),
        ("grid.alpha", [1.5], r"grid.alpha: alpha must lie in \[0, 1\], got 1.5"),
        ("chains", [["cnn-large", "vgg-11"]], r"chains: .*unknown model 'vgg-11'"),
        ("chains", [["cnn-large"], []], r"chains: .*chain 1 is empty"),
        ("chains", [], r"chains: "),
        ("dataset", None, r"dataset: required field is missing"),
        ("dataset", {"name": "imagenet"}, r"dataset.name: .*unknown dataset 'imagenet'"),
        ("dataset", {"name": "cifar100"}, r"dataset: .*needs root"),
        ("search.type", "random", r"search.type: "),
        ("train.epochs", 0, r"train.epochs: "),
        ("storage", "s3://b/p?access_key=A&secret_key=S", r"storage: credentials do not belong"),
    ],
)
def test_bad_specs_name_the_field(path, value, expect):
    with pytest.raises(SpecError, match=expect):
        parse_spec(bad(path, value), "spec.yaml")


def test_yaml_errors_name_the_file(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="broken.yaml: not valid YAML"):
        load_spec(p)
    with pytest.raises(SpecError, match="missing.yaml: cannot read"):
        load_spec(tmp_path / "missing.yaml")


def test_shipped_configs_validate_via_cli():
    for name in ("digits.yaml", "cifar100-paper.yaml"):
        out = subprocess.run([sys.executable, "-m", "sweeps.cli", "plan", str(CONFIGS / name)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "generation 2:" in out.stdout


def test_cli_rejects_bad_spec_before_any_work(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(bad("grid.tau", [0]) | {"storage": str(tmp_path / "store")}))
    out = subprocess.run([sys.executable, "-m", "sweeps.cli", "run", str(p)],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 2 and "grid.tau" in out.stderr and "bad.yaml" in out.stderr
    assert not (tmp_path / "store").exists() and not (tmp_path / "mlflow.db").exists()
