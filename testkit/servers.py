"""Real servers for tests, on 127.0.0.1, started and stopped by the tests that need them."""

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from . import HANG
from .drivers import free_port, wait_for_port


def _as_postgres(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; the machine image has a `postgres` user for this.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextlib.contextmanager
def postgres(databases=("mlflow",)):
    """A throwaway PostgreSQL cluster (initdb in a temp dir); yields its port."""
    for tool in ("initdb", "pg_ctl", "psql"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed (PostgreSQL server binaries)")
    root = Path(tempfile.mkdtemp(prefix="kdpg-", dir="/tmp"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    port = free_port()
    subprocess.run(
        _as_postgres(["initdb", "-D", str(data), "-A", "trust", "-U", "postgres"]),
        check=True,
        capture_output=True,
        timeout=HANG / 2,
    )
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {root}"
    subprocess.run(
        _as_postgres(
            [
                "pg_ctl",
                "-D",
                str(data),
                "-o",
                opts,
                "-l",
                str(root / "log"),
                "-w",
                "-t",
                "300",
                "start",
            ]
        ),
        check=True,
        capture_output=True,
        timeout=HANG,
    )
    try:
        for db in databases:
            subprocess.run(
                _as_postgres(
                    [
                        "psql",
                        "-h",
                        "127.0.0.1",
                        "-p",
                        str(port),
                        "-U",
                        "postgres",
                        "-c",
                        f"CREATE DATABASE {db}",
                    ]
                ),
                check=True,
                capture_output=True,
                timeout=HANG / 5,
            )
        yield port
    finally:
        subprocess.run(
            _as_postgres(["pg_ctl", "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
            timeout=HANG / 5,
        )
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _serve(cmd: list[str], port: int, log_path: Path, env: dict | None = None):
    """Run a server in its own process group until the block ends; yields its URL."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_for_port(port, proc, timeout=HANG / 2)
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(HANG / 10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


def mlflow_server(pg_port: int, workdir: Path, password: str):
    """cluster/mlflow/start-mlflow.sh, run as shipped (its own worker count), on the given
    PostgreSQL; yields its URL."""
    script = Path(__file__).resolve().parents[1] / "cluster" / "mlflow" / "start-mlflow.sh"
    port = free_port()
    pg = f"postgresql+psycopg2://postgres@127.0.0.1:{pg_port}"
    env = {
        **os.environ,
        "MLFLOW_BACKEND_STORE_URI": f"{pg}/mlflow",
        "MLFLOW_AUTH_DATABASE_URI": f"{pg}/mlflow_auth",
        "MLFLOW_ARTIFACTS_DESTINATION": str(workdir / "artifacts"),
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_HOST": "127.0.0.1",
        "MLFLOW_PORT": str(port),
        "MLFLOW_STATE_DIR": str(workdir / "state"),
        "MLFLOW_BIN": str(Path(os.sys.executable).parent / "mlflow"),
    }
    return _serve(["bash", str(script)], port, workdir / "mlflow.log", env)


def mlflow_sqlite_server(workdir: Path, backend: str | None = None, workers: int = 1,
                         port: int | None = None):
    """A plain `mlflow server` on a SQLite store in ``workdir`` (or on ``backend``, e.g. a
    PostgreSQL URI), on ``port`` (default: a free one); yields its URL."""
    from sweeps.tracking.sqlite_store import prepare_store

    port = port or free_port()
    if backend is None:
        backend = f"sqlite:///{workdir / 'server.db'}"
        prepare_store(backend)  # a copy of a migrated store: MLflow's migration takes ~5 s
    mlflow = Path(os.sys.executable).parent / "mlflow"
    cmd = [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", str(workers)]
    cmd += ["--backend-store-uri", backend]
    cmd += ["--artifacts-destination", str(workdir / "artifacts")]
    # as start-mlflow.sh runs it: without MLflow's job runner (five more Python processes)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return _serve(cmd, port, workdir / "mlflow-server.log", env)


# moto's server checks no credentials; these only satisfy the AWS clients
S3_TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def s3_server(workdir: Path, bucket: str = "kdsweep"):
    """moto's S3-compatible server with ``bucket`` created; yields its endpoint URL."""
    import boto3

    port = free_port()
    cmd = [os.sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with _serve(cmd, port, workdir / "moto.log") as endpoint:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **{
            "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        ).create_bucket(Bucket=bucket)
        yield endpoint
