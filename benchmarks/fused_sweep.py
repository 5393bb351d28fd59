"""The demo's sweep with fused siblings against without (issue 44's CPU target): `kdsweep run`
of sweeps/configs/digits.yaml (or a copy with fewer seeds, ``--seeds``) with
``resources.fuse`` set to each variant, each run from empty storage and a new MLflow store, in
a fresh driver process (its own local Ray); the variants interleaved over rounds (rotated
each round). Counted: the run's wall time (`kdsweep run` only, no report), min and median,
and the paired ratio off / fused. The machine's load average is printed at each run.

    PYTHONPATH=. .venv/bin/python benchmarks/fused_sweep.py --rounds 2 --seeds 0
    PYTHONPATH=. .venv/bin/python benchmarks/fused_sweep.py --rounds 2 --seeds 0 \
        --variants auto,off --measure     # auto as it decides from plan --measure's record

(fuse 7: a teacher's 7 siblings per job, as `auto` fused them on CPUs when the figures in
benchmarks/RESULTS.md were measured with ``--variants auto,off``.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import fmt, interleaved, min_med, paired, tree_cpu_run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--spec", default=str(ROOT / "sweeps/configs/digits.yaml"))
    p.add_argument("--seeds", default=None, help="comma-separated: a reduced copy of the spec")
    p.add_argument("--variants", default="7,off", help="resources.fuse values")
    p.add_argument("--noise", default=None, help="comma-separated noise rates (a reduced copy)")
    p.add_argument("--epochs", type=int, default=None, help="train.epochs (a reduced copy)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", default=None)
    p.add_argument("--measure", action="store_true",
                   help="before each `auto` run, `kdsweep plan --measure` (its fusion record)")
    args = p.parse_args()
    base = yaml.safe_load(Path(args.spec).read_text())
    if args.seeds:
        base["grid"]["seeds"] = [int(s) for s in args.seeds.split(",")]
    if args.noise is not None:
        base["grid"]["noise"]["rate"] = [float(r) for r in args.noise.split(",")]
    if args.epochs is not None:
        base["train"]["epochs"] = args.epochs
    work = Path(tempfile.mkdtemp(prefix="kdsweep-fused-sweep-"))
    loads: list[tuple[str, float, float]] = []
    cpus: dict[str, list[float]] = {}  # CPU seconds of each run's process tree, Ray's included

    def variant(fuse: str):
        def run() -> float:
            tmp = Path(tempfile.mkdtemp(dir=work))
            spec = {**base, "resources": {**base.get("resources", {}),
                                          "fuse": int(fuse) if fuse.isdigit() else fuse},
                    "storage": str(tmp / "store"), "tracking_uri": f"sqlite:///{tmp}/mlflow.db"}
            (tmp / "spec.yaml").write_text(yaml.safe_dump(spec))
            if fuse == "auto" and args.measure:  # the record auto reads, before the clock
                t0 = time.perf_counter()
                out = subprocess.run([sys.executable, "-m", "sweeps.cli", "plan", "spec.yaml",
                                      "--measure"], cwd=tmp, capture_output=True, text=True,
                                     timeout=1800)
                if out.returncode != 0:
                    sys.exit(f"plan --measure: exit {out.returncode}\n{out.stderr[-2000:]}")
                print("\n".join(line for line in out.stdout.splitlines()
                                if line.startswith(("fusion", "cnn-", "  fuse")))
                      + f"\n(plan --measure: {time.perf_counter() - t0:.1f} s, not counted)",
                      flush=True)
            before = os.getloadavg()[0]
            out, seconds, cpu = tree_cpu_run([sys.executable, "-m", "sweeps.cli", "run",
                                              "spec.yaml"], cwd=tmp, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, text=True, timeout=3600)
            if out.returncode != 0:
                sys.exit(f"fuse={fuse}: exit {out.returncode}\n{out.stdout[-2000:]}"
                         f"{out.stderr[-2000:]}")
            loads.append((fuse, before, os.getloadavg()[0]))
            cpus.setdefault(fuse, []).append(cpu)
            print(f"fuse={fuse}: {seconds:.1f} s, {cpu:.1f} CPU s of its process tree (load "
                  f"average {before:.1f} before, {os.getloadavg()[0]:.1f} after)", flush=True)
            shutil.rmtree(tmp, ignore_errors=True)
            return seconds
        return run

    names = args.variants.split(",")
    try:
        out = interleaved({v: variant(v) for v in names}, args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seeds = base["grid"]["seeds"]
    print(f"{Path(args.spec).name}, seeds {seeds}, noise {base['grid']['noise']['rate']}, "
          f"{base['train']['epochs']} epochs; wall seconds of `kdsweep run`, "
          f"min / median over {args.rounds} rounds")
    for v in names:
        print(f"fuse={v}: {fmt(out[v], 1)} wall s; {fmt(cpus[v], 1)} CPU s")
    if "off" in out:
        for v in names:
            if v != "off":
                lo, med = min_med(paired(out["off"], out[v]))
                clo, cmed = min_med(paired(cpus["off"], cpus[v]))
                print(f"off / fuse={v} (paired): wall {lo:.2f}x / {med:.2f}x, "
                      f"CPU {clo:.2f}x / {cmed:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "seconds": out,
                                               "cpu_seconds": cpus, "loads": loads}, indent=1))


if __name__ == "__main__":
    main()
