"""Start-up costs the suite paid in every process (issue 19): the digits dataset through
scikit-learn, and the MLflow server's job runner.

1. digits: a fresh process that has already imported torch and ray.tune (what a trial worker
   holds when its job starts) loads the digits split, through scikit-learn (load_digits +
   train_test_split, as kd_core did) or through kd_core (the same bundled file and indices,
   no scikit-learn import). Bound: kd_core's path reads the bundled CSV, so it cannot beat
   that read alone (gzip + numpy.loadtxt, timed as a third variant).
2. mlflow server: cluster/mlflow/start-mlflow.sh on SQLite stores with basic auth, with
   MLflow's job runner on (MLflow's default) or off (the script's default now): seconds to
   /health, and CPU seconds of the server's whole process tree by then (psutil, children
   included). Bound: the tree's CPU with the runner on is at least the server's without it.

    PYTHONPATH=. .venv/bin/python benchmarks/process_start.py --rounds 3
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "benchmarks"), str(REPO)]
from harness import bound, fmt, interleaved, paired  # noqa: E402

from testkit.drivers import free_port  # noqa: E402

DIGITS = """
import time, torch, ray.tune
t0, c0 = time.perf_counter(), time.process_time()
{load}
print(time.perf_counter() - t0, time.process_time() - c0)
"""
LOADS = {
    "scikit-learn": "from sklearn.datasets import load_digits\n"
                    "from sklearn.model_selection import train_test_split\n"
                    "b = load_digits()\n"
                    "train_test_split(b.images, b.target, test_size=0.25, stratify=b.target,"
                    " random_state=0)",
    "kd_core": "from kd_core.data import load_dataset\nload_dataset('digits')",
    "the file alone": "from kd_core.data.datasets import _digits_arrays\n_digits_arrays()",
}


def digits_once(load: str) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", DIGITS.format(load=load)], check=True,
                         capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    wall, cpu = map(float, out.stdout.split())
    return wall, cpu


def tree_cpu(pid: int) -> float:
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return total
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def server_once(jobs: str) -> tuple[float, float]:
    """(seconds to /health, CPU seconds of the process tree then) for one fresh server."""
    with tempfile.TemporaryDirectory(prefix="kdsrv-", dir="/tmp") as d:
        port = free_port()
        env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{d}/b.db",
               "MLFLOW_AUTH_DATABASE_URI": f"sqlite:///{d}/auth.db",
               "MLFLOW_ARTIFACTS_DESTINATION": f"{d}/artifacts",
               "MLFLOW_AUTH_ADMIN_PASSWORD": "bench-password-1", "MLFLOW_HOST": "127.0.0.1",
               "MLFLOW_PORT": str(port), "MLFLOW_STATE_DIR": f"{d}/state",
               "MLFLOW_BIN": str(Path(sys.executable).parent / "mlflow"),
               "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": jobs}
        t0 = time.perf_counter()
        proc = subprocess.Popen(["bash", str(REPO / "cluster/mlflow/start-mlflow.sh")], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
                    break
                except OSError:
                    if proc.poll() is not None or time.perf_counter() - t0 > 180:
                        raise RuntimeError("the server did not come up") from None
                    time.sleep(0.1)
            up = time.perf_counter() - t0
            return up, tree_cpu(proc.pid)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    figures = interleaved({k: (lambda v=v: digits_once(v)) for k, v in LOADS.items()},
                          args.rounds)
    print("== digits split in a process holding torch and ray.tune (s, min / median)")
    for name, runs in figures.items():
        print(f"  {name:13s} wall {fmt([w for w, _ in runs])}   cpu {fmt([c for _, c in runs])}")
    old, new, read = ([w for w, _ in figures[k]] for k in LOADS)
    saved = [a - b for a, b in zip(old, new, strict=True)]
    print(f"  saved per process  {fmt(saved)}   ratio kd_core/scikit-learn "
          f"{fmt(paired(new, old))}")
    print(bound("kd_core's path, below the file's read alone", new, min(read), above=False)
          or "  bound: kd_core's path >= the file's read alone: ok")

    figures = interleaved({f"job runner {v}": (lambda v=v: server_once(v))
                           for v in ("true", "false")}, args.rounds)
    print("== start-mlflow.sh, SQLite stores, basic auth: to /health (s, min / median)")
    for name, runs in figures.items():
        print(f"  {name:17s} up {fmt([u for u, _ in runs], 2)}   "
              f"tree cpu {fmt([c for _, c in runs], 2)}")
    on, off = ([c for _, c in figures[f"job runner {v}"]] for v in ("true", "false"))
    print(bound("tree CPU with the runner, below the server's without it", on, min(off),
                above=False) or "  bound: CPU(runner on) >= CPU(runner off): ok")


if __name__ == "__main__":
    main()
