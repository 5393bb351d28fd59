import copy
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sweeps.domain.spec import SpecError, load_spec, parse_spec
from testkit import HANG

CONFIGS = Path(__file__).resolve().parents[1] / "sweeps" / "configs"

GOOD = {
    "name": "t",
    "dataset": {"name": "digits"},
    "chains": [["cnn-large", "cnn-small"]],
    "train": {"epochs": 2},
    "grid": {"loss": ["kl", "mse"], "tau": [1, float("inf")], "noise": {"rate": [0.0, 0.4]}},
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
        ("storage", "s3://b/p?access_key=A&secret_key=s3cr3t",
         r"storage: credentials do not belong"),
        ("tracking_uri", "http://user:s3cr3t@host:5000", r"tracking_uri: credentials do not "
         r"belong in the spec .*MLFLOW_TRACKING_PASSWORD"),
        ("tracking_uri", "garbage://x", r"tracking_uri: unsupported scheme 'garbage'"),
        ("name", "x" * 300, r"name: String should have at most 100 characters"),
        ("name", "../up", r"name: String should match pattern"),
        ("cluster", "a/b", r"cluster: String should match pattern"),
        ("grid.seeds", [], r"grid.seeds: must list at least one value"),
        ("grid.seeds", [2**64], r"grid.seeds: seeds must lie in \[0, 2\^63\)"),
        ("grid.loss", [], r"grid.loss: must list at least one value"),
        ("grid.tau", [], r"grid.tau: must list at least one value"),
        ("grid.noise.rate", [], r"grid.noise: rate must list at least one value"),
        ("train.lr", float("inf"), r"train.lr: must be a finite number > 0, got inf"),
        ("train.lr_milestones", [1.5], r"train.lr_milestones: increasing fractions"),
        ("train.lr_milestones", [0.75, 0.5], r"train.lr_milestones: increasing fractions"),
        ("train.lr_milestones", [-0.5], r"train.lr_milestones: increasing fractions"),
        ("train.epochs", True, r"train.epochs: Input should be a valid integer"),
        ("train.batch_size", 1, r"train.batch_size: must be a whole number from 2 to 65536"),
        # values no user means (issue 21): each named, with its bound
        ("grid.seeds", [True], r"grid.seeds\[0\]: Input should be a valid integer, got True"),
        ("grid.alpha", [True], r"grid.alpha\[0\]: Input should be a valid number, got True"),
        ("train.epochs", 10**20, r"train.epochs: must be a whole number from 1 to 100000"),
        ("train.batch_size", 10**12, r"train.batch_size: must be a whole number from 2 to 65536"),
        ("train.lr", "0.1", r"train.lr: Input should be a valid number"),
        ("resources.cpu", 1e-05, r"resources.cpu: Input should be greater than or equal to 0.01"),
        ("resources.gpu", 0.001, r"resources.gpu: gpu must be 0 or at least 0.01"),
        ("resources.memory_gb", 1e300, r"resources.memory_gb: Input should be less than or equal"),
        ("max_failures", 1e23, r"max_failures: Input should be a valid integer, got 1e\+23"),
        ("max_failures", 10**23, r"max_failures: Input should be less than or equal to 100"),
        ("grid.tau", [1e-320], r"grid.tau: tau must be at least 0.01"),
        ("search.tau_range", [0.001, 1], r"search.tau_range: tau must be at least 0.01"),
        ("search.metric", "nonsense", r"search.metric: unknown metric 'nonsense': .*test_acc"),
        ("tracking_uri", "", r"tracking_uri: empty"),
        ("tracking_uri", "postgresql://h:5432/db", r"tracking_uri: a postgresql database is "
         r"used through an MLflow server"),
        ("storage", "s3://KEY:s3cr3t@bucket/x", r"storage: credentials do not belong"),
        ("dataset.root", "s3://KEY:s3cr3t@bucket/x", r"dataset.root: credentials do not belong"),
        ("dataset.validation", 0.5, r"dataset.validation: .*in \[0, 0.5\), got 0.5"),
        ("grid.extra", [{"loss": "kl", "alpha": 0.1}], r"grid.extra\[0\]: kl takes a tau"),
        ("grid.extra", [{"loss": "kl", "tau": 4, "alpha": 2}],
         r"grid.extra\[0\]: alpha must lie in \[0, 1\], got 2"),
        # a search selects on a validation split, never silently on the test set (issue 31)
        ("search", {"type": "optuna"}, r"search.metric: val_acc .*needs a validation split"),
        ("search", {"asha": {}}, r"search.metric: val_acc .*set dataset.validation"),
        ("search", {"type": "optuna", "metric": "test_acc"},
         r"search.metric: test_acc selects trials on the test set"),
        ("search", {"metric": "val_acc"}, r"search.metric: val_acc needs dataset.validation"),
    ],
)
def test_bad_specs_name_the_field(path, value, expect):
    with pytest.raises(SpecError, match=expect) as e:
        parse_spec(bad(path, value), "spec.yaml")
    assert "s3cr3t" not in str(e.value)  # no message echoes a secret
    assert len(str(e.value).splitlines()) == 2  # the file, then the one field


