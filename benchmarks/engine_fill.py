"""Slot fill of a sweep engine on a real Ray: how much of the slots' time trains.

Runs `kdsweep run` of a digits sweep whose chains have different speeds (a slow cnn-large
teacher in one chain, a fast cnn-small in the other, three seeds) from the engine checkout
given (``--engine-src``: this tree, or an older commit's worktree), on a local Ray with two
CPU slots or on a two-node Ray cluster on loopback (``--two-node``: a head without CPUs and two
one-CPU workers, token auth). Then reads every trial's stored result:

- training interval of a trial = [finished_at - wall_time, finished_at] (wall_time: its
  epochs, training and evaluation; model/data set-up and teacher loading count as overhead);
- span = first training start .. last training end; slot time = span x slots;
- fill = sum of training time / slot time;
- idle while waiting = slot time with a free slot (neither training nor building a bank)
  while some trial had not started yet, over slot time (a barrier's generation changes);
- stalled = time in which no slot trained or built a bank while some trial had not started,
  over the span (the whole cluster waiting at a generation change); its pauses counted, with
  their median and longest (many short pauses: slots between trials at the same moment; a few
  long ones: the engine waiting);
- per-trial fixed slot cost = the gap between a trial's start and the most recent end of
  another trial before it (each end used once): median and 90th percentile, after the first
  `slots` starts (warm-up).

    git worktree add /tmp/kd-barrier 14bee0c     # the previous, barrier engine
    .venv/bin/python benchmarks/engine_fill.py --engine-src /tmp/kd-barrier
    .venv/bin/python benchmarks/engine_fill.py --engine-src .
    .venv/bin/python benchmarks/engine_fill.py --engine-src . --two-node
    .venv/bin/python benchmarks/engine_fill.py --engine-src . --spec sweeps/configs/digits.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SPEC = {
    "name": "fill",
    "dataset": {"name": "digits"},
    "chains": [["cnn-large", "cnn-medium", "cnn-small"], ["cnn-small", "cnn-medium"]],
    "train": {"epochs": 15, "batch_size": 64, "lr": 0.05},
    "grid": {"loss": ["kl", "mse"], "tau": [4, 20], "seeds": [0, 1, 2], "baselines": False},
    "resources": {"cpu": 1},
}


def intervals(store: Path) -> list[tuple[float, float, int]]:
    out = []
    for f in store.glob("trials/*/result.json"):
        r = json.loads(f.read_text())
        out.append((r["finished_at"] - r["wall_time"], r["finished_at"], r["trial"]["generation"]))
    return sorted(out)


def bank_intervals(store: Path) -> list[tuple[float, float]]:
    """Bank builds: [file time - build seconds, file time]; busy, but not training."""
    from kd_core.checkpoint import load_checkpoint

    out = []
    for f in store.glob("trials/*/bank-*.pt"):
        end = f.stat().st_mtime
        out.append((end - load_checkpoint(f)["build_seconds"], end))
    return out


def measure(iv: list[tuple[float, float, int]], banks: list, slots: int) -> dict:
    t0, t1 = min(s for s, _, _ in iv), max(e for _, e, _ in iv)
    span = t1 - t0
    train = sum(e - s for s, e, _ in iv)
    last_start = max(s for s, _, _ in iv)
    busy = [(s, e) for s, e, _ in iv] + banks
    events = sorted([(s, 1) for s, _ in busy] + [(e, -1) for _, e in busy])
    idle_waiting, stalled, running, prev = 0.0, 0.0, 0, t0
    pauses = []  # each interval in which no slot trained (its length): count and size apart
    for t, d in events:
        if prev < last_start:
            idle_waiting += max(0, slots - running) * (min(t, last_start) - prev)
            stalled += (running == 0) * (min(t, last_start) - prev)
            if running == 0 and t > prev:
                pauses.append(min(t, last_start) - prev)
        running += d
        prev = t
    gaps, ends = [], []
    for s, kind in sorted([(s, "s") for s, _, _ in iv] + [(e, "e") for _, e, _ in iv]):
        if kind == "e":
            ends.append(s)
        elif ends:
            gaps.append(s - ends.pop())
    gaps = gaps[max(0, slots - 1) :] or [0.0]
    return {
        "trials": len(iv),
        "span_s": span,
        "fill": train / (span * slots),
        "idle_waiting": idle_waiting / (span * slots),
        "stalled": stalled / span,
        "pauses": len(pauses),
        "pause_median_s": statistics.median(pauses) if pauses else 0.0,
        "pause_max_s": max(pauses, default=0.0),
        "gap_median_s": statistics.median(gaps),
        "gap_p90_s": sorted(gaps)[int(0.9 * (len(gaps) - 1))],
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--engine-src", default=str(ROOT), help="checkout whose engine to run")
    p.add_argument("--two-node", action="store_true", help="two one-CPU Ray nodes on loopback")
    p.add_argument("--slots", type=int, default=2)
    p.add_argument("--spec", help="a spec file instead of the built-in mixed-speed sweep")
    p.add_argument("--measure-only", help="measure a finished run's storage folder again")
    args = p.parse_args()
    if args.measure_only:
        store = Path(args.measure_only)
        print(measure(intervals(store), bank_intervals(store), args.slots))
        return
    src = Path(args.engine_src).resolve()
    tmp = Path(tempfile.mkdtemp(prefix="kdfill-"))
    base = yaml.safe_load(Path(args.spec).read_text()) if args.spec else SPEC
    spec = {**base, "storage": str(tmp / "store"), "tracking_uri": f"sqlite:///{tmp / 'm.db'}"}
    (tmp / "spec.yaml").write_text(yaml.safe_dump(spec))
    env = {**os.environ, "PYTHONPATH": str(src), "RAY_TMPDIR": tempfile.mkdtemp(dir="/tmp")}
    cmd = [sys.executable, "-m", "sweeps.cli", "run", str(tmp / "spec.yaml")]
    cluster = None
    if args.two_node:
        sys.path.insert(0, str(ROOT))
        from testkit.drivers import Cluster

        cluster = Cluster()
        # Ray's workers import the engine under test, not the installed package.
        cluster.env["PYTHONPATH"] = str(src)
        cluster.start_head()
        for i in range(args.slots):
            cluster.start_worker(f"w{i}")
        env = cluster.env
        cmd += ["--address", f"127.0.0.1:{cluster.gcs_port}"]
    t0 = time.time()
    try:
        run = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=1800)
    finally:
        if cluster:
            cluster.stop()
    wall = time.time() - t0
    if run.returncode:
        sys.exit(run.stdout[-3000:] + run.stderr[-3000:])
    m = measure(intervals(tmp / "store"), bank_intervals(tmp / "store"), args.slots)
    where = "2-node loopback" if args.two_node else "local Ray"
    print(
        f"{src.name} on {where}, {args.slots} slots: {m['trials']} trials, driver wall "
        f"{wall:.1f}s, span {m['span_s']:.1f}s, fill {m['fill']:.1%}, idle while waiting "
        f"{m['idle_waiting']:.1%}, stalled {m['stalled']:.1%} ({m['pauses']} pauses, median "
        f"{m['pause_median_s']:.2f}s, max {m['pause_max_s']:.2f}s), fixed slot cost median "
        f"{m['gap_median_s']:.2f}s p90 {m['gap_p90_s']:.2f}s"
    )


if __name__ == "__main__":
    main()
