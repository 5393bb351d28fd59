"""Issue 41, item 4: each bad input is one line naming the field or path, exit 2, before any
work, nothing written (the commands run in-process through the CLI's own main)."""

import os

import boto3
import pytest
import yaml

from sweeps.cli import main
from testkit.drivers import write_spec


def spec_text(tmp_path, edit) -> str:
    path = write_spec(tmp_path)
    data = yaml.safe_load(path.read_text())
    edit(data)
    return yaml.safe_dump(data)


CASES = {
    # name: (how the spec changes or its raw text, argv tail, what the line must say)
    "validation-1e-9": (lambda d: d["dataset"].update(validation=1e-9), ["plan"],
                        "dataset.validation: 1e-09 holds out 0 of digits's"),
    "seeds-twice": (lambda d: d["grid"].update(seeds=[0, 0]), ["plan", "--offline"],
                    "grid.seeds: seed 0 listed twice"),
    "tau-string": (lambda d: d["grid"].update(tau="TAU"), ["plan", "--offline"],
                   "grid.tau[0]: Input should be a valid number"),
    "huge-int": ("train:\n  epochs: " + "9" * 5000 + "\n", ["plan", "--offline"],
                 "epochs: an integer of 5000 digits, beyond any sensible bound"),
    "huge-seed": ("grid:\n  seeds: [0, " + "1" * 30 + "]\n", ["run"],
                  "seeds[1]: an integer of 30 digits"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_bad_spec_is_one_line_exit_2_nothing_written(tmp_path, capsys, case):
    edit, argv, says = CASES[case]
    text = edit if isinstance(edit, str) else spec_text(tmp_path, edit)
    text = text.replace("tau: TAU", 'tau: ["inf"]')  # quoted: a string
    (tmp_path / "bad.yaml").write_text(text)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main([argv[0], str(tmp_path / "bad.yaml"), *argv[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err, err
    assert len(err.splitlines()) <= 2 and "Traceback" not in err  # the file, then the field
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_a_plain_inf_is_still_the_float_limit(tmp_path):
    from sweeps.domain.spec import load_spec

    text = spec_text(tmp_path, lambda d: d["grid"].update(tau="TAU"))
    (tmp_path / "ok.yaml").write_text(text.replace("tau: TAU", "tau: [4, inf, 20]"))
    assert load_spec(tmp_path / "ok.yaml").grid.tau == [4.0, float("inf"), 20.0]


def test_the_smallest_share_named_is_one_that_works():
    from sweeps.app.preflight import check_validation_share
    from sweeps.domain.spec import SpecError

    with pytest.raises(SpecError, match=r"smallest share that works for digits is (\S+)") as e:
        check_validation_share(1e-9, "digits", 1437, 10)
    smallest = float(str(e.value).rsplit(" ", 1)[1])
    check_validation_share(smallest, "digits", 1437, 10)  # passes
    with pytest.raises(SpecError):
        check_validation_share(smallest / 2, "digits", 1437, 10)


@pytest.mark.parametrize("kind", ["directory", "unreadable"])
def test_report_of_a_path_that_is_no_results_file_is_one_line(tmp_path, capsys, kind):
    target = tmp_path / "in"
    if kind == "directory":
        target.mkdir()
    else:
        if os.geteuid() == 0:
            pytest.skip("root reads every file")
        target.write_text("x")
        target.chmod(0)
    out = tmp_path / "out"
    assert main(["report", str(target), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"kdsweep report: error: {target}: ") and len(err.splitlines()) == 1
    assert not out.exists()


def test_report_from_s3_without_credentials_is_one_line(tmp_path, capsys, monkeypatch):
    for k in list(os.environ):
        if k.startswith("AWS_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # boto3's default session keeps the credentials it found first in this process (another
    # test's, run before this one in the same worker): a new command's process has none
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    out = tmp_path / "out"
    assert main(["report", "s3://kdsweep/x/results.parquet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("kdsweep report: error: S3: no credentials found: set AWS_ACCESS_KEY_ID / "
                   "AWS_SECRET_ACCESS_KEY in this environment (or a profile or instance role)")
    assert not out.exists()