def test_a_search_selects_on_validation_unless_told_to_use_the_test_set():
    validated = bad("dataset.validation", 0.1)
    assert parse_spec(validated).search.metric == "val_acc"  # a grid reports it, selects nothing
    assert parse_spec(GOOD).search.metric == "test_acc"  # nothing held out, nothing selected
    searched = bad("search", {"type": "optuna"}) | {"dataset": validated["dataset"]}
    assert parse_spec(searched).search.metric == "val_acc"
    allowed = bad("search", {"type": "optuna", "metric": "test_acc", "allow_test_metric": True})
    spec = parse_spec(allowed)
    assert spec.search.metric == "test_acc" and spec.search.selects


def test_search_metrics_are_ones_the_trainer_reports():
    from kd_core.metrics import EpochMetrics
    from sweeps.domain.record import TrialResult
    from sweeps.domain.spec import SEARCH_METRICS

    for name in SEARCH_METRICS:  # reported every epoch, and kept in the stored result
        assert name in EpochMetrics.__dataclass_fields__ and hasattr(TrialResult, name)


def test_a_spec_that_is_not_utf8_is_named(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(SpecError, match=r"latin1.yaml: not UTF-8 text \(byte 0xe9 at offset 9\)"):
        load_spec(p)


def test_yaml_errors_name_the_file(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="broken.yaml: not valid YAML"):
        load_spec(p)
    p.write_text("name: t\ndataset: {name: digits}\nchains: [[cnn-small]]\n"
                 "train: {lr: 0.1, lr: 10}\n")
    with pytest.raises(SpecError, match="broken.yaml: not valid YAML: .*duplicate key 'lr'"):
        load_spec(p)
    with pytest.raises(SpecError, match="missing.yaml: cannot read"):
        load_spec(tmp_path / "missing.yaml")


def test_shipped_configs_validate_via_cli():
    for name in ("digits.yaml", "cifar100-paper.yaml", "cifar100-alpha-tau.yaml"):  # offline
        out = subprocess.run([sys.executable, "-m", "sweeps.cli", "plan", "--offline",
                              str(CONFIGS / name)], capture_output=True, text=True,
                         timeout=HANG / 2)
        assert out.returncode == 0, out.stderr
        assert "generation 1:" in out.stdout
        if name == "cifar100-paper.yaml":  # the bank policy's choices, per generation
            assert "generation 0 teachers: 12 with 40 student(s): one shared bank" in out.stdout
            assert "generation 1 teachers: 120 with 1 student(s): the teacher online" in out.stdout


def test_a_reader_that_has_gone_ends_the_command_quietly():
    """`kdsweep plan SPEC | head`: the reader closes the pipe; the command ends as one killed by
    SIGPIPE would (128 + 13), with no traceback. The read end is closed before the command
    writes, so its first write meets the closed pipe every time."""
    read, write = os.pipe()
    os.close(read)
    try:
        out = subprocess.run([sys.executable, "-m", "sweeps.cli", "plan", "--offline",
                              str(CONFIGS / "digits.yaml")], stdout=write,
                             stderr=subprocess.PIPE, text=True, timeout=HANG / 2)
    finally:
        os.close(write)
    assert out.returncode == 128 + signal.SIGPIPE and out.stderr == "", out.stderr[-2000:]


def test_cli_rejects_bad_spec_before_any_work(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(bad("grid.tau", [0]) | {"storage": str(tmp_path / "store")}))
    out = subprocess.run([sys.executable, "-m", "sweeps.cli", "run", str(p)],
                         capture_output=True, text=True, timeout=HANG / 2, cwd=tmp_path)
    assert out.returncode == 2 and "grid.tau" in out.stderr and "bad.yaml" in out.stderr
    assert not (tmp_path / "store").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_very_large_grid_needs_an_explicit_flag(tmp_path):
    big = bad("grid.tau", list(range(1, 700))) | {"storage": str(tmp_path / "store")}
    p = tmp_path / "big.yaml"
    p.write_text(yaml.safe_dump(big))
    out = subprocess.run([sys.executable, "-m", "sweeps.cli", "run", str(p)],
                         capture_output=True, text=True, timeout=HANG / 2, cwd=tmp_path)
    assert out.returncode == 2 and "plans 1404 trials" in out.stderr and "--large" in out.stderr
    assert not (tmp_path / "store").exists() and not (tmp_path / "mlflow.db").exists()


def test_help_is_fast_and_user_errors_are_one_line(tmp_path):
    code = ("import sys\nfrom sweeps import cli\ntry:\n    cli.main(['--help'])\n"
            "except SystemExit:\n    pass\nprint('torch' in sys.modules, 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=HANG / 2)
    assert out.stdout.strip().endswith("False False")  # --help loads neither torch nor Ray
    spec = tmp_path / "s.yaml"
    spec.write_text((CONFIGS / "digits.yaml").read_text().replace(
        "./kdsweep-results", str(tmp_path / "store")))
    (tmp_path / "store").mkdir()  # nothing stored yet
    code = (f"import sys\nfrom sweeps import cli\ncli.main(['status', {str(spec)!r}])\n"
            "print('torch' in sys.modules, 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=HANG / 2)
    assert "generation 2: 0 done" in out.stdout, out.stderr
    assert out.stdout.strip().endswith("False False")  # nor does `status`
    out = subprocess.run([sys.executable, "-m", "sweeps.cli", "train", "--model", "cnn-small",
                          "--teacher", str(tmp_path / "missing.pt"), "--loss", "kl",
                          "--epochs", "1", "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=HANG)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0 and "--teacher" in out.stderr
    assert "missing.pt" in out.stderr
