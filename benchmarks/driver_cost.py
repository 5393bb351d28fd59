"""The fixed cost of one driver process: wall seconds and CPU seconds of its whole process tree
(the driver, its local Ray's GCS, raylet, agents and workers), variants interleaved over rounds.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/driver_cost.py --rounds 5 ray
    PYTHONPATH=$PWD .venv/bin/python benchmarks/driver_cost.py --rounds 3 stored train

Commands: ``ray`` (engine.connect's own local Ray, one task run on it, shut down: Ray's start-up
as a driver pays it), ``stored`` (`kdsweep run` of a sweep whose trials are all stored: no Ray),
``train`` (`kdsweep run` of two tiny trials: a local Ray and Tune), ``worker`` (a trial
actor's steps to its first epoch, each step's CPU and wall seconds, in one process).
Variants: ``--variant NAME=K=V,K=V`` sets environment variables of the measured process (RAY_*
settings reach every Ray process it starts); each variant runs once per round, in turn.

The tree's CPU: the process runs in a Unix session of its own; every process of that session is
sampled every 50 ms (psutil: its own user + system seconds, at its last sample; the driver's
as a zombie, after its exit). A process loses at most its last 50 ms. Wall: the driver's,
start to exit."""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
BREAKDOWN = False

RAY = r"""
import ray
from sweeps.ray.engine import connect
connect(None)
ray.get(ray.remote(lambda: 1).remote())
ray.shutdown()
"""

# A trial actor's steps to its first epoch and curve, in one fresh process (``worker``): what
# Ray's worker imports to build the actor, the job's first import (trial.py), the data, the
# Trainer (its SGD imports torch._dynamo), one epoch of digits' cnn-small, the first curve.
WORKER = r"""
import time
t = [time.process_time(), time.monotonic()]
out = []
def mark(name):
    c, w = time.process_time(), time.monotonic()
    out.append(f"{name} {c - t[0]:.2f}/{w - t[1]:.2f}")
    t[:] = c, w
import ray.tune.trainable.function_trainable
mark("ray+tune")
import sweeps.ray.trial
mark("trial.py")
from kd_core.config import TrainConfig
from kd_core.run import RunSpec, build_trainer, load_run_data
run = RunSpec(dataset="digits", model="cnn-small",
              train=TrainConfig(epochs=1, batch_size=64, lr=0.02, device="cpu"))
data = load_run_data(run)
mark("data")
trainer, _ = build_trainer(run, data=data)
mark("trainer")
history = [m.as_dict() | {"epoch": 1} for m in trainer.epochs()]
mark("epoch")
from sweeps.ray.curve import learning_curve_png
learning_curve_png(history, "t")
mark("curve")
print("CPU/wall s:", " ".join(out))
"""


NAMES: dict[tuple[int, float], str] = {}  # what each process sampled was (--breakdown)


def _name(p) -> str:
    cmd = p.cmdline()
    if not cmd:
        return p.name()
    if cmd[0].endswith("python") or "python3" in cmd[0]:
        script = next((c for c in cmd[1:] if not c.startswith("-")), "")
        if "/" in script:
            return "python " + Path(script).name[:40]
        return "python " + (script.split() or [""])[0][:40]  # -m MODULE, -c CODE
    return Path(cmd[0]).name[:40]


def _worker(name: str) -> bool:
    """A Ray worker process (a trial's actor, or a task's): each starts as setup_worker.py and
    execs default_worker.py (renamed ray::... once it runs)."""
    return any(w in name for w in ("setup_worker.py", "default_worker.py", "ray::"))


def measure(argv: list[str], env: dict, cwd: Path) -> tuple[float, float, list[float]]:
    """(wall s, CPU s of the whole tree, CPU s of each Ray worker process) of ``argv``."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen: dict[tuple[int, float], float] = {}

    def sample():
        for p in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if os.getsid(p.pid) == proc.pid:
                    key = (p.pid, p.create_time())
                    NAMES.setdefault(key, _name(p))
                    t = p.cpu_times()  # its own seconds, not its children's
                    seen[key] = t.user + t.system
    while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        sample()
        time.sleep(0.05)
    wall = time.monotonic() - t0
    sample()  # the driver a zombie: its last seconds
    proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # what outlives the driver (its Ray's last processes)
        before = dict(seen)
        sample()
        if seen == before:
            break
        time.sleep(0.05)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv}: exit {proc.returncode}")
    if BREAKDOWN:
        for k, v in sorted(seen.items(), key=lambda kv: -kv[1]):
            print(f"    {v:6.2f} s  {NAMES.get(k, '?')}")
    workers = sorted((v for k, v in seen.items() if _worker(NAMES.get(k, ""))), reverse=True)
    return wall, sum(seen.values()), workers


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", nargs="+", choices=["ray", "stored", "train", "worker"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME=K=V,K=V (environment of the measured process)")
    ap.add_argument("--breakdown", action="store_true", help="each process's CPU s")
    args = ap.parse_args()
    global BREAKDOWN
    BREAKDOWN = args.breakdown
    variants = {"default": {}}
    for v in args.variant:
        name, _, kvs = v.partition("=")
        variants[name] = dict(kv.split("=", 1) for kv in kvs.split(",") if kv)
    sys.path.insert(0, str(REPO))
    from sweeps.domain.spec import load_spec
    from testkit.drivers import ray_dir, write_spec
    from testkit.fabricate import fabricate

    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    base = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "",
            "KDSWEEP_CACHE": tempfile.mkdtemp(prefix="kdcache-")}
    for r in range(args.rounds):
        for what in args.what:
            for name, extra in variants.items():
                tmp = Path(tempfile.mkdtemp(prefix="kdcost-"))
                env = {**base, **extra, "RAY_TMPDIR": ray_dir(tmp)}
                if what == "worker":
                    out = subprocess.run([sys.executable, "-c", WORKER], env=env, cwd=tmp,
                                         capture_output=True, text=True, check=True)
                    print(f"round {r} worker {name:12} {out.stdout.strip()}", flush=True)
                    continue
                if what == "ray":
                    argv = [sys.executable, "-c", RAY]
                else:
                    spec_path = write_spec(tmp, train={"epochs": 1, "batch_size": 64,
                                                       "lr": 0.02})
                    if what == "stored":
                        fabricate(load_spec(spec_path))
                    argv = [sys.executable, "-m", "sweeps.cli", "run", str(spec_path)]
                wall, cpu, workers = measure(argv, env, tmp)
                results.setdefault((what, name), []).append((wall, cpu))
                each = " + ".join(f"{w:.2f}" for w in workers)
                print(f"round {r} {what:6} {name:12} wall {wall:6.2f} s  cpu {cpu:6.2f} s"
                      + (f"  (Ray workers: {each})" if workers else ""), flush=True)
    print("\n| run | variant | wall s min / median | tree CPU s min / median |")
    print("|---|---|---|---|")
    for (what, name), xs in results.items():
        w, c = [x[0] for x in xs], [x[1] for x in xs]
        print(f"| {what} | {name} | {min(w):.2f} / {statistics.median(w):.2f} | "
              f"{min(c):.2f} / {statistics.median(c):.2f} |")


if __name__ == "__main__":
    main()
