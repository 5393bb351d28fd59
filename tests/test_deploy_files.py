"""cluster/ and docker/ files, checked structurally (no cloud, Kubernetes or Docker engine here)."""

import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from testkit import HANG

ROOT = Path(__file__).resolve().parents[1]


def constraint(name: str) -> str:
    text = (ROOT / "constraints.txt").read_text()
    return re.search(rf"^{name}==(\S+)$", text, re.MULTILINE | re.IGNORECASE)[1]


def test_aws_launcher_config_matches_rays_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((ROOT / "cluster" / "aws" / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    assert "InstanceMarketOptions" not in head["node_config"]  # on-demand head
    spot = nodes["gpu_spot"]
    assert spot["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert 0 <= spot["min_workers"] < spot["max_workers"]
    assert any("constraints.txt" in c for c in config["setup_commands"])
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    assert "/home/ubuntu/.ray/auth_token" in config["file_mounts"]
    # credentials: a node file read around `ray start`, never a runtime env (README)
    assert "/home/ubuntu/.kdsweep/credentials.env" in config["file_mounts"]
    assert all("with-credentials.sh" in c for c in starts if "ray start" in c)


def test_no_runbook_puts_a_secret_in_a_runtime_env():
    """Ray logs a runtime env in clear (runtime_env_agent.log) and lists it in `ray job list`."""
    cluster = ROOT / "cluster"
    docs = [ROOT / "README.md", *cluster.rglob("*.md"), *cluster.rglob("*.y*ml")]
    for doc in docs:
        for env in re.findall(r"--runtime-env-json\s+'([^']*)'", doc.read_text()):
            assert not re.search(r"MLFLOW_TRACKING|PASSWORD|SECRET|AWS_", env), (doc, env)


def _containers(pod_template):
    return pod_template["spec"]["containers"]


def test_kuberay_manifests():
    cluster = yaml.safe_load((ROOT / "cluster" / "kuberay" / "raycluster.yaml").read_text())
    job = yaml.safe_load((ROOT / "cluster" / "kuberay" / "rayjob.yaml").read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    assert job["spec"]["entrypoint"].startswith("kdsweep run ")
    assert "--address auto" in job["spec"]["entrypoint"]
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]["RAY_AUTH_MODE"] == "token"
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        assert spec["rayVersion"] == ray.__version__
        (gpu,) = [g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu"]
        assert gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
        templates = [spec["headGroupSpec"]["template"], gpu["template"]]
        for c in [c for t in templates for c in _containers(t)]:
            assert c["image"].startswith("ghcr.io/kdsweep/kdsweep:")
            env = {e["name"]: e for e in c["env"]}
            assert env["RAY_AUTH_MODE"]["value"] == "token"
            assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "kdsweep-ray-token"
        assert _containers(gpu["template"])[0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_dockerfile_installs_with_the_constraints_as_non_root():
    text = (ROOT / "docker" / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", text, re.MULTILINE)[1]
    assert base.startswith(f"pytorch/pytorch:{constraint('torch')}-cuda")
    assert "pip install -c constraints.txt" in text
    user = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert user and user[-1] not in ("root", "0")
    for src in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, re.MULTILINE):
        for path in src.split():
            assert (ROOT / path).exists(), path


def test_compose_stack_has_every_service_port_and_volume():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"ray-head", "ray-worker", "mlflow", "postgres", "minio"} <= services.keys()
    ports = {s: [p.split(":")[-1] for p in svc.get("ports", [])] for s, svc in services.items()}
    assert "8265" in ports["ray-head"] and "5000" in ports["mlflow"] and "9000" in ports["minio"]
    assert all(
        p.startswith("127.0.0.1:") for svc in services.values() for p in svc.get("ports", [])
    )
    assert {"pgdata", "miniodata", "results"} <= compose["volumes"].keys()
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    mlflow = services["mlflow"]
    assert "start-mlflow.sh" in " ".join(mlflow["command"])
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert mlflow["environment"]["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert "--address=ray-head:6379" in services["ray-worker"]["command"]
    for name in ("ray-head", "ray-worker", "mlflow"):
        assert services[name]["image"] == "kdsweep:0.1.0"
        assert services[name]["environment"]["RAY_AUTH_MODE"] == "token"
    assert (ROOT / "docker" / "postgres-init.sql").exists()


def with_credentials(tmp_path, text: str, mode: int = 0o600, link: bool = False):
    """cluster/with-credentials.sh around `env -0`: (exit code, the environment it ran, stderr)."""
    import os
    import subprocess

    file = tmp_path / "credentials.env"
    file.write_text(text)
    file.chmod(mode)
    if link:
        (tmp_path / "link.env").symlink_to(file)
        file = tmp_path / "link.env"
    out = subprocess.run([str(ROOT / "cluster" / "with-credentials.sh"), "env", "-0"],
                         capture_output=True, timeout=HANG / 2, cwd=tmp_path,
                         env={"PATH": os.environ["PATH"], "KDSWEEP_CREDENTIALS": str(file)})
    env = dict(kv.split("=", 1) for kv in out.stdout.decode().split("\0") if "=" in kv)
    return out.returncode, env, out.stderr.decode()


def test_the_credentials_file_is_read_as_data_never_run(tmp_path):
    """Defect 9: the file was sourced as shell code: `pa$sw0rd` aborted naming part of the
    secret, a second word ran as a command, backticks executed."""
    text = ("# the node's credentials\n\n"
            "MLFLOW_TRACKING_PASSWORD=pa$sw0rd\n"
            "SPACED=first second\n"
            "TICKS=`touch pwned`$(touch pwned2)\n"
            "export AWS_ACCESS_KEY_ID='quoted value'\n"
            'QUOTE="a\'b"\r\n')
    code, env, err = with_credentials(tmp_path, text)
    assert code == 0, err
    assert env["MLFLOW_TRACKING_PASSWORD"] == "pa$sw0rd"
    assert env["SPACED"] == "first second"
    assert env["TICKS"] == "`touch pwned`$(touch pwned2)"
    assert env["AWS_ACCESS_KEY_ID"] == "quoted value" and env["QUOTE"] == "a'b"
    assert not list(tmp_path.glob("pwned*")) and err == ""


def test_a_bad_credentials_line_is_named_by_number_only(tmp_path):
    code, env, err = with_credentials(tmp_path, "GOOD=1\nthis is s3cr3t\n")
    assert code == 2 and "SECRET" not in env
    assert err.strip().endswith("credentials.env, line 2: not KEY=VALUE (the line is not shown)")
    assert "s3cr3t" not in err


def test_a_link_is_judged_by_the_file_it_points_at(tmp_path):
    code, env, err = with_credentials(tmp_path, "K=v\n", mode=0o600, link=True)
    assert code == 0 and env["K"] == "v", err  # a link's own mode (777) is not the file's
    (tmp_path / "open").mkdir()
    code, env, err = with_credentials(tmp_path / "open", "K=v\n", mode=0o644, link=True)
    assert code == 2 and "K" not in env and "readable by others (mode 644)" in err


@pytest.mark.parametrize("line", [
    "n=key[$(touch pwned)]",  # the script's own counter, then read by bash arithmetic
    "key=x[$(touch pwned)]", "value=$(touch pwned)", "file=/dev/null", "line=x",
    "lower_case=1", "BASH_ENV=./pwned.sh", "ENV=./pwned.sh", "IFS=x", "PATH=.",
    "PS4=$(touch pwned)", "SHELLOPTS=xtrace", "LD_PRELOAD=./pwned.so",
    "KDSWEEP_CREDENTIALS=/dev/null",
])
def test_a_key_that_names_the_scripts_or_the_shells_own_variable_is_refused(tmp_path, line):
    """Issue 41: a KEY naming the script's own counter (`n=key[$(touch FILE)]`) was evaluated
    by bash arithmetic at the next line. Keys are environment-variable names in capitals, never
    the script's, the shell's or the loader's own; nothing in the file is evaluated."""
    (tmp_path / "pwned.sh").write_text("touch pwned\n")
    code, env, err = with_credentials(tmp_path, f"GOOD=1\n{line}\nLATER=2\n")
    assert code == 2, err
    assert "line 2:" in err and len(err.strip().splitlines()) == 1
    value = line.split("=", 1)[1]
    assert len(value) < 3 or value not in err  # no value is ever printed
    assert not list(tmp_path.glob("pwned")) and not list(tmp_path.glob("pwned2"))
    assert "GOOD" not in env and "LATER" not in env  # nothing ran
